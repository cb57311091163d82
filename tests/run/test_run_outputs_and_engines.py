"""What a run claims and who gets its weights, through the real command line: output
folders (lock, adapter ownership, unusable paths), damaged trainer state, one seed giving
one run, and an engine plugin receiving every update."""

from __future__ import annotations

import fcntl
import json
from pathlib import Path

import pytest
from cli_runs import (
    DEFAULT_LOG_DIR,
    assert_rows_match,
    describe,
    read_jsonl_strict,
    run_retrain,
    workdir_with_default_config,
)

STEPS = 3


def refused(result, *phrases: str) -> None:
    assert result.returncode == 2, describe(result)
    assert "Traceback" not in result.stderr
    for phrase in phrases:
        assert phrase in result.stderr, describe(result)


def test_a_second_process_on_the_same_log_dir_is_refused(tmp_path: Path, retrain_cache: Path) -> None:
    workdir = workdir_with_default_config(tmp_path)
    log_dir = workdir / DEFAULT_LOG_DIR
    log_dir.mkdir(parents=True)
    with open(log_dir / ".retrain.lock", "a") as held:  # what a running retrain holds
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_retrain(workdir, retrain_cache, "--max-steps", "1")
    refused(result, "another retrain process is running in logs/default")
    assert not (log_dir / "metrics.jsonl").exists()


def test_runs_sharing_a_fixed_adapter_path_are_refused(tmp_path: Path, retrain_cache: Path) -> None:
    workdir = workdir_with_default_config(tmp_path)
    shared = ["--backend-adapter-path", str(tmp_path / "shared_adapter")]
    first = run_retrain(workdir, retrain_cache, "--max-steps", "1", "--log-dir", "logs/a", *shared)
    assert first.returncode == 0, describe(first)
    second = run_retrain(workdir, retrain_cache, "--max-steps", "1", "--log-dir", "logs/b", *shared)
    refused(second, "holds the adapters of the run in", "logs/a", "{log_dir}/adapter")
    assert not (workdir / "logs/b/metrics.jsonl").exists()
    # The run that owns the folder may resume into it.
    resumed = run_retrain(workdir, retrain_cache, "--resume", "logs/a", "--max-steps", "2")
    assert resumed.returncode == 0, describe(resumed)


