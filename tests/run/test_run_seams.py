"""The runtime seams from outside: components that live in their own modules — a backend
that trains on a remote service and an HTTP-style engine that loads references by name —
train through the real CLI, selected by dotted path, with no change to retrain itself;
and mismatched components are refused by ``retrain explain`` naming both sides."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cli_runs import read_jsonl_strict

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from fakes.unigram_service import serve  # noqa: E402

SEAMS_CONFIG = """\
[backend]
backend = "fakes.remote_backend.RemoteBackend"
adapter_path = "{{log_dir}}/adapter"

[backend.options]
url = "{url}"

[inference]
engine = "fakes.http_engine.HttpEngine"
url = "{url}"

[algorithm]
advantage_mode = "grpo"
transform_mode = "none"

[training]
seed = 1
max_steps = {steps}
batch_size = 4
group_size = 8
max_tokens = 1
temperature = 1.0
lr = 1.0
save_every = 5

[data]
source = "jsonl"
path = "say7.jsonl"

[logging]
log_dir = "logs"

[plugins]
search_paths = ["{tests}"]
"""


def retrain(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "retrain", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, check=False)


def write_run_folder(tmp_path: Path, url: str, steps: int) -> None:
    lines = [json.dumps({"prompt": f"Answer 7 ({index})", "answer": "7"}) for index in range(8)]
    (tmp_path / "say7.jsonl").write_text("\n".join(lines) + "\n")
    (tmp_path / "c.toml").write_text(SEAMS_CONFIG.format(url=url, steps=steps, tests=TESTS))


def test_a_remote_backend_and_an_http_engine_train_through_the_cli(tmp_path):
    with serve() as (url, service):
        write_run_folder(tmp_path, url, steps=20)
        explain = retrain(tmp_path, "explain", "c.toml")
        assert explain.returncode == 0, explain.stderr
        assert "remote: the backend publishes each update" in explain.stdout
        run = retrain(tmp_path, "c.toml")
        assert run.returncode == 0, run.stdout + run.stderr
        rows = read_jsonl_strict(tmp_path / "logs" / "metrics.jsonl")
        assert [row["step"] for row in rows] == list(range(1, 21))
        trained = [row for row in rows if not row["skipped"]]
        assert trained and all(row["policy_staleness"] == 0 for row in rows)
        # The unigram policy learns to answer 7: the reward climbs from about 1/11.
        first, last = rows[0]["reward_mean"], sum(row["reward_mean"] for row in rows[-5:]) / 5
        assert last > first + 0.3, (first, last)
        loads = read_jsonl_strict(tmp_path / "logs" / "engine_loads.jsonl")
        assert loads[0] == {"loaded": "policy-v0", "ref": f"unigram://{service.name}/v0", "unloaded": ""}
        versions = [int(load["loaded"].removeprefix("policy-v")) for load in loads]
        assert versions == sorted(set(versions)) and versions[-1] == rows[-1]["policy_version"]
        assert all(load["unloaded"] == f"policy-v{previous}" for load, previous in zip(loads[1:], versions))
        # close() on the way out unloaded the last adapter: the server holds none.
        assert not service.adapters
        resumed = retrain(tmp_path, "--resume", "logs", "--max-steps", "24")
        assert resumed.returncode == 0, resumed.stdout + resumed.stderr
        rows = read_jsonl_strict(tmp_path / "logs" / "metrics.jsonl")
        assert [row["step"] for row in rows] == list(range(1, 25))


FAILING_REWARD = """
calls = 0

def score(completion, reference):
    global calls
    calls += 1
    if calls > 64:  # two steps of 4 prompts x 8 samples
        raise RuntimeError("the scorer lost its connection")
    return float(completion == reference)
"""


SLOW_FIRST_LOAD = """
import pathlib
import time

from fakes.http_engine import HttpEngine

class SlowFirstLoad(HttpEngine):
    # Holds the run in its start-up, after the first adapter is loaded on the server.
    def load(self, ref):
        super().load(ref)
        if ref.version == 0:
            pathlib.Path("first-load.done").write_text("")
            time.sleep(60)
