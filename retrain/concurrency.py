"""Calls made several at once, each within a deadline, on threads that never hold the
process: what the rewards use to score a step's completions (a user function, a judge
server).

``map_with_deadlines(call, count, ...)`` runs ``call(0) .. call(count - 1)`` on at most
``max_workers`` threads and returns the results in order. A thread cannot be stopped
from outside, so a call past its deadline is abandoned, not ended: the workers are
daemon threads started here (a pool's threads are joined when the interpreter exits, so
one stuck call would keep the process alive), and the overdue call becomes the error
``overdue(index)`` gives. The deadline is kept by the calling thread, so it holds
whenever the calls let other Python code run (all waiting and pure-Python code).

The error raised is always that of the lowest failing index, as if the calls had been
made one after another: once a call fails no new call starts, and the calls before it
are waited for (each within its deadline). An interrupt of the waiting thread (a signal)
stops new calls from starting too.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class _Batch(Generic[T]):
    """One batch of calls, shared under one condition by the workers (which take the next
    index and record its outcome) and the thread that waits for them.

    ``started`` holds the calls in flight with their start times; a call leaves it when
    its outcome is recorded, by its worker or, past its deadline, by the waiting thread
    (so a late return cannot overwrite the deadline error).
    """

    def __init__(self, size: int) -> None:
        self.changed = threading.Condition()
        self.size = size
        self.next_index = 0
        self.started: dict[int, float] = {}
        self.values: dict[int, T] = {}
        self.errors: dict[int, BaseException] = {}
        self.stopped = False

    def take(self) -> int | None:
        """The next index to call, or None when there is none or the batch stopped."""
        with self.changed:
            if self.stopped or self.errors or self.next_index == self.size:
                return None
            index = self.next_index
            self.next_index += 1
            self.started[index] = time.monotonic()
            self.changed.notify_all()  # the waiting thread now keeps this call's deadline
            return index

    def record(self, index: int, outcome: T | BaseException) -> None:
        """The outcome of call ``index`` (caller holds ``changed``), unless it is already
        recorded as overdue."""
        if self.started.pop(index, None) is None:
            return
        if isinstance(outcome, BaseException):
            self.errors[index] = outcome
        else:
            self.values[index] = outcome
        self.changed.notify_all()

    def settled(self) -> bool:
        """All calls done, or a call failed and every call before it is done: nothing that
        is still running could change the outcome."""
        if not self.errors:
            return len(self.values) == self.size
        first = min(self.errors)
        return all(index > first for index in self.started)


def map_with_deadlines(call: Callable[[int], T], count: int, *, max_workers: int, timeout_s: float,
                       overdue: Callable[[int], BaseException], name: str) -> list[T]:
    """``[call(0), .., call(count - 1)]``, at most ``max_workers`` at once, each within
    ``timeout_s`` (else ``overdue(index)`` is raised); ``name`` names the threads."""
    batch: _Batch[T] = _Batch(count)
    for worker in range(min(max_workers, count)):
        threading.Thread(target=_work, args=(batch, call), daemon=True, name=f"{name}-{worker}").start()
    try:
        _wait(batch, timeout_s, overdue)
    finally:
        with batch.changed:
            batch.stopped = True  # also on an interrupt: no call starts after this
    if batch.errors:
        raise batch.errors[min(batch.errors)]
    return [batch.values[index] for index in range(count)]


def _work(batch: _Batch[T], call: Callable[[int], T]) -> None:
    """A worker thread: make calls until none is left or the batch stops."""
    while (index := batch.take()) is not None:
        outcome: T | BaseException
        try:
            outcome = call(index)
        except BaseException as exc:  # noqa: BLE001 — not swallowed: the waiting thread raises it
            outcome = exc
        with batch.changed:
            batch.record(index, outcome)


def _wait(batch: _Batch[T], timeout_s: float, overdue: Callable[[int], BaseException]) -> None:
    """Wait until the batch is settled, turning each call past its deadline into its error."""
    with batch.changed:
        while not batch.settled():
            now = time.monotonic()
            for index, started in list(batch.started.items()):
                if now - started >= timeout_s:
                    batch.record(index, overdue(index))
            if batch.settled():
                return
            first_deadline = min(batch.started.values(), default=now) + timeout_s
            batch.changed.wait(timeout=max(first_deadline - now, 0.0) if batch.started else None)
