"""Every HTTP client in retrain against a server that misbehaves (hostile_server.py):
each call ends by its deadline, is retried when retrying can help, is cut when the run
stops, and never prints the credentials of its URL."""

from __future__ import annotations

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
