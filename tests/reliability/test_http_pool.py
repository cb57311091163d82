"""The HTTP client keeps connections open between calls (retrain/http.py, Reuse): against
real loopback servers, calls share connections, a connection the server closed while
idle costs neither an attempt nor a backoff, nothing is pooled that should not be, and
closing the client or cancelling the run closes every idle connection."""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from hostile_server import HostileServer

from retrain.http import DeadlineExceeded, HttpClient, InFlight, RequestCancelled, parse_endpoint


@dataclass
class Behaviour:
    """What the keep-alive server does; ``on_request(n)`` gets the request's number on
    its connection (1, 2, ...) and says what to do with it."""

    on_request: Callable[[int], str] = lambda n: "answer"
    delay_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    connections: int = 0
    open_connections: int = 0
    requests: int = 0
    stopping: threading.Event = field(default_factory=threading.Event)


def _handler(state: Behaviour, idle_timeout_s: float | None) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        timeout = idle_timeout_s  # a connection idle this long is closed by the server
        on_connection = 0

        def setup(self) -> None:
            super().setup()
            with state.lock:
                state.connections += 1
                state.open_connections += 1

        def finish(self) -> None:
            try:
                super().finish()
            finally:
                with state.lock:
                    state.open_connections -= 1

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("Content-Length", "0")))
            self.on_connection += 1
            with state.lock:
                state.requests += 1
            action = state.on_request(self.on_connection)
            if action == "hang":
                state.stopping.wait()
                self.close_connection = True
                return
            if action == "drip":  # a reply one byte at a time for 5 s, then an end
                for byte in b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n" + b" " * 55:
                    self.wfile.write(bytes([byte]))
                    if state.stopping.wait(0.05):
                        break
                self.close_connection = True
                return
            if action in ("drop", "reset"):  # the server closed it while idle, as the request came
                if action == "reset":
                    self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                self.close_connection = True
                return
            time.sleep(state.delay_s)
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if action == "close_header":
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
            if action == "close_after":  # closed without saying so
                self.close_connection = True

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


class KeepAliveServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


def serve(state: Behaviour, idle_timeout_s: float | None = None,
          tls: ssl.SSLContext | None = None) -> tuple[KeepAliveServer, str]:
    server = KeepAliveServer(("127.0.0.1", 0), _handler(state, idle_timeout_s))
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
    scheme = "https" if tls is not None else "http"
    return server, f"{scheme}://127.0.0.1:{server.server_address[1]}/v1"


@pytest.fixture
def state() -> Iterator[Behaviour]:
    behaviour = Behaviour()
    yield behaviour
    behaviour.stopping.set()


@pytest.fixture
def url(state: Behaviour) -> Iterator[str]:
    server, address = serve(state)
    yield address
    server.shutdown()
    server.server_close()


def client(url: str, waits: list[float] | None = None, **options: object) -> HttpClient:
    def wait(seconds: float) -> bool:
        if waits is not None:
            waits.append(seconds)
        return False

    return HttpClient(parse_endpoint(url, "test URL"), in_flight=InFlight(), wait=wait,  # type: ignore[arg-type]
                      **options)


def eventually(condition: Callable[[], bool], within_s: float = 10.0) -> bool:
    give_up = time.monotonic() + within_s
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.01)
    return True


def test_sequential_calls_share_one_connection(state: Behaviour, url: str) -> None:
    with client(url) as probe:
        for index in range(20):
            assert probe.post_json("chat", {"i": index}, "probe").json("probe") == {"ok": True}
    assert state.requests == 20 and state.connections == 1
    assert eventually(lambda: state.open_connections == 0)  # closing the client closed it


def test_concurrent_calls_open_at_most_one_connection_per_thread_and_reuse_them(
        state: Behaviour, url: str) -> None:
    state.delay_s = 0.05
    probe = client(url)
    with ThreadPoolExecutor(8) as pool:
        for _ in range(5):
            replies = list(pool.map(lambda index: probe.post_json("chat", {"i": index}, "probe"), range(8)))
            assert all(reply.status == 200 for reply in replies)
    assert state.requests == 40 and state.connections <= 8
    probe.close()
    assert eventually(lambda: state.open_connections == 0)


def test_the_pool_keeps_no_more_than_its_bound(state: Behaviour, url: str) -> None:
    state.delay_s = 0.05
    probe = client(url, max_idle_connections=2)
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda index: probe.post_json("chat", {"i": index}, "probe"), range(8)))
    assert state.connections == 8
    assert eventually(lambda: state.open_connections <= 2)
    probe.close()
    assert eventually(lambda: state.open_connections == 0)


@pytest.mark.parametrize("action", ["drop", "reset"])
def test_a_connection_closed_as_the_next_request_comes_is_replaced_without_an_attempt(
        state: Behaviour, url: str, action: str) -> None:
    # Each connection answers its first request and drops the second one unanswered: the
    # race of a server closing an idle keep-alive connection just as it is reused.
    state.on_request = lambda n: "answer" if n == 1 else action
    waits: list[float] = []
    probe = client(url, waits, max_attempts=1)
    for index in range(4):
        assert probe.post_json("chat", {"i": index}, "probe").status == 200
    assert waits == []  # no backoff, and max_attempts = 1 was never spent
    assert state.requests == 7 and state.connections == 4  # 3 reuses each met a dropped request
    probe.close()


