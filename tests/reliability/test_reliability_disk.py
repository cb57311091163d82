"""A full disk (or spent quota) anywhere a run writes is a clear error naming the path and
the free space, never a traceback; no torn line is left in a log; a failed checkpoint
leaves the previous one in force and resumable.

The default tests fill a disk through retrain's write seam (``disk_fakes.FillingDisk``);
as root, where a tmpfs can be mounted, the same is checked on a real full filesystem.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from disk_fakes import FillingDisk

from retrain.atomic import (
    DiskFullError,
    disk_full_errno,
    write_all,
    write_atomic,
    writes_through,
)
from retrain.checkpoint import save_checkpoint, save_final_adapter
from retrain.sinks import GenerationsLog, MetricsLog

from cli_runs import (
    cli_environment,
    describe,
    read_jsonl_strict,
    run_retrain,
    workdir_with_default_config,
)

HERE = Path(__file__).resolve().parent



def refused(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


# ---------------------------------------------------------------------------- logs


@pytest.mark.parametrize("log_class", [MetricsLog, GenerationsLog])
def test_an_append_that_does_not_fit_leaves_the_file_as_it_was(tmp_path: Path, log_class) -> None:
    path = tmp_path / "logs" / "rows.jsonl"
    log = log_class(path) if log_class is MetricsLog else log_class(path, per_step=2)
    log.append_rows([{"step": 1, "text": "a" * 50}, {"step": 1, "text": "b"}])
    before = path.read_bytes()
    # 20 bytes fit: the row is written in part, then the disk is full.
    with writes_through(FillingDisk("rows.jsonl", skip=0, free=20)), pytest.raises(DiskFullError) as raised:
        log.append_rows([{"step": 2, "text": "c" * 200}])
    assert path.read_bytes() == before  # no torn line
    message = str(raised.value)
    assert message.startswith("cannot append to rows.jsonl: the disk is full (No space left on device) at ")
    assert str(path) in message and "free on that filesystem" in message and "the rows need 2" in message
    assert "retrain --resume" in message
    # Once there is space again, the log goes on with whole rows.
    log.append_rows([{"step": 2, "text": "d"}])
    log.close()
    assert [row["step"] for row in read_jsonl_strict(path)] == [1, 1, 2]


def test_a_spent_quota_is_named(tmp_path: Path) -> None:
    log = MetricsLog(tmp_path / "metrics.jsonl")
    with writes_through(FillingDisk("metrics.jsonl", skip=0, free=0, number=errno.EDQUOT)), \
            pytest.raises(DiskFullError, match=r"the disk quota is exceeded \(Disk quota exceeded\)"):
        log.append({"step": 1})
    assert (tmp_path / "metrics.jsonl").read_bytes() == b""


def test_an_atomic_write_that_does_not_fit_keeps_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    path = tmp_path / "trainer_state.json"
    write_atomic(path, "old")
    with writes_through(FillingDisk("trainer_state.json", skip=0, free=3)), pytest.raises(DiskFullError) as raised:
        write_atomic(path, "x" * 5000)
    assert path.read_text() == "old"
    assert sorted(item.name for item in tmp_path.iterdir()) == ["trainer_state.json"]
    assert f"cannot write trainer_state.json: the disk is full (No space left on device) at {path}" in str(raised.value)
    assert "it needs 5.0 KB" in str(raised.value)


def test_a_full_disk_is_told_apart_from_other_failures(tmp_path: Path) -> None:
    # torch wraps the OSError of a full disk in a RuntimeError; safetensors names it only in text.
    try:
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None
    except RuntimeError as wrapped:
        assert disk_full_errno(wrapped, tmp_path) == errno.ENOSPC
    named = Exception("Error while serializing: I/O error: No space left on device (os error 28)")
    assert disk_full_errno(named, tmp_path) == errno.ENOSPC
    assert disk_full_errno(Exception("I/O error (os error 122)"), tmp_path) == errno.EDQUOT
    for other in (OSError(errno.EACCES, "Permission denied"), ValueError("no space for this"), KeyboardInterrupt()):
        assert disk_full_errno(other, tmp_path) is None


def test_a_write_that_makes_no_progress_is_an_error_not_a_loop(tmp_path: Path) -> None:
    with open(tmp_path / "f", "wb") as stream, writes_through(lambda fd, data: 0), pytest.raises(OSError):
        write_all(stream.fileno(), b"data")


# ---------------------------------------------------------------------- checkpoints


class WritingPiece:
    """Writes a file of ``size`` bytes through the write seam, as a backend's or an
    engine's state (or an adapter folder) would."""

    def __init__(self, name: str, size: int) -> None:
        self.name = name
        self.size = size

    def __call__(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(folder / self.name, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            write_all(fd, b"w" * self.size)
        finally:
            os.close(fd)


class FakeBackend:
    policy_version = 1

    def __init__(self) -> None:
        self.save_state = WritingPiece("backend.bin", 3000)
        self.save_adapter = WritingPiece("adapter.bin", 2000)


class FakeEngine:
    save_state = WritingPiece("engine.bin", 500)


class FakeSinks:
    wandb_run_id = None

    def sync(self) -> None:
        return None


class FakeStateful:
    def state_dict(self) -> dict[str, object]:
        return {"position": 0}


class FakeRun:
    """What ``save_checkpoint`` reads of a run."""

    def __init__(self, log_dir: Path, adapter_dir: Path) -> None:
        self.log_dir, self.adapter_dir, self.seed = log_dir, adapter_dir, 0
        self.backend, self.engine, self.sinks = FakeBackend(), FakeEngine(), FakeSinks()
        self.collector = self.credit = FakeStateful()
        self.observers: list[object] = []


def every_file(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


@pytest.mark.parametrize(("match", "where", "needed"), [
    ("backend.bin", "checkpoints", "it needs about 3.5 KB (the size of the previous checkpoint's step_2)"),
    ("engine.bin", "checkpoints", "it needs about 3.5 KB (the size of the previous checkpoint's step_2)"),
    ("adapter.bin", "adapter", "it needs about 2.0 KB (the size of the previous checkpoint's checkpoint_step_2)"),
    ("trainer_state.json", "trainer_state.json", "it needs "),
])
def test_a_checkpoint_that_does_not_fit_leaves_the_previous_one_and_nothing_of_itself(
        tmp_path: Path, match: str, where: str, needed: str) -> None:
    run = FakeRun(tmp_path / "logs", tmp_path / "logs" / "adapter")
    save_checkpoint(run, 2, {})  # type: ignore[arg-type]
    before = every_file(tmp_path)
    state = (run.log_dir / "trainer_state.json").read_text()
    with writes_through(FillingDisk(match, skip=0, free=100)), pytest.raises(DiskFullError) as raised:
        save_checkpoint(run, 4, {})  # type: ignore[arg-type]
    assert every_file(tmp_path) == before
    assert (run.log_dir / "trainer_state.json").read_text() == state
    message = str(raised.value)
    assert message.startswith(f"cannot write checkpoint 4: the disk is full (No space left on device) at {tmp_path}")
    assert where in message.split(" at ")[1].split(" — ")[0], message
    assert "free on that filesystem" in message and needed in message
    assert f"; then continue with `retrain --resume {run.log_dir}` (checkpoint 2 is intact)" in message


def test_a_first_checkpoint_that_does_not_fit_says_so(tmp_path: Path) -> None:
    run = FakeRun(tmp_path / "logs", tmp_path / "adapters")
    with writes_through(FillingDisk("backend.bin", skip=0, free=10)), pytest.raises(DiskFullError) as raised:
        save_checkpoint(run, 2, {})  # type: ignore[arg-type]
    assert "; then run the same command again (nothing was checkpointed yet)" in str(raised.value)
    assert "known only after a first checkpoint" in str(raised.value)
    assert every_file(run.log_dir) == ["checkpoints"] and every_file(run.adapter_dir) == []


def test_a_final_adapter_that_does_not_fit_is_a_clear_error(tmp_path: Path) -> None:
    run = FakeRun(tmp_path / "logs", tmp_path / "logs" / "adapter")
    save_checkpoint(run, 2, {})  # type: ignore[arg-type]
    with writes_through(FillingDisk("adapter.bin", skip=0, free=10)), pytest.raises(DiskFullError) as raised:
        save_final_adapter(run)  # type: ignore[arg-type]
    assert str(raised.value).startswith(f"cannot write the final adapter {run.adapter_dir / 'final'}: the disk is full")
    assert f"`retrain --resume {run.log_dir}` writes it" in str(raised.value)


# ------------------------------------------------------------- real runs, seam disk


def run_on_filling_disk(workdir: Path, cache: Path, match: str, skip: int, *args: str) -> subprocess.CompletedProcess[str]:
    """``retrain ARGS`` with every write going through ``FillingDisk(match, skip, 100)``."""
    return subprocess.run([sys.executable, str(HERE / "disk_fakes.py"), match, str(skip), "100", "--", *args],
                          cwd=workdir, env=cli_environment(cache), capture_output=True, text=True, timeout=300,
                          check=False)


@pytest.mark.parametrize(("match", "skip", "phrases"), [
    # The first trainer state (step 2) is written, the second (step 4) does not fit.
    ("trainer_state.json", 1, ["cannot write checkpoint 4: the disk is full", "logs/trainer_state.json",
                               "then continue with `retrain --resume logs` (checkpoint 2 is intact)"]),
    # Rows 1-2 are written, row 3 does not fit.
    ("metrics.jsonl", 2, ["cannot append to metrics.jsonl: the disk is full", "logs/metrics.jsonl",
                          "(no partial row was left)", "`retrain --resume logs`"]),
])
def test_a_run_whose_disk_fills_stops_cleanly_and_resumes(tmp_path: Path, retrain_cache: Path, match: str,
                                                         skip: int, phrases: list[str]) -> None:
    workdir = workdir_with_default_config(tmp_path)
    log_dir = workdir / "logs"
    full = run_on_filling_disk(workdir, retrain_cache, match, skip, "--max-steps", "4", "--save-every", "2",
                               "--log-dir", "logs")
    refused(full, "free on that filesystem", *phrases)
    assert json.loads((log_dir / "trainer_state.json").read_text())["step"] == 2
    rows = read_jsonl_strict(log_dir / "metrics.jsonl")  # whole rows only
    assert [row["step"] for row in rows] == list(range(1, len(rows) + 1))
    assert sorted(path.name for path in (log_dir / "checkpoints").iterdir()) == ["step_2"]
    assert sorted(path.name for path in (log_dir / "adapter").iterdir()) == [".retrain-run", "checkpoint_step_2"]
    assert not [path for path in log_dir.iterdir() if path.name.endswith(".tmp")]
    resumed = run_retrain(workdir, retrain_cache, "--resume", "logs")
    assert resumed.returncode == 0, describe(resumed)
    assert [row["step"] for row in read_jsonl_strict(log_dir / "metrics.jsonl")] == [1, 2, 3, 4]


# -------------------------------------------------------------- a real full tmpfs


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Callable[[int], Path]]:
    """``resize(bytes)``: a tmpfs of that size at one folder (mounted on first use,
    resized after); only as root, where mounting works."""
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = False

    def resize(size: int) -> Path:
        nonlocal mounted
        options = f"remount,size={size}" if mounted else f"size={size}"
        result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)],
                                capture_output=True, text=True, check=False)
        if result.returncode != 0:
            assert not mounted, result.stderr
            pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()}")
        mounted = True
        return mount_point

    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    yield resize
    if mounted:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def test_a_log_on_a_really_full_disk_keeps_whole_rows(small_disk: Callable[[int], Path]) -> None:
    disk = small_disk(64 * 1024)
    log = MetricsLog(disk / "metrics.jsonl")
    written = 0
    with pytest.raises(DiskFullError) as raised:
        for step in range(1, 1000):
            log.append({"step": step, "text": "x" * 1500})
            written = step
    assert 10 < written < 999
    assert [row["step"] for row in read_jsonl_strict(disk / "metrics.jsonl")] == list(range(1, written + 1))
    assert f"at {disk / 'metrics.jsonl'}" in str(raised.value) and "free on that filesystem" in str(raised.value)


