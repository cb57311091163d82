"""A resumed run reads the data it started with, from wherever it is resumed: the
snapshot names the file by its absolute path, and the checkpoint's fingerprint of its
content is checked (a changed file is refused; a moved one is named on resume)."""

from __future__ import annotations

import json
from pathlib import Path

from cli_runs import describe, read_jsonl_strict, run_retrain, workdir_with_default_config

from retrain.inputs import fingerprint

ROWS = [{"prompt": f"{a}+{b} mod 10=", "answer": str((a + b) % 10)} for a in range(4) for b in range(4)]


def started_run(tmp_path: Path, cache: Path) -> tuple[Path, Path]:
    """A two-step run of the tiny model on data/train.jsonl (a relative path), checkpointed."""
    workdir = workdir_with_default_config(tmp_path / "first")
    data = workdir / "data" / "train.jsonl"
    data.parent.mkdir()
    data.write_text("".join(json.dumps(row) + "\n" for row in ROWS))
    result = run_retrain(workdir, cache, "--source", "jsonl", "--path", "data/train.jsonl", "--max-steps", "2",
                         "--save-every", "1", "--log-dir", "run")
    assert result.returncode == 0, describe(result)
    return workdir, data


def test_the_snapshot_and_the_checkpoint_pin_the_data(tmp_path: Path, retrain_cache: Path) -> None:
    workdir, data = started_run(tmp_path, retrain_cache)
    snapshot = (workdir / "run" / "config.toml").read_text()
    assert f'path = "{data}"' in snapshot
    state = json.loads((workdir / "run" / "trainer_state.json").read_text())
    assert state["inputs"] == {"data.path": fingerprint(data)}

    # Resumed from another folder holding a different file of the same name: the run's own file is read.
    elsewhere = tmp_path / "elsewhere"
    (elsewhere / "data").mkdir(parents=True)
    (elsewhere / "data" / "train.jsonl").write_text("not json at all\n")
    resumed = run_retrain(elsewhere, retrain_cache, "--resume", str(workdir / "run"), "--max-steps", "3")
    assert resumed.returncode == 0, describe(resumed)
    assert [row["step"] for row in read_jsonl_strict(workdir / "run" / "metrics.jsonl")] == [1, 2, 3]


def test_a_changed_data_file_is_refused_on_resume(tmp_path: Path, retrain_cache: Path) -> None:
    workdir, data = started_run(tmp_path, retrain_cache)
    data.write_text("".join(json.dumps({**row, "answer": "0"}) + "\n" for row in ROWS))
    resumed = run_retrain(workdir, retrain_cache, "--resume", "run", "--max-steps", "3")
    assert resumed.returncode == 2, describe(resumed)
    assert "is not the content this run trained on" in resumed.stderr and "Traceback" not in resumed.stderr


def test_a_moved_data_file_is_named_on_resume(tmp_path: Path, retrain_cache: Path) -> None:
    workdir, data = started_run(tmp_path, retrain_cache)
    moved = tmp_path / "archive" / "train.jsonl"
    moved.parent.mkdir()
    data.rename(moved)
    refused = run_retrain(workdir, retrain_cache, "--resume", "run", "--max-steps", "3")
    assert refused.returncode == 2, describe(refused)
    assert "no longer exists — if it moved, name it" in refused.stderr and "--path NEW_PATH" in refused.stderr

    resumed = run_retrain(workdir, retrain_cache, "--resume", "run", "--max-steps", "3", "--path", str(moved))
    assert resumed.returncode == 0, describe(resumed)
    assert f'path = "{moved}"' in (workdir / "run" / "config.toml").read_text()

    moved.write_text(moved.read_text().replace('"answer": "1"', '"answer": "2"'))
    changed = run_retrain(workdir, retrain_cache, "--resume", "run", "--max-steps", "4", "--path", str(moved))
    assert changed.returncode == 2 and "is not the content this run trained on" in changed.stderr, describe(changed)


def test_a_snapshot_edited_by_hand_is_refused_on_resume(tmp_path: Path, retrain_cache: Path) -> None:
    workdir, _ = started_run(tmp_path, retrain_cache)
    snapshot = workdir / "run" / "config.toml"
    original = snapshot.read_text()
    assert "batch_size = 8\n" in original
    snapshot.write_text(original.replace("batch_size = 8\n", "batch_size = 4\n").replace("max_steps = 2\n",
                                                                                         "max_steps = 3\n"))
    refused = run_retrain(workdir, retrain_cache, "--resume", "run")
    assert refused.returncode == 2, describe(refused)
    assert "was edited since the last checkpoint: training.batch_size = 4 (the checkpoint was taken with 8)" \
        in refused.stderr, refused.stderr
    # max_steps is one of the settings a resume may change, by hand too.
    snapshot.write_text(original.replace("max_steps = 2\n", "max_steps = 3\n"))
    resumed = run_retrain(workdir, retrain_cache, "--resume", "run")
    assert resumed.returncode == 0, describe(resumed)
    assert [row["step"] for row in read_jsonl_strict(workdir / "run" / "metrics.jsonl")] == [1, 2, 3]


def test_pinned_settings_take_any_toml_value() -> None:
    import dataclasses
    import datetime

    from retrain.config.schema import AlgorithmConfig, Config
    from retrain.run import pinned_settings

    config = dataclasses.replace(Config(), algorithm=AlgorithmConfig(
        advantage_params={"since": datetime.date(2024, 1, 1), "scale": float("nan")}))
    assert pinned_settings(config) == pinned_settings(config)  # a NaN is not an edit


def test_a_run_that_read_no_file_cannot_be_given_one_on_resume(tmp_path: Path) -> None:
    import dataclasses

    import pytest

    from retrain.config.schema import Config, DataConfig
    from retrain.config.snapshot import write_snapshot
    from retrain.errors import RetrainError
    from retrain.run import check_resume_settings

    hub = dataclasses.replace(Config(), data=DataConfig(source="math", path=""))  # MATH from the hub: no file
    write_snapshot(hub, tmp_path / "config.toml")
    local = dataclasses.replace(hub, data=DataConfig(source="math", path=str(tmp_path)))
    state: dict[str, object] = {"step": 1, "inputs": {}}
    with pytest.raises(RetrainError, match="the config differs from the run's snapshot .*data.path"):
        check_resume_settings(local, tmp_path, state)
    assert check_resume_settings(hub, tmp_path, state) == hub