"""


@pytest.mark.parametrize("ending", ["error", "signal", "signal_at_start"])
def test_the_engine_and_backend_are_closed_on_every_way_out(tmp_path, ending):
    with serve() as (url, service):
        write_run_folder(tmp_path, url, steps=400)
        if ending == "error":
            write_plugin(tmp_path / "plugs", "failing_reward", FAILING_REWARD)
            plugs = tmp_path / "plugs"
            flags = ["--search-paths", f'["{plugs}", "{TESTS}"]', "--reward.type", "custom",
                     "--reward.custom_module", "failing_reward"]
            result = retrain(tmp_path, "c.toml", *flags)
            assert result.returncode == 2 and "the scorer lost its connection" in result.stderr, result.stderr
        elif ending == "signal_at_start":
            # SIGTERM before the first step (the engine has loaded its first adapter): the run
            # still closes what it built instead of dying with the server holding an adapter.
            write_plugin(tmp_path / "plugs", "slow_engine", SLOW_FIRST_LOAD)
            process = subprocess.Popen([sys.executable, "-m", "retrain", "c.toml", "--search-paths",
                                        f'["{tmp_path / "plugs"}", "{TESTS}"]', "--inference.engine",
                                        "slow_engine.SlowFirstLoad"], cwd=tmp_path,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            deadline = time.monotonic() + 60
            while not (tmp_path / "first-load.done").exists() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert service.adapters, "the engine never loaded its first adapter"
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
            assert process.returncode == 143, stderr
            assert "Traceback" not in stderr and (tmp_path / "logs" / "metrics.jsonl").read_text() == ""
        else:
            process = subprocess.Popen([sys.executable, "-m", "retrain", "c.toml"], cwd=tmp_path,
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            # Wait for a first row: the run is training (the log file alone exists before the
            # engine has loaded anything).
            metrics = tmp_path / "logs" / "metrics.jsonl"
            deadline = time.monotonic() + 120
            while not (metrics.exists() and b"\n" in metrics.read_bytes()) and time.monotonic() < deadline:
                assert process.poll() is None, process.communicate()[1][-3000:]
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            _, stderr = process.communicate(timeout=60)
            assert process.returncode == 143, stderr
        assert service.adapters == {}, "the engine did not unload its adapter on the way out"
        loads = read_jsonl_strict(tmp_path / "logs" / "engine_loads.jsonl")
        assert loads and loads[0]["loaded"] == "policy-v0"


def write_plugin(folder: Path, name: str, source: str) -> None:
    folder.mkdir(exist_ok=True)
    (folder / f"{name}.py").write_text(source)


NO_CAPABILITIES = """
class Bare:
    def __init__(self, config): pass
    def encode_prompt(self, messages): return [1]
    def train_step(self, batch): pass
    def publish(self, kind, directory): pass
    def save_adapter(self, path): pass
    def save_state(self, directory): pass
    def load_state(self, directory): pass
    def close(self): pass
"""

FOLDER_ENGINE = """
from fakes.http_engine import HttpEngine
from retrain.types import EngineCapabilities

class FolderEngine(HttpEngine):
    @classmethod
    def capabilities(cls, config):
        return EngineCapabilities(loads=("lora_adapter", "full_weights"), reads=("inference.url",))
"""


def explain_error(tmp_path: Path, extra: str) -> str:
    (tmp_path / "c.toml").write_text(f"[plugins]\nsearch_paths = [\"{tmp_path / 'plugs'}\", \"{TESTS}\"]\n"
                                     "[data]\nsource = \"arithmetic\"\n" + extra)
    result = retrain(tmp_path, "explain", "c.toml")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    return result.stderr


def test_explain_refuses_a_backend_plugin_without_capabilities(tmp_path):
    write_plugin(tmp_path / "plugs", "bare_backend", NO_CAPABILITIES)
    message = explain_error(tmp_path, "[backend]\nbackend = \"bare_backend.Bare\"\n")
    assert "[backend].backend" in message and "bare_backend.Bare" in message
    assert "no method capabilities()" in message and "BackendCapabilities" in message


def test_explain_refuses_an_engine_that_cannot_load_what_the_backend_publishes(tmp_path):
    write_plugin(tmp_path / "plugs", "folder_engine", FOLDER_ENGINE)
    message = explain_error(tmp_path, "[backend]\nbackend = \"fakes.remote_backend.RemoteBackend\"\n"
                                      "[backend.options]\nurl = \"http://127.0.0.1:9\"\n"
                                      "[inference]\nengine = \"folder_engine.FolderEngine\"\nurl = \"http://127.0.0.1:9\"\n")
    assert "engine 'folder_engine.FolderEngine' loads lora_adapter or full_weights" in message
    assert "backend 'fakes.remote_backend.RemoteBackend' publishes remote" in message


@pytest.mark.parametrize("uncertainty", ["shannon_entropy"])
def test_explain_refuses_entropies_from_an_engine_that_cannot_return_them(tmp_path, uncertainty):
    message = explain_error(tmp_path, "[backend]\nbackend = \"fakes.remote_backend.RemoteBackend\"\n"
                                      "[backend.options]\nurl = \"http://127.0.0.1:9\"\n"
                                      "[inference]\nengine = \"fakes.http_engine.HttpEngine\"\nurl = \"http://127.0.0.1:9\"\n"
                                      f"[algorithm]\nuncertainty_kind = \"{uncertainty}\"\n")
    assert "[algorithm].uncertainty_kind" in message
    assert "engine 'fakes.http_engine.HttpEngine' cannot return" in message


def test_a_server_url_no_component_reads_is_refused(tmp_path):
    message = explain_error(tmp_path, "[backend]\ndevices = \"cpu\"\n[inference]\nurl = \"http://127.0.0.1:9\"\n")
    assert "[inference].url: is read by neither backend 'local' nor engine 'pytorch'" in message


FORGETFUL_BACKEND = NO_CAPABILITIES + """
from retrain.plugin_api import BackendCapabilities, ConfigIssue


