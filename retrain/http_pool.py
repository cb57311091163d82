"""The sockets of retrain's HTTP client (retrain/http.py): those a call is using, which a
stopping run cuts (``InFlight``), the watchdog that cuts one at its call's deadline
(``Watchdog``), and those kept open between calls for the next one (``IdlePool``).

A socket is in exactly one place at a time: registered in an ``InFlight`` while a call
uses it, or idle in a pool. A pool registers itself with the ``InFlight`` its client
uses, so that cancelling closes its idle sockets too: a stopping run keeps none.
"""

from __future__ import annotations

import heapq
import itertools
import os
import select
import socket
import ssl
import threading
import time
import weakref
from collections.abc import Callable, Hashable


def shut(sock: socket.socket) -> None:
    """Wake whatever blocks on ``sock``: its reads and writes fail at once."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # already closed or never connected: nothing blocks on it


class InFlight:
    """The open connections of this process, so that a stopping run can cut them."""

    def __init__(self) -> None:
        # Re-entrant: a second signal may arrive while the first one's handler holds it.
        self._lock = threading.RLock()
        self._sockets: set[socket.socket] = set()
        self._pools: weakref.WeakSet[IdlePool] = weakref.WeakSet()
        self._cancelled = threading.Event()
        self._timer: threading.Timer | None = None

    @property
    def cancelled(self) -> bool:
        return self._cancelled.is_set()

    def add(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)
        if self._cancelled.is_set():
            shut(sock)

    def discard(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.discard(sock)

    def watch(self, pool: IdlePool) -> None:
        """Close ``pool``'s idle sockets when this cancels (held weakly: a client that
        is gone takes its pool with it)."""
        with self._lock:
            self._pools.add(pool)

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
        """Cut every call now, close every idle pooled socket, and refuse new calls until
        ``reset`` (the second signal)."""
        self._cancelled.set()
        with self._lock:
            sockets, pools = list(self._sockets), list(self._pools)
        for sock in sockets:
            shut(sock)
        for pool in pools:
            pool.close_idle()

    def reset(self) -> None:
        """Accept calls again (a new run in this process)."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self._cancelled.clear()


IN_FLIGHT = InFlight()


class Watchdog:
    """Shuts ``sock`` down once ``seconds`` pass, unless disarmed first. ``sock`` may be
    replaced while armed (by its TLS wrapper, which takes over the descriptor)."""

    def __init__(self, sock: socket.socket, seconds: float) -> None:
        self.sock = sock
        self._lock = threading.Lock()
        self._fired = self.disarmed = False
        _DEADLINES.arm(self, time.monotonic() + max(0.0, seconds))

    def fire(self) -> None:
        with self._lock:
            if self.disarmed:
                return
            self._fired = True
        shut(self.sock)

    def disarm(self) -> bool:
        """Stop the watchdog; True if it never fired (the socket is as the call left it)."""
        with self._lock:
            self.disarmed = True
            fired = self._fired
        _DEADLINES.disarmed()
        return not fired


class _Deadlines:
    """The armed watchdogs of the process, fired by one thread as their time comes (a
    thread per call would cost more than a call on a kept-alive connection). Disarmed
    ones are dropped when they reach the front, or all at once when they are most."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """No watchdogs, and no thread yet (also a child process's start: the parent's
        thread and lock state do not carry over a fork)."""
        self._ready = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Watchdog]] = []
        self._armed = 0
        self._count = itertools.count()
        self._thread: threading.Thread | None = None

    def arm(self, watchdog: Watchdog, at: float) -> None:
        with self._ready:
            heapq.heappush(self._heap, (at, next(self._count), watchdog))
            self._armed += 1
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="http-deadlines", daemon=True)
                self._thread.start()
            if self._heap[0][2] is watchdog:
                self._ready.notify()

    def disarmed(self) -> None:
        with self._ready:
            self._armed -= 1
            if len(self._heap) > 256 and self._armed < len(self._heap) // 4:
                self._heap = [entry for entry in self._heap if not entry[2].disarmed]
                heapq.heapify(self._heap)

    def _run(self) -> None:
        while True:
            with self._ready:
                while self._heap and self._heap[0][2].disarmed:
                    heapq.heappop(self._heap)
                if not self._heap:
                    self._ready.wait()
                    continue
                at, _, watchdog = self._heap[0]
                if time.monotonic() < at:
                    self._ready.wait(at - time.monotonic())
                    continue
                heapq.heappop(self._heap)
            watchdog.fire()


_DEADLINES = _Deadlines()
os.register_at_fork(after_in_child=_DEADLINES.reset)


class IdlePool:
    """Open connections between calls, by route, most recently used first: at most
    ``limit`` in all, none kept past ``max_idle_s`` idle."""

    def __init__(self, limit: int, max_idle_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = limit
        self.max_idle_s = max_idle_s
        self.clock = clock
        self._lock = threading.Lock()
        self._idle: dict[Hashable, list[tuple[socket.socket, float]]] = {}
        self._count = 0
        self.closed = False

    def take(self, route: Hashable) -> socket.socket | None:
        """An idle connection to ``route`` that still looks open, or None; the stale
        ones met on the way are closed."""
        while True:
            with self._lock:
                idle = self._idle.get(route)
                if not idle:
                    return None
                sock, since = idle.pop()
                self._count -= 1
            if self.clock() - since <= self.max_idle_s and still_open(sock):
                return sock
            sock.close()

    def give(self, route: Hashable, sock: socket.socket, in_flight: InFlight) -> bool:
        """Keep ``sock`` for the next call to ``route``; False (the caller closes it) when
        the pool is full or closed, or ``in_flight`` is cancelled."""
        if self.limit <= 0:
            return False
        in_flight.watch(self)
        with self._lock:
            # Checked under the lock that close_idle takes after cancelling: no socket
            # slips in after a cancellation emptied the pool.
            if self.closed or in_flight.cancelled or self._count >= self.limit:
                return False
            self._idle.setdefault(route, []).append((sock, self.clock()))
            self._count += 1
        return True

    def close_idle(self) -> None:
        with self._lock:
            idle = [sock for socks in self._idle.values() for sock, _ in socks]
            self._idle.clear()
            self._count = 0
        for sock in idle:
            sock.close()

    def close(self) -> None:
        """Close every idle connection and keep none from now on."""
        with self._lock:
            self.closed = True
        self.close_idle()


def still_open(sock: socket.socket) -> bool:
    """An idle connection is only readable when its server closed it (or sent
    something unasked for): either way it is not reusable."""
    if sock.fileno() < 0 or (isinstance(sock, ssl.SSLSocket) and sock.pending()):
        return False
    poller = select.poll()  # unlike select(), any descriptor number
    poller.register(sock, select.POLLIN | select.POLLPRI)
    return not poller.poll(0)
