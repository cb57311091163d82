"""Every HTTP client in retrain against a server that misbehaves (hostile_server.py):
each call ends by its deadline, is retried when retrying can help, is cut when the run
stops, and never prints the credentials of its URL."""

from __future__ import annotations

import contextlib
import datetime
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator

import pytest
from hostile_server import HostileServer

from retrain.config.schema import Config, RewardConfig
from retrain.errors import ConfigError
from retrain.http import (
    DeadlineExceeded,
    HttpClient,
    HttpError,
    InFlight,
    RequestCancelled,
    parse_endpoint,
)
from retrain.rewards.base import RewardError
from retrain.rewards.judge import JudgeReward
from retrain.types import Example

EXAMPLE = Example("q1", ({"role": "user", "content": "What is 2+2?"},), "4")


@pytest.fixture
def server() -> Iterator[HostileServer]:
    hostile = HostileServer().start()
    yield hostile
    hostile.stop()


def no_wait(waits: list[float]) -> Callable[[float], bool]:
    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return False
    return wait


def client(server: HostileServer, waits: list[float] | None = None, **options: float) -> HttpClient:
    return HttpClient(parse_endpoint(server.url, "test URL"), in_flight=InFlight(),
                      wait=no_wait([] if waits is None else waits), **options)  # type: ignore[arg-type]


def timed(call: Callable[[], object]) -> tuple[BaseException | None, float]:
    started = time.monotonic()
    try:
        call()
    except BaseException as error:  # the test inspects whatever the call raised
        return error, time.monotonic() - started
    return None, time.monotonic() - started


@pytest.mark.parametrize("mode", ["hang", "drip"])
def test_a_server_that_hangs_or_drips_ends_at_the_total_deadline(server: HostileServer, mode: str) -> None:
    server.mode = mode
    server.drip_s = 0.05  # a byte every 50 ms: no read ever times out
    error, elapsed = timed(lambda: client(server, deadline_s=1.0, read_timeout_s=30).post_json("chat", {}, "the probe"))
    assert isinstance(error, DeadlineExceeded), error
    assert "did not answer within its 1 s deadline" in str(error)
    assert elapsed < 3.0, elapsed


@pytest.mark.parametrize("mode", ["reset", "503", "truncated", "429"])
def test_transient_failures_are_retried_then_succeed(server: HostileServer, mode: str) -> None:
    server.mode, server.fail_first, server.retry_after = mode, 2, "3"
    waits: list[float] = []
    response = client(server, waits, backoff_s=0.01).post_json("chat", {}, "the probe")
    assert response.status == 200 and b"CORRECT" in response.body
    assert server.requests == 3
    if mode == "429":
        assert waits == [3.0, 3.0]  # Retry-After is waited at least, the backoff is smaller
    else:
        assert waits == [0.01, 0.02]


@pytest.mark.parametrize("mode", ["reset", "503", "truncated"])
def test_persistent_failures_end_with_the_last_error(server: HostileServer, mode: str) -> None:
    server.mode = mode
    error, _ = timed(lambda: client(server, max_attempts=3, backoff_s=0.01).post_json("chat", {}, "the probe"))
    assert isinstance(error, HttpError) and "failed 3 times" in str(error), error
    assert server.requests == 3


def test_retry_waits_that_would_pass_the_deadline_are_not_waited(server: HostileServer) -> None:
    server.mode, server.retry_after = "429", "3600"
    waits: list[float] = []
    error, elapsed = timed(lambda: client(server, waits, deadline_s=5.0, max_backoff_s=3600).post_json(
        "chat", {}, "the probe"))
    assert isinstance(error, DeadlineExceeded) and "HTTP 429" in str(error), error
    assert waits == [] and elapsed < 3.0


