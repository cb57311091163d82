"""Every HTTP call retrain makes goes through here (the judge reward; engines that serve
over HTTP): one client with a total deadline, retries, cancellation and safe URLs.

- **Total deadline.** A call — connecting, sending, every retry and every backoff wait,
  reading the last byte — ends by its deadline. A per-read socket timeout alone does not
  bound a server that drips one byte a second; here a watchdog shuts the socket down when
  the deadline passes, whatever the call is doing, and the call raises ``DeadlineExceeded``.
- **Retries.** Connection failures, resets, truncated bodies, HTTP 408/409/425/429 and 5xx
  are retried with exponential backoff, waiting at least what ``Retry-After`` asks (in
  seconds; an HTTP date falls back to the backoff), while the deadline allows. Other
  statuses are answered at once (``HttpStatusError``).
- **Cancellation.** ``IN_FLIGHT`` knows every open connection. A run's first Ctrl-C or
  SIGTERM gives the calls in flight a short grace (``cancel_after``) to answer, so a
  healthy server still lets the step finish; then, or at once on the second signal
  (``cancel_now``), their sockets are shut down and every call raises ``RequestCancelled``.
  Connecting polls for cancellation, and backoff waits wake on it.
- **Reuse.** A client keeps the connections its calls leave open (keep-alive) in a pool
  shared by every thread that uses it, by route (host, port, TLS, proxy), at most
  ``max_idle_connections`` and none idle past ``max_idle_s``, and the next call takes one
  rather than connecting (and shaking hands) again. A connection goes back only after a
  whole reply whose framing allows it (the body read to its Content-Length or last chunk,
  no ``Connection: close``, HTTP/1.1 or an HTTP/1.0 keep-alive, from the server or the
  proxy in between), only if the deadline's watchdog did not cut it, and never once
  cancelled; an idle one that turned readable (its server closed it) is dropped. While a
  call uses a pooled connection it is in ``IN_FLIGHT`` and under the watchdog like any
  other. A reused connection that fails before any byte of the reply (the server closed
  it while idle: a reset, a broken pipe, an end of stream) is replaced at once by a fresh
  one — not an attempt, no backoff — once per attempt. Cancelling closes the idle
  connections of every client whose pool it knows; ``HttpClient.close()`` closes its own
  (and keeps none after), so whoever holds a client closes it when done. Requests go out
  with ``TCP_NODELAY`` and replies are acknowledged at once (``TCP_QUICKACK``): a server
  that writes headers and body apart does not stall a kept-alive call on a delayed ACK.
- **Bounded bodies.** A reply larger than ``max_body_bytes`` is refused, not buffered.
- **Credentials in URLs.** ``https://user:password@host/v1`` is sent as HTTP basic auth
  (RFC 7617) to ``https://host/v1``; a URL is only ever printed with its credentials
  replaced by ``***`` (``Endpoint.shown``).
"""

from __future__ import annotations

import errno
import http.client
import json
import select
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from retrain.config.snapshot import redact_text
from retrain.errors import RetrainError
from retrain.http_pool import IN_FLIGHT, IdlePool, InFlight, Watchdog
from retrain.http_route import Route, basic_auth

__all__ = ["IN_FLIGHT", "DeadlineExceeded", "Endpoint", "HttpClient", "HttpError", "HttpStatusError", "InFlight",
           "RequestCancelled", "Response", "Route", "basic_auth", "parse_endpoint"]

TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
# How often a connect in progress checks whether it was cancelled.
_CONNECT_POLL_S = 0.1
_CHUNK_BYTES = 64 * 1024


class HttpError(RetrainError):
    """An HTTP call that did not give an answer the caller can use."""


class DeadlineExceeded(HttpError):
    """The call did not finish by its deadline."""


class RequestCancelled(HttpError):
    """The run is stopping (a signal), and the call was cut short."""


class HttpStatusError(HttpError):
    """The server answered with a status that retrying will not change."""

    def __init__(self, message: str, status: int, detail: str) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class _Stale(Exception):
    """A pooled connection that failed before any byte of the reply: its server closed it
    while it was idle, so the request never reached it."""


