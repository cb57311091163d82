"""Logging a run's metrics rows to Weights & Biases (wandb imported only when used)."""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Protocol

from retrain.config.schema import Config
from retrain.optional import require_module
from retrain.sinks.jsonl import to_json_value
from retrain.types import Sink

logger = logging.getLogger(__name__)

class WandbRunHandle(Protocol):
    """What this sink uses of the object ``wandb.init`` returns (a ``wandb.Run``)."""

    @property
    def id(self) -> str: ...

    def log(self, data: dict[str, object], step: int) -> None: ...

    def finish(self) -> None: ...


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
                 init: Callable[..., WandbRunHandle] | None = None) -> None:
        from retrain.config.snapshot import config_to_dict

        wandb = require_module("wandb", "wandb", "logging", "wandb_project", "wandb logging")
        settings = config.logging
        start: Callable[..., WandbRunHandle] = init or wandb.init
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
        self.run_id: str = self.run.id
        self._wandb = wandb

    @staticmethod
    def _rewind(start: Callable[..., WandbRunHandle], arguments: dict[str, object], run_id: str, resume_step: int,
                refused: type[Exception]) -> WandbRunHandle:
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
        values: dict[str, object] = {key: value for key, value in row.items() if key != "step"}
        plain = to_json_value(values)
        assert isinstance(plain, dict)  # a mapping stays a mapping
        values = {key: value for key, value in plain.items() if value is not None and not isinstance(value, (list, dict))}
        self.run.log(values, step=step)

    def log_step(self, row: Mapping[str, object]) -> None:
        step = row["step"]
        assert isinstance(step, int), f"a metrics row's step is an int, not {step!r}"
        self.log(row, step)

    def finish(self) -> None:
        self.run.finish()
        # wandb keeps process-wide settings (WANDB_DIR, mode, ...) from its first run;
        # releasing them lets the next run in this process (a campaign) start afresh.
        self._wandb.teardown()

    def close(self) -> None:
        self.finish()


