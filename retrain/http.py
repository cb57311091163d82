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
- **Bounded bodies.** A reply larger than ``max_body_bytes`` is refused, not buffered.
- **Credentials in URLs.** ``https://user:password@host/v1`` is sent as HTTP basic auth
  (RFC 7617) to ``https://host/v1``; a URL is only ever printed with its credentials
  replaced by ``***`` (``Endpoint.shown``).
"""

from __future__ import annotations

import base64
import errno
import http.client
import json
import select
import socket
import ssl
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from retrain.config.snapshot import redact_text
from retrain.errors import RetrainError

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


def basic_auth(user: str | None, password: str | None) -> str:
    """The ``Authorization`` value of HTTP basic auth (RFC 7617) for URL-encoded parts."""
    pair = f"{urllib.parse.unquote(user or '')}:{urllib.parse.unquote(password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


class InFlight:
    """The open connections of this process, so that a stopping run can cut them."""

    def __init__(self) -> None:
        # Re-entrant: a second signal may arrive while the first one's handler holds it.
        self._lock = threading.RLock()
        self._sockets: set[socket.socket] = set()
        self._cancelled = threading.Event()
        self._timer: threading.Timer | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
        if self._cancelled.is_set():
            _shut(sock)

    def discard(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def wait(self, seconds: float) -> bool:
        """Sleep ``seconds`` or until cancelled; True if cancelled."""
        return self._cancelled.wait(max(0.0, seconds))

    def cancel_after(self, grace_s: float) -> None:
        """Cancel every call still running in ``grace_s`` seconds (the first signal)."""
        with self._lock:
            if self._timer is not None or self._cancelled.is_set():
                return
            timer = self._timer = threading.Timer(grace_s, self.cancel_now)
        timer.daemon = True
        timer.start()

    def cancel_now(self) -> None:
        """Cut every call now, and refuse new ones until ``reset`` (the second signal)."""
        self._cancelled.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            _shut(sock)

    def reset(self) -> None:
        """Accept calls again (a new run in this process)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._cancelled.clear()


IN_FLIGHT = InFlight()


def _shut(sock: socket.socket) -> None:
    """Wake whatever blocks on ``sock``: its reads and writes fail at once."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected: nothing blocks on it


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
    ``read_timeout_s`` is the most one silent read may take within it."""

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
                return self._once(method, url, body, {**self.headers, **headers}, deadline)
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

    def _once(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str],
              deadline: float) -> Response:
        """One attempt. Whatever fails is judged in one place: a cancellation or the
        deadline first (a socket they shut down looks like any other failure), then a
        certificate that does not verify (retrying cannot help), then the rest (retried)."""
        if self.in_flight.cancelled:
            raise RequestCancelled("cancelled")
        parts = urllib.parse.urlsplit(url)
        route = Route.to(parts)
        sock: socket.socket | None = None
        watchdog: threading.Timer | None = None
        try:
            sock = self._connect(route, deadline)
            watchdog = threading.Timer(max(0.0, deadline - self.clock()), _shut, (sock,))
            watchdog.daemon = True
            watchdog.start()
            sock = self._secure(sock, route)
            response = self._exchange(sock, route, method, parts, body, headers)
            if self.in_flight.cancelled:
                raise RequestCancelled("cancelled")
            if self.clock() >= deadline:
                raise DeadlineExceeded("deadline")
            return response
        except (OSError, http.client.HTTPException, _Transient) as error:
            if self.in_flight.cancelled:
                raise RequestCancelled("cancelled") from error
            if self.clock() >= deadline:
                raise DeadlineExceeded("deadline") from error
            if isinstance(error, ssl.SSLCertVerificationError):
                raise HttpError(f"the server's TLS certificate does not verify ({error.verify_message}) — "
                                "check the URL, or the certificate the server presents") from error
            if isinstance(error, _Transient):
                raise
            raise _Transient(f"{type(error).__name__}: {error}") from error
        finally:
            if watchdog is not None:
                watchdog.cancel()
            if sock is not None:
                self.in_flight.discard(sock)
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

    def _secure(self, sock: socket.socket, route: Route) -> socket.socket:
        """TLS for an https server; the raw socket stays registered (a cancellation can
        cut the handshake) until the wrapped one replaces it."""
        if not route.https:
            return sock
        secured = ssl.create_default_context().wrap_socket(sock, server_hostname=route.host,
                                                           do_handshake_on_connect=False)
        self.in_flight.add(secured)
        self.in_flight.discard(sock)
        secured.do_handshake()
        return secured

    def _exchange(self, sock: socket.socket, route: Route, method: str, parts: urllib.parse.SplitResult,
                  body: bytes | None, headers: Mapping[str, str]) -> Response:
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
        response = connection.getresponse()
        payload = self._read_body(response)
        headers_in = {key.lower(): value for key, value in response.getheaders()}
        if response.status in TRANSIENT_STATUS:
            raise _Transient(f"HTTP {response.status}: {self._detail(payload)}",
                             _retry_after(headers_in.get("retry-after")))
        if not 200 <= response.status < 300:
            raise HttpStatusError(f"HTTP {response.status}", response.status, self._detail(payload))
        return Response(response.status, headers_in, payload)

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


@dataclass(frozen=True)
class Route:
    """How to reach a server: directly, or through the HTTP proxy the environment names
    (``HTTPS_PROXY``/``HTTP_PROXY``, unless ``NO_PROXY`` covers the host), tunnelled
    (``CONNECT``) for https."""

    host: str
    port: int
    https: bool
    connect_host: str
    connect_port: int
    via_proxy: bool = False
    proxy_authorization: str = ""

    @property
    def tunnel(self) -> bool:
        return self.via_proxy and self.https

    @property
    def host_port(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def authority(self) -> str:
        """The Host header: the port only when it is not the scheme's default."""
        return self.host_port if self.port != (443 if self.https else 80) else self.host_port.rpartition(":")[0]

    @classmethod
    def to(cls, parts: urllib.parse.SplitResult) -> Route:
        https = parts.scheme == "https"
        host, port = parts.hostname or "", parts.port or (443 if https else 80)
        proxy = urllib.request.getproxies().get(parts.scheme, "")
        if not proxy or urllib.request.proxy_bypass(host):
            return cls(host, port, https, host, port)
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        authorization = ""
        if proxy_parts.username is not None:
            authorization = basic_auth(proxy_parts.username, proxy_parts.password)
        return cls(host, port, https, proxy_parts.hostname or "", proxy_parts.port or 80, True, authorization)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date instead of seconds: our own backoff applies
