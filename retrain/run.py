"""A training run: build the planned components, then loop RL steps with checkpoints and logs.

``plan_run`` (retrain/plan.py) resolves every component and checks every combination
without loading a model (``retrain explain`` prints the plan); ``build_run`` instantiates
the planned factories; ``train`` loops ``rl_step`` (retrain/step.py), writes one metrics
row per step and a checkpoint (retrain/checkpoint.py) every ``save_every`` steps and at
the end.

On disk (DESIGN §7), all in ``[logging] log_dir``: ``config.toml`` (the resolved config,
secrets blanked), ``metrics.jsonl``, ``generations.jsonl``, ``trainer_state.json`` (the
commit point of a checkpoint), ``checkpoints/step_N/`` (backend and engine state) and
``engine_weights/`` (the policy published to an engine with its own copy of the model);
adapters go to ``[backend] adapter_path``/``checkpoint_step_N`` and ``final``.

A resumed run keeps the settings of its snapshot; only those in ``RESUMABLE_CHANGES``
may differ (a larger ``max_steps`` extends a finished run). With ``[training]
max_staleness = 0`` and components that declare ``exact_resume``, the resumed steps are
bit-identical to those of an uninterrupted run; sampling ahead (``max_staleness >= 1``)
resumes consistently (no prompt trained twice or lost) but not bit-identically. The first
Ctrl-C, SIGTERM or SIGHUP finishes the step in progress, checkpoints it and stops; a
second one stops now (retrain/stopping.py, docs/checkpoints.md).
Engines and backends are closed on every way out of a run: its end, an error, a signal.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import json
import logging
import os
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrain.agreement import AgreementWatch
from retrain.checkpoint import read_trainer_state, restore, save_checkpoint, save_final_adapter
from retrain.config.loader import ENV_PREFIX, ResolvedConfig, load_config, replace_setting
from retrain.config.schema import Config
from retrain.config.snapshot import config_to_dict, missing_secrets, redacted_paths, write_snapshot
from retrain.data.stream import PromptStream
from retrain.errors import ConfigIssue, RetrainError
from retrain.http import RequestCancelled
from retrain.inputs import absolute_input_paths, check_inputs, input_fingerprints, input_settings
from retrain.metrics import metrics_row
from retrain.plan import RunPlan, plan_run, with_absolute_search_paths
from retrain.publication import Publisher
from retrain.run_dirs import CONFIG_FILE, adapter_dir, claim_output_dirs
from retrain.sampling import BatchSizes, GroupCollector, LookaheadCollector, RefillingCollector, SamplingSettings
from retrain.sinks import build_sinks
from retrain.step import NoPlanning, Run, StepRecord, rl_step
from retrain.stopping import RunInterrupted, StopSignals
from retrain.types import Collector, Encoder, Engine, Environment, PlanningDetector, SamplingParams, StepObserver

logger = logging.getLogger(__name__)

ENGINE_WEIGHTS_DIR = "engine_weights"


def effective_seed(config: Config) -> int:
    """``[training] seed``, or a fresh random one when it is -1 (recorded in the snapshot)."""
    if config.training.seed >= 0:
        return config.training.seed
    return int.from_bytes(os.urandom(4), "little")


def seed_global_rngs(seed: int) -> None:
    """Seed Python's, numpy's and (when installed) torch's global generators; torch's
    drives LoRA dropout, so without it one seed would not give one run."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    if importlib.util.find_spec("torch") is not None:
        import torch

        torch.manual_seed(seed)  # every CUDA device too


