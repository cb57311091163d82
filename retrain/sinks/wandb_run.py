"""Logging a run's metrics rows to Weights & Biases (wandb imported only when used).

Before any model loads, ``wandb_issues`` tells whether wandb could start at all: the
package is installed, and a run that would log in online has credentials
(``WANDB_API_KEY``, or a ``wandb login`` stored in the netrc file). Starting the run is
bounded (``WANDB_INIT_TIMEOUT`` seconds, 60 by default), and any failure of
``wandb.init`` is a ``RetrainError`` that says what to do. wandb's files go under the
run's log dir unless ``WANDB_DIR`` says otherwise.
"""

from __future__ import annotations

import importlib.util
import logging
import math
import netrc
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit

from retrain.config.schema import Config
from retrain.config.snapshot import redact_text
from retrain.errors import ConfigError, ConfigIssue, RetrainError
from retrain.optional import require_module
from retrain.sinks.jsonl import to_json_value
from retrain.types import Sink

logger = logging.getLogger(__name__)

# wandb's own default (90 s, plus a grace period) kept a run without network waiting for
# almost two minutes before it failed; a minute is plenty for a reachable server.
INIT_TIMEOUT_S = 60.0
# The most the end of a run waits for wandb to upload (WANDB_FINISH_TIMEOUT changes it).
FINISH_TIMEOUT_S = 300.0
# A refused rewind is retried as a plain continuation only with this much of the start's
# time left: a retry with less would only fail again, later and less clearly.
MIN_RETRY_S = 5.0
# The modes in which wandb records locally and never logs in.
LOCAL_MODES = frozenset({"offline", "dryrun", "disabled"})
# The server wandb logs in to when WANDB_BASE_URL does not name another.
DEFAULT_HOST = "api.wandb.ai"
# How to do without wandb, for a run already started as well (a resume may change it).
WITHOUT_WANDB = "or turn wandb off (remove [logging] wandb_project, or pass --wandb-project '')"
FIXES = ("set WANDB_API_KEY (in the environment or .env; `wandb login` stores one), or set WANDB_MODE=offline to "
         f"log locally and upload later with `wandb sync`, {WITHOUT_WANDB}")


def wandb_issues(config: Config, environ: Mapping[str, str] | None = None) -> list[ConfigIssue]:
    """What would stop wandb from starting, found without importing it: the package is
    missing, ``WANDB_INIT_TIMEOUT`` is not a number, or wandb would log in online
    (``WANDB_MODE`` not offline/dryrun/disabled) with no credentials to log in with.
    Without this check the run would fail in ``wandb.init`` (or, on a terminal, wait for
    a key to be typed)."""
    if not config.logging.wandb_project:
        return []
    environ = os.environ if environ is None else environ
    issues = []
    if importlib.util.find_spec("wandb") is None:
        issues.append(ConfigIssue("", "logging", "wandb_project", "wandb logging needs the Python package 'wandb', "
                                  "which is not installed", "install it with: pip install 'retrain[wandb]'"))
    try:
        init_timeout(environ)
    except ConfigError as exc:
        issues.extend(exc.issues)
    problem = login_problem(environ)
    if problem:
        issues.append(ConfigIssue("", "logging", "wandb_project", problem, FIXES))
    return issues


