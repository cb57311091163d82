"""A loopback HTTP server that misbehaves on purpose, for every HTTP client in retrain.

Modes (``HostileServer.mode``, changeable while it runs):

- ``ok``: a well-formed chat completion whose verdict is ``CORRECT``;
- ``hang``: reads the request and never answers;
- ``drip``: sends a valid reply one byte every ``drip_s`` seconds, forever slower than
  any total deadline (the body is padded so the drip lasts);
- ``reset``: closes the connection with a TCP reset (SO_LINGER 0) after the request;
- ``429``: answers 429 with ``Retry-After: <retry_after>``;
- ``503``: answers 503;
- ``truncated``: announces a Content-Length and closes after half the body;
- ``huge``: announces and streams a body of ``huge_bytes`` bytes;
- ``huge_unannounced``: streams as much without a Content-Length, until it is cut off;
- ``truncated_hang``: sends half the announced body, then neither more nor a close;
- ``refuse``: answers 403 (as a proxy refusing a tunnel does).

``fail_first`` makes the first N requests use ``mode`` and the rest ``ok``. Every
connection is counted (``connections``), and ``open_connections`` says how many are
still open, so a test can check that a client closed everything it opened.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
from dataclasses import dataclass, field

OK_BODY = json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": "CORRECT"}}]}).encode()


@dataclass
class HostileServer:
    mode: str = "ok"
    fail_first: int | None = None
    retry_after: str = "1"
    drip_s: float = 0.5
    huge_bytes: int = 64 * 1024 * 1024
    requests: int = 0
    connections: int = 0
    open_connections: int = 0
    authorization: list[str] = field(default_factory=list)
    hosts: list[str] = field(default_factory=list)
    request_lines: list[str] = field(default_factory=list)
    host: str = "127.0.0.1"
    stopping: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)
    listener: socket.socket | None = None
    # Set as soon as a request has arrived (a test waits on it rather than sleeping).
    got_request: threading.Event = field(default_factory=threading.Event)

    @property
    def port(self) -> int:
        assert self.listener is not None
        return int(self.listener.getsockname()[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def start(self) -> HostileServer:
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        self.listener = socket.create_server((self.host, 0), family=family)
        self.listener.settimeout(0.1)
        threading.Thread(target=self._accept, daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopping.set()
        if self.listener is not None:
            self.listener.close()

    def _accept(self) -> None:
        assert self.listener is not None
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                self.open_connections += 1
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            with connection:
                headers = self._read_request(connection)
                if headers is None:
                    return
                with self.lock:
                    self.requests += 1
                    mode = self.mode if self.fail_first is None or self.requests <= self.fail_first else "ok"
                    self.authorization.append(headers.get("authorization", ""))
                    self.hosts.append(headers.get("host", ""))
                    self.request_lines.append(headers.get(":request", ""))
                self.got_request.set()
                getattr(self, f"_mode_{mode}")(connection)
        except OSError:
            pass  # the client went away: that is what some modes provoke
        finally:
            with self.lock:
                self.open_connections -= 1

    def _read_request(self, connection: socket.socket) -> dict[str, str] | None:
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = connection.recv(65536)
            if not chunk:
                return None
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        first, *lines = head.decode("latin-1").split("\r\n")
        headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines)}
        headers[":request"] = first
        length = int(headers.get("content-length", "0"))
        while len(body) < length:
            chunk = connection.recv(65536)
            if not chunk:
                return None
            body += chunk
        return headers

    @staticmethod
    def _head(status: str, length: int, extra: str = "") -> bytes:
        return (f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {length}\r\n"
                f"Connection: close\r\n{extra}\r\n").encode()

    def _mode_ok(self, connection: socket.socket) -> None:
        connection.sendall(self._head("200 OK", len(OK_BODY)) + OK_BODY)

    def _mode_hang(self, connection: socket.socket) -> None:
        self.stopping.wait()

    def _mode_drip(self, connection: socket.socket) -> None:
        body = OK_BODY + b" " * 100_000
        for byte in self._head("200 OK", len(body)) + body:
            connection.sendall(bytes([byte]))
            if self.stopping.wait(self.drip_s):
                return

    def _mode_reset(self, connection: socket.socket) -> None:
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))

    def _mode_429(self, connection: socket.socket) -> None:
        body = b'{"error": "slow down"}'
        connection.sendall(self._head("429 Too Many Requests", len(body), f"Retry-After: {self.retry_after}\r\n") + body)

    def _mode_503(self, connection: socket.socket) -> None:
        body = b'{"error": "unavailable"}'
        connection.sendall(self._head("503 Service Unavailable", len(body)) + body)

    def _mode_truncated(self, connection: socket.socket) -> None:
        connection.sendall(self._head("200 OK", len(OK_BODY)) + OK_BODY[: len(OK_BODY) // 2])

    def _mode_huge(self, connection: socket.socket) -> None:
        connection.sendall(self._head("200 OK", self.huge_bytes))
        block = b" " * 65536
        for _ in range(self.huge_bytes // len(block)):
            connection.sendall(block)

    def _mode_huge_unannounced(self, connection: socket.socket) -> None:
        connection.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n")
        block = b" " * 65536
        for _ in range(self.huge_bytes // len(block)):
            connection.sendall(block)

    def _mode_truncated_hang(self, connection: socket.socket) -> None:
        connection.sendall(self._head("200 OK", len(OK_BODY)) + OK_BODY[: len(OK_BODY) // 2])
        self.stopping.wait()

    def _mode_refuse(self, connection: socket.socket) -> None:
        connection.sendall(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
