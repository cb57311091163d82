"""``plugin_repaired_values`` in every metrics row: the credit stages' repairs plus the
collection's (a custom reward's), 0 when none; and through the real command line, one
warning per step for a plugin that needs repairs, not one per value."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrain.config.schema import AlgorithmConfig, Config, PluginsConfig
from retrain.credit import build_credit_pipeline, synthetic_batch
from retrain.metrics import metrics_row
from retrain.step import StepRecord
from retrain.types import Collected, CreditResult, Example, TrainResult

REPO = Path(__file__).resolve().parents[2]

NAN_ADVANTAGES = '''
import numpy as np

def two_nan(rewards_P_G, params):
    """Centred rewards with the first two of every step made NaN."""
    out = rewards_P_G - rewards_P_G.mean(axis=1, keepdims=True)
    out.reshape(-1)[:2] = np.nan
    return out

def short_rows(ctx, params):
    """Every sequence one token short (uniform advantages)."""
    return [np.full(max(int(n) - 1, 0), a) for n, a in zip(ctx.mask_N_T.sum(axis=1), ctx.episode_advantages_N)]
'''


def record(credit: CreditResult, counts: dict[str, float] | None = None) -> StepRecord:
    batch = synthetic_batch(num_prompts=1, group_size=4, max_tokens=6)
    example = Example("q", ({"role": "user", "content": "2+2?"},), "4")
    collected = Collected([example], batch, np.array([[1.0, 0.0, 0.0, 1.0]]), counts=counts or {})
    return StepRecord(1, collected, credit, TrainResult(loss=0.5), policy_version=1, staleness=0)


def credit_of(tmp_path: Path, strict: bool = False, **algorithm: str) -> CreditResult:
    (tmp_path / "nan_advantages.py").write_text(NAN_ADVANTAGES)
    config = Config(algorithm=AlgorithmConfig(**algorithm),  # type: ignore[arg-type]
                    plugins=PluginsConfig(search_paths=[str(tmp_path)], strict=strict))
    batch = synthetic_batch(num_prompts=1, group_size=4, max_tokens=6)
    return build_credit_pipeline(config)(np.array([[1.0, 0.0, 0.0, 1.0]]), batch, None, 1)


def test_a_row_counts_the_values_the_credit_stages_repaired(tmp_path: Path):
    credit = credit_of(tmp_path, advantage_mode="nan_advantages.two_nan", transform_mode="none")
    row = metrics_row(record(credit), 1.0, 0)
    assert row["plugin_repaired_values"] == 2 and isinstance(row["plugin_repaired_values"], int)


def test_a_row_adds_what_the_collection_repaired_and_is_zero_without_repairs(tmp_path: Path):
    clean = credit_of(tmp_path)
    assert metrics_row(record(clean), 1.0, 0)["plugin_repaired_values"] == 0
    # A custom reward's non-finite results, counted while collecting.
    assert metrics_row(record(clean, {"plugin_repaired_values": 3.0}), 1.0, 0)["plugin_repaired_values"] == 3


def test_the_probe_before_the_run_logs_no_repairs(tmp_path: Path, caplog: pytest.LogCaptureFixture):
    (tmp_path / "nan_advantages.py").write_text(NAN_ADVANTAGES)
    config = Config(algorithm=AlgorithmConfig(advantage_mode="nan_advantages.two_nan"),
                    plugins=PluginsConfig(search_paths=[str(tmp_path)], strict=False))
    with caplog.at_level("WARNING", logger="retrain.credit"):
        probed = build_credit_pipeline(config).probe()
    assert probed.repaired_values == 2 and not caplog.records  # a made-up batch; the steps tell


def test_a_run_warns_once_per_step_and_plugin_and_logs_the_count_in_every_row(tmp_path: Path):
    (tmp_path / "nan_advantages.py").write_text(NAN_ADVANTAGES)
    toml = (REPO / "retrain.toml").read_text()
    toml = toml.replace('advantage_mode = "maxrl"', 'advantage_mode = "nan_advantages.two_nan"')
    toml = toml.replace('transform_mode = "gtpo_sepa"', 'transform_mode = "nan_advantages.short_rows"')
    (tmp_path / "retrain.toml").write_text(toml + '\n[plugins]\nsearch_paths = ["."]\nstrict = false\n')
    env = {key: value for key, value in os.environ.items() if not key.startswith("RETRAIN_")}
    env.update(RETRAIN_CACHE_DIR=str(tmp_path / "cache"), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-m", "retrain", "--max-steps", "3", "--batch-size", "2",
                             "--group-size", "8"], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                            check=False, env=env)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stderr.splitlines()
    advantage = [line for line in lines if "advantage 'nan_advantages.two_nan'" in line]
    transform = [line for line in lines if "transform 'nan_advantages.short_rows'" in line]
    # One warning per step and plugin, not one per value or per sequence (16 a step).
    assert (len(advantage), len(transform)) == (3, 3), result.stderr
    assert "repaired 2 of 16 values (2 NaN → 0.0; first at sequence 0 (prompt 0, completion 0))" in advantage[0]
    assert " of 16 sequences to their number of sampled tokens (padded with 0 or cut; first: " in transform[0]
    rows = [json.loads(line) for line in (tmp_path / "logs/default/metrics.jsonl").read_text().splitlines()]
    assert [row["plugin_repaired_values"] for row in rows] == [2, 2, 2]
    assert all(row["plugin_repaired_sequences"] > 0 for row in rows)