def login_problem(environ: Mapping[str, str]) -> str:
    """Why wandb could not log in (empty when it can, or need not): online mode, no
    ``WANDB_API_KEY`` or ``WANDB_IDENTITY_TOKEN_FILE``, and no netrc entry for the
    server (``WANDB_BASE_URL``'s host, else api.wandb.ai)."""
    if environ.get("WANDB_MODE", "").strip().lower() in LOCAL_MODES:
        return ""
    if environ.get("WANDB_API_KEY") or environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return ""
    base_url = environ.get("WANDB_BASE_URL", "").strip()
    # The netrc machine is the URL's host[:port]; credentials in the URL are no part of it.
    host = (urlsplit(base_url).netloc or base_url).rpartition("@")[2] if base_url else DEFAULT_HOST
    path = netrc_path(environ)
    try:
        entry = netrc.netrc(str(path)).authenticators(host)
    except FileNotFoundError:
        stored = f"there is no {path} with a `wandb login` in it"
    except netrc.NetrcParseError as exc:
        stored = f"{path} cannot be read (line {exc.lineno}: {exc.msg}), so wandb ignores it"
    except (OSError, ValueError) as exc:
        stored = f"{path} cannot be read ({getattr(exc, 'strerror', None) or exc})"
    else:
        if entry and entry[2]:
            return ""
        stored = f"{path} has no login for {host}"
    mode = environ.get("WANDB_MODE", "").strip()
    return (f"wandb would log in online to {redact_text(base_url) or host} (WANDB_MODE is "
            f"{repr(mode) if mode else 'unset'}, not offline) and has no API key: WANDB_API_KEY is not in the "
            f"environment or .env, and {stored}")


def netrc_path(environ: Mapping[str, str]) -> Path:
    """The netrc file wandb reads: ``$NETRC``, else ``~/.netrc`` (``~/_netrc`` when only
    that one exists)."""
    if environ.get("NETRC"):
        return Path(environ["NETRC"]).expanduser()
    home = Path(environ["HOME"]) if environ.get("HOME") else Path.home()
    if not (home / ".netrc").exists() and (home / "_netrc").exists():
        return home / "_netrc"
    return home / ".netrc"


def init_timeout(environ: Mapping[str, str]) -> float:
    """The seconds ``wandb.init`` may take: ``WANDB_INIT_TIMEOUT``, else ``INIT_TIMEOUT_S``."""
    text = environ.get("WANDB_INIT_TIMEOUT", "").strip()
    if not text:
        return INIT_TIMEOUT_S
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and seconds > 0):
        raise ConfigError(ConfigIssue("env WANDB_INIT_TIMEOUT", "logging", "wandb_project",
                                      f"WANDB_INIT_TIMEOUT={text!r} is not a number of seconds",
                                      f"set it to a positive number of seconds, or unset it for {INIT_TIMEOUT_S:g}"))
    return seconds


def start_error(config: Config, exc: BaseException, timeout: float) -> RetrainError:
    """The error for a ``wandb.init`` that failed: its cause, the project, and the fixes."""
    cause = redact_text(str(exc).strip().splitlines()[0] if str(exc).strip() else "no message")
    return RetrainError(
        f"wandb could not start a run in project '{config.logging.wandb_project}' ({type(exc).__name__}: {cause}; "
        f"retrain waits at most {timeout:g} s, WANDB_INIT_TIMEOUT changes that) — check the network connection and "
        f"WANDB_API_KEY, or set WANDB_MODE=offline to log locally and upload later with `wandb sync`, {WITHOUT_WANDB}"
    )