def used_bytes(disk: Path) -> int:
    usage = shutil.disk_usage(disk)
    return usage.total - usage.free


def tree_blocks(folder: Path) -> int:
    return sum(path.stat().st_blocks * 512 for path in folder.rglob("*") if path.is_file())


@pytest.mark.parametrize("piece", ["backend", pytest.param("adapter", marks=pytest.mark.slow)])
def test_a_run_on_a_really_full_disk_stops_cleanly_and_resumes(small_disk: Callable[[int], Path], tmp_path: Path,
                                                              retrain_cache: Path, piece: str) -> None:
    disk = small_disk(256 * 2**20)
    workdir = workdir_with_default_config(tmp_path / "work")
    log_dir = disk / "run"
    first = run_retrain(workdir, retrain_cache, "--max-steps", "2", "--save-every", "2", "--log-dir", str(log_dir))
    assert first.returncode == 0, describe(first)
    step_dir = tree_blocks(log_dir / "checkpoints" / "step_2")
    adapter = tree_blocks(log_dir / "adapter" / "checkpoint_step_2")
    # Room for less than the backend state; or for the backend and engine state, not the adapter.
    room = step_dir // 2 if piece == "backend" else step_dir + adapter // 2
    small_disk(used_bytes(disk) + room)
    full = run_retrain(workdir, retrain_cache, "--resume", str(log_dir), "--max-steps", "4")
    where = log_dir / ("checkpoints" if piece == "backend" else "adapter")
    refused(full, "cannot write checkpoint 4: the disk is full (No space left on device)", f"at {where}",
            "free on that filesystem", "(the size of the previous checkpoint's", "checkpoint 2 is intact")
    assert json.loads((log_dir / "trainer_state.json").read_text())["step"] == 2
    assert sorted(path.name for path in (log_dir / "checkpoints").iterdir()) == ["step_2"]
    assert sorted(path.name for path in (log_dir / "adapter").iterdir()) == [".retrain-run", "checkpoint_step_2",
                                                                              "final"]
    small_disk(256 * 2**20)  # space freed: the run goes on from checkpoint 2
    resumed = run_retrain(workdir, retrain_cache, "--resume", str(log_dir), "--max-steps", "4")
    assert resumed.returncode == 0, describe(resumed)
    assert [row["step"] for row in read_jsonl_strict(log_dir / "metrics.jsonl")] == [1, 2, 3, 4]


