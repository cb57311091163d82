"""Crash-safe JSONL logs (retrain.sinks.jsonl: MetricsLog / GenerationsLog)."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrain.sinks import (
    GenerationsLog,
    LogFileError,
    MetricsLog,
    read_rows,
    sample_indices,
)
from retrain.types import Example, SampleBatch

REPO = Path(__file__).resolve().parents[2]


def test_append_and_read_back(tmp_path):
    log = MetricsLog(tmp_path / "logs" / "metrics.jsonl")
    log.append({"step": 1, "reward_mean": np.float32(0.5), "tokens": np.int64(12), "loss": float("nan"),
                "hist": np.array([1.0, np.inf])})
    log.append({"step": 2, "ok": np.bool_(True), "note": "line\nbreak"})
    log.close()
    text = (tmp_path / "logs" / "metrics.jsonl").read_text()
    # Two lines: JSON escapes the newline inside the string; NaN/inf are written as null.
    assert text.count("\n") == 2
    assert log.rows() == [
        {"step": 1, "reward_mean": 0.5, "tokens": 12, "loss": None, "hist": [1.0, None]},
        {"step": 2, "ok": True, "note": "line\nbreak"},
    ]


def test_durable_appends_and_sync(tmp_path):
    path = tmp_path / "m.jsonl"
    durable = MetricsLog(path, fsync_each_append=True)
    durable.append({"step": 1})
    durable.sync()
    durable.append({"step": 2})
    durable.close()
    durable.sync()  # nothing open: a no-op
    assert path.read_text() == '{"step":1}\n{"step":2}\n'


def test_rows_need_an_integer_step(tmp_path):
    log = MetricsLog(tmp_path / "m.jsonl")
    with pytest.raises(ValueError, match="integer 'step'"):
        log.append({"reward_mean": 1.0})
    with pytest.raises(ValueError, match="integer 'step'"):
        log.append({"step": True})
    with pytest.raises(TypeError, match="cannot write a object"):
        log.append({"step": 1, "bad": object()})
    assert log.rows() == []


def test_torn_last_line_is_skipped_then_cut_before_the_next_append(tmp_path, caplog):
    path = tmp_path / "m.jsonl"
    log = MetricsLog(path)
    log.append({"step": 1})
    log.append({"step": 2})
    with path.open("ab") as stream:  # what a machine crash mid-write could leave
        stream.write(b'{"step":3,"rew')
    assert log.rows() == [{"step": 1}, {"step": 2}]
    assert "torn last line" in caplog.text
    resumed = MetricsLog(path)
    resumed.append({"step": 3})
    assert path.read_text() == '{"step":1}\n{"step":2}\n{"step":3}\n'


def test_corrupt_middle_line_is_an_error(tmp_path):
    path = tmp_path / "m.jsonl"
    path.write_text('{"step":1}\nnot json\n{"step":3}\n')
    with pytest.raises(LogFileError, match=r"m.jsonl:2"):
        MetricsLog(path).rows()


def test_truncate_after_and_keep_appending(tmp_path):
    path = tmp_path / "m.jsonl"
    log = MetricsLog(path)
    for step in range(1, 6):
        log.append({"step": step, "value": step * 10})
    log.truncate_after(3)
    # The rewrite replaced the file: appends must go to the new file, not the old inode.
    log.append({"step": 4, "value": -1})
    assert [row["step"] for row in MetricsLog(path).rows()] == [1, 2, 3, 4]
    assert MetricsLog(path).rows()[-1]["value"] == -1


@settings(max_examples=40, deadline=None)
@given(steps=st.lists(st.integers(min_value=0, max_value=20), max_size=15), keep=st.integers(min_value=-1, max_value=21))
def test_truncate_after_keeps_exactly_the_earlier_rows(tmp_path_factory, steps, keep):
    path = tmp_path_factory.mktemp("t") / "m.jsonl"
    log = MetricsLog(path)
    for index, step in enumerate(steps):
        log.append({"step": step, "index": index})
    log.truncate_after(keep)
    expected = [{"step": step, "index": index} for index, step in enumerate(steps) if step <= keep]
    assert log.rows() == expected


_WRITER = """
import sys
from pathlib import Path
from retrain.sinks import MetricsLog
log = MetricsLog(Path(sys.argv[1]))
rows = log.rows()
step = rows[-1]["step"] if rows else 0
print("ready", flush=True)
while True:
    step += 1
    log.append({"step": step, "payload": "x" * (step * 37 % 3000)})
