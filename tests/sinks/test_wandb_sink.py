"""The wandb sink (retrain.sinks.WandbSink), run offline into a temporary WANDB_DIR."""

from __future__ import annotations

import json
import re

import pytest

from retrain.config.schema import Config, LoggingConfig
from retrain.sinks import WandbSink, build_sinks


@pytest.mark.integration
def test_offline_run_records_config_and_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = Config(logging=LoggingConfig(
        log_dir=str(tmp_path / "logs"), wandb_project="retrain-tests", wandb_group="ablation-7",
        wandb_tags="cpu, tiny", wandb_run_name="",
    ))
    sinks = build_sinks(config, total_steps=3)
    wandb_sink = sinks.sinks[-1]
    assert isinstance(wandb_sink, WandbSink)
    assert wandb_sink.run.name == "maxrl+gtpo_sepa"
    assert list(wandb_sink.run.tags) == ["cpu", "tiny"]
    assert wandb_sink.run.group == "ablation-7"
    assert wandb_sink.run.config["training"]["lr"] == config.training.lr
    for step in (1, 2, 3):
        sinks.log_step({"step": step, "reward_mean": 0.1 + 0.2 * step, "loss": float("nan"), "skipped_groups": step})
    run_id = wandb_sink.run_id
    assert sinks.wandb_run_id == run_id
    sinks.close()
    runs = list((tmp_path / "wandb").glob(f"offline-run-*-{run_id}"))
    assert len(runs) == 1
    record = (runs[0] / f"run-{run_id}.wandb").read_bytes()
    # History and summary items are stored as (key, value as JSON) fields; read back the
    # distinct values logged under a key. 0.1 + 0.2 * step for steps 1..3 -> 0.3, 0.5, 0.7.
    assert sorted(set(_logged(record, "reward_mean"))) == pytest.approx([0.3, 0.5, 0.7])
    assert sorted(set(_logged(record, "skipped_groups"))) == [1, 2, 3]
    assert _logged(record, "loss") == []  # NaN is not sent
    assert b"ablation-7" in record


def _logged(record: bytes, key: str) -> list[float]:
    """Values recorded for a history key: the key's bytes, a 0x82 0x01 field tag, a
    length byte, then the value's JSON text."""
    pattern = re.compile(re.escape(key.encode()) + rb"\x82\x01(.)", re.DOTALL)
    values = []
    for match in pattern.finditer(record):
        start = match.end()
        values.append(json.loads(record[start:start + match.group(1)[0]]))
    return values


@pytest.mark.integration
def test_resume_continues_the_stored_run_id(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    monkeypatch.setenv("WANDB_SILENT", "true")
    sink = WandbSink(Config(logging=LoggingConfig(wandb_project="retrain-tests", wandb_run_name="resumed")),
                     run_id="retrain-resume-1")
    sink.log({"step": 11, "reward_mean": 0.5}, step=11)
    sink.finish()
    assert sink.run_id == "retrain-resume-1"
    assert list((tmp_path / "wandb").glob("offline-run-*-retrain-resume-1"))