def test_a_log_folder_deleted_while_the_run_writes_stops_it(tmp_path: Path, retrain_cache: Path) -> None:
    workdir = workdir_with_default_config(tmp_path)
    process = subprocess.Popen([sys.executable, "-m", "retrain", "--max-steps", "100000", "--save-every", "0",
                                "--log-dir", "doomed"], cwd=workdir, env=cli_environment(retrain_cache),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "doomed" / "metrics.jsonl"
    deadline = time.monotonic() + 120
    while not (metrics.exists() and metrics.read_bytes().count(b"\n") >= 2):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.05)
    shutil.rmtree(workdir / "doomed")
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 2, stderr[-3000:]
    assert "metrics.jsonl was deleted while the run was writing it" in stderr and "Traceback" not in stderr
    assert "finished" not in stdout and "metrics:" not in stdout


def test_a_full_disk_while_publishing_weights_is_named(tmp_path: Path) -> None:
    import errno

    from retrain.publication import Publisher

    class FullDiskBackend:
        policy_version = 3

        def publish(self, kind: str, directory: Path) -> object:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(directory / "policy_v3"))

    publisher = Publisher(FullDiskBackend(), object(), "lora_adapter", tmp_path / "engine_weights")  # type: ignore[arg-type]
    with pytest.raises(DiskFullError, match="cannot publish policy version 3: the disk is full") as raised:
        publisher.publish_now()
    assert "free on that filesystem" in str(raised.value) and "retrain --resume" in str(raised.value)
