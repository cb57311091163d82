"""The console progress line and the Sinks fan-out (retrain.sinks)."""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence

import numpy as np
import pytest

from retrain.config.schema import AlgorithmConfig, Config, LoggingConfig
from retrain.sinks import (
    ConsoleProgress,
    GenerationsLog,
    MetricsLog,
    Sinks,
    build_sinks,
)
from retrain.sinks.wandb_run import wandb_run_name, wandb_tags
from retrain.types import Example, SampleBatch, Sink


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_terminal_line_is_redrawn_in_place_with_eta(monkeypatch):
    # The line is cut to the terminal width; pin a wide one (COLUMNS is what
    # shutil.get_terminal_size reads first) so the whole line is checked.
    monkeypatch.setenv("COLUMNS", "200")
    clock = FakeClock()
    stream = Terminal()
    progress = ConsoleProgress(10, stream, clock=clock)
    clock.now += 4.0
    progress.log_step({"step": 1, "reward_mean": 0.125, "loss": 0.0123456, "tokens_per_s": 1534.4})
    clock.now += 4.0
    progress.log_step({"step": 2, "reward_mean": 0.25})
    progress.close()
    output = stream.getvalue()
    draws = output.split("\r")[1:]
    assert len(draws) == 2 and output.endswith("\n")
    # After step 1: 4 s per step, 9 steps left -> 36 s.
    assert draws[0].startswith(
        "[##..................] step 1/10  reward 0.125 (last 1: 0.125)  loss 0.01235  tok/s 1534  ETA 0m36s")
    # After step 2: 8 s for 2 steps, 8 left -> 32 s; the window mean is (0.125 + 0.25) / 2;
    # missing metrics show "-".
    assert "step 2/10  reward 0.250 (last 2: 0.188)  loss -  tok/s -  ETA 0m32s" in draws[1]


def test_non_terminal_prints_a_line_every_tenth_of_the_run():
    stream = io.StringIO()
    progress = ConsoleProgress(25, stream, clock=FakeClock())
    for step in range(1, 26):
        progress.log_step({"step": step, "reward_mean": step / 25})
    progress.close()
    lines = stream.getvalue().splitlines()
    # every = 25 // 10 = 2: steps 2, 4, ..., 24, plus the last step (25).
    assert [line.split()[1] for line in lines] == [f"{n}/25" for n in range(2, 25, 2)] + ["25/25"]
    assert "\r" not in stream.getvalue()
    assert lines[-1].endswith("done in 0m00s")


def test_resumed_progress_counts_from_the_completed_steps():
    clock = FakeClock()
    stream = io.StringIO()
    progress = ConsoleProgress(100, stream, completed=60, every=1, clock=clock)
    clock.now += 10.0
    progress.log_step({"step": 61})
    # One step timed in this process (10 s), 39 left -> 390 s.
    assert stream.getvalue() == "step 61/100  reward -  loss -  tok/s -  ETA 6m30s\n"


def test_wandb_name_and_tags():
    assert wandb_run_name(Config()) == "maxrl+gtpo_sepa"
    assert wandb_run_name(Config(algorithm=AlgorithmConfig(algorithm_mode="grpo_none"))) == "grpo_none"
    assert wandb_run_name(Config(logging=LoggingConfig(wandb_run_name="mine"))) == "mine"
    assert wandb_tags(Config(logging=LoggingConfig(wandb_tags=" a, b ,,c "))) == ["a", "b", "c"]
    assert wandb_tags(Config()) == []


class Recorder(Sink):
    def __init__(self, name: str, calls: list[tuple], fail_close: bool = False) -> None:
        self.name, self.calls, self.fail_close = name, calls, fail_close

    def log_step(self, row: Mapping[str, object]) -> None:
        self.calls.append((self.name, "step", row["step"]))

    def log_generations(self, step: int, examples: Sequence[Example], batch: SampleBatch,
                        rewards_N: np.ndarray) -> None:
        self.calls.append((self.name, "generations", step))

    def close(self) -> None:
        self.calls.append((self.name, "close"))
        if self.fail_close:
            raise OSError(f"{self.name} failed to close")


def test_fan_out_calls_every_sink_in_order_and_closes_all():
    calls: list[tuple] = []
    sinks = Sinks([Recorder("a", calls, fail_close=True), Recorder("b", calls)])
    sinks.log_step({"step": 3})
    sinks.log_generations(3, [], None, np.zeros(0))  # type: ignore[arg-type]
    with pytest.raises(OSError, match="a failed to close"):
        sinks.close()
    assert calls == [("a", "step", 3), ("b", "step", 3), ("a", "generations", 3), ("b", "generations", 3),
                     ("a", "close"), ("b", "close")]


def test_build_sinks_from_config(tmp_path):
    config = Config(logging=LoggingConfig(log_dir=str(tmp_path / "run"), generations_per_step=2))
    stream = io.StringIO()
    sinks = build_sinks(config, total_steps=2, stream=stream)
    assert [type(sink) for sink in sinks.sinks] == [MetricsLog, GenerationsLog, ConsoleProgress]
    sinks.log_step({"step": 1, "reward_mean": 0.5})
    sinks.log_step({"step": 2, "reward_mean": 0.75})
    sinks.truncate_after(1)
    sinks.close()
    assert MetricsLog(tmp_path / "run" / "metrics.jsonl").rows() == [{"step": 1, "reward_mean": 0.5}]
    assert stream.getvalue().splitlines()[-1].startswith("step 2/2  reward 0.750")
    quiet = build_sinks(Config(logging=LoggingConfig(log_dir=str(tmp_path / "q"), generations_per_step=0)), 1)
    assert [type(sink) for sink in quiet.sinks] == [MetricsLog, ConsoleProgress]
    assert quiet.wandb_run_id is None
    quiet.close()
