"""wandb without credentials or without a network: a clear error before any model loads
(``retrain explain`` included), a bounded start that cleans up after itself, and wandb's
files kept in the run's log dir, never in the working directory.

Every test runs with a temporary HOME and without the caller's WANDB_* and NETRC
variables, so a developer's own ``wandb login`` cannot change the outcome, and nothing
here reaches the network (the one "server" is a loopback socket that never answers).
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from retrain.config.schema import Config, LoggingConfig
from retrain.errors import ConfigError, RetrainError
from retrain.sinks.wandb_run import INIT_TIMEOUT_S, WandbSink, wandb_issues

REPO = Path(__file__).resolve().parents[2]
PROJECT = "retrain-tests"
# Shaped like a wandb API key, valid for nothing.
FAKE_KEY = "a" * 86


def _isolated(environ: dict[str, str], home: Path) -> dict[str, str]:
    """``environ`` without wandb's and retrain's variables, with ``home`` as HOME."""
    kept = {name: value for name, value in environ.items()
            if not name.startswith(("WANDB_", "RETRAIN_")) and name != "NETRC"}
    return {**kept, "HOME": str(home)}


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A HOME of its own, and no WANDB_*/NETRC variables in this process."""
    folder = tmp_path / "home"
    folder.mkdir()
    for name in list(os.environ):
        if name.startswith("WANDB_") or name == "NETRC":
            monkeypatch.delenv(name)
    monkeypatch.setenv("HOME", str(folder))
    return folder


def _wandb_config(log_dir: Path | None = None) -> Config:
    if log_dir is None:
        return Config(logging=LoggingConfig(wandb_project=PROJECT))
    return Config(logging=LoggingConfig(wandb_project=PROJECT, log_dir=str(log_dir)))


# --- the check before the run ------------------------------------------------------------


def test_no_key_and_no_stored_login_is_an_issue_naming_both_fixes(home: Path) -> None:
    [issue] = wandb_issues(_wandb_config())
    assert (issue.section, issue.key, issue.warning) == ("logging", "wandb_project", False)
    text = str(issue)
    assert "would log in online to api.wandb.ai" in text and f"no {home / '.netrc'}" in text
    assert "WANDB_API_KEY" in text and "WANDB_MODE=offline" in text and "wandb sync" in text


def test_without_a_project_nothing_is_checked(home: Path) -> None:
    assert wandb_issues(Config()) == []


