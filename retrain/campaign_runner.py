"""Running a campaign's runs: one in this process (``--campaign-run NAME``), all of them
one after another or in a bounded pool of child processes, or printed as commands for
other machines (``--print-commands``).

Each child is ``python -m retrain <campaign.toml> --campaign-run <name> [overrides]``, with
its output in ``runs/<name>/stdout.log``. A child asks the kernel to send it SIGTERM when
its parent dies (``PR_SET_PDEATHSIG``), so even a parent killed with SIGKILL leaves no
orphan: the child checkpoints its step and stops, and re-running the campaign resumes it.
Ctrl-C or SIGTERM to the parent is passed on to every child; children still alive
``CHILD_GRACE_S`` later are killed.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import logging
import os
import shlex
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from types import FrameType

from retrain.campaign import (
    Campaign,
    CampaignRun,
    host,
    locked_manifest,
    now,
    run_entry,
    run_is_done,
    run_is_live,
    update_run,
)
from retrain.config.loader import Override, ResolvedConfig, replace_setting
from retrain.errors import RetrainError

logger = logging.getLogger(__name__)

CHILD_GRACE_S = 30.0
POLL_S = 0.2
PR_SET_PDEATHSIG = 1


def command_for(campaign: Campaign, run: CampaignRun) -> list[str]:
    """The self-contained command that runs (or resumes) ``run``."""
    return [sys.executable, "-m", "retrain", str(campaign.source.resolve()), "--campaign-run", run.name,
            *_override_args(campaign.overrides)]


def _override_args(overrides: tuple[Override, ...]) -> list[str]:
    return [item for override in overrides for item in (f"--{'.'.join(override.path)}", override.raw)]


def print_commands(campaign: Campaign) -> int:
    """One shell line per run not yet done, each runnable on any machine that sees this
    folder at the same path (a SLURM array task, a Ray job, GNU parallel)."""
    with locked_manifest(campaign) as manifest:
        pending = [run for run in campaign.runs if not run_is_done(campaign, run, manifest)]
    cwd = shlex.quote(os.getcwd())
    for run in pending:
        print(f"cd {cwd} && {shlex.join(command_for(campaign, run))}")
    return 0


# --- one run, in this process ------------------------------------------------------------

def run_one(campaign: Campaign, name: str) -> int:
    """Run or resume the run ``name`` here, keeping its manifest entry up to date."""
    from retrain.run import run_training
    from retrain.stopping import RunInterrupted

    run = campaign.run(name)
    with locked_manifest(campaign) as manifest:
        if run_is_done(campaign, run, manifest):
            print(f"{name}: already done ({run.log_dir})")
            return 0
        if run_is_live(run):
            raise RetrainError(f"{name} is running already (a process holds {run.log_dir}) — wait for it, or stop it")
        run_entry(manifest, name).update(status="running", pid=os.getpid(), host=host(), started=now(),
                                         finished=None, returncode=None)
    code = 1
    try:
        run_training(_resumable(run), warn=lambda warning: print(f"retrain: warning: {warning}", file=sys.stderr))
        code = 0
    except RunInterrupted as stop:
        code = stop.exit_code
        raise
    finally:
        status = "done" if code == 0 else "interrupted" if code > 128 else "failed"
        update_run(campaign, name, status=status, returncode=code, finished=now(), pid=None)
        if code == 0:
            after_run(campaign, run)
    print(f"{name}: done ({run.log_dir})")
    return 0


def _resumable(run: CampaignRun) -> ResolvedConfig:
    """The run's config, resuming from its folder when it has checkpointed."""
    if not (run.log_dir / "trainer_state.json").is_file():
        return run.resolved
    config = replace_setting(run.resolved.config, "resume.from", str(run.log_dir))
    return dataclasses.replace(run.resolved, config=config)


def after_run(campaign: Campaign, run: CampaignRun) -> None:
    """What follows a completed run: the squeeze analysis after the first one (when the
    file has [squeeze]), and the summary once every run is done."""
    from retrain.campaign_summary import write_summary

    if campaign.squeeze is not None:
        _squeeze_first(campaign, run)
    with locked_manifest(campaign) as manifest:
        finished = all(run_is_done(campaign, other, manifest) for other in campaign.runs)
    if finished:
        write_summary(campaign)


def _squeeze_first(campaign: Campaign, run: CampaignRun) -> None:
    with locked_manifest(campaign) as manifest:
        if manifest.get("squeeze") is not None:
            return
        manifest["squeeze"] = {"run": run.name, "status": "running"}
    record = _squeeze(campaign, run)
    with locked_manifest(campaign) as manifest:
        manifest["squeeze"] = record


