"""A training run: resolve every component, then loop RL steps with checkpoints and logs.

``plan_run`` (retrain/plan.py) resolves every plugin and checks every combination without loading a model
(``retrain explain`` prints the plan); ``build_run`` then builds the heavy parts;
``train`` loops ``rl_step`` (retrain/step.py), writes one metrics row per step and a
checkpoint every ``save_every`` steps and at the end.

On disk (DESIGN §7), all in ``[logging] log_dir``: ``config.toml`` (the resolved config,
secrets blanked), ``metrics.jsonl``, ``generations.jsonl``, ``trainer_state.json`` (the
commit point of a checkpoint) and ``checkpoints/step_N/`` (backend state); adapters go
to ``[backend] adapter_path``/``checkpoint_step_N`` and ``final``. A checkpoint's pieces
are written first and ``trainer_state.json`` last, atomically, so a run killed at any
moment resumes from the last complete checkpoint.

A resumed run keeps the settings of its snapshot; only those in ``RESUMABLE_CHANGES``
may differ (a larger ``max_steps`` extends a finished run). The first Ctrl-C finishes
the step in progress, checkpoints it and stops (docs/checkpoints.md).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import os
import random
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrain.atomic import write_atomic
from retrain.config.loader import ResolvedConfig, load_config, replace_setting
from retrain.config.schema import Config
from retrain.config.snapshot import config_to_dict, write_snapshot
from retrain.errors import RetrainError
from retrain.plan import RunPlan, check_capabilities, config_base_dir, plan_run
from retrain.registry import resolve
from retrain.run_dirs import CONFIG_FILE, STATE_FILE, adapter_dir, claim_output_dirs

logger = logging.getLogger(__name__)

STATE_VERSION = 1


def build_reward(config: Config, base_dir: Path) -> object:
    """The ``[reward] type``; the custom reward finds its module through ``[plugins]
    search_paths`` relative to the config file's folder, like every plugin."""
    reward_class = resolve("reward", config.reward.type, config.plugins, base_dir).obj
    if config.reward.type == "custom":
        return reward_class(config, base_dir=base_dir)
    return reward_class(config)


# ---------------------------------------------------------------------------------------


class InProcessWeights:
    """The engine is the backend's own (it shares or copies the training model)."""

    def __init__(self, backend: object) -> None:
        self.backend = backend

    def sync(self) -> int:
        """Make the engine sample from the latest weights; the policy version."""
        return self.backend.sync_engine_weights()  # type: ignore[attr-defined]

    def resume(self, version: int | None) -> None:
        """Nothing to do: restoring the backend restored its engine."""


class AdapterPublisher:
    """The engine has its own copy of the model (an engine plugin, a server): after each
    update the backend writes its adapter to ``directory`` and the engine loads it.
    One published adapter is kept on disk at a time."""

    def __init__(self, backend: object, engine: object, directory: Path) -> None:
        self.backend = backend
        self.engine = engine
        # Absolute: an engine in another process resolves paths from its own directory.
        self.directory = directory.resolve()
        self.published_version = 0  # the engine starts from the same base weights

    def sync(self) -> int:
        version = int(self.backend.sync_engine_weights())  # type: ignore[attr-defined]
        if version != self.published_version:
            self.resume(version)
        return version

    def resume(self, version: int | None) -> None:
        """Publish the current weights as ``version`` (after a restore, or an update);
        None: a checkpoint that did not record it, so ask the backend."""
        if version is None:
            version = int(self.backend.sync_engine_weights())  # type: ignore[attr-defined]
        path = self.directory / f"policy_v{version}"
        self.backend.save_adapter(path)  # type: ignore[attr-defined]
        self.engine.load_adapter(path, version)  # type: ignore[attr-defined]
        for old in self.directory.glob("policy_v*"):
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
        self.published_version = version


class NoPlanning:
    """Used when no stage reads the planning mask: every token is an execution token."""

    def detect(self, texts: list[str], token_char_spans: list[list[tuple[int, int]]] | None) -> np.ndarray:
        width = max((len(spans) for spans in token_char_spans or []), default=0)
        return np.zeros((len(texts), width), dtype=bool)


@dataclass
class Run:
    config: Config
    log_dir: Path
    adapter_dir: Path
    seed: int
    backend: object
    engine: object
    collector: object
    credit: object
    planning: object
    sinks: object
    weights: object  # InProcessWeights or AdapterPublisher: brings the engine up to date
    start_step: int = 1


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


