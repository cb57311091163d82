"""Where a run's per-step records go: JSONL logs, the console, wandb.

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
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from retrain.atomic import write_atomic
from retrain.config.schema import Config
from retrain.errors import RetrainError
from retrain.optional import require_module
from retrain.types import Example, SampleBatch, Sink

logger = logging.getLogger(__name__)

JsonValue = None | bool | int | float | str | list["JsonValue"] | dict[str, "JsonValue"]


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


def read_rows(path: Path) -> list[dict[str, JsonValue]]:
    """The complete rows of a JSONL log (without opening it for writing); a torn final
    line is skipped with a warning, any other unreadable line is a ``LogFileError``."""
    if not path.exists():
        return []
    lines = path.read_bytes().split(b"\n")
    if lines[-1]:
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
        written = os.write(fd, data)
        # A short write (a signal between pages) is finished rather than left torn.
        while written < len(data):
            written += os.write(fd, data[written:])
        if self.fsync_each_append:
            os.fsync(fd)

    def rows(self) -> list[dict[str, JsonValue]]:
        """Every complete row; a torn final line is skipped with a warning."""
        return read_rows(self.path)

    def truncate_after(self, step: int) -> None:
        """Atomically rewrite the file keeping only rows with ``row["step"] <= step``."""
        kept = [row for row in self.rows() if _step_of(row, self.path) <= step]
        self._close_descriptor()
        write_atomic(self.path, "".join(json_line(row) for row in kept))

    def _close_descriptor(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def sync(self) -> None:
        if self._fd is not None:
            os.fsync(self._fd)

    def close(self) -> None:
        self.sync()
        self._close_descriptor()


def _step_of(row: Mapping[str, JsonValue], path: Path) -> int:
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


# (label, metrics key, format) of what the progress line shows after the step counter.
# One step's mean reward is noisy; the line shows its mean over the last REWARD_WINDOW steps.
REWARD_WINDOW = 20
PROGRESS_FIELDS: tuple[tuple[str, str, str], ...] = (
    ("reward", "reward_mean", "{:.3f}"),
    ("loss", "loss", "{:.4g}"),
    ("tok/s", "tokens_per_s", "{:.0f}"),
)


def _duration(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{secs:02d}s"


class ConsoleProgress(Sink):
    """A one-line progress display: steps done, key metrics, ETA.

    On a terminal the line is redrawn in place after every step. On anything else (a
    log file, a pipe, CI) it prints a plain line only every ``every`` steps (default: a
    tenth of the run) and after the last step, so logs stay short. ``completed`` is the
    number of steps already done before this process started (a resumed run); the ETA
    uses only the steps timed in this process.
    """

    def __init__(
        self,
        total_steps: int,
        stream: TextIO = sys.stderr,
        *,
        completed: int = 0,
        every: int = 0,
        fields: Sequence[tuple[str, str, str]] = PROGRESS_FIELDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.total_steps = total_steps
        self.stream = stream
        self.done = completed
        self.started_at_done = completed
        self.every = every or max(1, total_steps // 10)
        self.fields = tuple(fields)
        self.clock = clock
        self.started = clock()
        isatty = getattr(stream, "isatty", None)
        self.interactive = bool(isatty and isatty())
        self._drawn = False
        self.recent_rewards: deque[float] = deque(maxlen=REWARD_WINDOW)

    def line(self, row: Mapping[str, object]) -> str:
        """The progress text for the latest row (no newline)."""
        parts = [f"step {self.done}/{self.total_steps}"]
        for label, key, spec in self.fields:
            value = row.get(key)
            shown = spec.format(value) if isinstance(value, (int, float)) and not isinstance(value, bool) \
                and math.isfinite(value) else "-"
            parts.append(f"{label} {shown}")
            if key == "reward_mean" and self.recent_rewards:
                parts[-1] += f" (last {len(self.recent_rewards)}: {sum(self.recent_rewards) / len(self.recent_rewards):.3f})"
        timed = self.done - self.started_at_done
        remaining = self.total_steps - self.done
        if timed > 0 and remaining > 0:
            parts.append(f"ETA {_duration((self.clock() - self.started) / timed * remaining)}")
        elif remaining <= 0:
            parts.append(f"done in {_duration(self.clock() - self.started)}")
        if not self.interactive:
            return "  ".join(parts)
        width = 20
        filled = int(width * min(self.done, self.total_steps) / max(self.total_steps, 1))
        return f"[{'#' * filled}{'.' * (width - filled)}] " + "  ".join(parts)

    def log_step(self, row: Mapping[str, object]) -> None:
        self.done += 1
        reward = row.get("reward_mean")
        if isinstance(reward, (int, float)) and math.isfinite(reward):
            self.recent_rewards.append(float(reward))
        text = self.line(row)
        if self.interactive:
            columns = shutil.get_terminal_size((100, 20)).columns
            # A wrapped line cannot be redrawn with "\r": cut it to the terminal width.
            self.stream.write("\r" + text[: max(columns - 1, 10)] + "\x1b[K")
            self.stream.flush()
            self._drawn = True
        elif self.done % self.every == 0 or self.done >= self.total_steps:
            self.stream.write(text + "\n")
            self.stream.flush()

    def close(self) -> None:
        if self._drawn:
            self.stream.write("\n")
            self.stream.flush()
            self._drawn = False


def wandb_run_name(config: Config) -> str:
    """``[logging] wandb_run_name``, or ``{advantage_mode}+{transform_mode}`` (the
    ``algorithm_mode`` when one is set)."""
    if config.logging.wandb_run_name:
        return config.logging.wandb_run_name
    algorithm = config.algorithm
    return algorithm.algorithm_mode or f"{algorithm.advantage_mode}+{algorithm.transform_mode}"


def wandb_tags(config: Config) -> list[str]:
    """``[logging] wandb_tags`` split on commas, blanks dropped."""
    return [tag.strip() for tag in config.logging.wandb_tags.split(",") if tag.strip()]


class WandbSink(Sink):
    """Logs each metrics row to Weights & Biases.

    The run gets ``[logging] wandb_project``/``wandb_entity``/``wandb_group``, the name
    from ``wandb_run_name`` and the tags from ``wandb_tags``, with the resolved config
    (secrets blanked) as its config. wandb's own environment variables apply
    (``WANDB_MODE=offline``, ``WANDB_DIR``, ``WANDB_API_KEY``).

    ``run_id`` continues an earlier wandb run (``sink.run_id`` is stored with the trainer
    state). A resumed run passes the checkpoint's step as ``resume_step`` as well: it
    redoes the steps after it, which the crashed attempt may already have logged, and
    wandb drops any row whose step is below the run's last one. So the run is rewound
    (``wandb.init(resume_from="<id>?_step=<resume_step>")``): wandb keeps the history up
    to and including ``resume_step``, archives the rest, and the redone steps replace the
    crashed attempt's. Rewinding is a wandb server feature that not every account or
    server offers; where wandb refuses it, the run is continued as it stands, with a
    warning that the redone steps below its last logged step are missing from wandb
    (``metrics.jsonl`` always has them). ``init`` stands in for ``wandb.init``.
    """

    def __init__(self, config: Config, *, run_id: str | None = None, resume_step: int | None = None,
                 init: Callable[..., object] | None = None) -> None:
        from retrain.config.snapshot import config_to_dict

        wandb = require_module("wandb", "wandb", "logging", "wandb_project", "wandb logging")
        settings = config.logging
        start = init or wandb.init
        arguments: dict[str, object] = {
            "project": settings.wandb_project,
            "entity": settings.wandb_entity or None,
            "group": settings.wandb_group or None,
            "name": wandb_run_name(config),
            "tags": wandb_tags(config) or None,
            "config": config_to_dict(config),
        }
        if run_id is None:
            self.run = start(**arguments)
        elif resume_step is None:
            self.run = start(**arguments, id=run_id, resume="allow")
        else:
            self.run = self._rewind(start, arguments, run_id, resume_step, wandb.errors.Error)
        self.run_id: str = self.run.id  # type: ignore[attr-defined]
        self._wandb = wandb

    @staticmethod
    def _rewind(start: Callable[..., object], arguments: dict[str, object], run_id: str, resume_step: int,
                refused: type[Exception]) -> object:
        try:
            return start(**arguments, resume_from=f"{run_id}?_step={resume_step}")
        except refused as exc:
            logger.warning(
                "wandb refused to rewind run %s to step %d (%s); continuing it as it stands instead, so wandb "
                "drops the redone steps after %d up to the crashed attempt's last logged step and keeps that "
                "attempt's values for them (metrics.jsonl has the redone values)",
                run_id, resume_step, exc, resume_step)
            return start(**arguments, id=run_id, resume="allow")

    def log(self, row: Mapping[str, object], step: int) -> None:
        values = {key: value for key, value in to_json_value(row).items()  # type: ignore[union-attr]
                  if key != "step" and value is not None and not isinstance(value, (list, dict))}
        self.run.log(values, step=step)

    def log_step(self, row: Mapping[str, object]) -> None:
        step = row["step"]
        self.log(row, int(step))  # type: ignore[call-overload]

    def finish(self) -> None:
        self.run.finish()
        # wandb keeps process-wide settings (WANDB_DIR, mode, ...) from its first run;
        # releasing them lets the next run in this process (a campaign) start afresh.
        self._wandb.teardown()

    def close(self) -> None:
        self.finish()


class Sinks(Sink):
    """Fans every call out to a list of sinks, in order."""

    def __init__(self, sinks: Sequence[Sink]) -> None:
        self.sinks = list(sinks)

    @property
    def wandb_run_id(self) -> str | None:
        """The wandb run's id (store it with the trainer state so a resume continues
        the same wandb run), or None without wandb."""
        return next((sink.run_id for sink in self.sinks if isinstance(sink, WandbSink)), None)

    def log_step(self, row: Mapping[str, object]) -> None:
        for sink in self.sinks:
            sink.log_step(row)

    def log_generations(self, step: int, examples: Sequence[Example], batch: SampleBatch,
                        rewards_N: np.ndarray) -> None:
        for sink in self.sinks:
            sink.log_generations(step, examples, batch, rewards_N)

    def truncate_after(self, step: int) -> None:
        for sink in self.sinks:
            sink.truncate_after(step)

    def sync(self) -> None:
        for sink in self.sinks:
            sink.sync()

    def close(self) -> None:
        # Close every sink even if one fails, then report the first failure.
        failure: Exception | None = None
        for sink in self.sinks:
            try:
                sink.close()
            except Exception as exc:
                failure = failure or exc
        if failure is not None:
            raise failure


METRICS_FILE = "metrics.jsonl"
GENERATIONS_FILE = "generations.jsonl"


def build_sinks(
    config: Config,
    total_steps: int,
    *,
    completed: int = 0,
    stream: TextIO = sys.stderr,
    wandb_run_id: str | None = None,
) -> Sinks:
    """The sinks a run's config asks for: ``metrics.jsonl`` always, ``generations.jsonl``
    when ``[logging] generations_per_step`` > 0 (both in ``[logging] log_dir``), the
    console progress line, and wandb when ``[logging] wandb_project`` is set.

    A resumed run passes the checkpoint's step as ``completed`` and the stored
    ``wandb_run_id``; when ``metrics.jsonl`` holds steps after the checkpoint (the
    earlier attempt crashed after it), the wandb run is rewound to that step (see
    ``WandbSink``), otherwise it simply continues."""
    log_dir = Path(config.logging.log_dir)
    metrics = MetricsLog(log_dir / METRICS_FILE)
    # Rewinding wandb is only needed when the earlier attempt logged steps past the
    # checkpoint (a crash); extending a finished run redoes nothing.
    redone = any(_step_of(row, metrics.path) > completed for row in metrics.rows()) if wandb_run_id else False
    sinks: list[Sink] = [metrics]
    if config.logging.generations_per_step > 0:
        sinks.append(GenerationsLog(log_dir / GENERATIONS_FILE, config.logging.generations_per_step))
    sinks.append(ConsoleProgress(total_steps, stream, completed=completed))
    if config.logging.wandb_project:
        sinks.append(WandbSink(config, run_id=wandb_run_id, resume_step=completed if redone else None))
    return Sinks(sinks)
