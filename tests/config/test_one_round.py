"""Every problem of a config in one report: unknown and legacy keys, invalid values, the
cross-field rules and the features this version cannot run, found by one load."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from retrain.config.flags import parse_run_args
from retrain.config.loader import load_config, resolve_config
from retrain.errors import ConfigError


def problems(tmp_path: Path, text: str) -> list[tuple[str, str, str]]:
    """(where, setting, problem) of every issue, in report order."""
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    return [(issue.where.removeprefix(f"{path}"), f"{issue.section}.{issue.key}", issue.problem)
            for issue in caught.value.issues]


def test_unknown_legacy_and_unavailable_are_reported_by_one_explain(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[backend]\ndevices = "cpu"\nprime_rl_transport = "zmq"\n'
                      "[training]\nlrr = 1e-4\n"
                      '[environment]\nprovider = "verifiers"\nid = "gsm8k"\n')
    result = subprocess.run([sys.executable, "-m", "retrain", "explain", str(config)], capture_output=True,
                            text=True, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "(3 problems)" in result.stderr
    lines = result.stderr.splitlines()
    legacy = next(line for line in lines if f"{config}:3 [backend].prime_rl_transport: legacy" in line)
    unknown = next(line for line in lines if f"{config}:5 [training].lrr: unknown key — did you mean 'lr'?" in line)
    unavailable = next(line for line in lines if f"{config}:7 [environment].provider: " in line)
    # In file order, so the report reads top to bottom like the file.
    assert lines.index(legacy) < lines.index(unknown) < lines.index(unavailable)


def test_cross_field_rules_run_beside_value_problems(tmp_path: Path) -> None:
    found = problems(tmp_path, "[training]\nlr = 'fast'\nclip_eps_high = 0.3\n[backpressure]\nmin_batch_size = 9\n"
                               "max_batch_size = 8\n")
    assert [(where, setting) for where, setting, _ in found] == \
        [(":2", "training.lr"), (":3", "training.clip_eps_high"), (":5", "backpressure.min_batch_size")]


def test_a_rule_reading_a_rejected_value_says_nothing(tmp_path: Path) -> None:
    # max_batch_size is rejected, so the config holds its default (64); "min_batch_size (100)
    # is larger than max_batch_size (64)" would be about a value nobody wrote.
    found = problems(tmp_path, '[backpressure]\nmin_batch_size = 100\nmax_batch_size = "8"\n')
    assert [setting for _, setting, _ in found] == ["backpressure.max_batch_size"]
    # type is rejected (and left at "match"), so custom_module is not "only used with type = custom".
    found = problems(tmp_path, '[reward]\ntype = "customm"\ncustom_module = "my_rewards"\n')
    assert found == [(":2", "reward.type", "'customm' is not a valid choice")]


def test_a_rule_about_other_settings_still_speaks(tmp_path: Path) -> None:
    found = problems(tmp_path, '[reward]\njudge_model = 3\n[data]\nsource = "jsonl"\n')
    assert {setting for _, setting, _ in found} == {"reward.judge_model", "data.path"}


def test_an_unavailable_feature_is_reported_whatever_else_is_wrong(tmp_path: Path) -> None:
    found = problems(tmp_path, '[inference]\nengine = 5\n[environment]\nprovider = "verifiers"\nid = "gsm8k"\n')
    assert [(where, setting) for where, setting, _ in found] == \
        [(":2", "inference.engine"), (":4", "environment.provider")]
    assert "not part of this version" in found[1][2]


def test_a_bad_condition_key_is_reported_at_its_line(tmp_path: Path) -> None:
    found = problems(tmp_path, '[campaign]\nseeds = [1, 2]\n[[campaign.conditions]]\nadvantage = "grpo"\n')
    assert [(where, setting) for where, setting, _ in found] == [(":4", "campaign.conditions[0].advantage")]


def test_only_the_problem_of_its_own_is_reported_for_a_rejected_setting(tmp_path: Path) -> None:
    # enabled = "yes" is rejected; the config keeps enabled = false, so no second complaint.
    found = problems(tmp_path, '[backpressure]\nenabled = "yes"\n')
    assert [setting for _, setting, _ in found] == ["backpressure.enabled"]


def test_environment_and_flags_come_after_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[training]\nlrr = 1\n[environment]\nprovider = 'verifiers'\nid = 'x'\n")
    args = parse_run_args([str(path), "--seed", "x"], {})
    with pytest.raises(ConfigError) as caught:
        load_config(args.config, args.overrides, environ={"RETRAIN_TRAINING__BATCH_SIZE": "0"})
    assert [issue.where for issue in caught.value.issues] == \
        [f"{path}:2", f"{path}:4", "env RETRAIN_TRAINING__BATCH_SIZE", "CLI --seed"]


def test_tools_that_only_read_a_config_may_accept_unavailable_features(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[backend]\nbackend = "prime_rl"\n[backend.options]\nzmq_port = 6000\n')
    resolved = resolve_config(path, environ={}, refuse_unavailable=False)
    assert resolved.config.backend.options["zmq_port"] == 6000
    with pytest.raises(ConfigError, match="not part of this version"):
        resolve_config(path, environ={})
