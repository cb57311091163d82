"""The wandb sink (retrain.sinks.wandb_run.WandbSink), run offline into a temporary WANDB_DIR."""

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


def _history(run_file) -> tuple[object, list[tuple[int, dict[str, object]]]]:
    """(the run record's branch point, [(step, {key: value})] of the history records) of an
    offline run file: wandb's LevelDB-style log (a 7-byte file header, then 32 KiB blocks of
    chunks, each with a 7-byte header: CRC32, length, type 1 full / 2 first / 3 middle /
    4 last) of ``Record`` protobufs."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data = run_file.read_bytes()
    block, position, pending, raw_records = 32768, 7, b"", []
    while position + 7 <= len(data):
        room = block - position % block
        if room < 7:
            position += room
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        if kind == 0:
            position += room
            continue
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        pending = chunk if kind in (1, 2) else pending + chunk
        if kind in (1, 4):
            raw_records.append(pending)
    branch_point, history = None, []
    for raw in raw_records:
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        if record.WhichOneof("record_type") == "run":
            branch_point = record.run.branch_point
        elif record.WhichOneof("record_type") == "history":
            items = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in record.history.item}
            history.append((record.history.step.num, items))
    return branch_point, history


def _offline_attempt(tmp_path, monkeypatch, name: str, config: Config, steps: range, total_steps: int,
                     completed: int = 0, run_id: str | None = None) -> tuple[str, object, list]:
    """Log ``steps`` through the sinks of one attempt of a run (offline wandb, in its own
    WANDB_DIR: two offline runs of one id started in the same second would share a folder
    name); the run id, and the branch point and history of its wandb run file."""
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / name))
    sinks = build_sinks(config, total_steps=total_steps, completed=completed, wandb_run_id=run_id)
    for step in steps:
        sinks.log_step({"step": step, "reward_mean": step / 10})
    run_id = sinks.wandb_run_id
    sinks.close()
    [run_file] = (tmp_path / name / "wandb").glob(f"offline-run-*-{run_id}/run-{run_id}.wandb")
    return (run_id, *_history(run_file))


@pytest.fixture
def offline_config(tmp_path, monkeypatch) -> Config:
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    return Config(logging=LoggingConfig(log_dir=str(tmp_path / "logs"), wandb_project="retrain-tests"))


@pytest.mark.integration
def test_a_resumed_run_rewinds_wandb_to_the_checkpoint_step(tmp_path, monkeypatch, offline_config):
    # The crashed attempt checkpointed step 3 and logged up to step 5.
    run_id, _, crashed = _offline_attempt(tmp_path, monkeypatch, "crashed", offline_config, range(1, 6), 6)
    assert [step for step, _ in crashed] == [1, 2, 3, 4, 5]
    resumed_id, branch_point, history = _offline_attempt(tmp_path, monkeypatch, "resumed", offline_config,
                                                         range(4, 7), 6, completed=3, run_id=run_id)
    assert resumed_id == run_id
    assert (branch_point.run, branch_point.metric, branch_point.value) == (run_id, "_step", 3)
    # Every redone step is recorded (none dropped as out of order), in increasing order.
    assert [(step, items["reward_mean"]) for step, items in history] == [(4, 0.4), (5, 0.5), (6, 0.6)]


@pytest.mark.integration
def test_extending_a_finished_run_continues_wandb_without_a_rewind(tmp_path, monkeypatch, offline_config):
    run_id, _, _ = _offline_attempt(tmp_path, monkeypatch, "first", offline_config, range(1, 4), 3)
    _, branch_point, history = _offline_attempt(tmp_path, monkeypatch, "extended", offline_config, range(4, 6), 5,
                                                completed=3, run_id=run_id)
    assert not branch_point.run  # nothing was redone, so nothing to rewind
    assert [step for step, _ in history] == [4, 5]


class _FakeRun:
    def __init__(self, run_id: str) -> None:
        self.id = run_id


class _RewindRefusingInit:
    """wandb.init for a server without rewind: ``resume_from`` fails, the rest works."""

    def __init__(self) -> None:
        self.calls: list[dict[str, object]] = []

    def __call__(self, **arguments: object) -> _FakeRun:
        import wandb

        self.calls.append(arguments)
        if "resume_from" in arguments:
            raise wandb.errors.CommError("rewind is not enabled for this entity")
        return _FakeRun(str(arguments.get("id")))


def test_a_refused_rewind_continues_the_run_and_says_what_wandb_will_miss(caplog):
    pytest.importorskip("wandb")
    init = _RewindRefusingInit()
    with caplog.at_level("WARNING", logger="retrain.sinks.wandb_run"):
        sink = WandbSink(Config(logging=LoggingConfig(wandb_project="retrain-tests")), run_id="abc", resume_step=7,
                         init=init)
    assert sink.run_id == "abc"
    assert init.calls[0]["resume_from"] == "abc?_step=7" and "id" not in init.calls[0]
    assert (init.calls[1]["id"], init.calls[1]["resume"]) == ("abc", "allow")
    assert "wandb refused to rewind run abc to step 7" in caplog.text and "metrics.jsonl" in caplog.text