def build_run(plan: RunPlan, resume_state: Mapping[str, object] | None = None) -> Run:
    """Build the planned components (this loads the model). Whatever was built is
    closed again if a later part fails; a built run is closed with ``close_run``."""
    seed = _int(resume_state, "seed") if resume_state else effective_seed(plan.config)
    config = replace_setting(plan.config, "training.seed", seed)
    seed_global_rngs(seed)
    completed = _int(resume_state, "step") if resume_state else 0
    log_dir = Path(config.logging.log_dir)
    with contextlib.ExitStack() as stack:
        wandb_run_id = resume_state.get("wandb_run_id") if resume_state else None
        sinks = stack.enter_context(contextlib.closing(build_sinks(
            config, config.training.max_steps, completed=completed,
            wandb_run_id=wandb_run_id if isinstance(wandb_run_id, str) and wandb_run_id else None)))
        # The environment (prompts, rewards) is built before the model loads, so that a bad
        # data file or reward setting is reported in seconds.
        environment = stack.enter_context(contextlib.closing(plan.environment(config)))
        backend = stack.enter_context(contextlib.closing(plan.backend(config)))
        engine = stack.enter_context(contextlib.closing(plan.engine(config)))
        sizes = BatchSizes(config.training.batch_size)
        collector = stack.enter_context(contextlib.closing(build_collector(plan, config, environment,
                                                                           backend.encode_prompt, engine, seed, sizes)))
        planning: PlanningDetector = plan.planning(config) if plan.planning else NoPlanning()
        publisher = Publisher(backend, engine, plan.publication, log_dir / ENGINE_WEIGHTS_DIR,
                              allow_stale=config.inference.allow_stale_weights)
        return Run(config=config, log_dir=log_dir, adapter_dir=adapter_dir(config), seed=seed, backend=backend,
                   engine=engine, collector=collector, planning=planning, credit=plan.credit, publisher=publisher,
                   sinks=sinks, observers=step_observers(config, sizes), start_step=completed + 1,
                   resources=stack.pop_all())


def step_observers(config: Config, sizes: BatchSizes) -> list[StepObserver]:
    """What reads each step's row: the sampler/trainer agreement watch, and the USL
    backpressure controller when ``[backpressure] enabled`` (it sets ``sizes``)."""
    observers: list[StepObserver] = [AgreementWatch()]
    if config.backpressure.enabled:
        from retrain.backpressure_observer import Backpressure

        observers.append(Backpressure(config, sizes))
    return observers


def build_collector(plan: RunPlan, config: Config, environment: Environment, encode: Encoder, engine: Engine,
                    seed: int, sizes: BatchSizes) -> Collector:
    """Prompts in step order, sampled and scored; refilled (dynamic sampling) and sampled
    ahead of training (``max_staleness``) as configured."""
    training = config.training
    stream = PromptStream(environment.examples(), seed, shuffle=config.data.shuffle)
    settings = SamplingSettings(training.batch_size, SamplingParams(
        training.group_size, training.max_tokens, training.temperature, training.top_p, plan.credit.needs_entropies))
    collector: GroupCollector
    if training.dynamic_sampling:
        collector = RefillingCollector(stream, environment, engine, encode, settings,
                                       training.dynamic_sampling_max_rounds, sizes)
    else:
        collector = GroupCollector(stream, environment, engine, encode, settings, sizes)
    if training.max_staleness:
        return LookaheadCollector(collector, training.max_staleness, last_step=training.max_steps)
    return collector


def _int(state: Mapping[str, object], key: str) -> int:
    value = state[key]
    if not isinstance(value, int):
        raise RetrainError(f"cannot resume: the trainer state's {key} is not an integer")
    return value


@dataclass
class RunSummary:
    log_dir: Path
    adapter_dir: Path
    final_adapter: Path
    steps: int
    last_row: dict[str, object]


# Settings a resumed run may change: they decide how long it runs, what it logs and where,
# never what it computes, so the resumed steps stay the steps the first run would have taken.
RESUMABLE_CHANGES = frozenset({
    "training.max_steps", "training.save_every", "resume.from", "logging.log_dir", "backend.adapter_path",
    "logging.wandb_project",
    "logging.wandb_run_name", "logging.wandb_entity", "logging.wandb_group", "logging.wandb_tags",
    "logging.generations_per_step",
})


