"""``retrain migrate-config`` through the real CLI: every mode, its exit codes, what it
writes (and that it writes nothing when it must not), the JSON report and the flag clashes."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from retrain.cli import main
from retrain.config.loader import load_config
from retrain.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

LEGACY = """\
# PRIME-RL run on two nodes
[model]
model = "Qwen/Qwen3-4B-Instruct-2507"  # the policy

[backend]
backend = "prime_rl"
devices = "gpu:0"
# how batches reach the trainer
prime_rl_transport = "zmq"  # filesystem also works
prime_rl_zmq_host = "trainer-0"

# the trainer listens here
prime_rl_zmq_port = 5556
adapter_path = "/tmp/adapter"

[training]
lr = 1e-4
"""

# Written out by hand: the two groups move under a new [backend.options] placed right after
# the [backend] entries, keeping their comments, their trailing comments and the blank line
# that separated them; every other line is untouched.
MIGRATED = """\
# PRIME-RL run on two nodes
[model]
model = "Qwen/Qwen3-4B-Instruct-2507"  # the policy

[backend]
backend = "prime_rl"
devices = "gpu:0"
adapter_path = "/tmp/adapter"

[backend.options]
# how batches reach the trainer
transport = "zmq"  # filesystem also works
zmq_host = "trainer-0"

# the trainer listens here
zmq_port = 5556

[training]
lr = 1e-4
"""

CLEAN = """\
[backend]
backend = "prime_rl"

