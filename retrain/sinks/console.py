"""The console progress line of a run."""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from typing import TextIO

from retrain.types import Sink

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
        self.stream: TextIO | None = stream  # None once it cannot be written to
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
            self._write("\r" + text[: max(columns - 1, 10)] + "\x1b[K")
            self._drawn = True
        elif self.done % self.every == 0 or self.done >= self.total_steps:
            self._write(text + "\n")

    def _write(self, text: str) -> None:
        """Show ``text``; a terminal that went away (SSH closed: SIGHUP, then EIO) ends the
        progress line, never the run, which still has a checkpoint to save."""
        if self.stream is None:
            return
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):
            self.stream = None

    def close(self) -> None:
        if self._drawn:
            self._write("\n")
            self._drawn = False