def test_an_adapter_folder_of_a_run_still_starting_is_refused(tmp_path: Path, retrain_cache: Path) -> None:
    # The other run holds its lock but has not written a checkpoint or snapshot yet.
    workdir = workdir_with_default_config(tmp_path)
    other = workdir / "logs/other"
    other.mkdir(parents=True)
    shared = workdir / "shared_adapter"
    shared.mkdir()
    (shared / ".retrain-run").write_text(f"{other.resolve()}\n")
    with open(other / ".retrain.lock", "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = run_retrain(workdir, retrain_cache, "--max-steps", "1", "--backend-adapter-path", str(shared))
    refused(result, "holds the adapters of the run in", "logs/other")
    # Once that run is gone without a trace, the folder is free.
    (other / ".retrain.lock").unlink()
    other.rmdir()
    free = run_retrain(workdir, retrain_cache, "--max-steps", "1", "--backend-adapter-path", str(shared))
    assert free.returncode == 0, describe(free)


def test_the_adapter_folder_inside_another_runs_log_dir_is_refused(tmp_path: Path, retrain_cache: Path) -> None:
    workdir = workdir_with_default_config(tmp_path)
    first = run_retrain(workdir, retrain_cache, "--max-steps", "1", "--log-dir", "logs/a",
                        "--backend-adapter-path", "logs/a/adapter")
    assert first.returncode == 0, describe(first)
    second = run_retrain(workdir, retrain_cache, "--max-steps", "1", "--log-dir", "logs/b",
                         "--backend-adapter-path", "logs/a/adapter")
    refused(second, "holds the adapters of the run in", "logs/a")


def test_a_copied_run_sharing_a_fixed_adapter_path_resumes_into_a_folder_of_its_own(tmp_path: Path,
                                                                                    retrain_cache: Path) -> None:
    import shutil

    workdir = workdir_with_default_config(tmp_path)
    shared = str(tmp_path / "fixed_adapter")
    first = run_retrain(workdir, retrain_cache, "--max-steps", "1", "--log-dir", "fa", "--backend-adapter-path", shared)
    assert first.returncode == 0, describe(first)
    shutil.copytree(workdir / "fa", workdir / "fb")
    refused(run_retrain(workdir, retrain_cache, "--resume", "fb", "--max-steps", "2"), "--backend-adapter-path DIR")
    moved = run_retrain(workdir, retrain_cache, "--resume", "fb", "--max-steps", "2", "--backend-adapter-path", "fb/adapter")
    assert moved.returncode == 0, describe(moved)
    assert (workdir / "fb/adapter/final").is_dir()


@pytest.mark.parametrize("flag", ["--log-dir", "--backend-adapter-path"])
def test_an_output_folder_that_cannot_be_created_is_a_clean_error(tmp_path: Path, retrain_cache: Path,
                                                                  flag: str) -> None:
    workdir = workdir_with_default_config(tmp_path)
    (workdir / "afile").write_text("not a folder")
    result = run_retrain(workdir, retrain_cache, "--max-steps", "1", flag, "afile/inside")
    refused(result, "cannot ", "afile/inside", "choose a folder")


@pytest.mark.parametrize(("state", "phrase"), [
    ("[1, 2]", "not written by this version"),
    ('{"version": 2, "step": 2}', "damaged (seed, checkpoint, data, credit, rng, policy_version missing"),
    ('{"version": 2, "step": "2", "seed": 0, "checkpoint": "c", "data": {}, "credit": {}, "rng": {}, "policy_version": 0}',
     "damaged (step missing"),
    ('{"version": 2, "step": -5, "seed": 0, "checkpoint": "c", "data": {}, "credit": {}, "rng": {}, "policy_version": 0}',
     "damaged (step missing"),
    (None, "is damaged (KeyError: "),  # the real state with its nested tables emptied
])
def test_a_damaged_trainer_state_is_a_clean_error(tmp_path: Path, retrain_cache: Path, state: str | None,
                                                 phrase: str) -> None:
    workdir = workdir_with_default_config(tmp_path)
    done = run_retrain(workdir, retrain_cache, "--max-steps", "1")
    assert done.returncode == 0, describe(done)
    path = workdir / DEFAULT_LOG_DIR / "trainer_state.json"
    if state is None:
        real = json.loads(path.read_text())
        state = json.dumps({**real, "credit": {}, "rng": {}, "data": {}})
    path.write_text(state)
    refused(run_retrain(workdir, retrain_cache, "--resume", str(DEFAULT_LOG_DIR), "--max-steps", "2"), phrase)


def test_resume_from_a_folder_that_is_not_a_run_names_it(tmp_path: Path, retrain_cache: Path) -> None:
    result = run_retrain(tmp_path, retrain_cache, "--resume", "nowhere")  # no ./retrain.toml either
    refused(result, "cannot resume: nowhere/config.toml does not exist")


def test_one_seed_gives_one_run_with_lora_dropout(tmp_path: Path, retrain_cache: Path) -> None:
    # LoRA dropout draws from torch's global generator, which [training] seed must set.
    workdir = workdir_with_default_config(tmp_path)
    flags = ["--max-steps", "2", "--lora-rank", "4", "--lora.dropout", "0.5", "--lr", "1e-2"]
    for name in ("a", "b"):
        result = run_retrain(workdir, retrain_cache, *flags, "--log-dir", f"logs/{name}",
                             "--backend-adapter-path", f"logs/{name}/adapter")
        assert result.returncode == 0, describe(result)
    first, second = (read_jsonl_strict(workdir / f"logs/{name}/metrics.jsonl") for name in ("a", "b"))
    assert_rows_match(first, second, tolerance=0.0)


ENGINE_PLUGIN = '''
"""An engine with its own copy of the model, as a server would have: it only learns of
new weights by loading the folders the backend publishes."""

import json
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from retrain.backends.weights import load_saved_weights
from retrain.engines.sampler import Sampler
from retrain.models.tiny import resolve_model_path
from retrain.types import EngineCapabilities


class OwnCopyEngine:
    @classmethod
    def capabilities(cls, config):
        return EngineCapabilities(loads=("lora_adapter", "full_weights"))

    def __init__(self, config):
        path = resolve_model_path(config.model.model)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
        self.sampler = Sampler(model, AutoTokenizer.from_pretrained(path), device="cpu",
                               generator=torch.Generator().manual_seed(0))
        self.policy_version = -1
        self.record = Path(config.logging.log_dir) / "engine_loads.jsonl"

    def generate(self, prompt_token_ids, params):
        return self.sampler.generate(prompt_token_ids, params)

    def load(self, ref):
        with self.sampler.weights_lock:
            load_saved_weights(self.sampler.model, Path(ref.location))
        self.sampler.policy_version = self.policy_version = ref.version
        with open(self.record, "a") as out:
            out.write(json.dumps({"version": ref.version, "kind": ref.kind, "path": ref.location}) + "\\n")

    def save_state(self, directory):
        pass

    def load_state(self, directory):
        pass

    def close(self):
        self.sampler = None
'''


def test_an_engine_plugin_loads_the_weights_of_every_update_and_after_resume(tmp_path: Path,
                                                                             retrain_cache: Path) -> None:
    workdir = workdir_with_default_config(tmp_path)
    (workdir / "plugs").mkdir()
    (workdir / "plugs" / "own_engine.py").write_text(ENGINE_PLUGIN)
    flags = ["--search-paths", "plugs", "--inference-engine", "own_engine.OwnCopyEngine", "--save-every", "2"]
    first = run_retrain(workdir, retrain_cache, "--max-steps", str(STEPS), *flags)
    assert first.returncode == 0, describe(first)
    log_dir = workdir / DEFAULT_LOG_DIR
    loads = read_jsonl_strict(log_dir / "engine_loads.jsonl")
    # The initial weights first, then every update; full fine-tuning publishes model folders.
    assert [load["version"] for load in loads] == [0, 1, 2, 3]
    assert {load["kind"] for load in loads} == {"full_weights"}
    # Absolute: an engine in another process resolves paths from its own directory.
    assert all(Path(load["path"]).is_absolute() for load in loads)
    rows = read_jsonl_strict(log_dir / "metrics.jsonl")
    # The engine sampled step k with the weights of update k - 1: on-policy.
    assert [row["policy_version"] for row in rows] == [1, 2, 3]
    assert all(row["policy_staleness"] == 0 for row in rows)
    assert [p.name for p in (log_dir / "engine_weights").iterdir()] == ["policy_v3"]
    # A resumed run first hands the engine the restored weights.
    resumed = run_retrain(workdir, retrain_cache, "--resume", str(DEFAULT_LOG_DIR), "--max-steps", "4")
    assert resumed.returncode == 0, describe(resumed)
    assert [load["version"] for load in read_jsonl_strict(log_dir / "engine_loads.jsonl")][4:] == [3, 4]
    assert json.loads((log_dir / "trainer_state.json").read_text())["policy_version"] == 4


def test_a_resumed_run_finds_plugins_next_to_the_original_config(tmp_path: Path, retrain_cache: Path) -> None:
    # The resumed run loads its snapshot from the log folder; relative search paths in it
    # would point there, so the snapshot records them as absolute paths.
    workdir = workdir_with_default_config(tmp_path)
    project = workdir / "project"
    (project / "plugs").mkdir(parents=True)
    (project / "plugs" / "digit_reward.py").write_text(
        "def score(completion, reference):\n    return float(completion.strip() == reference)\n")
    (project / "c.toml").write_text((workdir / "retrain.toml").read_text())
    flags = ["--search-paths", "plugs", "--reward-type", "custom", "--reward.custom_module", "digit_reward"]
    first = run_retrain(workdir, retrain_cache, "project/c.toml", "--max-steps", "1", "--log-dir", "L1", *flags)
    assert first.returncode == 0, describe(first)
    resumed = run_retrain(workdir, retrain_cache, "--resume", "L1", "--max-steps", "2")
    assert resumed.returncode == 0, describe(resumed)
    explicit = run_retrain(workdir, retrain_cache, "project/c.toml", "--resume", "L1", "--max-steps", "3", *flags)
    assert explicit.returncode == 0, describe(explicit)


def test_resuming_a_run_that_has_all_its_steps_says_there_is_nothing_to_train(tmp_path: Path,
                                                                              retrain_cache: Path) -> None:
    workdir = workdir_with_default_config(tmp_path)
    assert run_retrain(workdir, retrain_cache, "--max-steps", "2").returncode == 0
    again = run_retrain(workdir, retrain_cache, "--resume", str(DEFAULT_LOG_DIR), "--max-steps", "2")
    assert again.returncode == 0, describe(again)
    assert again.stdout.startswith(f"nothing to train: {DEFAULT_LOG_DIR} already has 2 steps"), again.stdout
    assert "nan" not in again.stdout


def test_a_log_dir_flag_on_resume_is_refused_not_ignored(tmp_path: Path, retrain_cache: Path) -> None:
    workdir = workdir_with_default_config(tmp_path)
    assert run_retrain(workdir, retrain_cache, "--max-steps", "1").returncode == 0
    moved = run_retrain(workdir, retrain_cache, "--resume", str(DEFAULT_LOG_DIR), "--max-steps", "2",
                        "--log-dir", "logs/elsewhere")
    refused(moved, "CLI --log-dir logs/elsewhere: a resumed run continues in its own folder", "copy its folder")
    assert not (workdir / "logs" / "elsewhere").exists()
    same = run_retrain(workdir, retrain_cache, "--resume", str(DEFAULT_LOG_DIR), "--max-steps", "2",
                       "--log-dir", str(DEFAULT_LOG_DIR))
    assert same.returncode == 0, describe(same)
