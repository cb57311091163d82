"""Crash-safe JSONL logs of a run: ``metrics.jsonl`` and ``generations.jsonl``.

Every sink has the same three calls, so the run loop logs through one ``Sinks`` object
without branching on what is enabled:

- ``log_step(row)``: one metrics row per step (a flat dict with an integer ``"step"``);
- ``log_generations(step, examples, batch, rewards_N)``: the completions of a step;
- ``truncate_after(step)``: forget the records of later steps (resume);
- ``sync()``: make what was recorded durable (before a checkpoint);
- ``close()``.

JSONL files are crash-safe. Each call appends its whole text with a single ``os.write``
on an ``O_APPEND`` descriptor, and the newline is the last byte of every row (JSON
escapes newlines inside strings), so a row is complete exactly when its newline made it
to the file. A kill almost always leaves whole rows only, but not always: Linux checks
for a fatal signal between the pages of one write, so SIGKILL can cut a row that
crosses a 4 KiB page boundary (measured here: 4 torn tails in 60 kills of a writer
appending 0-3 KB rows), and so can a machine crash. Such a torn final row has no
newline: ``rows()`` skips it and opening the log for writing cuts it off before the
next append, so neither a reader nor a resumed run ever sees a partial row. Bytes
handed to ``os.write`` are the kernel's and survive the process; ``sync()`` fsyncs them
to the disk, and the run loop calls it before each checkpoint, so a power loss can only
drop rows of steps after the last checkpoint, which a resumed run redoes anyway. (An
fsync per append costs ~4 ms here, a sizeable share of a small model's step;
``fsync_each_append=True`` pays it for every row.) ``truncate_after(step)`` rewrites a
log atomically without the rows after ``step``, which resume uses so that no step is
ever logged twice. Non-finite floats are written as ``null`` (JSON has no NaN).

A full disk (or quota) during an append is a ``DiskFullError`` (retrain/atomic.py), and
the file is first cut back to its size before the append, so the rows already there stay
and no partial row is left behind.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from retrain.atomic import format_bytes, raise_if_disk_full, write_all, write_atomic
from retrain.errors import RetrainError
from retrain.types import Example, SampleBatch, Sink

logger = logging.getLogger(__name__)

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]


RESUME_HINT = ("continue from the last checkpoint with `retrain --resume {log_dir}` (before a first checkpoint: "
               "run the same command again)")


class LogFileError(RetrainError):
    """A JSONL log cannot be read back (a corrupt line that is not the torn last one)."""


def to_json_value(value: object) -> JsonValue:
    """``value`` as plain JSON data: numpy scalars and arrays become Python numbers and
    lists, non-finite floats become None."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (int, np.integer)) and not isinstance(value, np.bool_):
        return int(value)
    if isinstance(value, np.bool_):
        return bool(value)
    if isinstance(value, (float, np.floating)):
        number = float(value)
        return number if math.isfinite(number) else None
    if isinstance(value, np.ndarray):
        return to_json_value(value.tolist())
    if isinstance(value, Mapping):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_json_value(item) for item in value]
    raise TypeError(f"cannot write a {type(value).__name__} to a JSON log: {value!r:.80}")


def json_line(row: Mapping[str, object]) -> str:
    """One row as a single line of JSON, newline included."""
    return json.dumps(to_json_value(row), ensure_ascii=False, allow_nan=False, separators=(",", ":")) + "\n"