@pytest.mark.parametrize(("name", "value"), [
    ("WANDB_API_KEY", FAKE_KEY), ("WANDB_MODE", "offline"), ("WANDB_MODE", "OFFLINE"), ("WANDB_MODE", "dryrun"),
    ("WANDB_MODE", "disabled"), ("WANDB_IDENTITY_TOKEN_FILE", "/run/secrets/wandb-token"),
])
def test_a_key_or_a_local_mode_is_enough(home: Path, monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    assert wandb_issues(_wandb_config()) == []


def test_online_mode_still_needs_a_key(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WANDB_MODE", "online")
    [issue] = wandb_issues(_wandb_config())
    assert "WANDB_MODE is 'online', not offline" in issue.problem


def test_a_stored_login_in_the_netrc_is_enough(home: Path) -> None:
    (home / ".netrc").write_text(f"machine api.wandb.ai\n  login user\n  password {FAKE_KEY}\n")
    assert wandb_issues(_wandb_config()) == []


def test_the_netrc_must_hold_the_server_wandb_logs_in_to(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (home / ".netrc").write_text(f"machine wandb.example.com login user password {FAKE_KEY}\n")
    [issue] = wandb_issues(_wandb_config())
    assert "has no login for api.wandb.ai" in issue.problem
    monkeypatch.setenv("WANDB_BASE_URL", "https://wandb.example.com")
    assert wandb_issues(_wandb_config()) == []
    monkeypatch.setenv("WANDB_BASE_URL", "http://alice:hunter2@wandb.internal:8080")
    [issue] = wandb_issues(_wandb_config())
    assert "log in online to http://wandb.internal:8080" in issue.problem
    assert "has no login for wandb.internal:8080" in issue.problem and "hunter2" not in str(issue)


def test_an_entry_without_a_password_is_no_login(home: Path) -> None:
    (home / ".netrc").write_text("machine api.wandb.ai login user\n")
    [issue] = wandb_issues(_wandb_config())
    assert "has no login for api.wandb.ai" in issue.problem


def test_netrc_names_the_file_to_read(home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    elsewhere = tmp_path / "credentials" / "netrc"
    elsewhere.parent.mkdir()
    elsewhere.write_text(f"machine api.wandb.ai login user password {FAKE_KEY}\n")
    monkeypatch.setenv("NETRC", str(elsewhere))
    assert wandb_issues(_wandb_config()) == []
    (home / ".netrc").write_text(f"machine api.wandb.ai login user password {FAKE_KEY}\n")
    monkeypatch.setenv("NETRC", str(tmp_path / "missing"))  # NETRC wins over ~/.netrc, as for wandb
    [issue] = wandb_issues(_wandb_config())
    assert f"no {tmp_path / 'missing'}" in issue.problem


@pytest.mark.parametrize(("content", "expected"), [
    ("machine api.wandb.ai bogus x\n", "cannot be read (line 1: bad follower token 'bogus'), so wandb ignores it"),
    ("garbage\n", "cannot be read (line 2: bad toplevel token 'garbage')"),
])
def test_a_malformed_netrc_is_named_not_a_traceback(home: Path, content: str, expected: str) -> None:
    (home / ".netrc").write_text(content)
    [issue] = wandb_issues(_wandb_config())
    assert f"{home / '.netrc'} {expected}" in issue.problem, issue.problem


def test_an_unreadable_netrc_is_named(home: Path) -> None:
    (home / ".netrc").mkdir()  # a folder: reading it fails whoever runs the test, root included
    [issue] = wandb_issues(_wandb_config())
    assert f"{home / '.netrc'} cannot be read" in issue.problem


def test_the_missing_package_is_reported_with_the_login(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    problems = [issue.problem for issue in wandb_issues(_wandb_config())]
    assert len(problems) == 2 and "needs the Python package 'wandb', which is not installed" in problems[0]
    monkeypatch.setenv("WANDB_MODE", "offline")
    assert len(wandb_issues(_wandb_config())) == 1


@pytest.mark.parametrize("value", ["soon", "0", "-5", "nan", "inf"])
def test_an_init_timeout_that_is_not_seconds_is_named(home: Path, monkeypatch: pytest.MonkeyPatch,
                                                      value: str) -> None:
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", value)
    [issue] = wandb_issues(_wandb_config())
    assert issue.where == "env WANDB_INIT_TIMEOUT" and f"WANDB_INIT_TIMEOUT={value!r} is not a number" in str(issue)


# --- starting the run --------------------------------------------------------------------


class _FakeRun:
    def __init__(self, run_id: str) -> None:
        self.id = run_id

    def log(self, data: dict[str, object], step: int) -> None:
        pass

    def finish(self) -> None:
        pass


class _Init:
    """Stands in for ``wandb.init``: records each call's arguments, and raises the next
    of ``failures`` (None: starts a run)."""

    def __init__(self, *failures: BaseException | None, clock: _Clock | None = None, takes: float = 0.0) -> None:
        self.failures = list(failures)
        self.calls: list[dict[str, object]] = []
        self.clock = clock
        self.takes = takes

    def __call__(self, **arguments: object) -> _FakeRun:
        self.calls.append(arguments)
        if self.clock is not None:
            self.clock.now += self.takes
        failure = self.failures.pop(0) if self.failures else None
        if failure is not None:
            raise failure
        return _FakeRun(str(arguments.get("id") or "fresh"))


class _Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _wandb_errors():
    return pytest.importorskip("wandb").errors


def test_the_start_has_a_finite_timeout_and_keeps_wandb_files_in_the_log_dir(home: Path, tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    _wandb_errors()
    init = _Init()
    WandbSink(_wandb_config(tmp_path / "logs"), init=init, clock=_Clock())
    assert init.calls[0]["settings"] == {"init_timeout": INIT_TIMEOUT_S, "finish_timeout": 300.0}
    assert INIT_TIMEOUT_S == 60 and init.calls[0]["dir"] == str(tmp_path / "logs")
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "7.5")
    monkeypatch.setenv("WANDB_FINISH_TIMEOUT", "30")  # wandb reads it itself
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "mine"))  # the user's choice stands
    init = _Init()
    WandbSink(_wandb_config(tmp_path / "logs"), init=init, clock=_Clock())
    assert init.calls[0]["settings"] == {"init_timeout": 7.5} and "dir" not in init.calls[0]


def test_a_relative_log_dir_is_given_to_wandb_as_an_absolute_path(home: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    _wandb_errors()
    monkeypatch.chdir(tmp_path)
    init = _Init()
    WandbSink(_wandb_config(Path("logs/run")), init=init)
    assert init.calls[0]["dir"] == str(tmp_path / "logs" / "run")


def _failures() -> list[BaseException]:
    errors = _wandb_errors()
    return [
        errors.CommError('Timed out while retrying: Post "https://api.wandb.ai/graphql": dial tcp: lookup '
                         "api.wandb.ai: no such host\nConsider increasing the init_timeout setting:\n"
                         "  wandb.init(settings=wandb.Settings(init_timeout=...))"),
        errors.UsageError("No API key configured. Use `wandb login` to log in."),
        errors.AuthenticationError("API key must have 40+ characters, has 3."),
        TimeoutError("timed out"),
        ConnectionRefusedError(111, "Connection refused"),
    ]


@pytest.mark.parametrize("index", range(5))
def test_a_failed_start_is_a_clear_error_naming_the_cause_project_and_fixes(home: Path, index: int) -> None:
    failure = _failures()[index]
    with pytest.raises(RetrainError) as caught:
        WandbSink(_wandb_config(), init=_Init(failure))
    message = str(caught.value)
    assert type(caught.value) is RetrainError and caught.value.__cause__ is failure
    assert f"wandb could not start a run in project '{PROJECT}' ({type(failure).__name__}: " in message
    assert str(failure).splitlines()[0] in message
    assert "Consider increasing" not in message  # wandb's advice names a Python setting, ours the variable
    for fix in ("check the network connection", "WANDB_MODE=offline", "wandb sync", "WANDB_INIT_TIMEOUT",
                "remove [logging] wandb_project"):
        assert fix in message, message


def test_credentials_in_the_server_url_stay_out_of_the_error(home: Path) -> None:
    failure = _wandb_errors().CommError('Post "https://alice:hunter2@wandb.example.com/graphql": refused')
    with pytest.raises(RetrainError) as caught:
        WandbSink(_wandb_config(), init=_Init(failure))
    assert "hunter2" not in str(caught.value) and "https://wandb.example.com/graphql" in str(caught.value)


def test_an_interrupt_during_the_start_is_not_turned_into_an_error(home: Path) -> None:
    _wandb_errors()
    with pytest.raises(KeyboardInterrupt):
        WandbSink(_wandb_config(), init=_Init(KeyboardInterrupt()))


def test_a_bad_init_timeout_is_refused_before_wandb_starts(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _wandb_errors()
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "soon")
    init = _Init()
    with pytest.raises(ConfigError, match="WANDB_INIT_TIMEOUT='soon' is not a number of seconds"):
        WandbSink(_wandb_config(), init=init)
    assert init.calls == []


def test_a_refused_rewind_is_retried_within_the_same_deadline(home: Path) -> None:
    errors = _wandb_errors()
    clock = _Clock()
    init = _Init(errors.CommError("rewind is not enabled for this entity"), clock=clock, takes=20.0)
    sink = WandbSink(_wandb_config(), run_id="abc", resume_step=7, init=init, clock=clock)
    assert sink.run_id == "abc"
    # 60 s in all: the rewind took 20 of them, the continuation gets the 40 left.
    assert [call["settings"]["init_timeout"] for call in init.calls] == [60.0, 40.0]


def test_a_rewind_that_used_up_the_deadline_is_not_retried(home: Path) -> None:
    errors = _wandb_errors()
    clock = _Clock()
    timed_out = errors.CommError("Timed out while retrying: Post \"https://api.wandb.ai/graphql\": i/o timeout")
    init = _Init(timed_out, clock=clock, takes=58.0)
    with pytest.raises(RetrainError, match="wandb could not start a run .*CommError: Timed out while retrying"):
        WandbSink(_wandb_config(), run_id="abc", resume_step=7, init=init, clock=clock)
    assert len(init.calls) == 1  # a second start would only have waited again


# --- the command line ----------------------------------------------------------------------


def _retrain(cwd: Path, *args: str, env: dict[str, str], python_flags: tuple[str, ...] = (),
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *python_flags, "-m", "retrain", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout, check=False, env=env)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    """A folder holding a copy of the repository's retrain.toml (the tiny default run)."""
    folder = tmp_path / "work"
    folder.mkdir()
    shutil.copy(REPO / "retrain.toml", folder / "retrain.toml")
    return folder


@pytest.fixture
def cli_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a ``retrain`` subprocess: its own HOME and an empty model cache
    (the tiny model is built when the model first loads, so an empty cache after a run
    shows that no model was loaded), one thread per step."""
    (tmp_path / "home").mkdir(exist_ok=True)
    (tmp_path / "cache").mkdir()
    env = _isolated(dict(os.environ), tmp_path / "home")
    env.update(RETRAIN_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1", WANDB_SILENT="true")
    return env


def _refused_before_any_model(result: subprocess.CompletedProcess[str], cache: Path, *phrases: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith("retrain: "), result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, result.stderr
    assert list(cache.iterdir()) == [], "the model was loaded"


def test_explain_and_a_run_without_a_key_exit_2_before_any_model(workdir: Path, cli_env: dict[str, str]) -> None:
    cache = Path(cli_env["RETRAIN_CACHE_DIR"])
    phrases = ("[logging].wandb_project: wandb would log in online", "WANDB_API_KEY", "WANDB_MODE=offline")
    _refused_before_any_model(_retrain(workdir, "explain", "--wandb-project", PROJECT, env=cli_env), cache, *phrases)
    _refused_before_any_model(_retrain(workdir, "--wandb-project", PROJECT, "--max-steps", "2", env=cli_env), cache,
                              *phrases)
    assert sorted(path.name for path in workdir.iterdir()) == ["retrain.toml"]  # no log dir, no wandb/


def test_explain_checks_the_key_without_importing_wandb(workdir: Path, cli_env: dict[str, str]) -> None:
    (workdir / ".env").write_text(f"WANDB_API_KEY={FAKE_KEY}\n")  # a key in .env counts
    result = _retrain(workdir, "explain", "--wandb-project", PROJECT, env=cli_env, python_flags=("-X", "importtime"))
    assert result.returncode == 0 and result.stdout.startswith("retrain.toml: valid"), result.stderr[-3000:]
    imported = [line.rsplit("|", 1)[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")]
    assert "retrain.plan" in imported and not [name for name in imported if re.match(r"wandb(\.|$)", name)]


@pytest.fixture
def silent_server() -> Iterator[str]:
    """The URL of a loopback server that accepts connections and never answers."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        yield f"http://127.0.0.1:{server.getsockname()[1]}"


def _children() -> list[str]:
    pid = os.getpid()
    return open(f"/proc/{pid}/task/{pid}/children").read().split()


@pytest.mark.integration
@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="reads child processes from /proc")
def test_a_server_that_never_answers_fails_within_the_timeout_and_leaves_nothing_running(
        home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, silent_server: str) -> None:
    _wandb_errors()
    monkeypatch.setenv("WANDB_API_KEY", FAKE_KEY)
    monkeypatch.setenv("WANDB_BASE_URL", silent_server)
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "1")
    monkeypatch.setenv("WANDB_SILENT", "true")
    before = _children()
    started = time.monotonic()
    with pytest.raises(RetrainError, match=f"wandb could not start a run in project '{PROJECT}'"):
        WandbSink(_wandb_config(tmp_path / "logs"))
    # wandb adds its own grace period of about 10 s to the timeout; its default took 100 s.
    assert time.monotonic() - started < 60
    assert _children() == before  # wandb's service process was stopped
    assert list((tmp_path / "logs" / "wandb").iterdir())  # its files went to the log dir


@pytest.mark.integration
def test_a_run_whose_wandb_cannot_start_exits_2_before_the_model_loads(workdir: Path, cli_env: dict[str, str],
                                                                      silent_server: str) -> None:
    pytest.importorskip("wandb")
    env = {**cli_env, "WANDB_API_KEY": FAKE_KEY, "WANDB_BASE_URL": silent_server, "WANDB_INIT_TIMEOUT": "1"}
    result = _retrain(workdir, "--wandb-project", PROJECT, "--max-steps", "2", env=env)
    _refused_before_any_model(result, Path(cli_env["RETRAIN_CACHE_DIR"]),
                              f"wandb could not start a run in project '{PROJECT}'", "WANDB_MODE=offline")
    assert not (workdir / "wandb").exists()


@pytest.mark.integration
def test_an_offline_run_and_its_resume_keep_wandb_files_in_the_log_dir(workdir: Path,
                                                                      cli_env: dict[str, str]) -> None:
    pytest.importorskip("wandb")
    offline = {**cli_env, "WANDB_MODE": "offline"}
    first = _retrain(workdir, "--wandb-project", PROJECT, "--max-steps", "2", env=offline, timeout=300)
    assert first.returncode == 0, first.stderr[-3000:]
    wandb_files = workdir / "logs" / "default" / "wandb"
    assert len(list(wandb_files.glob("offline-run-*"))) == 1
    assert sorted(path.name for path in workdir.iterdir()) == ["logs", "retrain.toml"]
    # Resuming online without a key is refused as a new run is, before the model loads.
    online = _retrain(workdir, "--resume", "logs/default", "--max-steps", "3", env=cli_env)
    assert online.returncode == 2 and "Traceback" not in online.stderr, online.stderr
    assert "config.toml:" in online.stderr and "WANDB_API_KEY" in online.stderr, online.stderr
    resumed = _retrain(workdir, "--resume", "logs/default", "--max-steps", "3", env=offline, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    runs = list(wandb_files.glob("offline-run-*"))
    assert len({run.name.rsplit("-", 1)[-1] for run in runs}) == 1  # the same wandb run, continued
    assert sorted(path.name for path in workdir.iterdir()) == ["logs", "retrain.toml"]
