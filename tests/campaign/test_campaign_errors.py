"""What the train command refuses around campaigns and squeeze, through the CLI: no
traceback, exit 2, a message that says how to fix it, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_cli(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retrain", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120)


def test_campaign_options_on_a_plain_config_are_refused(tmp_path):
    (tmp_path / "c.toml").write_text('[training]\nmax_steps = 1\n')
    result = run_cli(tmp_path, "c.toml", "--print-commands")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--print-commands only apply to a campaign file" in result.stderr
    assert not (tmp_path / "logs").exists()


def test_a_squeeze_section_in_a_training_config_is_not_ignored(tmp_path):
    (tmp_path / "c.toml").write_text('[squeeze]\nmin_variance_retention = 0.9\n')
    result = run_cli(tmp_path, "c.toml")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "has a [squeeze] section but no adapter_path" in result.stderr
    assert not (tmp_path / "logs").exists()


def test_an_unknown_campaign_run_is_named(tmp_path):
    (tmp_path / "c.toml").write_text('[backend]\ndevices = "cpu"\n[campaign]\nseeds = [1]\n')
    result = run_cli(tmp_path, "c.toml", "--campaign-run", "nope_s1")
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "has no run named 'nope_s1'" in result.stderr and "grpo+none_s1" in result.stderr


def test_an_invalid_campaign_starts_no_run(tmp_path):
    (tmp_path / "c.toml").write_text('[campaign]\nseeds = [1]\n[[campaign.conditions]]\nadvantage_mode = "grpo"\n'
                                     'transform_mode = "none"\nlr = 7.0\n')
    result = run_cli(tmp_path, "c.toml")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "c.toml:6 " in result.stderr and "training.lr: 7.0 is out of range" in result.stderr
    assert not (tmp_path / "logs").exists()


def test_explain_checks_and_lists_every_run_of_a_campaign(tmp_path):
    (tmp_path / "c.toml").write_text('[backend]\ndevices = "cpu"\n[campaign]\nseeds = [1, 2]\n'
                                     '[[campaign.conditions]]\nadvantage_mode = "grpo"\ntransform_mode = "none"\n')
    result = run_cli(tmp_path, "explain", "c.toml")
    assert result.returncode == 0, result.stderr
    assert "campaign c: 2 runs, each valid and planned, in logs/c: grpo+none_s1, grpo+none_s2" in result.stdout
    (tmp_path / "c.toml").write_text((tmp_path / "c.toml").read_text() + "clip_eps_high = 0.2\n")
    result = run_cli(tmp_path, "explain", "c.toml")
    assert result.returncode == 2 and "run grpo+none_s1: c.toml:5 condition grpo+none [training].clip_eps_high" in result.stderr
