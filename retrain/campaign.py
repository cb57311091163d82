"""Campaigns: every condition of ``[[campaign.conditions]]`` run once per seed of
``[campaign] seeds``, from one TOML file whose other sections are the shared base config
(docs/campaigns.md).

The campaign folder (``[logging] log_dir`` when the file sets it, else
``logs/<campaign name>``) holds::

    manifest.json            every run, its status, pid and exit code (atomic, locked updates)
    runs/<condition>_s<seed>/ each run's own log_dir, with its adapter folder inside
    summary.json, summary.md per-condition statistics across seeds, once runs are done

Each run's config is resolved by the same resolver as any config, in layers: the
campaign file, the environment, the run's condition (and ``[campaign] max_steps``), the
command line's overrides (which apply to every run), then what makes the run itself (its
seed, folders and wandb names). Every cross-field rule applies to every run, and all runs
are validated before the first one starts. A run executes as
``python -m retrain <campaign.toml> --campaign-run <name>``: the same command the
parallel pool starts and ``--print-commands`` prints for other machines.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import json
import os
import socket
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from retrain.atomic import write_atomic
from retrain.config.loader import Override, ResolvedConfig, read_toml, resolve_config
from retrain.config.schema import CampaignCondition, CampaignConfig, Config, SqueezeConfig
from retrain.config.toml_text import line_of
from retrain.errors import ConfigError, ConfigIssue, RetrainError

MANIFEST = "manifest.json"
MANIFEST_LOCK = ".manifest.lock"
MANIFEST_FORMAT = 1
RUNS_DIR = "runs"

# The progressive credit-assignment ablation, from plain GRPO to MaxRL with GTPO and SEPA.
DEFAULT_CONDITIONS: tuple[tuple[str, str], ...] = (
    ("grpo", "none"), ("maxrl", "none"), ("maxrl", "gtpo"), ("maxrl", "gtpo_hicra"), ("maxrl", "gtpo_sepa"),
)
DEFAULT_SEED = 42


def is_campaign_file(path: str | os.PathLike[str]) -> bool:
    """Whether the TOML file has a ``[campaign]`` table (read cheaply, no validation)."""
    try:
        data, _ = read_toml(Path(path))
    except (ConfigError, OSError):
        return False  # the normal loader reports what is wrong with it
    return isinstance(data.get("campaign"), dict)


def file_sets_squeeze(path: str | os.PathLike[str]) -> bool:
    data, _ = read_toml(Path(path))
    return isinstance(data.get("squeeze"), dict)


@dataclass(frozen=True)
class CampaignRun:
    """One condition x seed: its name, its folder and its fully resolved config."""

    name: str
    condition: str
    seed: int
    log_dir: Path
    resolved: ResolvedConfig

    @property
    def max_steps(self) -> int:
        return self.resolved.config.training.max_steps


@dataclass(frozen=True)
class Campaign:
    name: str
    source: Path
    directory: Path
    settings: CampaignConfig
    base: Config
    runs: tuple[CampaignRun, ...]
    overrides: tuple[Override, ...]
    squeeze: SqueezeConfig | None  # set when the file has a [squeeze] section

    def run(self, name: str) -> CampaignRun:
        for run in self.runs:
            if run.name == name:
                return run
        raise RetrainError(f"campaign {self.name} has no run named {name!r}; its runs are "
                           f"{', '.join(run.name for run in self.runs)}")


def condition_name(condition: CampaignCondition, base: Config) -> str:
    """``name``, else ``algorithm_mode`` when set, else ``<advantage_mode>+<transform_mode>``."""
    if condition.name:
        return condition.name
    if condition.algorithm_mode:
        return condition.algorithm_mode
    return f"{condition.advantage_mode or base.algorithm.advantage_mode}+" \
           f"{condition.transform_mode or base.algorithm.transform_mode}"


def _conditions(settings: CampaignConfig) -> list[CampaignCondition]:
    if settings.conditions:
        return list(settings.conditions)
    return [CampaignCondition(advantage_mode=advantage, transform_mode=transform)
            for advantage, transform in DEFAULT_CONDITIONS]


def _seeds(settings: CampaignConfig, base: Config) -> list[int]:
    if settings.seeds:
        return list(settings.seeds)
    return [base.training.seed if base.training.seed >= 0 else DEFAULT_SEED]


def _campaign_dir(resolved: ResolvedConfig, name: str) -> Path:
    if ("logging", "log_dir") in resolved.sources:
        return Path(resolved.config.logging.log_dir)
    return Path("logs") / name


def _condition_settings(condition: CampaignCondition, settings: CampaignConfig) -> dict[str, object]:
    """What a condition changes in the base config (the command line may override it)."""
    values: dict[str, object] = {}
    for key in ("algorithm_mode", "advantage_mode", "transform_mode", "uncertainty_kind"):
        if getattr(condition, key):
            values[f"algorithm.{key}"] = getattr(condition, key)
    values.update(condition.overrides)
    if settings.max_steps:
        values["training.max_steps"] = settings.max_steps
    return values


def _identity_settings(campaign_dir: Path, run_name: str, seed: int, base: Config,
                       condition_label: str) -> dict[str, object]:
    """What makes a run itself: its seed, its own folders, its wandb names (nothing may
    override these, or two runs would collide)."""
    log_dir = campaign_dir / RUNS_DIR / run_name
    values: dict[str, object] = {"training.seed": seed, "logging.log_dir": str(log_dir),
                                 "backend.adapter_path": str(log_dir / "adapter")}
    if base.logging.wandb_project:
        values.update({"logging.wandb_run_name": run_name, "logging.wandb_group": condition_label,
                       "logging.wandb_tags": f"{condition_label},seed{seed}"})
    return values


def _as_overrides(values: dict[str, object], where: str) -> list[Override]:
    """Run settings as overrides, in the TOML text the command-line parser reads."""
    from retrain.config.reference import toml_literal

    return [Override(tuple(dotted.split(".")), toml_literal(value), where) for dotted, value in values.items()]


def plan_campaign(source: str | os.PathLike[str], overrides: Sequence[Override] = ()) -> Campaign:
    """Resolve and validate every run of the campaign in ``source``; a ``ConfigError``
    lists the problems of all runs at once, each with its run's name."""
    path = Path(source)
    resolved = resolve_config(path, overrides)
    base, settings = resolved.config, resolved.config.campaign
    name = settings.name or path.stem
    directory = _campaign_dir(resolved, name)
    runs: list[CampaignRun] = []
    issues: list[ConfigIssue] = []
    _, lines = read_toml(path)
    for index, condition in enumerate(_conditions(settings)):
        label = condition_name(condition, base)
        line = line_of(lines, ("campaign", "conditions", index)) if settings.conditions else None
        conditions_where = f"{path}:{line}" if line is not None else str(path)
        for seed in _seeds(settings, base):
            run_name = f"{label}_s{seed}"
            layers = [*_as_overrides(_condition_settings(condition, settings), f"{conditions_where} condition {label}"),
                      *overrides,
                      *_as_overrides(_identity_settings(directory, run_name, seed, base, label), "the campaign")]
            try:
                run_resolved = resolve_config(path, layers)
            except ConfigError as error:
                issues.extend(ConfigIssue(f"run {run_name}: {issue.where}", issue.section, issue.key, issue.problem,
                                          issue.fix) for issue in error.issues)
                continue
            config = dataclasses.replace(run_resolved.config, campaign=CampaignConfig(), squeeze=SqueezeConfig())
            runs.append(CampaignRun(run_name, label, seed, directory / RUNS_DIR / run_name,
                                    dataclasses.replace(run_resolved, config=config)))
    if issues:
        raise ConfigError(issues)
    names = [run.name for run in runs]
    if len(set(names)) != len(names):
        raise RetrainError(f"{path}: two runs would share a folder ({names}) — give the conditions distinct names")
    squeeze = base.squeeze if file_sets_squeeze(path) or base.squeeze != SqueezeConfig() else None
    return Campaign(name, path, directory, settings, base, tuple(runs), tuple(overrides), squeeze)