def build_run(plan: RunPlan, resume_state: dict[str, object] | None = None) -> Run:
    """Build the heavy components of a planned run (this loads the model)."""
    from retrain.config.rules import parse_devices
    from retrain.data.stream import PromptStream
    from retrain.planning import build_planning_detector
    from retrain.sampling import (
        GroupCollector,
        PrefetchingCollector,
        RefillingCollector,
        SamplingSettings,
    )
    from retrain.sinks import build_sinks

    config = plan.config
    seed = int(resume_state["seed"]) if resume_state else effective_seed(config)  # type: ignore[arg-type]
    config = replace_setting(config, "training.seed", seed)
    seed_global_rngs(seed)
    base = plan.base_dir
    data = resolve("data", config.data.source, config.plugins, base).obj(config)
    reward = build_reward(config, base)
    backend = resolve("backend", config.backend.backend, config.plugins, base).obj(config)
    check_capabilities(backend, config, plan.credit, resuming=resume_state is not None)
    weights: InProcessWeights | AdapterPublisher
    if config.inference.engine == "pytorch":
        engine = backend.engine()
        weights = InProcessWeights(backend)
    else:
        engine = resolve("engine", config.inference.engine, config.plugins, base).obj(config)
        weights = AdapterPublisher(backend, engine, Path(config.logging.log_dir) / "engine_weights")
    credit = plan.credit
    planning = build_planning_detector(config, base) if credit.needs_planning else NoPlanning()  # type: ignore[attr-defined]
    stream = PromptStream(data.examples(), seed, shuffle=config.data.shuffle)
    encode = backend.encode_prompt
    training = config.training
    settings = SamplingSettings(training.batch_size, training.group_size, training.max_tokens, training.temperature,
                                training.top_p, credit.needs_entropies)  # type: ignore[attr-defined]
    collector: GroupCollector | RefillingCollector | PrefetchingCollector
    if training.dynamic_sampling:
        collector = RefillingCollector(stream, encode, engine, reward, settings,
                                       max_rounds=training.dynamic_sampling_max_rounds)
    else:
        collector = GroupCollector(stream, encode, engine, reward, settings)
    if len(parse_devices(config.backend.devices)) == 2:
        collector = PrefetchingCollector(collector, last_step=training.max_steps)
    log_dir = Path(config.logging.log_dir)
    completed = int(resume_state["step"]) if resume_state else 0  # type: ignore[arg-type]
    sinks = build_sinks(config, training.max_steps, completed=completed,
                        wandb_run_id=str(resume_state.get("wandb_run_id")) if resume_state and resume_state.get("wandb_run_id") else None)
    return Run(config=config, log_dir=log_dir, adapter_dir=adapter_dir(config), seed=seed,
               backend=backend, engine=engine, collector=collector, credit=credit, planning=planning, sinks=sinks,
               weights=weights,
               start_step=completed + 1)


# ---------------------------------------------------------------------------------------
# checkpoints and resume


def _rng_state() -> dict[str, object]:
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state()
    return {
        "python": [version, list(internal), gauss],
        "numpy": [numpy_state[0], numpy_state[1].tolist(), *numpy_state[2:]],
    }


def _restore_rng_state(state: dict[str, object]) -> None:
    version, internal, gauss = state["python"]  # type: ignore[misc]
    random.setstate((version, tuple(internal), gauss))
    name, keys, *rest = state["numpy"]  # type: ignore[misc]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), *rest))


def save_checkpoint(run: Run, step: int, extra: dict[str, object]) -> Path:
    """Write backend state, adapter and (last, atomically) ``trainer_state.json``."""
    checkpoints = run.log_dir / "checkpoints"
    final_dir = checkpoints / f"step_{step}"
    staging = checkpoints / f".step_{step}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    run.backend.save_state(staging)  # type: ignore[attr-defined]
    shutil.rmtree(final_dir, ignore_errors=True)
    os.replace(staging, final_dir)
    run.backend.save_adapter(run.adapter_dir / f"checkpoint_step_{step}")  # type: ignore[attr-defined]
    run.sinks.sync()  # type: ignore[attr-defined]  # no logged row may be newer than the state on disk
    state = {
        "version": STATE_VERSION,
        "step": step,
        "seed": run.seed,
        "checkpoint": str(final_dir.relative_to(run.log_dir)),
        "data": run.collector.state_dict(),  # type: ignore[attr-defined]
        "credit": run.credit.state_dict(),  # type: ignore[attr-defined]
        "rng": _rng_state(),
        "wandb_run_id": run.sinks.wandb_run_id,  # type: ignore[attr-defined]
        **extra,
    }
    write_atomic(run.log_dir / STATE_FILE, json.dumps(state, indent=1))
    for old in checkpoints.glob("step_*"):
        if old != final_dir:
            shutil.rmtree(old, ignore_errors=True)
    return final_dir