[backend.options]
transport = "zmq"
"""


def run_cli(*args: str, cwd: Path = REPO, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "retrain", "migrate-config", *args], capture_output=True, cwd=cwd,
                          input=stdin)


def write(path: Path, text: str) -> Path:
    path.write_bytes(text.encode("utf-8"))
    return path


def snapshot(folder: Path) -> dict[str, tuple[bytes, int]]:
    """Every file of ``folder`` with its bytes and modification time."""
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(folder.iterdir())}


# -- preview (the default) ------------------------------------------------------------


def test_preview_prints_a_unified_diff_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "run.toml", LEGACY)
    before = snapshot(tmp_path)
    assert main(["migrate-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out.startswith(f"--- {path}\n+++ {path} (migrated)\n@@ ")
    assert "-prime_rl_transport = \"zmq\"  # filesystem also works\n" in out
    assert "+transport = \"zmq\"  # filesystem also works\n" in out
    assert "+[backend.options]\n" in out
    assert "3 legacy keys to move" in err and "--write" in err
    assert snapshot(tmp_path) == before


def test_preview_of_a_clean_file_says_no_migration_needed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "run.toml", CLEAN)
    assert main(["migrate-config", str(path)]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "no migration needed" in err


# -- --check ----------------------------------------------------------------------------


def test_check_exits_1_lists_the_keys_and_writes_nothing(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", LEGACY)
    before = snapshot(tmp_path)
    result = run_cli(str(path), "--check")
    assert result.returncode == 1
    out = result.stdout.decode()
    assert "migration needed" in out
    assert "line 9: [backend] prime_rl_transport -> [backend.options] transport" in out
    assert "line 10: [backend] prime_rl_zmq_host -> [backend.options] zmq_host" in out
    assert "line 13: [backend] prime_rl_zmq_port -> [backend.options] zmq_port" in out
    assert f"retrain migrate-config {path} --write" in out
    assert snapshot(tmp_path) == before


def test_check_exits_0_on_a_clean_file(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", CLEAN)
    result = run_cli(str(path), "--check")
    assert result.returncode == 0
    assert "no migration needed" in result.stdout.decode()


def test_check_reads_stdin_too() -> None:
    assert run_cli("--stdin", "--check", stdin=LEGACY.encode()).returncode == 1
    assert run_cli("--stdin", "--check", stdin=CLEAN.encode()).returncode == 0


# -- --write [--backup] -----------------------------------------------------------------


def test_write_rewrites_in_place_keeping_the_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "run.toml", LEGACY)
    os.chmod(path, 0o640)
    assert main(["migrate-config", str(path), "--write"]) == 0
    assert path.read_text() == MIGRATED
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml"]  # no temporary file left behind
    assert "wrote" in capsys.readouterr().err


def test_write_twice_the_second_run_is_a_no_op(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", LEGACY)
    assert run_cli(str(path), "--write").returncode == 0
    after_first = snapshot(tmp_path)
    second = run_cli(str(path), "--write", "--backup")
    assert second.returncode == 0
    assert "no migration needed" in second.stderr.decode()
    assert snapshot(tmp_path) == after_first  # same bytes, same mtime, and no .bak either


def test_write_backup_keeps_the_original_bytes(tmp_path: Path) -> None:
    original = LEGACY.replace("\n", "\r\n").encode()  # odd bytes make a byte-exact copy visible
    path = tmp_path / "run.toml"
    path.write_bytes(original)
    assert run_cli(str(path), "--write", "--backup").returncode == 0
    assert (tmp_path / "run.toml.bak").read_bytes() == original
    assert path.read_bytes() == MIGRATED.replace("\n", "\r\n").encode()


# -- --output, --stdin, --stdout -----------------------------------------------------------


def test_output_writes_elsewhere_and_leaves_the_file_untouched(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", LEGACY)
    before = path.stat().st_mtime_ns
    target = tmp_path / "run.migrated.toml"
    result = run_cli(str(path), "--output", str(target))
    assert result.returncode == 0
    assert target.read_text() == MIGRATED
    assert path.read_text() == LEGACY and path.stat().st_mtime_ns == before


def test_output_of_a_clean_file_is_a_copy(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", CLEAN)
    assert run_cli(str(path), "--output", str(tmp_path / "copy.toml")).returncode == 0
    assert (tmp_path / "copy.toml").read_text() == CLEAN


def test_stdin_to_stdout_streams_the_migrated_toml() -> None:
    result = run_cli("--stdin", "--stdout", stdin=LEGACY.encode())
    assert result.returncode == 0
    assert result.stdout.decode() == MIGRATED


def test_stdin_alone_previews_the_diff() -> None:
    result = run_cli("--stdin", stdin=LEGACY.encode())
    assert result.returncode == 0
    out = result.stdout.decode()
    assert out.startswith("--- <stdin>\n+++ <stdin> (migrated)\n")
    assert "+zmq_port = 5556\n" in out


def test_stdin_to_output_file(tmp_path: Path) -> None:
    target = tmp_path / "out.toml"
    assert run_cli("--stdin", "--output", str(target), stdin=LEGACY.encode()).returncode == 0
    assert target.read_text() == MIGRATED


def test_file_to_stdout(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "run.toml", LEGACY)
    assert main(["migrate-config", str(path), "--stdout"]) == 0
    assert capsys.readouterr().out == MIGRATED
    assert path.read_text() == LEGACY


# -- --json -------------------------------------------------------------------------------


def test_json_report_fields(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "run.toml", LEGACY)
    assert main(["migrate-config", str(path), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["path"] == str(path)
    assert report["mode"] == "preview"
    assert report["changed"] is True
    assert report["moved"] == [
        # old lines 9, 10, 13 in LEGACY; new lines 12, 13, 16 in MIGRATED
        {"old": "backend.prime_rl_transport", "new": "backend.options.transport", "value": "zmq",
         "old_line": 9, "new_line": 12},
        {"old": "backend.prime_rl_zmq_host", "new": "backend.options.zmq_host", "value": "trainer-0",
         "old_line": 10, "new_line": 13},
        {"old": "backend.prime_rl_zmq_port", "new": "backend.options.zmq_port", "value": 5556,
         "old_line": 13, "new_line": 16},
    ]
    assert report["conflicts"] == []
    assert report["diff"].startswith(f"--- {path}\n")
    assert report["written_to"] is None and report["backup"] is None
    assert path.read_text() == LEGACY


def test_json_with_write_and_backup_names_both_files(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", LEGACY)
    result = run_cli(str(path), "--write", "--backup", "--json")
    assert result.returncode == 0
    report = json.loads(result.stdout)
    assert report["mode"] == "write"
    assert report["written_to"] == str(path)
    assert report["backup"] == str(tmp_path / "run.toml.bak")
    assert path.read_text() == MIGRATED


def test_json_with_check_keeps_the_exit_code(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", LEGACY)
    result = run_cli(str(path), "--check", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["mode"] == "check" and report["changed"] is True and len(report["moved"]) == 3


def test_json_with_stdout_carries_the_migrated_text() -> None:
    result = run_cli("--stdin", "--stdout", "--json", stdin=LEGACY.encode())
    assert result.returncode == 0
    report = json.loads(result.stdout)  # one JSON object and nothing else on stdout
    assert report["path"] == "<stdin>" and report["migrated"] == MIGRATED


# -- merging with an existing options table ------------------------------------------------


def test_existing_options_win_and_the_report_says_so(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "run.toml", """\
[backend]
backend = "prime_rl"
prime_rl_zmq_port = 5556  # old port
prime_rl_zmq_hwm = 20

[backend.options]
transport = "zmq"
zmq_port = 6000  # the real port
""")
    assert main(["migrate-config", str(path), "--write", "--json"]) == 0
    assert path.read_text() == """\
[backend]
backend = "prime_rl"