def _flat_settings(config: Config) -> dict[str, object]:
    """Every setting as ``{"section.key": value}``, secrets blanked as in the snapshot."""
    return {f"{section}.{key}": value for section, table in config_to_dict(config).items() for key, value in table.items()}


def pinned_settings(config: Config) -> dict[str, object]:
    """The settings a checkpoint was taken with that a resume may not change (as JSON
    data): a snapshot edited by hand since is told apart from the run's own."""
    fixed = RESUMABLE_CHANGES | {spec.dotted for spec in input_settings()}
    # As JSON text: a TOML date has no JSON form, and a NaN would differ from itself.
    return {key: json.dumps(value, default=str, sort_keys=True) for key, value in _flat_settings(config).items()
            if key not in fixed}


def _refuse_edited_snapshot(snapshot: Config, state: Mapping[str, object], snapshot_path: Path) -> None:
    recorded = state.get("settings")
    if not isinstance(recorded, dict):
        return  # a checkpoint from before settings were recorded
    now = pinned_settings(snapshot)
    edited = sorted(key for key in recorded.keys() | now.keys() if recorded.get(key) != now.get(key))
    if edited:
        shown = ", ".join(f"{key} = {now.get(key)} (the checkpoint was taken with {recorded.get(key)})"
                          for key in edited[:6])
        raise RetrainError(f"cannot resume: {snapshot_path} was edited since the last checkpoint: {shown}"
                           f"{' ...' if len(edited) > 6 else ''} — a resumed run continues with the run's own "
                           "settings: undo the edit, or start a new run (a new --log-dir) with the settings you want")


def check_resume_settings(config: Config, log_dir: Path, state: dict[str, object]) -> Config:
    """The config a resumed run continues with: the snapshot's settings, except the
    ones in ``RESUMABLE_CHANGES`` (a larger ``max_steps`` extends a finished run).

    Any other setting that differs from ``<log_dir>/config.toml`` would make the resumed
    steps differ from the ones the run would have taken, so it is an error.
    """
    snapshot_path = log_dir / CONFIG_FILE
    if not snapshot_path.is_file():
        raise RetrainError(f"cannot resume: {snapshot_path} (the run's config snapshot) does not exist")
    snapshot = load_config(snapshot_path, environ={})
    _refuse_edited_snapshot(snapshot, state, snapshot_path)
    if config.training.seed < 0:
        # "a fresh seed" in the config: the run's own seed is the one in its snapshot
        config = replace_setting(config, "training.seed", snapshot.training.seed)
    # A snapshot from before input paths were made absolute holds them as written.
    before, now = _flat_settings(absolute_input_paths(snapshot)), _flat_settings(config)
    recorded = state.get("inputs")
    # An input file may be named anew (it moved): what counts is its content, checked below.
    moved = {spec.dotted for spec in input_settings()
             if isinstance(recorded, dict) and isinstance(recorded.get(spec.dotted), str)}
    changed = sorted(key for key in before if key not in RESUMABLE_CHANGES | moved and before[key] != now.get(key))
    if changed:
        shown = ", ".join(f"{key} = {now.get(key)!r} (the run has {before[key]!r})" for key in changed[:6])
        raise RetrainError(
            f"cannot resume {log_dir}: the config differs from the run's snapshot {snapshot_path}: {shown}"
            f"{' ...' if len(changed) > 6 else ''} — resume with `retrain --resume {log_dir}` and no other "
            "settings (only max_steps, save_every and logging outputs may change), or start a new --log-dir"
        )
    if isinstance(recorded, dict):
        check_inputs(config, recorded, log_dir)
    _refuse_missing_secrets(config, state, log_dir)
    done = _int(state, "step")
    if config.training.max_steps < done:
        raise RetrainError(
            f"cannot resume {log_dir}: it has already completed {done} steps but max_steps is "
            f"{config.training.max_steps} — give --max-steps {done} or more"
        )
    return config