def read_trainer_state(log_dir: Path) -> dict[str, object]:
    path = log_dir / STATE_FILE
    if not path.is_file():
        raise RetrainError(f"cannot resume: {path} does not exist — give the log_dir of a run that saved a checkpoint")
    try:
        state = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise RetrainError(f"cannot resume: {path} is not valid JSON ({exc.msg})") from exc
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise RetrainError(f"cannot resume: {path} was not written by this version of retrain — resume with the "
                           "version that wrote it, or start a fresh run")
    expected = {"step": int, "seed": int, "checkpoint": str, "data": dict, "credit": dict, "rng": dict}
    wrong = [key for key, kind in expected.items() if not isinstance(state.get(key), kind) or isinstance(state.get(key), bool)]
    if "step" not in wrong and state["step"] < 1:  # type: ignore[operator]
        wrong.append("step")
    if wrong:
        raise RetrainError(f"cannot resume: {path} is damaged ({', '.join(wrong)} missing or of the wrong type) — "
                           "resume from a copy of the run, or start a fresh run")
    return state


def restore(run: Run, state: dict[str, object]) -> None:
    """Put every piece of the checkpoint's state back; a state file whose contents do not
    fit (edited by hand, or from another run) is a clean error, not a traceback."""
    try:
        _restore(run, state)
    except (KeyError, TypeError, ValueError, IndexError) as exc:
        raise RetrainError(f"cannot resume: {run.log_dir / STATE_FILE} is damaged ({type(exc).__name__}: {exc}) — "
                           "resume from a copy of the run, or start a fresh run") from exc


def _restore(run: Run, state: dict[str, object]) -> None:
    run.backend.load_state(run.log_dir / str(state["checkpoint"]))  # type: ignore[attr-defined]
    run.collector.load_state_dict(state["data"])  # type: ignore[attr-defined]
    run.credit.load_state_dict(state["credit"])  # type: ignore[attr-defined]
    _restore_rng_state(state["rng"])  # type: ignore[arg-type]
    run.sinks.truncate_after(int(state["step"]))  # type: ignore[attr-defined,arg-type]


# ---------------------------------------------------------------------------------------
# the loop


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
    if config.training.seed < 0:
        # "a fresh seed" in the config: the run's own seed is the one in its snapshot
        config = replace_setting(config, "training.seed", snapshot.training.seed)
    before, now = _flat_settings(snapshot), _flat_settings(config)
    changed = sorted(key for key in before if key not in RESUMABLE_CHANGES and before[key] != now.get(key))
    if changed:
        shown = ", ".join(f"{key} = {now.get(key)!r} (the run has {before[key]!r})" for key in changed[:6])
        raise RetrainError(
            f"cannot resume {log_dir}: the config differs from the run's snapshot {snapshot_path}: {shown}"
            f"{' ...' if len(changed) > 6 else ''} — resume with `retrain --resume {log_dir}` and no other "
            "settings (only max_steps, save_every and logging outputs may change), or start a new --log-dir"
        )
    done = int(state["step"])  # type: ignore[arg-type]
    if config.training.max_steps < done:
        raise RetrainError(
            f"cannot resume {log_dir}: it has already completed {done} steps but max_steps is "
            f"{config.training.max_steps} — give --max-steps {done} or more"
        )
    return config


class RunInterrupted(KeyboardInterrupt):
    """The run stopped on a signal after saving a checkpoint; exit code 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.exit_code = 128 + signum


class StopRequest:
    """Ctrl-C (SIGINT) or SIGTERM (what job schedulers send) during training: the first
    one lets the current step finish, saves a checkpoint and stops the run
    (``RunInterrupted``: exit code 130 or 143); a second one stops at once, losing the
    steps since the last checkpoint.

    Only installed in the main thread, and not for a signal that is ignored (SIGINT in a
    background job).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def __enter__(self) -> StopRequest:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                if signal.getsignal(signum) in (signal.default_int_handler, signal.SIG_DFL):
                    self.previous[signum] = signal.signal(signum, self._handle)
        return self

    def _handle(self, signum: int, frame: object) -> None:
        if self.signum is not None:
            raise RunInterrupted(signum)
        self.signum = signum
        logger.warning("%s: finishing this step and saving a checkpoint (send it again to stop now)",
                       signal.Signals(signum).name)

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]
        self.previous.clear()