class RemoteBackend(Bare):
    @classmethod
    def capabilities(cls, config):
        return BackendCapabilities(publishes=("remote",), reports_loss=True, preserves_token_advantages=True,
                                   exact_resume=True, reads=("backend.options.url",))


class NoReturn(RemoteBackend):
    @classmethod
    def capabilities(cls, config):
        BackendCapabilities(publishes=("remote",), reports_loss=True, preserves_token_advantages=True,
                            exact_resume=True)  # built, never returned


class LoneIssue(RemoteBackend):
    @classmethod
    def config_issues(cls, config):
        return ConfigIssue("", "backend", "backend", "is unhappy")  # one issue, not a list of them


class SequenceLevel(RemoteBackend):
    @classmethod
    def capabilities(cls, config):
        return BackendCapabilities(publishes=("remote",), reports_loss=True, preserves_token_advantages=False,
                                   exact_resume=True, reads=("backend.options.url",))
"""

REMOTE_PAIR = ("[backend.options]\nurl = \"http://127.0.0.1:9\"\n"
               "[inference]\nengine = \"fakes.http_engine.HttpEngine\"\nurl = \"http://127.0.0.1:9\"\n")


@pytest.mark.parametrize(("backend", "expected"), [
    ("NoReturn", "capabilities(config) returned NoneType, not a BackendCapabilities"),
    ("LoneIssue", "config_issues(config) returned ConfigIssue, not a list of ConfigIssue"),
])
def test_a_plugin_that_returns_the_wrong_thing_is_named(tmp_path, backend, expected):
    write_plugin(tmp_path / "plugs", "forgetful", FORGETFUL_BACKEND)
    message = explain_error(tmp_path, f"[backend]\nbackend = \"forgetful.{backend}\"\n" + REMOTE_PAIR)
    assert f"backend 'forgetful.{backend}'" in message and expected in message
    assert "(0 problems)" not in message


def test_token_level_credit_is_refused_by_a_backend_that_keeps_one_advantage_per_sequence(tmp_path):
    write_plugin(tmp_path / "plugs", "forgetful", FORGETFUL_BACKEND)
    config = "[backend]\nbackend = \"forgetful.SequenceLevel\"\n" + REMOTE_PAIR
    message = explain_error(tmp_path, config + "[algorithm]\ntransform_mode = \"gtpo_sepa\"\n")
    assert "[algorithm].transform_mode" in message
    assert "backend 'forgetful.SequenceLevel' trains on one advantage per sequence" in message
    # Sequence-level credit is what such a backend trains on: accepted.
    (tmp_path / "c.toml").write_text((tmp_path / "c.toml").read_text().replace('"gtpo_sepa"', '"none"'))
    assert retrain(tmp_path, "explain", "c.toml").returncode == 0


def test_a_bad_transform_does_not_hide_a_backend_engine_mismatch(tmp_path):
    write_plugin(tmp_path / "plugs", "folder_engine", FOLDER_ENGINE)
    message = explain_error(tmp_path, "[backend]\nbackend = \"fakes.remote_backend.RemoteBackend\"\n"
                                      "[backend.options]\nurl = \"http://127.0.0.1:9\"\n"
                                      "[inference]\nengine = \"folder_engine.FolderEngine\"\nurl = \"http://127.0.0.1:9\"\n"
                                      "[algorithm]\ntransform_mode = \"no_such_module.transform\"\n")
    assert "no_such_module" in message
    assert "engine 'folder_engine.FolderEngine' loads lora_adapter or full_weights" in message


def test_a_component_warning_is_printed_before_training(tmp_path):
    with serve() as (url, _):
        write_run_folder(tmp_path, url, steps=2)
        run = retrain(tmp_path, "c.toml", "--backend", "fakes.remote_backend.OutspokenRemoteBackend")
        assert run.returncode == 0, run.stdout + run.stderr
        warning = "retrain: warning: c.toml:6 [backend.options].url: points at a test service — nothing to do"
        assert warning in run.stderr
        assert run.stderr.index(warning) < run.stderr.index("step 1/2")


def test_a_plugin_state_that_does_not_load_is_named_as_the_plugin_s(tmp_path):
    with serve() as (url, _):
        write_run_folder(tmp_path, url, steps=5)
        assert retrain(tmp_path, "c.toml").returncode == 0
        (tmp_path / "logs" / "checkpoints" / "step_5" / "engine" / "requests.json").unlink()
        resumed = retrain(tmp_path, "--resume", "logs", "--max-steps", "6")
        assert resumed.returncode == 2 and "Traceback" not in resumed.stderr, resumed.stderr
        assert "cannot resume: the engine could not load its state from logs/checkpoints/step_5/engine" in resumed.stderr
        assert "FileNotFoundError" in resumed.stderr and "trainer_state.json" not in resumed.stderr