# --- the manifest ------------------------------------------------------------------------

def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


@contextlib.contextmanager
def locked_manifest(campaign: Campaign) -> Iterator[dict[str, object]]:
    """The manifest, read and written back atomically under an exclusive lock, so runs
    on several machines sharing the folder each update their own entry safely."""
    import fcntl

    campaign.directory.mkdir(parents=True, exist_ok=True)
    with open(campaign.directory / MANIFEST_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        manifest = read_manifest(campaign.directory) or _new_manifest(campaign)
        _add_missing_runs(manifest, campaign)
        yield manifest
        manifest["updated"] = now()
        write_atomic(campaign.directory / MANIFEST, json.dumps(manifest, indent=1) + "\n")


def read_manifest(directory: Path) -> dict[str, object] | None:
    path = directory / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text())
    except ValueError as error:
        raise RetrainError(f"{path} is not valid JSON ({error}) — restore it, or move it away to start the "
                           "campaign's bookkeeping afresh (finished runs are kept in runs/)") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("runs"), list):
        raise RetrainError(f"{path} is not a campaign manifest (no list of runs) — move it away")
    return manifest


def _new_manifest(campaign: Campaign) -> dict[str, object]:
    return {"format": MANIFEST_FORMAT, "campaign": campaign.name, "source": str(campaign.source.resolve()),
            "created": now(), "updated": now(), "runs": [], "squeeze": None}


def _add_missing_runs(manifest: dict[str, object], campaign: Campaign) -> None:
    entries = manifest["runs"]
    assert isinstance(entries, list)
    known = {entry.get("name") for entry in entries if isinstance(entry, dict)}
    for run in campaign.runs:
        if run.name not in known:
            entries.append({"name": run.name, "condition": run.condition, "seed": run.seed,
                            "log_dir": str(Path(RUNS_DIR) / run.name), "max_steps": run.max_steps,
                            "status": "pending", "pid": None, "host": None, "returncode": None,
                            "started": None, "finished": None})


def update_run(campaign: Campaign, name: str, **fields: object) -> None:
    with locked_manifest(campaign) as manifest:
        entry = run_entry(manifest, name)
        entry.update(fields)


def run_entry(manifest: dict[str, object], name: str) -> dict[str, object]:
    entries = manifest["runs"]
    assert isinstance(entries, list)
    for entry in entries:
        if isinstance(entry, dict) and entry.get("name") == name:
            return entry
    raise RetrainError(f"the manifest has no run named {name!r}")


def run_is_done(campaign: Campaign, run: CampaignRun, manifest: dict[str, object]) -> bool:
    """Done: the manifest says so and the run's log holds its last step."""
    from retrain.sinks.jsonl import read_rows

    entry = run_entry(manifest, run.name)
    if entry.get("status") != "done":
        return False
    rows = read_rows(run.log_dir / "metrics.jsonl") if (run.log_dir / "metrics.jsonl").is_file() else []
    return bool(rows) and rows[-1].get("step") == run.max_steps


def run_is_live(run: CampaignRun) -> bool:
    """Whether a process holds the run's folder now (here or on another machine)."""
    from retrain.run_index import LOCK_FILE, lock_held

    return lock_held(run.log_dir / LOCK_FILE)


def host() -> str:
    return socket.gethostname()