def resume_context(config: Config) -> tuple[Config, dict[str, object] | None]:
    """The config a run continues with, and the state it resumes from (None: a fresh run)."""
    resume_dir = Path(config.resume.from_) if config.resume.from_ else None
    if resume_dir is None:
        return config, None
    if Path(config.logging.log_dir) != resume_dir:
        logger.info("resuming into %s (the run's own log_dir)", resume_dir)
        config = replace_setting(config, "logging.log_dir", str(resume_dir))
    state = read_trainer_state(resume_dir)
    return check_resume_settings(config, resume_dir, state), state


def start(run: Run, state: dict[str, object] | None) -> None:
    """Write the snapshot and, when resuming, restore every piece of state."""
    if state is None:
        # Rows left by an earlier attempt in this folder that never reached a checkpoint
        # (it had no trainer_state.json): this run logs those steps afresh.
        run.sinks.truncate_after(0)  # type: ignore[attr-defined]
        write_snapshot(run.config, run.log_dir / CONFIG_FILE)
        return
    restore(run, state)
    version = state.get("policy_version")
    run.weights.resume(int(version) if isinstance(version, int) else None)  # type: ignore[attr-defined]
    # A later plain `--resume` continues with what this one was given (say a larger max_steps).
    write_snapshot(replace_setting(run.config, "resume.from", ""), run.log_dir / CONFIG_FILE)


def train_loop(run: Run, skipped_updates: int) -> dict[str, object]:
    """Steps ``run.start_step`` .. max_steps, with logs and checkpoints; the last row."""
    from retrain.metrics import metrics_row
    from retrain.step import rl_step

    last_row: dict[str, object] = {}
    max_steps = run.config.training.max_steps
    save_every = run.config.training.save_every
    with StopRequest() as stop:
        for step in range(run.start_step, max_steps + 1):
            started = time.perf_counter()
            record = rl_step(run, step)
            skipped_updates += int(record.train.skipped)
            last_row = metrics_row(record, time.perf_counter() - started, skipped_updates)
            run.sinks.log_step(last_row)  # type: ignore[attr-defined]
            run.sinks.log_generations(step, record.collected.examples, record.collected.samples,  # type: ignore[attr-defined]
                                      record.collected.rewards_P_G.reshape(-1))
            if step == max_steps or (save_every and step % save_every == 0) or stop.requested:
                save_checkpoint(run, step, {"skipped_updates": skipped_updates,
                                            "policy_version": record.policy_version})
            if stop.signum is not None and step < max_steps:
                logger.warning("stopped after step %d of %d; continue with `retrain --resume %s`",
                               step, max_steps, run.log_dir)
                raise RunInterrupted(stop.signum)
    return last_row


def with_absolute_search_paths(resolved: ResolvedConfig) -> Config:
    """``[plugins] search_paths`` made absolute (relative ones start at the config file's
    folder), so the snapshot a resumed run loads from its log_dir finds the same plugins."""
    base = config_base_dir(resolved)
    paths = [str((base / path).resolve()) if not Path(path).is_absolute() else path
             for path in resolved.config.plugins.search_paths]
    if paths == list(resolved.config.plugins.search_paths):
        return resolved.config
    return replace_setting(resolved.config, "plugins.search_paths", paths)


def run_training(resolved: ResolvedConfig) -> RunSummary:
    """Plan, build, (resume,) train and checkpoint a run."""
    config, state = resume_context(with_absolute_search_paths(resolved))
    plan = plan_run(dataclasses.replace(resolved, config=config))
    lock = claim_output_dirs(config, resuming=state is not None)
    try:
        return _train(plan, state)
    finally:
        lock.close()


def _train(plan: RunPlan, state: dict[str, object] | None) -> RunSummary:
    run = build_run(plan, state)
    try:
        start(run, state)
        last_row = train_loop(run, int(state.get("skipped_updates", 0)) if state else 0)  # type: ignore[arg-type]
        final = run.adapter_dir / "final"
        run.backend.save_adapter(final)  # type: ignore[attr-defined]
    finally:
        run.collector.close()  # type: ignore[attr-defined]
        run.sinks.close()  # type: ignore[attr-defined]
        run.backend.shutdown()  # type: ignore[attr-defined]
    return RunSummary(run.log_dir, run.adapter_dir, final, run.config.training.max_steps, last_row)
