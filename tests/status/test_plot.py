"""``retrain plot``: PNGs and terminal sparklines of the real tiny-model runs and of a
campaign folder built from them, the mean-and-band arithmetic, and the errors."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from retrain.commands import plot
from retrain.commands.plot import SPARKS, aggregate, sparkline
from retrain.errors import RetrainError, UsageError

if TYPE_CHECKING:
    from conftest import RealRuns

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def retrain_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retrain", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=120, check=False)


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the IHDR chunk, which follows the signature: length (4
    bytes), type b"IHDR" (4), width (4), height (4), big-endian."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR"
    width, height = struct.unpack(">II", head[16:24])
    return width, height


def column(log_dir: Path, metric: str) -> list[float]:
    return [json.loads(line)[metric] for line in (log_dir / "metrics.jsonl").read_text().splitlines()]


def test_plot_of_a_run_writes_a_png(real_runs: RealRuns, tmp_path: Path) -> None:
    output = tmp_path / "run.png"
    result = retrain_cli("plot", str(real_runs.seed0), "-o", str(output))
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"wrote {output} (run {real_runs.seed0}, 20-step mean)\n"
    assert png_size(output) == (1000, 400)  # 10 x 4 inches at 100 dpi
    assert sorted(path.name for path in tmp_path.iterdir()) == ["run.png"]  # no temporary file left


def test_plot_of_a_campaign_writes_a_png_over_an_old_one(campaign_dir: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    output = tmp_path / "sweep.png"
    output.write_bytes(b"an older plot")
    assert plot.main([str(campaign_dir), "--output", str(output), "--window", "1"]) == 0
    assert capsys.readouterr().out == (f"wrote {output} (campaign sweep: 2 conditions, 4 runs, mean over seeds, "
                                       "band min–max)\n")
    assert png_size(output) == (1000, 400)
    from matplotlib.image import imread

    pixels = imread(str(output))
    assert pixels.shape[:2] == (400, 1000) and pixels.std() > 0  # something was drawn
    assert sorted(path.name for path in tmp_path.iterdir()) == ["sweep.png"]


def test_sparklines_of_a_run(real_runs: RealRuns, capsys: pytest.CaptureFixture[str]) -> None:
    assert plot.main([str(real_runs.seed0), "--window", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"run {real_runs.seed0}"
    rewards = column(real_runs.seed0, "reward_mean")
    low, high = min(rewards), max(rewards)
    assert lines[1] == f"reward_mean (scale {low:.3f} ▁ to {high:.3f} █)"
    best = rewards.index(high)
    assert lines[2] == (f"  seed0  {sparkline(rewards, low, high)}  steps 1-3  first {rewards[0]:.3f}  "
                        f"last {rewards[-1]:.3f}  best {high:.3f} (step {best + 1})")
    assert len(lines[2].split()[1]) == 3 and set(lines[2].split()[1]) <= set(SPARKS)
    assert lines[3].startswith("correct_rate (scale ") and lines[4].startswith("  seed0  ")


def test_sparklines_of_a_campaign_show_the_mean_over_seeds(campaign_dir: Path, real_runs: RealRuns,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert plot.main([str(campaign_dir), "--window", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "campaign sweep: 2 conditions, 4 runs, mean over seeds, band min–max"
    seed0, seed1 = column(real_runs.seed0, "reward_mean"), column(real_runs.seed1, "reward_mean")
    finished = [(a + b) / 2 for a, b in zip(seed0, seed1)]
    # grpo+none: seed 0 cut after step 2, seed 1 after step 1 (the pending seed 2 has nothing).
    cut = [(seed0[0] + seed1[0]) / 2, seed0[1]]
    low, high = min(finished + cut), max(finished + cut)
    assert lines[1] == f"reward_mean (scale {low:.3f} ▁ to {high:.3f} █)"
    assert lines[2].startswith(f"  maxrl+gtpo_sepa (2 seeds)  {sparkline(finished, low, high)}  steps 1-3  "
                               f"first {finished[0]:.3f}  last {finished[-1]:.3f}  ")
    assert lines[2].endswith(f"last min–max {min(seed0[-1], seed1[-1]):.3f}–{max(seed0[-1], seed1[-1]):.3f} "
                             "(2 of 2 seeds)")
    assert lines[3].startswith(f"  grpo+none (2 seeds)        {sparkline(cut, low, high)}  steps 1-2  ")
    assert lines[3].endswith(f"last min–max {seed0[1]:.3f}–{seed0[1]:.3f} (1 of 2 seeds)")


def test_window_averages_each_run_over_its_last_steps(real_runs: RealRuns, capsys: pytest.CaptureFixture[str]) -> None:
    assert plot.main([str(real_runs.seed0), "--window", "2"]) == 0
    lines = capsys.readouterr().out.splitlines()
    rewards = column(real_runs.seed0, "reward_mean")
    means = [rewards[0], (rewards[0] + rewards[1]) / 2, (rewards[1] + rewards[2]) / 2]
    assert lines[0] == f"run {real_runs.seed0}, 2-step mean"
    assert f"first {means[0]:.3f}  last {means[2]:.3f}  best {max(means):.3f}" in lines[2]
    assert plot.series([{"step": 1, "x": 1.0}, {"step": 2, "x": 3.0}, {"step": 4, "x": 8.0}], "x", 2) == {
        1: 1.0, 2: 2.0, 4: 5.5}
    with pytest.raises(UsageError, match="--window takes a whole number of steps >= 1"):
        plot.main([str(real_runs.seed0), "--window", "0"])


def test_sparklines_import_no_matplotlib(campaign_dir: Path) -> None:
    probe = ("import sys\nimport retrain.cli\nretrain.cli.main(['plot', sys.argv[1]])\n"
             "print(' '.join(sorted(sys.modules)), file=sys.stderr)")
    result = subprocess.run([sys.executable, "-c", probe, str(campaign_dir)], capture_output=True, text=True,
                            timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    loaded = set(result.stderr.split())
    assert "retrain.commands.plot" in loaded and loaded.isdisjoint({"matplotlib", "numpy", "torch"})


def test_the_mean_and_band_over_seeds() -> None:
    # Seed a reached step 3, seed b only step 2:
    # step 1: (0.0 + 0.5) / 2 = 0.25, band 0.0-0.5; step 2: 0.5 both; step 3: seed a alone, 1.0.
    curve = aggregate("c", [{1: 0.0, 2: 0.5, 3: 1.0}, {1: 0.5, 2: 0.5}])
    assert (curve.steps, curve.mean, curve.low, curve.high, curve.counts, curve.seeds) == (
        [1, 2, 3], [0.25, 0.5, 1.0], [0.0, 0.5, 1.0], [0.5, 0.5, 1.0], [2, 2, 1], 2)


def test_sparkline_scale_and_buckets() -> None:
    # (v - low) / (high - low) * 7, rounded: 0 -> ▁, 3.5 -> ▅ (index 4), 7 -> █.
    assert sparkline([0.0, 0.5, 1.0], 0.0, 1.0) == "▁▅█"
    assert sparkline([0.3, 0.3], 0.3, 0.3) == "▁▁"  # nothing to scale
    # 80 values in 40 buckets of 2: the first averages 0.5 (▁), the last 78.5 (78.5 / 79 * 7 = 6.96: █).
    line = sparkline([float(value) for value in range(80)], 0.0, 79.0, width=40)
    assert len(line) == 40 and line[0] == "▁" and line[-1] == "█"
    assert list(line) == sorted(line, key=SPARKS.index)


def test_a_folder_that_is_no_run_is_a_clear_error(tmp_path: Path) -> None:
    result = retrain_cli("plot", str(tmp_path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == (f"retrain: {tmp_path} is neither a run folder (it has no metrics.jsonl) nor a campaign "
                             f"folder (no manifest.json) — `retrain status {tmp_path}` lists the runs and campaigns "
                             "under it\n")
    with pytest.raises(RetrainError, match="does not exist"):
        plot.main([str(tmp_path / "nowhere")])


def test_a_run_or_campaign_without_metrics_yet(real_runs: RealRuns, tmp_path: Path) -> None:
    starting = tmp_path / "starting"
    starting.mkdir()
    (starting / "config.toml").write_bytes((real_runs.seed0 / "config.toml").read_bytes())
    (starting / ".retrain.lock").touch()
    with pytest.raises(RetrainError, match=r"has no metrics yet: metrics.jsonl gets its first row when the run's"):
        plot.main([str(starting)])
    campaign = tmp_path / "campaign"
    campaign.mkdir()
    (campaign / "manifest.json").write_text(json.dumps({"format": 1, "campaign": "c", "runs": [
        {"name": "a_s0", "condition": "a", "seed": 0, "log_dir": "runs/a_s0", "max_steps": 3, "status": "pending"}]}))
    with pytest.raises(RetrainError, match=r"campaign .* has no metrics yet: none of its 1 runs has finished a step"):
        plot.main([str(campaign)])


def test_an_output_the_png_cannot_go_to(real_runs: RealRuns, tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="written as PNG"):
        plot.main([str(real_runs.seed0), "-o", str(tmp_path / "plot.svg")])
    with pytest.raises(UsageError, match="does not exist — create it first"):
        plot.main([str(real_runs.seed0), "-o", str(tmp_path / "missing" / "plot.png")])
    (tmp_path / "folder.png").mkdir()
    with pytest.raises(UsageError, match="is a folder"):
        plot.main([str(real_runs.seed0), "-o", str(tmp_path / "folder.png")])