def _squeeze(campaign: Campaign, run: CampaignRun) -> dict[str, object]:
    """LoRA-Squeeze of the run's final adapter, with the file's [squeeze] settings (a
    relative output_path is inside the campaign folder). A failure is recorded, not
    raised: the runs themselves are fine."""
    from retrain.commands.squeeze import run_squeeze

    assert campaign.squeeze is not None
    adapter = run.log_dir / "adapter" / "final"
    output = campaign.squeeze.output_path
    if output and not os.path.isabs(output):
        output = str(campaign.directory / output)
    settings = dataclasses.replace(campaign.squeeze, adapter_path=str(adapter), output_path=output)
    try:
        result = run_squeeze(dataclasses.replace(run.resolved.config, squeeze=settings))
    except RetrainError as error:
        logger.warning("LoRA-Squeeze of %s failed: %s", adapter, error)
        return {"run": run.name, "adapter": str(adapter), "status": "failed", "error": str(error)}
    return {"run": run.name, "adapter": str(adapter), "status": "done", **result}


# --- every run, in child processes ---------------------------------------------------------

def _die_with_parent() -> None:
    """In the child, before exec: SIGTERM when the parent dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclasses.dataclass
class Child:
    run: CampaignRun
    process: subprocess.Popen[bytes]
    started: float


def run_all(campaign: Campaign) -> int:
    """Every run not yet done, ``max_workers`` at a time when ``parallel`` (else one at a
    time), each in its own process; the exit code is 0 when all are done."""
    workers = campaign.settings.max_workers if campaign.settings.parallel else 1
    with locked_manifest(campaign) as manifest:
        todo = [run for run in campaign.runs if not run_is_done(campaign, run, manifest)]
    skipped = len(campaign.runs) - len(todo)
    print(f"campaign {campaign.name}: {len(campaign.runs)} runs in {campaign.directory} "
          f"({skipped} done already, {len(todo)} to run, {workers} at a time)")
    with _forwarded_signals() as stop:
        failed = _pool(campaign, todo, workers, stop)
    if stop.signum is not None:
        return 128 + stop.signum
    with locked_manifest(campaign) as manifest:
        complete = all(run_is_done(campaign, run, manifest) for run in campaign.runs)
    if complete:
        from retrain.campaign_summary import write_summary

        write_summary(campaign)
        print(f"campaign {campaign.name}: all {len(campaign.runs)} runs done — summary in "
              f"{campaign.directory / 'summary.md'}")
    return 1 if failed else 0


def _pool(campaign: Campaign, todo: list[CampaignRun], workers: int, stop: _Stop) -> list[str]:
    pending, active, failed = list(todo), list[Child](), list[str]()
    last_start = 0.0
    while (pending or active) and stop.signum is None:
        if pending and len(active) < workers and time.monotonic() - last_start >= _stagger(campaign, active):
            run = pending.pop(0)
            if run_is_live(run):
                print(f"  {run.name}: running elsewhere (its folder is locked); skipped")
                continue
            active.append(_start(campaign, run))
            last_start = time.monotonic()
            continue
        for child in [child for child in active if child.process.poll() is not None]:
            active.remove(child)
            if _finished(campaign, child):
                failed.append(child.run.name)
        time.sleep(POLL_S)
    if stop.signum is not None:
        _stop_children(campaign, active, stop.signum)
    return failed


def _stagger(campaign: Campaign, active: list[Child]) -> float:
    return campaign.settings.stagger_seconds if active else 0.0


def _start(campaign: Campaign, run: CampaignRun) -> Child:
    run.log_dir.mkdir(parents=True, exist_ok=True)
    with open(run.log_dir / "stdout.log", "ab") as log:
        process = subprocess.Popen(command_for(campaign, run), stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent,
                                   # Its own session: a terminal's Ctrl-C reaches the parent
                                   # only, which passes it on once (a second one would make
                                   # the child drop its step instead of checkpointing it).
                                   start_new_session=True)
    print(f"  {run.name}: started (pid {process.pid}, log {run.log_dir / 'stdout.log'})")
    return Child(run, process, time.monotonic())


def _finished(campaign: Campaign, child: Child) -> bool:
    """Report a child that exited; True when it failed."""
    code = child.process.returncode
    elapsed = time.monotonic() - child.started
    with locked_manifest(campaign) as manifest:
        entry = run_entry(manifest, child.run.name)
        if entry.get("status") == "running":  # the child could not say how it ended (killed)
            entry.update(status="failed" if code >= 0 else "interrupted", returncode=code, finished=now(), pid=None)
    if code == 0:
        print(f"  {child.run.name}: done in {elapsed:.0f} s")
        return False
    print(f"  {child.run.name}: FAILED (exit {code}) — see {child.run.log_dir / 'stdout.log'}")
    return True


def _stop_children(campaign: Campaign, active: list[Child], signum: int) -> None:
    """Pass the stop on, wait for checkpoints, then kill what is left."""
    for child in active:
        with contextlib.suppress(ProcessLookupError):
            child.process.send_signal(signum)
    deadline = time.monotonic() + CHILD_GRACE_S
    for child in active:
        try:
            child.process.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            child.process.kill()
            child.process.wait()
        _finished(campaign, child)
    print(f"campaign {campaign.name}: stopped; run the same command again to resume")


@dataclasses.dataclass
class _Stop:
    signum: int | None = None


@contextlib.contextmanager
def _forwarded_signals() -> Iterator[_Stop]:
    """SIGINT, SIGTERM and SIGHUP set ``signum`` (the pool then stops its children)."""
    stop = _Stop()

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.signum = signum

    previous = {signum: signal.signal(signum, handle) for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