def wandb_dir(config: Config, environ: Mapping[str, str]) -> dict[str, str]:
    """``dir=`` for ``wandb.init``: the run's log dir, so that wandb's ``wandb/`` folder is
    kept with the run instead of landing in the working directory; nothing when the user
    chose a place with ``WANDB_DIR``."""
    if environ.get("WANDB_DIR"):
        return {}
    return {"dir": str(Path(config.logging.log_dir).absolute())}


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
    (``WANDB_MODE=offline``, ``WANDB_DIR``, ``WANDB_API_KEY``); without ``WANDB_DIR``,
    wandb writes its files under ``[logging] log_dir``.

    Starting the run takes at most ``init_timeout`` seconds in all; a failure is a
    ``RetrainError`` naming the cause and the fixes, after whatever wandb had started
    (its service process) is stopped again.

    ``run_id`` continues an earlier wandb run (``sink.run_id`` is stored with the trainer
    state). A resumed run passes the checkpoint's step as ``resume_step`` as well: it
    redoes the steps after it, which the crashed attempt may already have logged, and
    wandb drops any row whose step is below the run's last one. So the run is rewound
    (``wandb.init(resume_from="<id>?_step=<resume_step>")``): wandb keeps the history up
    to and including ``resume_step``, archives the rest, and the redone steps replace the
    crashed attempt's. Rewinding is a wandb server feature that not every account or
    server offers; where wandb refuses it, the run is continued as it stands, with a
    warning that the redone steps below its last logged step are missing from wandb
    (``metrics.jsonl`` always has them). ``init`` stands in for ``wandb.init`` and
    ``clock`` for ``time.monotonic``.
    """

    def __init__(self, config: Config, *, run_id: str | None = None, resume_step: int | None = None,
                 init: Callable[..., WandbRunHandle] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        from retrain.config.snapshot import config_to_dict

        wandb = require_module("wandb", "wandb", "logging", "wandb_project", "wandb logging")
        settings = config.logging
        timeout = init_timeout(os.environ)
        arguments: dict[str, object] = {
            "project": settings.wandb_project,
            "entity": settings.wandb_entity or None,
            "group": settings.wandb_group or None,
            "name": wandb_run_name(config),
            "tags": wandb_tags(config) or None,
            "config": config_to_dict(config),
            **wandb_dir(config, os.environ),
        }
        start = _Start(init or wandb.init, arguments, clock() + timeout, clock)
        try:
            if run_id is None:
                self.run = start()
            elif resume_step is None:
                self.run = start(id=run_id, resume="allow")
            else:
                self.run = self._rewind(start, run_id, resume_step, wandb.errors.Error)
        except BaseException as exc:
            # A failed start leaves wandb's service process running; stop it.
            wandb.teardown()
            if isinstance(exc, (wandb.errors.Error, OSError)):
                raise start_error(config, exc, timeout) from exc
            raise
        self.run_id: str = self.run.id
        self._wandb = wandb

    @staticmethod
    def _rewind(start: _Start, run_id: str, resume_step: int, refused: type[Exception]) -> WandbRunHandle:
        try:
            return start(resume_from=f"{run_id}?_step={resume_step}")
        except refused as exc:
            if start.seconds_left() < MIN_RETRY_S:
                raise
            logger.warning(
                "wandb refused to rewind run %s to step %d (%s); continuing it as it stands instead, so wandb "
                "drops the redone steps after %d up to the crashed attempt's last logged step and keeps that "
                "attempt's values for them (metrics.jsonl has the redone values)",
                run_id, resume_step, exc, resume_step)
            return start(id=run_id, resume="allow")

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
        try:
            self.run.finish()
        finally:
            # wandb keeps process-wide settings (WANDB_DIR, mode, ...) and its service
            # process from its first run; releasing them lets the next run in this
            # process (a campaign) start afresh.
            self._wandb.teardown()

    def close(self) -> None:
        self.finish()




def _wandb_has_setting(name: str) -> bool:
    """Whether the installed wandb knows setting ``name`` (its Settings refuse unknown ones)."""
    import wandb

    return name in getattr(wandb.Settings, "model_fields", {})


class _Start:
    """``wandb.init`` with the sink's arguments, each call given the time left before one
    deadline (wandb's ``init_timeout``), so that a retried start waits no longer in all."""

    def __init__(self, init: Callable[..., WandbRunHandle], arguments: dict[str, object], deadline: float,
                 clock: Callable[[], float]) -> None:
        self.init = init
        self.arguments = arguments
        self.deadline = deadline
        self.clock = clock

    def seconds_left(self) -> float:
        return self.deadline - self.clock()

    def __call__(self, **extra: object) -> WandbRunHandle:
        settings: dict[str, object] = {"init_timeout": max(self.seconds_left(), 1.0)}
        if not os.environ.get("WANDB_FINISH_TIMEOUT") and _wandb_has_setting("finish_timeout"):
            # wandb's own default waits for the upload without end: a network that dropped
            # mid-run would hold the run's end forever. What is not uploaded by then stays
            # in the run's wandb folder for `wandb sync`.
            settings["finish_timeout"] = FINISH_TIMEOUT_S
        return self.init(**self.arguments, **extra, settings=settings)