"""


def test_sigkill_never_exposes_a_torn_or_duplicated_row(tmp_path):
    # A writer appends rows of 0-3 KB as fast as it can and is killed at random moments;
    # each restart continues from the last complete row. A kill can cut the row being
    # written (the kernel stops a write between pages on SIGKILL): the reader must skip
    # that fragment, and the next writer must cut it off before appending.
    path = tmp_path / "metrics.jsonl"
    chance = random.Random(1234)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    for _ in range(8):
        writer = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE,
                                  stderr=subprocess.DEVNULL, env=env)
        assert writer.stdout is not None and writer.stdout.readline() == b"ready\n"
        time.sleep(chance.uniform(0.01, 0.1))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        steps = [row["step"] for row in read_rows(path)]
        assert steps == list(range(1, len(steps) + 1))
    MetricsLog(path)  # a writer opening the log cuts any torn tail
    data = path.read_bytes()
    assert data.endswith(b"\n")
    assert [json.loads(line)["step"] for line in data.splitlines()] == list(range(1, len(steps) + 1))
    assert len(steps) > 8


def _batch(texts: list[str], group_size: int) -> SampleBatch:
    count = len(texts)
    lengths = [len(text) for text in texts]
    width = max(lengths)
    mask = np.array([[t < length for t in range(width)] for length in lengths])
    return SampleBatch(
        prompt_token_ids=[[1, 2]] * (count // group_size),
        group_size=group_size,
        token_ids_N_T=np.zeros((count, width), dtype=np.int64),
        mask_N_T=mask,
        loss_mask_N_T=mask,
        logprobs_N_T=np.zeros((count, width)),
        finish_reasons=["stop" if length < width else "length" for length in lengths],
        texts=texts,
    )


def test_generations_log_writes_a_spread_sample(tmp_path):
    examples = [Example(f"e{p}", ({"role": "user", "content": f"q{p}"},), str(p)) for p in range(3)]
    texts = ["0", "1", "22", "1", "0", "333", "2", "2", "4444"]  # 3 prompts x 3 completions
    rewards = np.array([1, 0, 0, 1, 0, 0, 1, 1, 0], dtype=np.float64)
    log = GenerationsLog(tmp_path / "generations.jsonl", per_step=3)
    log.log_generations(7, examples, _batch(texts, 3), rewards)
    rows = log.rows()
    # Three rows evenly spread over 9 completions: indices 0, 4 and 8.
    assert [row["index"] for row in rows] == [0, 4, 8]
    assert rows[1] == {"step": 7, "index": 4, "example_id": "e1", "prompt": "q1", "completion": "0",
                       "reward": 0.0, "reference": "1", "finish_reason": "stop", "num_tokens": 1}
    assert rows[2]["finish_reason"] == "length" and rows[2]["num_tokens"] == 4
    with pytest.raises(ValueError, match="do not line up"):
        log.log_generations(8, examples[:2], _batch(texts, 3), rewards)


def test_generations_log_truncates_like_metrics(tmp_path):
    examples = [Example("e", ({"role": "user", "content": "q"},), "1")]
    log = GenerationsLog(tmp_path / "g.jsonl", per_step=2)
    for step in (1, 2, 3):
        log.log_generations(step, examples, _batch(["1", "22"], 2), np.array([1.0, 0.0]))
    log.truncate_after(2)
    assert [row["step"] for row in log.rows()] == [1, 1, 2, 2]


@given(count=st.integers(min_value=0, max_value=500), per_step=st.integers(min_value=0, max_value=600))
def test_sample_indices_are_spread_sorted_and_in_range(count, per_step):
    indices = sample_indices(count, per_step)
    assert len(indices) == min(count, per_step)
    assert indices == sorted(set(indices))
    assert all(0 <= index < count for index in indices)
    if per_step >= 2 and count >= 2:
        assert indices[0] == 0 and indices[-1] == count - 1


class FailingAfter:
    """Called like ``os.write``: writes ``fits`` bytes, then fails with ``number``."""

    def __init__(self, fits: int, number: int) -> None:
        self.fits, self.number = fits, number

    def __call__(self, fd: int, data: memoryview) -> int:
        if self.fits <= 0:
            raise OSError(self.number, os.strerror(self.number))
        written = os.write(fd, data[:self.fits])
        self.fits -= written
        return written


def test_an_append_that_fails_part_way_for_any_reason_is_cut_off_again(tmp_path):
    import errno

    from retrain.atomic import writes_through

    path = tmp_path / "m.jsonl"
    log = MetricsLog(path)
    log.append({"step": 1})
    with writes_through(FailingAfter(5, errno.EIO)), pytest.raises(OSError, match="Input/output error"):
        log.append({"step": 2, "payload": "x" * 100})  # not a full disk: the error itself propagates
    assert path.read_text() == '{"step":1}\n'
    log.append({"step": 2})
    assert [row["step"] for row in log.rows()] == [1, 2]