@pytest.mark.parametrize("announced", [True, False])
def test_a_huge_reply_is_refused_not_buffered(server: HostileServer, announced: bool) -> None:
    server.mode = "huge" if announced else "huge_unannounced"
    error, _ = timed(lambda: client(server, max_body_bytes=1024 * 1024).post_json("chat", {}, "the probe"))
    assert isinstance(error, HttpError) and "1048576 bytes" in str(error), error


def test_cancelling_cuts_a_call_in_flight_at_once(server: HostileServer) -> None:
    server.mode = "hang"
    probe = client(server, deadline_s=60)
    outcome: list[BaseException | None] = []
    worker = threading.Thread(target=lambda: outcome.append(timed(lambda: probe.post_json("chat", {}, "probe"))[0]))
    worker.start()
    assert server.got_request.wait(10)
    cancelled_at = time.monotonic()
    probe.in_flight.cancel_now()
    worker.join(10)
    assert not worker.is_alive() and time.monotonic() - cancelled_at < 2.0
    assert isinstance(outcome[0], RequestCancelled), outcome
    # and no new call starts until the next run resets it
    assert isinstance(timed(lambda: probe.post_json("chat", {}, "probe"))[0], RequestCancelled)
    probe.in_flight.reset()
    server.mode = "ok"
    assert probe.post_json("chat", {}, "probe").status == 200


def test_the_grace_after_a_first_signal_lets_healthy_calls_finish(server: HostileServer) -> None:
    probe = client(server)
    probe.in_flight.cancel_after(30.0)
    assert probe.post_json("chat", {}, "probe").status == 200  # well within the grace
    server.mode = "hang"
    probe.in_flight.reset()
    probe.in_flight.cancel_after(0.5)
    error, elapsed = timed(lambda: probe.post_json("chat", {}, "probe"))
    assert isinstance(error, RequestCancelled) and elapsed < 3.0, (error, elapsed)


def test_connections_are_closed_after_every_outcome(server: HostileServer) -> None:
    for mode in ("ok", "reset", "503", "truncated", "hang"):
        server.mode = mode
        timed(lambda: client(server, deadline_s=0.5, max_attempts=1).post_json("chat", {}, "probe"))
    deadline = time.monotonic() + 10
    while server.open_connections and time.monotonic() < deadline:
        time.sleep(0.02)
    server.stop()  # releases the hanging handler, whose client side is already gone
    assert server.connections == 5


def test_credentials_in_the_url_are_basic_auth_and_never_shown(server: HostileServer) -> None:
    url = server.url.replace("http://", "http://alice:s3cr%40t@")
    endpoint = parse_endpoint(url, "OPENAI_BASE_URL")
    assert "s3cr" not in endpoint.shown and "alice" not in endpoint.shown and endpoint.shown.startswith("http://***@")
    probe = HttpClient(endpoint, in_flight=InFlight(), max_attempts=1)
    assert probe.post_json("chat", {}, "probe").status == 200
    assert server.authorization == ["Basic YWxpY2U6czNjckB0"]  # base64("alice:s3cr@t")
    server.mode = "503"
    error, _ = timed(lambda: probe.post_json("chat", {}, "probe"))
    assert error is not None and "s3cr" not in str(error) and "alice" not in str(error)


def test_a_url_that_is_not_http_is_refused_without_echoing_its_password() -> None:
    with pytest.raises(HttpError, match="is not an http:// or https:// URL") as raised:
        parse_endpoint("ftp://bob:hunter2@host/v1", "OPENAI_BASE_URL")
    assert "hunter2" not in str(raised.value)


def judge(server: HostileServer, timeout_s: float, **environ: str) -> JudgeReward:
    config = Config(reward=RewardConfig(type="judge", judge_model="grader", timeout_s=timeout_s, max_concurrency=4))
    return JudgeReward(config, environ={"OPENAI_BASE_URL": server.url, **environ}, backoff_s=0.01)