# What a write to, or the first read from, a connection its server closed raises.
_STALE = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError, http.client.RemoteDisconnected,
          ssl.SSLEOFError, ssl.SSLZeroReturnError)


class _Transient(Exception):
    """A failure worth retrying; ``wait_s`` is the server's Retry-After, if any."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.wait_s = wait_s


@dataclass(frozen=True)
class Endpoint:
    """A base URL split into what is sent and what may be printed: ``url`` has no
    credentials, ``authorization`` is the basic-auth header they make (or empty), and
    ``shown`` is the URL with any credentials as ``***``."""

    url: str
    authorization: str
    shown: str

    @property
    def has_credentials(self) -> bool:
        return bool(self.authorization)


def parse_endpoint(url: str, where: str) -> Endpoint:
    """``url`` (an http or https base URL, ``where`` names its source for errors) as an
    ``Endpoint``; credentials in it become a basic-auth header and are never shown (an
    error about the URL never repeats it: what looks like a host may be a password)."""
    fix = "write it like https://host:port/v1 (a password with / ? # @ percent-encoded)"
    try:
        parts = urllib.parse.urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise HttpError(f"{where} is not a valid URL (its port, or a password with an unencoded character) — "
                        f"{fix}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise HttpError(f"{where} is not an http:// or https:// URL with a host — {fix}")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{port}" if port else host
    clean = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))
    authorization = ""
    if parts.username is not None or parts.password is not None:
        authorization = basic_auth(parts.username, parts.password)
    shown = urllib.parse.urlunsplit((parts.scheme, f"***@{netloc}" if authorization else netloc,
                                     parts.path.rstrip("/"), "", ""))
    return Endpoint(clean, authorization, shown)


@dataclass(frozen=True)
class Response:
    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self, what: str) -> object:
        try:
            return json.loads(self.body)
        except ValueError as error:
            raise HttpError(f"{what} replied with something that is not JSON: {self.body[:200]!r}") from error


@dataclass
class HttpClient:
    """Calls to one endpoint. ``deadline_s`` bounds each call in all (retries included);
    ``read_timeout_s`` is the most one silent read may take within it. Open connections
    are kept for reuse (``max_idle_connections``, 0 for none, each idle at most
    ``max_idle_s``) until ``close()``; the client is safe to share between threads."""

    endpoint: Endpoint
    deadline_s: float = 120.0
    read_timeout_s: float = 60.0
    connect_timeout_s: float = 10.0
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0
    max_attempts: int = 5
    max_body_bytes: int = 32 * 1024 * 1024
    headers: Mapping[str, str] = field(default_factory=dict)
    in_flight: InFlight = IN_FLIGHT
    clock: Callable[[], float] = time.monotonic
    # The backoff wait: returns True when the run is stopping (default: ``in_flight.wait``).
    wait: Callable[[float], bool] | None = None
    resolve: Callable[..., list[tuple[Any, ...]]] = socket.getaddrinfo
    max_idle_connections: int = 64
    max_idle_s: float = 30.0
    _idle: IdlePool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self._idle = IdlePool(self.max_idle_connections, self.max_idle_s)

    def close(self) -> None:
        """Close the idle connections and keep none from now on (calls still work, each
        on a connection of its own). Closing twice is harmless."""
        self._idle.close()

    def __enter__(self) -> HttpClient:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def post_json(self, path: str, payload: object, what: str, deadline: float | None = None) -> Response:
        """POST ``payload`` as JSON to ``<endpoint>/<path>`` and return a 2xx response,
        retrying transient failures; ``what`` names the call in errors. ``deadline`` (on
        ``clock``) lets several calls share one; by default the call has ``deadline_s``."""
        body = json.dumps(payload).encode("utf-8")
        return self.request("POST", path, body, what, {"Content-Type": "application/json"}, deadline)

    def get(self, path: str, what: str, deadline: float | None = None) -> Response:
        return self.request("GET", path, None, what, {}, deadline)

    def new_deadline(self) -> float:
        return self.clock() + self.deadline_s

    def request(self, method: str, path: str, body: bytes | None, what: str,
                headers: Mapping[str, str], deadline: float | None = None) -> Response:
        deadline = self.new_deadline() if deadline is None else deadline
        url, shown = self._url(path)
        last = ""
        for attempt in range(self.max_attempts):
            try:
                return self._attempt(method, url, body, {**self.headers, **headers}, deadline)
            except _Transient as failure:
                last = str(failure)
                wait_s = self._backoff(attempt, failure.wait_s)
                if attempt + 1 == self.max_attempts:
                    break
                if self.clock() + wait_s >= deadline:
                    raise DeadlineExceeded(f"{what} ({shown}) did not answer within its {self.deadline_s:g} s "
                                           f"deadline; last error: {last}") from failure
                if (self.wait or self.in_flight.wait)(wait_s):
                    raise RequestCancelled(f"{what} ({shown}) was cancelled: the run is stopping") from failure
            except DeadlineExceeded as exceeded:
                raise DeadlineExceeded(f"{what} ({shown}) did not answer within its {self.deadline_s:g} s deadline"
                                       f"{f'; last error: {last}' if last else ''}") from exceeded
            except RequestCancelled as cancelled:
                raise RequestCancelled(f"{what} ({shown}) was cancelled: the run is stopping") from cancelled
            except HttpStatusError as error:
                raise HttpStatusError(f"{what} ({shown}) answered HTTP {error.status}: {error.detail}",
                                      error.status, error.detail) from error
            except HttpError as error:
                raise HttpError(f"{what} ({shown}): {error}") from error
        raise HttpError(f"{what} ({shown}) failed {self.max_attempts} times; last error: {last}")

    def _url(self, path: str) -> tuple[str, str]:
        """The URL of ``path`` under the endpoint (its query kept last), and how it is shown."""
        base = urllib.parse.urlsplit(self.endpoint.url)
        shown_base = urllib.parse.urlsplit(self.endpoint.shown)
        tail = f"/{path.lstrip('/')}" if path else ""
        url = urllib.parse.urlunsplit((base.scheme, base.netloc, base.path + tail, base.query, ""))
        return url, urllib.parse.urlunsplit((shown_base.scheme, shown_base.netloc, shown_base.path + tail, "", ""))

    def _backoff(self, attempt: int, server_wait_s: float | None) -> float:
        wait_s = self.backoff_s * 2**attempt
        if server_wait_s is not None:
            wait_s = max(wait_s, server_wait_s)
        return min(wait_s, self.max_backoff_s)

    def _attempt(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str],
                 deadline: float) -> Response:
        """One attempt, on a pooled connection if there is one; if the server had closed
        that one while it was idle, again at once on a fresh connection."""
        try:
            return self._once(method, url, body, headers, deadline, reuse=True)
        except _Stale:
            return self._once(method, url, body, headers, deadline, reuse=False)

    def _once(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str],
              deadline: float, reuse: bool) -> Response:
        """One exchange. Whatever fails is judged in one place: a cancellation or the
        deadline first (a socket they shut down looks like any other failure), then a
        pooled connection closed before it answered (``_Stale``), then a certificate that
        does not verify (retrying cannot help), then the rest (retried). The connection
        goes back to the pool when the reply allows and nothing cut it."""
        if self.in_flight.cancelled:
            raise RequestCancelled("cancelled")
        parts = urllib.parse.urlsplit(url)
        route = Route.to(parts)
        sock = self._idle.take(route) if reuse else None
        reused, answered, keep = sock is not None, False, False
        watchdog: Watchdog | None = None
        try:
            if sock is None:
                sock = self._connect(route, deadline)
            else:
                self.in_flight.add(sock)
                sock.settimeout(max(0.001, min(self.read_timeout_s, deadline - self.clock())))
            watchdog = Watchdog(sock, deadline - self.clock())
            if not reused:
                sock = self._secure(sock, route, watchdog)
            reply = self._send(sock, route, method, parts, body, headers)
            answered = True
            payload = self._read_body(reply)
            keep = reply.isclosed() and not reply.will_close  # read to its end, and kept alive
            if self.in_flight.cancelled:
                raise RequestCancelled("cancelled")
            if self.clock() >= deadline:
                raise DeadlineExceeded("deadline")
            return self._answer(reply, payload)
        except (OSError, http.client.HTTPException, _Transient) as error:
            if self.in_flight.cancelled:
                raise RequestCancelled("cancelled") from error
            if self.clock() >= deadline:
                raise DeadlineExceeded("deadline") from error
            if reused and not answered and isinstance(error, _STALE):
                raise _Stale(f"{type(error).__name__}: {error}") from error
            if isinstance(error, ssl.SSLCertVerificationError):
                raise HttpError(f"the server's TLS certificate does not verify ({error.verify_message}) — "
                                "check the URL, or the certificate the server presents") from error
            if isinstance(error, _Transient):
                raise
            raise _Transient(f"{type(error).__name__}: {error}") from error
        finally:
            intact = watchdog.disarm() if watchdog is not None else False
            if sock is not None:
                self.in_flight.discard(sock)
                if not (keep and intact and self._idle.give(route, sock, self.in_flight)):
                    sock.close()

    def _connect(self, route: Route, deadline: float) -> socket.socket:
        """A connected TCP socket to the server (or its proxy), registered in
        ``in_flight``: each address of the host is tried in turn, and connecting polls so
        that a cancellation or the deadline ends it."""
        give_up = min(deadline, self.clock() + self.connect_timeout_s)
        try:
            addresses = self.resolve(route.connect_host, route.connect_port, type=socket.SOCK_STREAM)
        except OSError as error:
            raise _Transient(f"cannot resolve {route.connect_host}: {error}") from error
        failures = []
        for family, kind, proto, _, address in addresses:
            sock = socket.socket(family, kind, proto)
            self.in_flight.add(sock)
            try:
                code = self._connect_one(sock, address, give_up, deadline)
            except BaseException:
                self.in_flight.discard(sock)
                sock.close()
                raise
            if code == 0:
                # A request is written whole; an ACK delayed for it must not hold the next.
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                sock.settimeout(max(0.001, min(self.read_timeout_s, deadline - self.clock())))
                if route.tunnel:
                    self._open_tunnel(sock, route)
                return sock
            self.in_flight.discard(sock)
            sock.close()
            failures.append(f"{address[0]}: {errno.errorcode.get(code, code)}")
        raise _Transient(f"cannot connect to {route.connect_host}:{route.connect_port} ({'; '.join(failures)})")

    def _connect_one(self, sock: socket.socket, address: tuple[object, ...], give_up: float, deadline: float) -> int:
        """Connect ``sock`` without blocking past ``give_up``; 0 or the connect error."""
        sock.setblocking(False)
        code = sock.connect_ex(address)
        poller = select.poll()  # unlike select(), any descriptor number
        poller.register(sock, select.POLLOUT)
        while code in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
            if self.in_flight.cancelled:
                raise RequestCancelled("cancelled")
            if self.clock() >= give_up:
                if give_up >= deadline:
                    raise DeadlineExceeded("deadline")
                return errno.ETIMEDOUT
            if poller.poll(_CONNECT_POLL_S * 1000):
                code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        return code

    def _open_tunnel(self, sock: socket.socket, route: Route) -> None:
        """Ask an HTTP proxy for a tunnel to an https server (``CONNECT``)."""
        target = route.host_port  # a tunnel always names the port
        request = f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n"
        if route.proxy_authorization:
            request += f"Proxy-Authorization: {route.proxy_authorization}\r\n"
        sock.sendall((request + "\r\n").encode("latin-1"))
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk or len(reply) > 65536:
                raise _Transient(f"the proxy {route.connect_host} closed the tunnel request")
            reply += chunk
        status = reply.split(b"\r\n", 1)[0].decode("latin-1", "replace")
        if status.split(" ")[1:2] != ["200"]:
            raise HttpError(f"the proxy {route.connect_host}:{route.connect_port} refused a tunnel to {target} "
                            f"({status}) — check HTTPS_PROXY / NO_PROXY")

    def _secure(self, sock: socket.socket, route: Route, watchdog: Watchdog) -> socket.socket:
        """TLS for an https server; the raw socket stays registered (a cancellation can
        cut the handshake) until the wrapped one, which takes over its descriptor,
        replaces it there and under the watchdog."""
        if not route.https:
            return sock
        secured = ssl.create_default_context().wrap_socket(sock, server_hostname=route.host,
                                                           do_handshake_on_connect=False)
        self.in_flight.add(secured)
        self.in_flight.discard(sock)
        watchdog.sock = secured
        try:
            secured.do_handshake()
        except BaseException:
            self.in_flight.discard(secured)
            secured.close()
            raise
        return secured

    def _send(self, sock: socket.socket, route: Route, method: str, parts: urllib.parse.SplitResult,
              body: bytes | None, headers: Mapping[str, str]) -> http.client.HTTPResponse:
        """Send the request on ``sock`` and read the reply's status and headers."""
        connection = http.client.HTTPConnection(route.host, route.port)
        connection.sock = sock  # already connected, with our timeouts and our watchdog
        sent = {"Host": route.authority, **headers}
        if self.endpoint.authorization:
            sent["Authorization"] = self.endpoint.authorization
        if route.proxy_authorization and not route.tunnel:
            sent["Proxy-Authorization"] = route.proxy_authorization
        path = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        # Through a plain-http proxy the request names the whole URL (absolute form).
        target = f"http://{route.authority}{path}" if route.via_proxy and not route.tunnel else path
        connection.request(method, target, body=body, headers=sent)
        _quick_ack(sock)
        # The connection object is dropped afterwards; the socket is ours to close or pool.
        return connection.getresponse()

    def _answer(self, reply: http.client.HTTPResponse, payload: bytes) -> Response:
        """A 2xx reply as a ``Response``; any other status raised, as retryable or not."""
        headers_in = {key.lower(): value for key, value in reply.getheaders()}
        if reply.status in TRANSIENT_STATUS:
            raise _Transient(f"HTTP {reply.status}: {self._detail(payload)}",
                             _retry_after(headers_in.get("retry-after")))
        if not 200 <= reply.status < 300:
            raise HttpStatusError(f"HTTP {reply.status}", reply.status, self._detail(payload))
        return Response(reply.status, headers_in, payload)

    def _detail(self, payload: bytes) -> str:
        """The start of an error reply, as it may be printed: a server that echoes the
        request's credentials (some do, in a 401) does not get them printed."""
        text = redact_text(payload[:300].decode("utf-8", "replace"))
        for value in (*self.headers.values(), self.endpoint.authorization):
            for secret in {value, value.partition(" ")[2]}:
                if len(secret) >= 8:
                    text = text.replace(secret, "***")
        return text

    def _read_body(self, response: http.client.HTTPResponse) -> bytes:
        declared = response.getheader("Content-Length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise HttpError(f"the reply would be {int(declared)} bytes, more than the {self.max_body_bytes} bytes "
                            "accepted")
        chunks: list[bytes] = []
        size = 0
        while chunk := response.read(_CHUNK_BYTES):
            size += len(chunk)
            if size > self.max_body_bytes:
                raise HttpError(f"the reply is larger than the {self.max_body_bytes} bytes accepted")
            chunks.append(chunk)
        if declared is not None and declared.isdigit() and size != int(declared):
            # http.client returns a body cut short by a closed connection as if it were whole
            raise _Transient(f"the reply was cut off after {size} of its {declared} bytes")
        return b"".join(chunks)


def _quick_ack(sock: socket.socket) -> None:
    """Acknowledge the reply's first segment at once (Linux): a server that writes its
    headers and its body apart, without TCP_NODELAY, would otherwise wait for a delayed
    ACK before sending the body, 40 ms on every call of a kept-alive connection."""
    if hasattr(socket, "TCP_QUICKACK"):
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        except OSError:
            pass


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date instead of seconds: our own backoff applies
