"""Crash-safe file writes, and a full disk as a clear error.

Atomic writes: readers see the old file or the complete new one, never a part. The text
goes to a temporary file in the same folder, is flushed to disk, and is then renamed over
the target (``write_atomic``) or hard-linked to a name that must not exist yet
(``create_new``). The file gets the usual permissions for the user's umask.

A full disk: every write of a run (these files, the JSONL logs, checkpoints) that fails
because its filesystem is full or the user's quota is spent (``ENOSPC``, ``EDQUOT``) is
turned into a ``DiskFullError`` here (``raise_if_disk_full``): it names the path, the free
space on that filesystem, roughly what the write needs, and how to go on. The writer
first undoes what it half wrote, so a full disk never leaves a torn file behind.

The bytes of these files and of the JSONL logs reach the kernel through ``write_all``,
which calls one replaceable function (``os.write`` unless ``writes_through`` swapped it
in): the seam the reliability tests use to fill a disk on demand.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from retrain.errors import RetrainError

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
# Libraries that write on their own (torch, safetensors) may report a full disk only in
# their message, or not at all: a write that failed while its filesystem has less than
# this left is taken for one that ran out of space.
NEARLY_FULL_BYTES = 1 << 20
_ERRNO_IN_TEXT = re.compile(r"os error (\d+)\b|\[Errno (\d+)\]")

WriteFunction = Callable[[int, memoryview], int]
_write: WriteFunction = os.write


def write_all(fd: int, data: bytes) -> None:
    """Write every byte of ``data`` to ``fd``, finishing short writes (a signal between
    pages, a filesystem that filled up part way: the next write then raises)."""
    view = memoryview(data)
    while view:
        written = _write(fd, view)
        if written <= 0:
            raise OSError(errno.EIO, f"a write to descriptor {fd} made no progress")
        view = view[written:]


@contextlib.contextmanager
def writes_through(write: WriteFunction) -> Iterator[None]:
    """Send every ``write_all`` through ``write`` (called like ``os.write``) while the
    block runs: a test replaces the filesystem with one that fills up after N bytes."""
    global _write
    previous, _write = _write, write
    try:
        yield
    finally:
        _write = previous


def format_bytes(count: int) -> str:
    """``count`` bytes for people: ``512 B``, ``3.1 MB``, ``1.2 GB`` (powers of 1000)."""
    size = float(count)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if size < 1000 or unit == "TB":
            return f"{count} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def free_bytes(path: Path) -> int | None:
    """Free space for this user on the filesystem of ``path`` (or of its nearest existing
    parent); None when it cannot be told."""
    for folder in (path, *path.absolute().parents):
        if folder.exists():
            try:
                return shutil.disk_usage(folder).free
            except OSError:
                return None
    return None


def tree_bytes(path: Path) -> int:
    """The total size of the files under ``path`` (a file: its size; missing: 0)."""
    if path.is_file():
        return path.stat().st_size
    return sum(item.stat().st_size for item in path.rglob("*") if item.is_file()) if path.is_dir() else 0


class DiskFullError(RetrainError):
    """A write failed because its filesystem is full or the user's quota is spent."""

    def __init__(self, path: Path, number: int, *, what: str, needed: str = "", then: str = "") -> None:
        self.path = path
        self.errno = number
        self.what = what
        self.needed = needed
        self.then = then
        free = free_bytes(path)
        reason = "the disk quota is exceeded" if number == errno.EDQUOT else "the disk is full"
        space = f"{format_bytes(free)} free on that filesystem" if free is not None else "free space unknown"
        needs = f", {needed}" if needed else ""
        fix = ("free up space there (or raise your quota), or move the run's folders to a larger disk"
               + (f"; then {then}" if then else ""))
        super().__init__(f"{what}: {reason} ({os.strerror(number)}) at {path} — {space}{needs} — {fix}")


def disk_full_errno(exc: BaseException, path: Path) -> int | None:
    """``ENOSPC`` or ``EDQUOT`` when ``exc`` (or an exception it came from) says the disk
    or the quota is full, or when an opaque write error left the filesystem of ``path``
    nearly full; None for any other failure."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (OSError, DiskFullError)) and current.errno in DISK_FULL_ERRNOS:
            return current.errno
        text = str(current)
        for number in DISK_FULL_ERRNOS:
            if os.strerror(number) in text:
                return number
        for match in _ERRNO_IN_TEXT.finditer(text):
            number = int(match.group(1) or match.group(2))
            if number in DISK_FULL_ERRNOS:
                return number
        current = current.__cause__ or current.__context__
    if isinstance(exc, RuntimeError) or (isinstance(exc, OSError) and exc.errno is None):
        free = free_bytes(path)
        if free is not None and free < NEARLY_FULL_BYTES:
            return errno.ENOSPC
    return None


def raise_if_disk_full(exc: BaseException, path: Path, *, what: str, needed: str = "", then: str = "") -> None:
    """Raise a ``DiskFullError`` (from ``exc``) when ``exc`` is a full disk or quota while
    writing ``path``; return otherwise, for the caller to re-raise ``exc``."""
    number = disk_full_errno(exc, path)
    if number is not None:
        raise disk_full_error(exc, path, number, what=what, needed=needed, then=then) from exc


def disk_full_error(exc: BaseException, path: Path, number: int, *, what: str, needed: str = "",
                    then: str = "") -> DiskFullError:
    """The ``DiskFullError`` for ``exc``, a write of ``path`` that failed with ``number``
    (see ``disk_full_errno``); one from a lower layer keeps its path, told in this context."""
    if isinstance(exc, DiskFullError):
        return DiskFullError(exc.path, exc.errno, what=what, needed=needed or exc.needed, then=then or exc.then)
    return DiskFullError(path, number, what=what, needed=needed, then=then)


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_temp(path: Path, data: bytes, mode: int | None) -> str:
    needed = f"it needs {format_bytes(len(data))}"
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise_if_disk_full(exc, path.parent, what=f"cannot write {path.name}", needed=needed)
        raise
    try:
        try:
            write_all(handle, data)
            os.fsync(handle)
        finally:
            os.close(handle)
        os.chmod(temp_name, mode if mode is not None else 0o666 & ~_current_umask())
    except BaseException as exc:
        Path(temp_name).unlink(missing_ok=True)
        raise_if_disk_full(exc, path, what=f"cannot write {path.name}", needed=needed)
        raise
    return temp_name


def write_atomic(path: Path, data: str | bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (keeping ``mode`` if given); a full disk
    is a ``DiskFullError`` and leaves the old file as it was."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temp_name = _write_temp(path, payload, mode)
    try:
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


def create_new(path: Path, data: str | bytes) -> None:
    """Create ``path`` with ``data``; raise ``FileExistsError`` (touching nothing) if it exists."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    temp_name = _write_temp(path, payload, None)
    try:
        os.link(temp_name, path)
    finally:
        Path(temp_name).unlink(missing_ok=True)