@pytest.mark.parametrize("mode", ["hang", "drip"])
def test_the_judge_reports_a_deadline_with_the_setting_to_raise(server: HostileServer, mode: str) -> None:
    server.mode, server.drip_s = mode, 0.05
    error, elapsed = timed(lambda: judge(server, 1.0).score(["4"] * 4, [EXAMPLE]))
    assert isinstance(error, RewardError), error
    assert "raise [reward] timeout_s (now 1)" in str(error)
    assert elapsed < 4.0, elapsed


@pytest.mark.parametrize("mode", ["reset", "503", "truncated", "429"])
def test_the_judge_rides_out_transient_failures(server: HostileServer, mode: str) -> None:
    server.mode, server.fail_first, server.retry_after = mode, 2, "0"
    assert judge(server, 30).score(["4"], [EXAMPLE]).tolist() == [1.0]


def test_the_judge_refuses_a_huge_reply(server: HostileServer) -> None:
    server.mode, server.huge_bytes = "huge", 64 * 1024 * 1024
    with pytest.raises(RewardError, match="more than the .* bytes accepted"):
        judge(server, 30).score(["4"], [EXAMPLE])


def test_the_judge_refuses_two_credentials_at_once(server: HostileServer) -> None:
    url = server.url.replace("http://", "http://alice:pw123@")
    config = Config(reward=RewardConfig(type="judge", judge_model="grader"))
    with pytest.raises(ConfigError, match="carries a user and password, and OPENAI_API_KEY is set") as raised:
        JudgeReward(config, environ={"OPENAI_BASE_URL": url, "OPENAI_API_KEY": "sk-x"})
    assert "pw123" not in str(raised.value)


def test_the_host_header_names_the_port_and_ipv6_hosts_work() -> None:
    for host in ("127.0.0.1", "::1"):
        hostile = HostileServer(host=host).start()
        try:
            assert client(hostile).post_json("chat", {}, "probe").status == 200
            shown = f"[{host}]" if ":" in host else host
            assert hostile.hosts == [f"{shown}:{hostile.port}"]
        finally:
            hostile.stop()


def test_every_address_of_a_host_is_tried(server: HostileServer) -> None:
    closed = socket.create_server(("127.0.0.1", 0))
    dead_port = closed.getsockname()[1]
    closed.close()

    def two_addresses(host: str, port: int, type: int = 0) -> list[tuple[object, ...]]:
        # The first address refuses (an IPv6 address an IPv4-only server does not listen on).
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", dead_port)),
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", ("127.0.0.1", server.port))]

    probe = HttpClient(parse_endpoint(server.url, "test URL"), in_flight=InFlight(), resolve=two_addresses)
    assert probe.post_json("chat", {}, "probe").status == 200


def test_a_reply_cut_then_silent_is_a_cancellation_or_a_deadline_even_on_the_last_attempt(
        server: HostileServer) -> None:
    server.mode = "truncated_hang"
    probe = client(server, max_attempts=1, deadline_s=60)
    threading.Timer(0.5, probe.in_flight.cancel_now).start()
    assert isinstance(timed(lambda: probe.post_json("chat", {}, "probe"))[0], RequestCancelled)
    error, elapsed = timed(lambda: client(server, max_attempts=1, deadline_s=0.5).post_json("chat", {}, "probe"))
    assert isinstance(error, DeadlineExceeded) and elapsed < 3.0, error


@pytest.mark.parametrize("url", ["http://host:80a/v1", "http://host:99999/v1", "https://alice:s3cr#t@host/v1",
                                 "alice:s3cr3t@host:8000/v1"])
def test_a_malformed_url_is_named_without_repeating_it(url: str) -> None:
    with pytest.raises(HttpError, match="OPENAI_BASE_URL is not") as raised:
        parse_endpoint(url, "OPENAI_BASE_URL")
    assert "s3cr" not in str(raised.value) and "alice" not in str(raised.value)