def _refuse_missing_secrets(config: Config, state: Mapping[str, object], log_dir: Path) -> None:
    """The snapshot blanks secrets: a resumed run must be given them again, not run
    with an empty ``api_key`` a plugin would take for a real one."""
    recorded = state.get("redacted")
    missing = missing_secrets(config, recorded) if isinstance(recorded, list) else []
    if missing:
        names = ", ".join(f"{ENV_PREFIX}{path.upper().replace('.', '__')}" for path in missing)
        raise RetrainError(f"cannot resume {log_dir}: the run's snapshot does not keep secrets, and "
                           f"{', '.join(missing)} {'was' if len(missing) == 1 else 'were'} one — give "
                           f"{'it' if len(missing) == 1 else 'them'} again through the environment or .env "
                           f"({names})")


def resume_context(config: Config, log_dir_given: str = "") -> tuple[Config, dict[str, object] | None]:
    """The config a run continues with, and the state it resumes from (None: a fresh run).
    ``log_dir_given`` is where a log_dir was set outside the snapshot (a flag, the
    environment), if it was: a resumed run cannot move, so that is refused, not ignored."""
    resume_dir = Path(config.resume.from_) if config.resume.from_ else None
    if resume_dir is None:
        return config, None
    if log_dir_given and Path(config.logging.log_dir).resolve() != resume_dir.resolve():
        raise RetrainError(f"{log_dir_given} {config.logging.log_dir}: a resumed run continues in its own folder "
                           f"({resume_dir}) — remove it (to branch a run, copy its folder and resume the copy)")
    if Path(config.logging.log_dir) != resume_dir:
        logger.info("resuming into %s (the run's own log_dir)", resume_dir)
        config = replace_setting(config, "logging.log_dir", str(resume_dir))
    state = read_trainer_state(resume_dir)
    return check_resume_settings(config, resume_dir, state), state


def start(run: Run, state: Mapping[str, object] | None, plan: RunPlan) -> None:
    """Write the snapshot and bring the engine up to date; when resuming, first restore
    every piece of state."""
    if state is None:
        # Rows left by an earlier attempt in this folder that never reached a checkpoint
        # (it had no trainer_state.json): this run logs those steps afresh.
        run.sinks.truncate_after(0)
        write_snapshot(run.config, run.log_dir / CONFIG_FILE)
        run.publisher.publish_now()
        return
    if not plan.exact_resume:
        logger.warning("this run resumes consistently but not bit-identically: %s", _inexact_reason(plan))
    restore(run, state)
    # A later plain `--resume` continues with what this one was given (say a larger max_steps).
    write_snapshot(replace_setting(run.config, "resume.from", ""), run.log_dir / CONFIG_FILE)


def _inexact_reason(plan: RunPlan) -> str:
    if plan.config.training.max_staleness:
        return f"[training] max_staleness = {plan.config.training.max_staleness} samples ahead of training"
    parts = [f"{kind} '{plan.origins[kind].name}' does not declare exact_resume"
             for kind, capabilities in (("backend", plan.backend_capabilities), ("engine", plan.engine_capabilities))
             if not capabilities.exact_resume]
    return "; ".join(parts)


