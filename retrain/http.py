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
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

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
    ``Endpoint``; credentials in it become a basic-auth header and are never shown."""
    parts = urllib.parse.urlsplit(url.strip())
    if parts.scheme not in ("http", "https") or not parts.hostname:
        shown = redact_text(url)
        raise HttpError(f"{where} = {shown!r} is not an http:// or https:// URL with a host — "
                        "write it like https://host:port/v1")
    host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
    netloc = f"{host}:{parts.port}" if parts.port else host
    clean = urllib.parse.urlunsplit((parts.scheme, netloc, parts.path.rstrip("/"), parts.query, ""))
    authorization = ""
    if parts.username is not None or parts.password is not None:
        user = urllib.parse.unquote(parts.username or "")
        password = urllib.parse.unquote(parts.password or "")
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        authorization = f"Basic {token}"
    shown = urllib.parse.urlunsplit((parts.scheme, f"***@{netloc}" if authorization else netloc,
                                     parts.path.rstrip("/"), "", ""))
    return Endpoint(clean, authorization, shown)


class InFlight:
    """The open connections of this process, so that a stopping run can cut them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
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
            if self._timer is None and not self._cancelled.is_set():
                self._timer = threading.Timer(grace_s, self.cancel_now)
                self._timer.daemon = True
                self._timer.start()

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
        url = f"{self.endpoint.url}/{path.lstrip('/')}" if path else self.endpoint.url
        shown = f"{self.endpoint.shown}/{path.lstrip('/')}" if path else self.endpoint.shown
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

    def _backoff(self, attempt: int, server_wait_s: float | None) -> float:
        wait_s = self.backoff_s * 2**attempt
        if server_wait_s is not None:
            wait_s = max(wait_s, server_wait_s)
        return min(wait_s, self.max_backoff_s)

    def _once(self, method: str, url: str, body: bytes | None, headers: Mapping[str, str],
              deadline: float) -> Response:
        if self.in_flight.cancelled:
            raise RequestCancelled("cancelled")
        parts = urllib.parse.urlsplit(url)
        target = urllib.parse.urlunsplit(("", "", parts.path or "/", parts.query, ""))
        sock = self._connect(parts, deadline)
        watchdog = threading.Timer(max(0.0, deadline - self.clock()), _shut, (sock,))
        watchdog.daemon = True
        watchdog.start()
        try:
            response = self._exchange(sock, parts.hostname or "", method, target, body, headers)
            # A socket the watchdog or a cancellation shut can look like a reply that ended early.
            if self.in_flight.cancelled:
                raise RequestCancelled("cancelled")
            if self.clock() >= deadline:
                raise DeadlineExceeded("deadline")
            return response
        except (OSError, http.client.HTTPException) as error:
            if self.in_flight.cancelled:
                raise RequestCancelled("cancelled") from error
            if self.clock() >= deadline:
                raise DeadlineExceeded("deadline") from error
            raise _Transient(f"{type(error).__name__}: {error}") from error
        finally:
            watchdog.cancel()
            self.in_flight.discard(sock)
            sock.close()

    def _connect(self, parts: urllib.parse.SplitResult, deadline: float) -> socket.socket:
        """A connected socket (TLS for https), registered in ``in_flight``; connecting
        polls so that a cancellation or the deadline ends it."""
        host = parts.hostname or ""
        port = parts.port or (443 if parts.scheme == "https" else 80)
        give_up = min(deadline, self.clock() + self.connect_timeout_s)
        try:
            family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        except OSError as error:
            raise _Transient(f"cannot resolve {host}: {error}") from error
        sock = socket.socket(family, kind, proto)
        self.in_flight.add(sock)
        try:
            sock.setblocking(False)
            code = sock.connect_ex(address)
            while code in (errno.EINPROGRESS, errno.EALREADY, errno.EWOULDBLOCK):
                if self.in_flight.cancelled:
                    raise RequestCancelled("cancelled")
                if self.clock() >= give_up:
                    raise _Transient(f"connecting to {host}:{port} timed out") if give_up < deadline \
                        else DeadlineExceeded("deadline")
                _, writable, _ = select.select([], [sock], [], _CONNECT_POLL_S)
                if writable:
                    code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
            if code:
                raise _Transient(f"cannot connect to {host}:{port}: {errno.errorcode.get(code, code)}")
            sock.settimeout(max(0.001, min(self.read_timeout_s, deadline - self.clock())))
            if parts.scheme == "https":
                self.in_flight.discard(sock)
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=host)
                self.in_flight.add(sock)
            return sock
        except BaseException:
            self.in_flight.discard(sock)
            sock.close()
            raise

    def _exchange(self, sock: socket.socket, host: str, method: str, target: str, body: bytes | None,
                  headers: Mapping[str, str]) -> Response:
        connection = http.client.HTTPConnection(host)
        connection.sock = sock  # already connected, with our timeouts and our watchdog
        sent = dict(headers)
        if self.endpoint.authorization:
            sent["Authorization"] = self.endpoint.authorization
        connection.request(method, target, body=body, headers=sent)
        response = connection.getresponse()
        payload = self._read_body(response)
        headers_in = {key.lower(): value for key, value in response.getheaders()}
        if response.status in TRANSIENT_STATUS:
            raise _Transient(f"HTTP {response.status}: {_detail(payload)}", _retry_after(headers_in.get("retry-after")))
        if not 200 <= response.status < 300:
            raise HttpStatusError(f"HTTP {response.status}", response.status, _detail(payload))
        return Response(response.status, headers_in, payload)

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


def _detail(payload: bytes) -> str:
    return redact_text(payload[:300].decode("utf-8", "replace"))


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None  # an HTTP date instead of seconds: our own backoff applies
