"""The config-facing commands through the real CLI: help, version, explain, init, and the
promise that none of them imports torch, transformers or peft."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retrain import __version__
from retrain.cli import main, stdout_is_closed
from retrain.commands.init import write_new_files
from retrain.config.loader import load_config
from retrain.config.reference import render_reference
from retrain.errors import RetrainError

REPO = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "transformers", "peft", "datasets", "wandb", "sentence_transformers")


def run_cli(*args: str, cwd: Path = REPO, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retrain", *args], capture_output=True, text=True, cwd=cwd, input=stdin)


def modules_after(code: str) -> set[str]:
    probe = f"import sys\n{code}\nprint(','.join(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr
    return set(result.stdout.strip().split("\n")[-1].split(","))


def test_importing_the_cli_imports_no_heavy_library() -> None:
    loaded = modules_after("import retrain.cli")
    assert not [name for name in HEAVY if name in loaded]


@pytest.mark.parametrize("argv", [["--help"], ["explain", "retrain.toml"], ["explain", "retrain.toml", "--json"],
                                  ["train", "--help"], ["init", "--list"]])
def test_config_commands_import_no_heavy_library(argv: list[str]) -> None:
    code = f"import retrain.cli\ntry:\n    retrain.cli.main({argv!r})\nexcept SystemExit:\n    pass"
    loaded = modules_after(code)
    assert not [name for name in HEAVY if name in loaded]


def test_help_and_version() -> None:
    result = run_cli("--help")
    assert result.returncode == 0 and "migrate-config" in result.stdout and "explain" in result.stdout
    assert run_cli("--version").stdout.strip() == f"retrain {__version__}"
    flags = run_cli("train", "--help").stdout
    assert "--lr" in flags and "--hicra-alpha" in flags and "--backend-opt k=v" in flags
    assert "--changed" in run_cli("explain", "--help").stdout


def test_unknown_command_suggests_the_right_one() -> None:
    result = run_cli("explian")
    assert result.returncode == 2 and "did you mean 'explain'" in result.stderr


def test_explain_marks_what_differs_and_where(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[backend]\ndevices = "cpu"\n[training]\nlr = 1e-4\n')
    result = run_cli("explain", str(config), "--batch-size", "3", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("* lr") and f"{config}:4" in line for line in lines)
    assert any(line.startswith("* batch_size") and "CLI --batch-size" in line for line in lines)
    assert any(line.startswith("  group_size") for line in lines)
    only_changed = run_cli("explain", str(config), "--changed", cwd=tmp_path).stdout
    assert "group_size" not in only_changed and "lr" in only_changed


def test_explain_json(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('[backend]\ndevices = "cpu"\n')
    payload = json.loads(run_cli("explain", str(config), "--json", "--seed", "7", cwd=tmp_path).stdout)
    assert payload["valid"] is True
    assert payload["settings"]["training"]["seed"] == {"value": 7, "default": -1, "changed": True, "source": "CLI --seed"}


def test_init_writes_each_template_and_refuses_to_overwrite(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("cpu", "quickstart", "full", "campaign"):
        target = tmp_path / f"{name}.toml"
        assert main(["init", str(target), "--template", name]) == 0
        if name == "campaign":
            from retrain.campaign import plan_campaign

            assert len(plan_campaign(target).runs) == 15  # five conditions x three seeds
        else:
            load_config(target, environ={})
        before = target.read_bytes()
        assert main(["init", str(target), "--template", name]) == 2
        assert target.read_bytes() == before
    assert "already exists" in capsys.readouterr().err
    assert main(["init", str(tmp_path / "x.toml"), "--template", "nope"]) == 2
    assert not (tmp_path / "x.toml").exists()


def test_init_full_template_documents_every_setting(tmp_path: Path) -> None:
    target = tmp_path / "full.toml"
    main(["init", str(target), "--template", "full"])
    text = target.read_text()
    assert "# AdamW learning rate\nlr = 4e-05" in text


def test_configuration_reference_page_is_current() -> None:
    committed = (REPO / "docs" / "configuration.md").read_text()
    assert committed == render_reference(), "regenerate: python -m retrain.config.reference > docs/configuration.md"


@pytest.mark.parametrize(("text", "where", "named"), [
    ('[environment]\nprovider = "verifiers"\nid = "gsm8k"\n', ":2 [environment].provider", "verifiers"),
    ('[model]\nlora_rank = 8\n[backend]\nbackend = "tinker"\n', ":4 [backend].backend", "(local)"),
])
@pytest.mark.parametrize("command", ["explain", "train"])
def test_features_not_in_this_version_are_refused_not_ignored(tmp_path: Path, text: str, where: str, named: str,
                                                              command: str) -> None:
    # These settings load, but a run that ignored
    # them would silently not do what the file says.
    config = tmp_path / "c.toml"
    config.write_text(text)
    result = run_cli(command, str(config), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{config}{where}: " in result.stderr and named in result.stderr
    assert "not part of this version" in result.stderr
    assert not (tmp_path / "logs").exists()


@pytest.mark.parametrize("argv", [["explain", "retrain.toml"], ["explain", "retrain.toml", "--json"], ["--help"]])
def test_a_reader_that_closes_stdout_early_ends_the_command_quietly(argv: list[str]) -> None:
    # The read end is closed before the command writes a byte (it is still importing),
    # so every write meets a closed pipe, as with `retrain explain | head -0`.
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = subprocess.run([sys.executable, "-m", "retrain", *argv], stdout=write_end, stderr=subprocess.PIPE,
                                text=True, cwd=REPO)
    finally:
        os.close(write_end)
    assert result.returncode == 141, result.stderr
    assert result.stderr == ""


def test_a_reader_that_stops_after_one_line_gets_that_line() -> None:
    process = subprocess.Popen([sys.executable, "-m", "retrain", "explain", "retrain.toml"], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, cwd=REPO)
    assert process.stdout is not None and process.stderr is not None
    first = process.stdout.readline()
    process.stdout.close()
    stderr = process.stderr.read()
    returncode = process.wait(timeout=60)
    assert first == "retrain.toml: valid\n"
    # 0 when everything fit in the pipe before it closed, 141 when a write met it closed.
    assert returncode in (0, 141) and "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_stdout_is_closed_tells_a_closed_pipe_from_an_open_one(monkeypatch: pytest.MonkeyPatch) -> None:
    read_end, write_end = os.pipe()
    with os.fdopen(write_end, "w") as stream:
        monkeypatch.setattr(sys, "stdout", stream)
        assert not stdout_is_closed()
        os.close(read_end)
        assert stdout_is_closed()


def test_init_creates_missing_folders_and_says_so(tmp_path: Path) -> None:
    target = tmp_path / "configs" / "new" / "x.toml"
    result = run_cli("init", str(target), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert f"created the folder {target.parent}" in result.stderr
    load_config(target, environ={})


@pytest.mark.parametrize("command", [
    ["init", "{file}/x.toml"],
    ["init", "{file}/sub/x.toml"],
    ["init-plugin", "--kind", "advantage", "--name", "x", "--output-dir", "{file}"],
    ["init-plugin", "--kind", "advantage", "--name", "x", "--output-dir", "{file}/sub", "--with-test"],
])
def test_init_commands_refuse_a_path_through_a_file(tmp_path: Path, command: list[str]) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("keep me\n")
    result = run_cli(*(part.format(file=blocker) for part in command), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{blocker} is a file, not a folder — choose another path" in result.stderr
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"] and blocker.read_text() == "keep me\n"


def test_init_refuses_a_folder_as_the_file_to_write(tmp_path: Path) -> None:
    result = run_cli("init", str(tmp_path), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{tmp_path} is a folder — give the path of the file to write, e.g. {tmp_path / 'retrain.toml'}" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write into any folder")
@pytest.mark.parametrize("command", [
    ["init", "{folder}/deeper/x.toml"],
    ["init-plugin", "--kind", "reward", "--name", "x", "--output-dir", "{folder}/deeper", "--with-test"],
])
def test_init_commands_report_a_folder_they_may_not_write(tmp_path: Path, command: list[str]) -> None:
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    try:
        result = run_cli(*(part.format(folder=locked) for part in command), cwd=tmp_path)
    finally:
        locked.chmod(0o755)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"permission denied at {locked} — choose a folder you can write to" in result.stderr
    assert list(locked.iterdir()) == []


def test_init_plugin_creates_a_missing_output_folder(tmp_path: Path) -> None:
    result = run_cli("init-plugin", "--kind", "advantage", "--name", "mine", "--output-dir", "plugins/new", "--with-test",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "(created the folder plugins/new)" in result.stdout
    assert sorted(path.name for path in (tmp_path / "plugins" / "new").iterdir()) == ["mine.py", "test_mine.py"]


def test_a_failed_write_removes_the_files_and_folders_it_made(tmp_path: Path) -> None:
    blocker = tmp_path / "notes.txt"
    blocker.write_text("")
    first = tmp_path / "made" / "deeper" / "a.txt"
    with pytest.raises(RetrainError, match="is a file, not a folder"):
        write_new_files({first: "a\n", blocker / "b.txt": "b\n"})
    assert sorted(path.name for path in tmp_path.iterdir()) == ["notes.txt"]


def test_init_says_how_to_run_a_campaign_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["init", str(tmp_path / "camp.toml"), "--template", "campaign"]) == 0
    err = capsys.readouterr().err
    assert f"run it with: retrain {tmp_path / 'camp.toml'}" in err and "--print-commands" in err