def train_loop(run: Run, carried: dict[str, object], signals: StopSignals) -> dict[str, object]:
    """Steps ``run.start_step`` .. max_steps, with logs and checkpoints; the last row.
    ``carried`` goes into every checkpoint's trainer state (``skipped_updates`` counted on
    from it, the input fingerprints). A stop signal ends the loop after the step in
    progress, with a checkpoint of it."""
    last_row: dict[str, object] = {}
    skipped = carried.get("skipped_updates", 0)
    skipped_updates = skipped if isinstance(skipped, int) else 0
    max_steps = run.config.training.max_steps
    save_every = run.config.training.save_every
    with signals.graceful():
        for step in range(run.start_step, max_steps + 1):
            started = time.perf_counter()
            record = _step_or_stop(run, step, signals)
            skipped_updates += int(record.train.skipped)
            last_row = metrics_row(record, time.perf_counter() - started, skipped_updates)
            for observer in run.observers:
                last_row.update(observer.observe(last_row))
            run.sinks.log_step(last_row)
            run.sinks.log_generations(step, record.collected.examples, record.collected.samples,
                                      record.collected.rewards_P_G.reshape(-1))
            if step == max_steps or (save_every and step % save_every == 0) or signals.requested:
                with signals.checkpointing():
                    save_checkpoint(run, step, {**carried, "skipped_updates": skipped_updates})
            if signals.signum is not None and step < max_steps:
                logger.warning("stopped after step %d of %d; continue with `retrain --resume %s`",
                               step, max_steps, run.log_dir)
                raise RunInterrupted(signals.signum)
    return last_row


def _step_or_stop(run: Run, step: int, signals: StopSignals) -> StepRecord:
    """``rl_step``; a step whose network calls were cut because the run is stopping is
    abandoned, and the run stops at its last checkpoint."""
    try:
        return rl_step(run, step)
    except RequestCancelled:
        if signals.signum is None:
            raise
        logger.warning("step %d was abandoned: its network calls did not finish within %g s of the signal; "
                       "continue from the last checkpoint with `retrain --resume %s`",
                       step, signals.network_grace_s, run.log_dir)
        raise RunInterrupted(signals.signum) from None


def run_training(resolved: ResolvedConfig, warn: Callable[[ConfigIssue], None] | None = None) -> RunSummary:
    """Plan, build, (resume,) train and checkpoint a run; ``warn`` receives every warning
    about the config, the components' included, once the plan is made."""
    given = resolved.sources.get(("logging", "log_dir"), "")
    config, state = resume_context(absolute_input_paths(with_absolute_search_paths(resolved)),
                                   given if given.startswith(("CLI", "env")) else "")
    plan = plan_run(dataclasses.replace(resolved, config=config, warnings=list(resolved.warnings)))
    for warning in plan.resolved.warnings:
        (warn or _log_warning)(warning)
    if state is None:
        refuse_overwriting_the_config(resolved, config)
    lock = claim_output_dirs(config, resuming=state is not None)
    try:
        return _train(plan, state)
    finally:
        lock.close()


def refuse_overwriting_the_config(resolved: ResolvedConfig, config: Config) -> None:
    """A new run writes its snapshot to ``<log_dir>/config.toml``; when that is the file
    the user gave (``--log-dir .`` next to a config.toml), writing it would replace their
    comments and blanked secrets for good."""
    snapshot = Path(config.logging.log_dir) / CONFIG_FILE
    if resolved.path is not None and snapshot.exists() and snapshot.resolve() == Path(resolved.path).resolve():
        raise RetrainError(f"{resolved.path} is the config you gave, and the run would write its snapshot "
                           f"over it ({snapshot}); nothing was changed — choose another --log-dir, or rename "
                           "the config")


def _log_warning(warning: ConfigIssue) -> None:
    logger.warning("%s", warning)


def _train(plan: RunPlan, state: Mapping[str, object] | None) -> RunSummary:
    with StopSignals() as signals:
        run = build_run(plan, state)
        try:
            start(run, state, plan)
            skipped = state.get("skipped_updates", 0) if state else 0
            carried = {"skipped_updates": skipped if isinstance(skipped, int) else 0,
                       "inputs": input_fingerprints(run.config), "redacted": redacted_paths(run.config),
                       "settings": pinned_settings(run.config)}
            last_row = train_loop(run, carried, signals)
            with signals.checkpointing():
                final = save_final_adapter(run)
        finally:
            run.close()
    return RunSummary(run.log_dir, run.adapter_dir, final, run.config.training.max_steps, last_row)