[backend.options]
transport = "zmq"
zmq_port = 6000  # the real port
zmq_hwm = 20
"""
    report = json.loads(capsys.readouterr().out)
    assert report["moved"] == [{"old": "backend.prime_rl_zmq_hwm", "new": "backend.options.zmq_hwm", "value": 20,
                                "old_line": 4, "new_line": 7}]
    (conflict,) = report["conflicts"]
    assert conflict["old"] == "backend.prime_rl_zmq_port" and conflict["new"] == "backend.options.zmq_port"
    assert conflict["legacy_value"] == 5556 and conflict["kept_value"] == 6000
    assert conflict["old_line"] == 3 and conflict["kept_line"] == 6
    assert "existing" in conflict["resolution"]


def test_conflicts_are_noted_on_stderr_and_in_check(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "run.toml", "[backend]\nprime_rl_transport = \"filesystem\"\noptions = { transport = \"zmq\" }\n")
    assert main(["migrate-config", str(path)]) == 0
    assert "dropped [backend] prime_rl_transport = \"filesystem\"" in capsys.readouterr().err
    assert main(["migrate-config", str(path), "--check"]) == 1
    assert "will be dropped: [backend.options] transport is already set to \"zmq\"" in capsys.readouterr().out


# -- the migrated file loads -----------------------------------------------------------------


def test_migrated_file_loads_with_the_legacy_values(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", LEGACY.replace("prime_rl_zmq_port = 5556",
                                                       "prime_rl_zmq_port = 5556\nprime_rl_sync_wait_s = 12\n"
                                                       "prime_rl_strict_advantages = true"))
    assert run_cli(str(path), "--write").returncode == 0
    # prime_rl itself is not in this version, but its options load and are checked.
    options = load_config(path, environ={}, refuse_unavailable=False).backend.options
    expected = {"transport": "zmq", "zmq_host": "trainer-0", "zmq_port": 5556, "sync_wait_s": 12.0,
                "strict_advantages": True}
    assert {key: options[key] for key in expected} == expected


def test_the_legacy_file_is_rejected_by_the_loader_until_migrated(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", LEGACY)
    with pytest.raises(ConfigError, match="migrate-config"):
        load_config(path, environ={})


# -- errors ----------------------------------------------------------------------------------


CLASHING = [
    (["--write", "--output", "out.toml"], ("--write", "--output")),
    (["--write", "--stdout"], ("--write", "--stdout")),
    (["--check", "--write"], ("--check", "--write")),
    (["--check", "--output", "out.toml"], ("--check", "--output")),
    (["--check", "--stdout"], ("--check", "--stdout")),
    (["--output", "out.toml", "--stdout"], ("--output", "--stdout")),
    (["--backup"], ("--backup", "--write")),
    (["--backup", "--output", "out.toml"], ("--backup", "--write")),
]


@pytest.mark.parametrize(("flags", "named"), CLASHING)
def test_contradictory_flags_are_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               flags: list[str], named: tuple[str, str]) -> None:
    path = write(tmp_path / "run.toml", LEGACY)
    before = snapshot(tmp_path)
    assert main(["migrate-config", str(path), *flags]) == 2
    err = capsys.readouterr().err
    assert all(flag in err for flag in named), err
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(("flags", "named"), [
    (["--stdin", "run.toml"], ("--stdin", "FILE")),
    (["--stdin", "--write"], ("--write", "--stdin")),
    (["--stdin", "--write", "--backup"], ("--write", "--stdin")),
    ([], ("FILE", "--stdin")),
    (["--stdout"], ("FILE", "--stdin")),
    (["--write"], ("FILE", "--stdin")),
])
def test_stdin_and_file_clashes(capsys: pytest.CaptureFixture[str], flags: list[str], named: tuple[str, str]) -> None:
    assert main(["migrate-config", *flags]) == 2
    err = capsys.readouterr().err
    assert all(flag in err for flag in named), err


def test_unknown_flag_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["migrate-config", "run.toml", "--in-place"]) == 2
    assert "unrecognized arguments: --in-place" in capsys.readouterr().err


def test_output_onto_the_input_itself_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path / "run.toml", LEGACY)
    assert main(["migrate-config", str(path), "--output", str(path)]) == 2
    assert "--write" in capsys.readouterr().err
    assert path.read_text() == LEGACY


def test_invalid_toml_names_file_line_and_column(tmp_path: Path) -> None:
    path = write(tmp_path / "run.toml", "[backend]\nprime_rl_transport = \"zmq\nbackend = 1\n")
    result = run_cli(str(path), "--check")
    assert result.returncode == 2
    err = result.stderr.decode()
    assert f"{path}:2:" in err and "invalid TOML" in err and "Traceback" not in err


def test_missing_file_is_a_config_error(tmp_path: Path) -> None:
    result = run_cli(str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert "config file not found" in result.stderr.decode()


def test_a_layout_it_cannot_rewrite_safely_is_refused_untouched(tmp_path: Path) -> None:
    # An inline table may span lines only inside a multi-line value; rewriting that
    # entry inside the braces is refused rather than risked.
    text = 'backend = { backend = "prime_rl", prime_rl_zmq_host = """trainer\n-0""" }\n'
    path = write(tmp_path / "run.toml", text)
    result = run_cli(str(path), "--write")
    assert result.returncode == 2
    err = result.stderr.decode()
    assert "cannot rewrite this layout safely" in err and "zmq_host" in err
    assert path.read_text() == text


def test_help() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    out = result.stdout.decode()
    for flag in ("--check", "--write", "--backup", "--output", "--stdin", "--stdout", "--json"):
        assert flag in out


def test_importing_the_command_imports_no_heavy_library() -> None:
    probe = ("import sys, retrain.cli, retrain.commands.migrate_config\n"
             "print(','.join(m for m in ('torch', 'numpy', 'transformers', 'peft') if m in sys.modules))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0 and result.stdout.strip() == "", result.stdout + result.stderr
