"""Crash-safe file writes: readers see the old file or the complete new one, never a part.

The text goes to a temporary file in the same folder, is flushed to disk, and is then
renamed over the target (``write_atomic``) or hard-linked to a name that must not exist
yet (``create_new``). The file gets the usual permissions for the user's umask.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _write_temp(path: Path, data: bytes, mode: int | None) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temp_name, mode if mode is not None else 0o666 & ~_current_umask())
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise
    return temp_name


def write_atomic(path: Path, data: str | bytes, mode: int | None = None) -> None:
    """Replace ``path`` with ``data`` atomically (keeping ``mode`` if given)."""
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
