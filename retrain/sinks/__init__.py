"""Where a run's per-step records go: JSONL logs (``jsonl``), the console
(``console``), wandb (``wandb_run``).

Every sink has the same calls (``retrain.types.Sink``), so the run loop logs through one
``Sinks`` object without branching on what is enabled:

- ``log_step(row)``: one metrics row per step (a flat dict with an integer ``"step"``);
- ``log_generations(step, examples, batch, rewards_N)``: the trajectories of a step;
- ``truncate_after(step)``: forget the records of later steps (resume);
- ``sync()``: make what was recorded durable (before a checkpoint);
- ``close()``.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TextIO

import numpy as np

from retrain.config.schema import Config
from retrain.sinks.console import ConsoleProgress
from retrain.sinks.jsonl import (
    GenerationsLog,
    JsonlLog,
    LogFileError,
    MetricsLog,
    json_line,
    read_rows,
    sample_indices,
    step_of,
    to_json_value,
)
from retrain.sinks.wandb_run import WandbSink
from retrain.types import Example, SampleBatch, Sink

__all__ = [
    "ConsoleProgress", "GenerationsLog", "JsonlLog", "LogFileError", "MetricsLog", "Sinks", "WandbSink",
    "build_sinks", "json_line", "read_rows", "sample_indices", "to_json_value",
]

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
    redone = any(step_of(row, metrics.path) > completed for row in metrics.rows()) if wandb_run_id else False
    sinks: list[Sink] = [metrics]
    if config.logging.generations_per_step > 0:
        sinks.append(GenerationsLog(log_dir / GENERATIONS_FILE, config.logging.generations_per_step))
    sinks.append(ConsoleProgress(total_steps, stream, completed=completed))
    if config.logging.wandb_project:
        sinks.append(WandbSink(config, run_id=wandb_run_id, resume_step=completed if redone else None))
    return Sinks(sinks)