def test_a_password_holding_an_at_sign_is_redacted_whole() -> None:
    from retrain.config.snapshot import redact_text

    assert redact_text("https://alice:p@ss@host/v1 and http://u:x y@h") == "https://host/v1 and http://u:x y@h"
    assert parse_endpoint("https://alice:p%40ss@host/v1", "URL").shown == "https://***@host/v1"


def test_a_server_echoing_the_key_does_not_get_it_printed(server: HostileServer) -> None:
    class Echo(HostileServer):
        def _mode_ok(self, connection: socket.socket) -> None:
            body = f'{{"error": "bad key {self.authorization[-1]}"}}'.encode()
            connection.sendall(self._head("401 Unauthorized", len(body)) + body)

    echo = Echo().start()
    try:
        probe = HttpClient(parse_endpoint(echo.url, "URL"), in_flight=InFlight(),
                           headers={"Authorization": "Bearer sk-live-0123456789"})
        error, _ = timed(lambda: probe.post_json("chat", {}, "probe"))
        assert isinstance(error, HttpError) and "HTTP 401" in str(error)
        assert "sk-live-0123456789" not in str(error) and "***" in str(error)
    finally:
        echo.stop()


def test_a_proxy_from_the_environment_is_used(server: HostileServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTP_PROXY", f"http://proxyuser:pw@127.0.0.1:{server.port}")
    # A plain-http server through the proxy: the request names the whole URL.
    probe = HttpClient(parse_endpoint("http://judge.invalid:8000/v1", "URL"), in_flight=InFlight(), max_attempts=1)
    assert probe.post_json("chat/completions", {}, "probe").status == 200
    assert server.request_lines == ["POST http://judge.invalid:8000/v1/chat/completions HTTP/1.1"]
    assert server.hosts == ["judge.invalid:8000"]
    # An https server is reached through a tunnel, which this proxy refuses.
    monkeypatch.setenv("HTTPS_PROXY", f"http://127.0.0.1:{server.port}")
    server.mode = "refuse"
    error, _ = timed(lambda: HttpClient(parse_endpoint("https://judge.invalid/v1", "URL"), in_flight=InFlight(),
                                        max_attempts=1).post_json("chat", {}, "probe"))
    assert isinstance(error, HttpError) and "refused a tunnel to judge.invalid:443" in str(error), error
    assert server.request_lines[-1] == "CONNECT judge.invalid:443 HTTP/1.1"


def test_tls_failures_are_named_and_a_handshake_can_be_cancelled(server: HostileServer, tmp_path) -> None:
    # A server that never speaks TLS: the handshake hangs until cancelled.
    server.mode = "hang"
    probe = HttpClient(parse_endpoint(f"https://127.0.0.1:{server.port}/v1", "URL"), in_flight=InFlight(),
                       deadline_s=60)
    threading.Timer(0.5, probe.in_flight.cancel_now).start()
    error, elapsed = timed(lambda: probe.post_json("chat", {}, "probe"))
    assert isinstance(error, RequestCancelled) and elapsed < 3.0, (error, elapsed)
    # A server whose certificate does not verify: a clear error at once, not retried.
    certificate, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate, key)
    listener = socket.create_server(("127.0.0.1", 0))
    threading.Thread(target=lambda: _tls_accept(listener, context), daemon=True).start()
    probe = HttpClient(parse_endpoint(f"https://127.0.0.1:{listener.getsockname()[1]}/v1", "URL"),
                       in_flight=InFlight())
    error, _ = timed(lambda: probe.post_json("chat", {}, "probe"))
    assert isinstance(error, HttpError) and "TLS certificate does not verify" in str(error), error
    listener.close()


def _tls_accept(listener: socket.socket, context: ssl.SSLContext) -> None:
    with contextlib.suppress(OSError):
        while True:
            connection, _ = listener.accept()
            with contextlib.suppress(OSError), connection:
                context.wrap_socket(connection, server_side=True)


def self_signed(folder) -> tuple[str, str]:
    """A certificate for 127.0.0.1 that no authority signed, and its key."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)