@pytest.mark.parametrize("when", ["after_each_reply", "after_a_delay"])
def test_a_server_closing_idle_connections_costs_no_attempt(state: Behaviour, when: str) -> None:
    if when == "after_each_reply":
        state.on_request = lambda n: "close_after"
        server, address = serve(state)
    else:
        server, address = serve(state, idle_timeout_s=0.2)
    waits: list[float] = []
    try:
        probe = client(address, waits, max_attempts=1)
        for index in range(3):
            started = time.monotonic()
            assert probe.post_json("chat", {"i": index}, "probe").status == 200
            assert time.monotonic() - started < 1.0
            if when == "after_a_delay":
                assert eventually(lambda: state.open_connections == 0)  # the server closed it, idle
        assert waits == [] and state.requests == 3 and state.connections == 3
        probe.close()
    finally:
        server.shutdown()
        server.server_close()


def test_connection_close_replies_are_not_pooled(state: Behaviour, url: str) -> None:
    state.on_request = lambda n: "close_header"
    probe = client(url)
    for index in range(3):
        assert probe.post_json("chat", {"i": index}, "probe").status == 200
    assert state.connections == 3
    assert eventually(lambda: state.open_connections == 0)  # closed without client.close()
    # The hostile server says "Connection: close" on every reply.
    hostile = HostileServer().start()
    try:
        probe = client(hostile.url)
        for _ in range(3):
            assert probe.post_json("chat", {}, "probe").status == 200
        assert hostile.connections == 3
        assert eventually(lambda: hostile.open_connections == 0)
    finally:
        hostile.stop()


def test_close_closes_the_idle_connections_and_keeps_none_after(state: Behaviour, url: str) -> None:
    probe = client(url)
    assert probe.post_json("chat", {}, "probe").status == 200
    time.sleep(0.1)
    assert state.open_connections == 1  # kept for the next call
    probe.close()
    assert eventually(lambda: state.open_connections == 0)  # the server saw the end of the stream
    probe.close()  # twice is harmless
    assert probe.post_json("chat", {}, "probe").status == 200  # still usable, on a connection of its own
    assert eventually(lambda: state.open_connections == 0)
    assert state.connections == 2


def test_cancelling_closes_idle_connections(state: Behaviour, url: str) -> None:
    probe = client(url)
    with ThreadPoolExecutor(4) as pool:
        state.delay_s = 0.05
        list(pool.map(lambda index: probe.post_json("chat", {"i": index}, "probe"), range(4)))
    assert state.open_connections >= 1
    probe.in_flight.cancel_now()
    assert eventually(lambda: state.open_connections == 0, within_s=2.0)
    with pytest.raises(RequestCancelled):
        probe.post_json("chat", {}, "probe")
    probe.in_flight.reset()
    assert probe.post_json("chat", {}, "probe").status == 200  # a new run connects afresh
    probe.close()


def test_the_deadline_holds_on_a_reused_connection(state: Behaviour, url: str) -> None:
    state.on_request = lambda n: "answer" if n == 1 else "hang"
    probe = client(url, deadline_s=1.0, read_timeout_s=30.0)
    assert probe.post_json("chat", {}, "probe").status == 200
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded, match="within its 1 s deadline"):
        probe.post_json("chat", {}, "probe")
    assert time.monotonic() - started < 2.0
    assert state.connections == 1  # the call that hung was on the reused connection
    probe.close()


@pytest.fixture
def tls_url(state: Behaviour, tmp_path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """An https keep-alive server whose certificate the client trusts."""
    certificate, key = _certificate_for_loopback(tmp_path)
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(certificate, key)
    default_context = ssl.create_default_context
    monkeypatch.setattr(ssl, "create_default_context", lambda: default_context(cafile=certificate))
    server, address = serve(state, tls=server_context)
    yield address
    state.stopping.set()
    server.shutdown()
    server.server_close()


def test_tls_connections_are_reused_and_the_deadline_holds_on_them(state: Behaviour, tls_url: str) -> None:
    state.on_request = lambda n: "hang" if n == 6 else "answer"
    probe = client(tls_url, deadline_s=1.0, read_timeout_s=30.0)
    for index in range(5):
        assert probe.post_json("chat", {"i": index}, "probe").status == 200
    assert state.connections == 1
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        probe.post_json("chat", {}, "probe")
    assert time.monotonic() - started < 2.0 and state.connections == 1
    probe.close()


def test_a_tls_server_that_drips_ends_at_the_deadline(state: Behaviour, tls_url: str) -> None:
    # The watchdog follows the socket into its TLS wrapper (which takes over the descriptor).
    state.on_request = lambda n: "drip"
    probe = client(tls_url, deadline_s=1.0, read_timeout_s=30.0, max_attempts=1)
    started = time.monotonic()
    with pytest.raises(DeadlineExceeded):
        probe.post_json("chat", {}, "probe")
    assert time.monotonic() - started < 2.0


def _certificate_for_loopback(folder) -> tuple[str, str]:
    """A self-signed certificate naming 127.0.0.1 (as an IP address), and its key."""
    x509 = pytest.importorskip("cryptography.x509")
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    names = x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    certificate = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
                   .serial_number(1).not_valid_before(now).not_valid_after(now + datetime.timedelta(days=1))
                   .add_extension(names, critical=False)
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .sign(key, hashes.SHA256()))
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return str(cert_path), str(key_path)