def read_rows(path: Path, *, warn_torn: bool = True) -> list[dict[str, JsonValue]]:
    """The complete rows of a JSONL log (without opening it for writing); a torn final
    line is skipped (with a warning unless ``warn_torn`` is False), any other unreadable
    line is a ``LogFileError``."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    if lines[-1] and warn_torn:
        logger.warning("%s: skipping a torn last line (%d bytes)", path, len(lines[-1]))
    rows = []
    for number, line in enumerate(lines[:-1], start=1):
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise LogFileError(f"{path}:{number}: not a JSON line ({exc.msg}) — the file was edited or written by "
                               "something else; restore it or start a new log_dir") from exc
        if not isinstance(row, dict):
            raise LogFileError(f"{path}:{number}: expected a JSON object — restore the file or start a new log_dir")
        rows.append(row)
    return rows


class JsonlLog(Sink):
    """An append-only JSON Lines file of rows that carry an integer ``"step"``."""

    def __init__(self, path: Path, *, fsync_each_append: bool = False) -> None:
        self.path = Path(path)
        self.fsync_each_append = fsync_each_append
        self._fd: int | None = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._cut_torn_tail()

    def _cut_torn_tail(self) -> None:
        # An append after a torn row would glue the new row onto the fragment.
        if not self.path.exists():
            return
        data = self.path.read_bytes()
        if not data or data.endswith(b"\n"):
            return
        keep = data.rfind(b"\n") + 1
        logger.warning("%s: dropping a torn last line (%d bytes) left by an interrupted write", self.path,
                       len(data) - keep)
        os.truncate(self.path, keep)

    def _descriptor(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        return self._fd

    def append_rows(self, rows: Sequence[Mapping[str, object]]) -> None:
        """Append ``rows`` (each with an integer ``"step"``) in one write."""
        for row in rows:
            step = row.get("step")
            if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
                raise ValueError(f"{self.path.name} rows need an integer 'step', got {step!r}")
        data = "".join(json_line(row) for row in rows).encode("utf-8")
        if not data:
            return
        fd = self._descriptor()
        status = os.fstat(fd)
        if status.st_nlink == 0:
            # Deleted (with its folder, say) while the run writes: rows would vanish unseen.
            raise LogFileError(f"{self.path} was deleted while the run was writing it — the run stops: its logs "
                               f"(and any checkpoint in {self.path.parent}) are gone; start it again")
        size = status.st_size
        try:
            # A short write (a signal between pages) is finished rather than left torn.
            write_all(fd, data)
            if self.fsync_each_append:
                os.fsync(fd)
        except BaseException as exc:
            # Whatever part made it to the file is cut off again: no torn row.
            os.ftruncate(fd, size)
            raise_if_disk_full(exc, self.path, what=f"cannot append to {self.path.name}",
                               needed=f"the rows need {format_bytes(len(data))} (no partial row was left)",
                               then=RESUME_HINT.format(log_dir=self.path.parent))
            raise

    def rows(self) -> list[dict[str, JsonValue]]:
        """Every complete row; a torn final line is skipped with a warning."""
        return read_rows(self.path)

    def truncate_after(self, step: int) -> None:
        """Atomically rewrite the file keeping only rows with ``row["step"] <= step``."""
        kept = [row for row in self.rows() if step_of(row, self.path) <= step]
        self._close_descriptor()
        write_atomic(self.path, "".join(json_line(row) for row in kept))

    def _close_descriptor(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def sync(self) -> None:
        if self._fd is None:
            return
        try:
            os.fsync(self._fd)
        except OSError as exc:
            # Some filesystems (NFS, quotas) only report a full disk when flushing.
            raise_if_disk_full(exc, self.path, what=f"cannot flush {self.path.name} to disk",
                               then=RESUME_HINT.format(log_dir=self.path.parent))
            raise

    def close(self) -> None:
        self.sync()
        self._close_descriptor()


def step_of(row: Mapping[str, JsonValue], path: Path) -> int:
    step = row.get("step")
    if isinstance(step, bool) or not isinstance(step, int):
        raise LogFileError(f"{path}: a row has no integer 'step' ({step!r}) — restore the file or start a new log_dir")
    return step


class MetricsLog(JsonlLog):
    """``metrics.jsonl``: one row per step."""

    def append(self, row: Mapping[str, object]) -> None:
        self.append_rows([row])

    def log_step(self, row: Mapping[str, object]) -> None:
        self.append(row)


def prompt_text(example: Example) -> str:
    """The last user turn of the example's prompt."""
    for message in reversed(example.messages):
        if message.get("role") == "user":
            return message.get("content", "")
    return ""


def sample_indices(count: int, per_step: int) -> list[int]:
    """``per_step`` row indices spread evenly over ``count`` prompt-major completions
    (first and last included), so the sample covers many prompts. Deterministic: it
    must not draw from any RNG a resumed run replays."""
    if count <= 0 or per_step <= 0:
        return []
    if per_step >= count:
        return list(range(count))
    if per_step == 1:
        return [0]
    positions = np.floor(np.linspace(0, count - 1, per_step) + 0.5).astype(int)
    return sorted(set(positions.tolist()))


class GenerationsLog(JsonlLog):
    """``generations.jsonl``: up to ``per_step`` completions per step, with their rewards.

    Each row: ``step``, ``index`` (row in the step's batch), ``example_id``, ``prompt``
    (last user turn), ``completion``, ``reward``, ``reference``, ``finish_reason`` and
    ``num_tokens``.
    """

    def __init__(self, path: Path, per_step: int, *, fsync_each_append: bool = False) -> None:
        super().__init__(path, fsync_each_append=fsync_each_append)
        self.per_step = per_step

    def log_generations(self, step: int, examples: Sequence[Example], batch: SampleBatch,
                        rewards_N: np.ndarray) -> None:
        count = len(batch.texts)
        if count != len(examples) * batch.group_size or len(rewards_N) != count:
            raise ValueError(f"generations of step {step}: {count} completions, {len(examples)} prompts x "
                             f"group {batch.group_size}, {len(rewards_N)} rewards do not line up")
        lengths_N = batch.lengths_N
        rows = []
        for index in sample_indices(count, self.per_step):
            example = examples[index // batch.group_size]
            rows.append({
                "step": step,
                "index": index,
                "example_id": example.example_id,
                "prompt": prompt_text(example),
                "completion": batch.texts[index],
                "reward": float(rewards_N[index]),
                "reference": example.reference,
                "finish_reason": batch.finish_reasons[index],
                "num_tokens": int(lengths_N[index]),
            })
        self.append_rows(rows)
