"""Hostile inputs to the command line: each is a clean error (exit 2, no traceback), never
a hang, an exhausted memory or a silent exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def retrain(cwd: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retrain", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=False, env={**os.environ, **(env or {})})


def refused(result: subprocess.CompletedProcess[str], *phrases: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr


@pytest.mark.parametrize("args", [["--version"], ["explain"]])
def test_a_log_level_that_is_not_one_is_named(tmp_path: Path, args: list[str]) -> None:
    refused(retrain(tmp_path, *args, env={"RETRAIN_LOG_LEVEL": "garbage"}),
            "RETRAIN_LOG_LEVEL='garbage' is not a log level — use one of DEBUG, INFO, WARNING")


def test_a_dotenv_file_that_is_not_utf8_is_named(tmp_path: Path) -> None:
    (tmp_path / ".env").write_bytes(b"OPENAI_API_KEY=\xff\xfe\n")
    (tmp_path / "retrain.toml").write_text((REPO / "retrain.toml").read_text())
    refused(retrain(tmp_path, "explain"), ".env is not UTF-8 text", "save it as UTF-8")


def test_a_config_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    (tmp_path / "c.toml").write_bytes(b"\xef\xbb\xbf" + (REPO / "retrain.toml").read_bytes())
    result = retrain(tmp_path, "explain", "c.toml")
    assert result.returncode == 0 and result.stdout.startswith("c.toml: valid"), result.stderr


def test_a_fifo_a_device_and_a_folder_are_refused_without_reading(tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.toml")  # reading it would block until a writer came
    for path in (str(tmp_path / "pipe.toml"), "/dev/zero", str(tmp_path)):
        refused(retrain(tmp_path, "explain", path), f"{path}: not a regular file")


def test_a_huge_config_is_refused_by_its_size(tmp_path: Path) -> None:
    from retrain.config.loader import MAX_CONFIG_BYTES

    (tmp_path / "big.toml").write_text("# " + "x" * MAX_CONFIG_BYTES + "\n")
    refused(retrain(tmp_path, "explain", "big.toml"), "big.toml: larger than 4 MB")


def test_the_config_given_is_never_overwritten_by_the_run_s_snapshot(tmp_path: Path) -> None:
    text = (REPO / "retrain.toml").read_text() + "# my own notes\n"
    (tmp_path / "config.toml").write_text(text)
    for args in (["config.toml", "--log-dir", "."], [str(tmp_path / "config.toml"), "--log-dir", str(tmp_path)]):
        refused(retrain(tmp_path, *args, "--max-steps", "1"), "is the config you gave",
                "nothing was changed — choose another --log-dir")
        assert (tmp_path / "config.toml").read_text() == text
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "trainer_state.json").exists()


def test_the_summary_line_keeps_a_huge_reward_to_a_few_digits() -> None:
    from retrain.commands.train import _number

    assert (_number(0.98765), _number(1e300), _number(-2.5e7), _number(None)) == ("0.988", "1.000e+300", "-2.500e+07",
                                                                                  "n/a")


@pytest.mark.parametrize("flags", [["--lr", "1", "--lr", "2"], ["--lr", "1", "--training.lr", "2"],
                                   ["--lr=1", "--training-lr", "2"]])
def test_a_setting_given_twice_on_the_command_line_is_refused(tmp_path: Path, flags: list[str]) -> None:
    (tmp_path / "retrain.toml").write_text((REPO / "retrain.toml").read_text())
    refused(retrain(tmp_path, "explain", *flags), "both set training.lr; give it once")


def test_explain_checks_the_output_folders_a_run_would_create(tmp_path: Path) -> None:
    (tmp_path / "retrain.toml").write_text((REPO / "retrain.toml").read_text())
    (tmp_path / "afile").write_text("not a folder")
    refused(retrain(tmp_path, "explain", "--log-dir", "afile/inside"),
            "CLI --log-dir [logging].log_dir: afile/inside cannot be created:", "afile is a file")
    assert retrain(tmp_path, "explain", "--log-dir", "new/run").returncode == 0
    assert not (tmp_path / "new").exists()  # explain creates nothing


EXITS_AT_IMPORT = "import sys\nsys.exit(3)\n"


def test_a_plugin_that_calls_sys_exit_at_import_is_a_named_plugin_error(tmp_path: Path) -> None:
    (tmp_path / "plugs").mkdir()
    (tmp_path / "plugs" / "quitter.py").write_text(EXITS_AT_IMPORT)
    (tmp_path / "c.toml").write_text('[plugins]\nsearch_paths = ["plugs"]\n[algorithm]\nadvantage_mode = "quitter.adv"\n')
    for args in (["explain", "c.toml"], ["plugins", "c.toml"]):
        result = retrain(tmp_path, *args)
        assert result.returncode != 3 and "Traceback" not in result.stderr, result.stdout + result.stderr
        assert "quitter" in result.stdout + result.stderr and "SystemExit" in result.stdout + result.stderr


def test_a_custom_reward_that_calls_sys_exit_is_a_named_plugin_error() -> None:
    from retrain.config.schema import Config
    from retrain.errors import PluginError
    from retrain.rewards.custom import CustomReward
    from retrain.types import Example

    def quitting_score(completion: str, reference: str) -> float:
        raise SystemExit(4)

    reward = CustomReward(Config(), function=quitting_score, label="quitting.score")
    with pytest.raises(PluginError, match="custom reward quitting.score raised on completion 0: SystemExit: 4"):
        reward.score(["7"], [Example("e", ({"role": "user", "content": "x"},), "7")])


def test_a_retrain_variable_with_one_underscore_is_not_silently_ignored(tmp_path: Path) -> None:
    (tmp_path / "retrain.toml").write_text((REPO / "retrain.toml").read_text())
    refused(retrain(tmp_path, "explain", env={"RETRAIN_TRAINING_LR": "1e-4"}),
            "env RETRAIN_TRAINING_LR [training].lr: sets nothing", "rename it RETRAIN_TRAINING__LR")
    unknown = retrain(tmp_path, "explain", env={"RETRAIN_SOMETHING": "1"})
    assert unknown.returncode == 0, unknown.stderr
    assert "env RETRAIN_SOMETHING: is not a retrain variable and is ignored" in unknown.stdout + unknown.stderr


@pytest.mark.parametrize(("source", "expected", "not_expected"), [
    ('raise ImportError("this plugin needs a GPU")\n', "raised ImportError: this plugin needs a GPU — fix the plugin",
     "install the package"),
    ("from os import no_such_name\n", "cannot import name 'no_such_name' from 'os'", "install the package"),
    ("import no_such_dependency_abc\n", "install the package the plugin needs", "raised ImportError"),
])
def test_an_import_error_inside_a_plugin_is_told_apart_from_a_missing_package(tmp_path: Path, source: str,
                                                                              expected: str, not_expected: str) -> None:
    (tmp_path / "plugs").mkdir()
    (tmp_path / "plugs" / "fragile.py").write_text(source)
    (tmp_path / "c.toml").write_text('[plugins]\nsearch_paths = ["plugs"]\n[algorithm]\nadvantage_mode = "fragile.adv"\n')
    result = retrain(tmp_path, "explain", "c.toml")
    refused(result, expected)
    assert not_expected not in result.stderr


def test_retrain_variables_set_only_in_dotenv_are_read(tmp_path: Path) -> None:
    (tmp_path / "retrain.toml").write_text((REPO / "retrain.toml").read_text())
    (tmp_path / ".env").write_text("RETRAIN_LOG_LEVEL=garbage\n")
    refused(retrain(tmp_path, "explain"), "RETRAIN_LOG_LEVEL='garbage' is not a log level")
    (tmp_path / ".env").write_text("RETRAIN_TRAINING_LR=0.1\n")
    refused(retrain(tmp_path, "explain"), "env RETRAIN_TRAINING_LR", "rename it RETRAIN_TRAINING__LR")
    (tmp_path / ".env").write_text("RETRAIN_LOG_LEVEL=INFO\nRETRAIN_TRAINING__LR=0.125\n")
    shown = retrain(tmp_path, "explain")
    assert shown.returncode == 0 and "lr" in shown.stdout and "0.125" in shown.stdout, shown.stderr
