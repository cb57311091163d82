"""A tiny CPU campaign through the real command line: per-run folders, manifest, summary
and a plot; a SIGKILL of the parent mid-way leaves no child behind and re-running resumes
without redoing finished runs; a parallel pool of two; and ``--print-commands`` run by a
plain shell loop completes the same campaign."""

from __future__ import annotations

import json
import os
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
from cli_runs import cli_environment, describe, retrain_command, run_retrain

CAMPAIGN = """
[backend]
devices = "cpu"
[model]
model = "{model}"
lora_rank = 0
[training]
max_steps = 4
batch_size = 2
group_size = 4
max_tokens = 4
temperature = 1.0
lr = 3e-4
save_every = 1
[data]
source = "arithmetic"
[logging]
log_dir = "camp"
[campaign]
seeds = [0, 1]
[[campaign.conditions]]
advantage_mode = "grpo"
transform_mode = "none"
[[campaign.conditions]]
advantage_mode = "maxrl"
transform_mode = "gtpo_sepa"
"""
RUNS = ["grpo+none_s0", "grpo+none_s1", "maxrl+gtpo_sepa_s0", "maxrl+gtpo_sepa_s1"]


def write_campaign(tmp_path: Path, model: Path, extra: str = "") -> Path:
    path = tmp_path / "campaign.toml"
    path.write_text(CAMPAIGN.format(model=model).replace("[campaign]\n", f"[campaign]\n{extra}"))
    return path


def manifest(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "camp" / "manifest.json").read_text())


def statuses(tmp_path: Path) -> dict[str, str]:
    return {entry["name"]: entry["status"] for entry in manifest(tmp_path)["runs"]}


def assert_complete(tmp_path: Path, steps: int = 4) -> None:
    assert statuses(tmp_path) == dict.fromkeys(RUNS, "done")
    for name in RUNS:
        rows = [json.loads(line) for line in (tmp_path / "camp" / "runs" / name / "metrics.jsonl").open()]
        assert [row["step"] for row in rows] == list(range(1, steps + 1))
        assert (tmp_path / "camp" / "runs" / name / "adapter" / "final").is_dir()
    summary = json.loads((tmp_path / "camp" / "summary.json").read_text())
    assert sorted(summary["conditions"]) == ["grpo+none", "maxrl+gtpo_sepa"]
    assert all(entry["final_reward"]["n"] == 2 for entry in summary["conditions"].values())
    assert "| maxrl+gtpo_sepa | 2 |" in (tmp_path / "camp" / "summary.md").read_text()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes (its parent, the test, has not reaped it).
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split(")")[-1].split()[0] != "Z"


def wait_for(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


@pytest.mark.slow
def test_sequential_campaign_survives_a_sigkill_and_resumes(retrain_cache, tiny_model_path, tmp_path):
    # Long enough runs that the kill lands while the second one trains (a tiny step can
    # take 50 ms on an idle machine).
    config = write_campaign(tmp_path, tiny_model_path, "max_steps = 40\n")
    parent = subprocess.Popen(retrain_command(str(config)), cwd=tmp_path, env=cli_environment(retrain_cache),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # Kill the parent while the second run is training (after its first checkpoint).
        second = tmp_path / "camp" / "runs" / RUNS[1] / "trainer_state.json"
        wait_for(lambda: second.exists(), 240, "the second run's first checkpoint")
        child = manifest(tmp_path)["runs"][1]["pid"]
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
    finally:
        if parent.poll() is None:
            parent.kill()
    assert statuses(tmp_path)[RUNS[0]] == "done"
    wait_for(lambda: not alive(child), 60, "the orphaned child to stop")  # it got SIGTERM from the kernel
    assert statuses(tmp_path)[RUNS[1]] == "interrupted"  # it checkpointed its step and said so
    first_rows = (tmp_path / "camp" / "runs" / RUNS[0] / "metrics.jsonl").read_bytes()
    result = run_retrain(tmp_path, retrain_cache, str(config), timeout=600)
    assert result.returncode == 0, describe(result)
    assert "(1 done already, 3 to run" in result.stdout
    assert (tmp_path / "camp" / "runs" / RUNS[0] / "metrics.jsonl").read_bytes() == first_rows  # not redone
    assert_complete(tmp_path, steps=40)
    log = (tmp_path / "camp" / "runs" / RUNS[1] / "stdout.log").read_text()
    assert "resum" in log.lower()  # the interrupted run continued from its checkpoint
    again = run_retrain(tmp_path, retrain_cache, str(config))
    assert again.returncode == 0 and "(4 done already, 0 to run" in again.stdout
    plot = run_retrain(tmp_path, retrain_cache, "plot", str(tmp_path / "camp"), "-o", str(tmp_path / "c.png"))
    assert plot.returncode == 0, describe(plot)
    header = (tmp_path / "c.png").read_bytes()[:24]
    width, height = struct.unpack(">II", header[16:24])
    assert header[:8] == b"\x89PNG\r\n\x1a\n" and width >= 400 and height >= 300


@pytest.mark.slow
def test_parallel_campaign_with_two_workers(retrain_cache, tiny_model_path, tmp_path):
    config = write_campaign(tmp_path, tiny_model_path, "parallel = true\nmax_workers = 2\n")
    result = run_retrain(tmp_path, retrain_cache, str(config), timeout=600)
    assert result.returncode == 0, describe(result)
    assert "2 at a time" in result.stdout
    assert_complete(tmp_path)
    starts = sorted(entry["started"] for entry in manifest(tmp_path)["runs"])
    ends = sorted(entry["finished"] for entry in manifest(tmp_path)["runs"])
    assert starts[1] <= ends[0]  # two runs were in flight together


@pytest.mark.slow
def test_printed_commands_run_by_a_shell_loop_complete_the_campaign(retrain_cache, tiny_model_path, tmp_path):
    config = write_campaign(tmp_path, tiny_model_path)
    printed = run_retrain(tmp_path, retrain_cache, str(config), "--print-commands")
    assert printed.returncode == 0, describe(printed)
    lines = printed.stdout.strip().splitlines()
    assert len(lines) == 4 and all("--campaign-run" in line for line in lines)
    (tmp_path / "commands.txt").write_text(printed.stdout)
    loop = subprocess.run(["bash", "-c", "while read -r line; do bash -c \"$line\" || exit 1; done < commands.txt"],
                          cwd=tmp_path, env=cli_environment(retrain_cache), capture_output=True, text=True,
                          timeout=600)
    assert loop.returncode == 0, loop.stdout[-2000:] + loop.stderr[-2000:]
    assert_complete(tmp_path)
    assert run_retrain(tmp_path, retrain_cache, str(config), "--print-commands").stdout == ""


@pytest.mark.slow
def test_a_campaign_with_squeeze_analyses_the_first_finished_run(retrain_cache, tiny_model_path, tmp_path):
    config = tmp_path / "campaign.toml"
    config.write_text(CAMPAIGN.format(model=tiny_model_path).replace("lora_rank = 0", "lora_rank = 4")
                      .replace("seeds = [0, 1]", "seeds = [0]").replace("lr = 3e-4", "lr = 5e-2")
                      + '[squeeze]\nmin_variance_retention = 0.9\noutput_path = "squeezed"\n')
    result = run_retrain(tmp_path, retrain_cache, str(config), timeout=600)
    assert result.returncode == 0, describe(result)
    record = manifest(tmp_path)["squeeze"]
    assert record["status"] == "done" and record["run"] == "grpo+none_s0", record
    assert 1 <= record["recommended_rank"] <= 4
    assert (tmp_path / "camp" / "squeezed" / "adapter_config.json").is_file()
