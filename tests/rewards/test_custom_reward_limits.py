"""The custom reward's limits (retrain.rewards.custom): calls run concurrently within
``[reward] max_concurrency``, each within ``[reward] timeout_s``, and a call that never
returns stops the run with a named error and never keeps the process alive."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from retrain.config.schema import Config, RewardConfig
from retrain.errors import PluginError
from retrain.rewards.custom import CustomReward
from retrain.types import Example

REPO = Path(__file__).resolve().parents[2]
LABEL = "tests_rewards.score"
# Long enough for any thread on a loaded machine to reach a barrier; a sequential reward
# would break every barrier after this long.
PATIENCE_S = 30.0


def _examples(count: int) -> list[Example]:
    return [Example(f"ex-{i}", ({"role": "user", "content": f"question {i}"},), str(i)) for i in range(count)]


def _reward(function: Callable[..., object], *, max_concurrency: int = 16, timeout_s: float = 120.0) -> CustomReward:
    config = Config(reward=RewardConfig(type="custom", custom_module="tests_rewards", timeout_s=timeout_s,
                                        max_concurrency=max_concurrency))
    return CustomReward(config, function=function, label=LABEL)


@pytest.fixture
def release() -> Iterator[threading.Event]:
    """An event the blocked fake functions wait on; set at the end so no thread outlives the test."""
    event = threading.Event()
    yield event
    event.set()


def test_calls_run_at_once() -> None:
    # Each call returns only when all four are in the barrier together.
    barrier = threading.Barrier(4, timeout=PATIENCE_S)

    def score(completion: str, reference: str) -> float:
        barrier.wait()
        return 1.0

    assert _reward(score, max_concurrency=4).score(["a", "b", "c", "d"], _examples(4)).tolist() == [1.0] * 4


def test_no_more_calls_are_in_flight_than_max_concurrency() -> None:
    # Groups of three meet at the barrier, so three run at once; more would be counted.
    barrier = threading.Barrier(3, timeout=PATIENCE_S)
    lock = threading.Lock()
    in_flight = [0]
    most = [0]

    def score(completion: str, reference: str) -> float:
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        barrier.wait()
        with lock:
            in_flight[0] -= 1
        return 0.5

    texts = [str(i) for i in range(12)]
    assert _reward(score, max_concurrency=3).score(texts, _examples(12)).tolist() == [0.5] * 12
    assert most[0] == 3


def test_results_keep_the_completions_order_when_calls_end_in_reverse() -> None:
    # Completion i returns only after completion i + 1 has returned: the last ends first.
    count = 5
    returned = [threading.Event() for _ in range(count)]

    def score(completion: str, reference: str) -> float:
        index = int(completion)
        if index + 1 < count:
            assert returned[index + 1].wait(PATIENCE_S)
        returned[index].set()
        return float(index) * 10

    texts = [str(i) for i in range(count)]
    assert _reward(score, max_concurrency=count).score(texts, _examples(count)).tolist() == [0, 10, 20, 30, 40]


def test_a_call_past_its_deadline_is_a_named_error_at_once(release: threading.Event) -> None:
    def score(completion: str, reference: str) -> float:
        if completion == "stuck":
            release.wait()
        return 1.0

    started = time.monotonic()
    with pytest.raises(PluginError) as caught:
        _reward(score, timeout_s=0.5).score(["fine", "stuck", "fine"], _examples(3))
    assert time.monotonic() - started < PATIENCE_S
    assert str(caught.value) == (f"custom reward {LABEL} did not return within 0.5 s on completion 1 (example "
                                 "'ex-1') — make the function faster, or raise [reward] timeout_s")


def test_an_example_without_an_id_is_named_by_the_start_of_its_prompt(release: threading.Event) -> None:
    prompt = "What is the sum of the first hundred primes? Think step by step and box the answer."
    nameless = Example("", ({"role": "system", "content": "be brief"}, {"role": "user", "content": prompt}), "1060")

    def score(completion: str, reference: str) -> float:
        release.wait()
        return 1.0

    with pytest.raises(PluginError) as caught:
        _reward(score, timeout_s=0.5).score(["x"], [nameless])
    # The first 60 characters of the user's message.
    assert "completion 0 (the example whose prompt starts 'What is the sum of the first hundred primes? Think step " \
           "by s...')" in str(caught.value)


def test_the_lowest_failing_completion_is_reported_whichever_fails_first(release: threading.Event) -> None:
    # Completion 3 fails at once; completion 1 fails only after it; completion 0 never returns.
    failed_late = threading.Event()

    def score(completion: str, reference: str) -> float:
        if completion == "0":
            release.wait()
        if completion == "3":
            failed_late.set()
            raise ValueError("three")
        if completion == "1":
            assert failed_late.wait(PATIENCE_S)
            raise ValueError("one")
        return 1.0

    texts = [str(i) for i in range(6)]
    with pytest.raises(PluginError, match="did not return within 0.5 s on completion 0 "):
        _reward(score, timeout_s=0.5).score(texts, _examples(6))
    release.set()  # completion 0 now returns: completion 1 is the lowest failure
    failed_late.clear()
    with pytest.raises(PluginError, match="raised on completion 1: ValueError: one"):
        _reward(score, timeout_s=60).score(texts, _examples(6))


def test_no_call_starts_after_a_failure() -> None:
    calls: list[str] = []

    def score(completion: str, reference: str) -> float:
        calls.append(completion)
        if completion == "1":
            raise KeyError("boom")
        return 1.0

    with pytest.raises(PluginError, match="raised on completion 1: KeyError"):
        _reward(score, max_concurrency=1).score([str(i) for i in range(5)], _examples(5))
    assert calls == ["0", "1"]


def test_exceptions_keep_their_messages_and_an_interrupt_stays_an_interrupt() -> None:
    def quits(completion: str, reference: str) -> float:
        raise SystemExit(4)

    with pytest.raises(PluginError, match=f"custom reward {LABEL} raised on completion 0: SystemExit: 4"):
        _reward(quits).score(["x"], _examples(1))

    def interrupted(completion: str, reference: str) -> float:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _reward(interrupted).score(["x"], _examples(1))


def test_no_completions_need_no_calls() -> None:
    assert _reward(lambda completion, reference: 1.0).score([], []).tolist() == []


SPINNING_SCRIPT = """
from retrain.config.schema import Config, RewardConfig
from retrain.errors import PluginError
from retrain.rewards.custom import CustomReward
from retrain.types import Example

def spin(completion, reference):
    while True:  # never returns, never waits
        pass

config = Config(reward=RewardConfig(type="custom", custom_module="m", timeout_s=0.5, max_concurrency=2))
try:
    CustomReward(config, function=spin, label="m.spin").score(["a", "b", "c"], [Example("e", (), "1")])
except PluginError as error:
    print(error)
"""


def test_the_process_exits_while_calls_still_spin() -> None:
    # Two threads loop forever in Python code; the script's end must not wait for them.
    result = subprocess.run([sys.executable, "-c", SPINNING_SCRIPT], capture_output=True, text=True, timeout=60,
                            check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("custom reward m.spin did not return within 0.5 s on completion 0 (example 'e')")


HANGING_REWARD = """
import pathlib
import threading

def score(completion, reference):
    pathlib.Path("called").touch()
    threading.Event().wait()  # never returns
    return 1.0
"""


def _start_hanging_run(folder: Path, timeout_s: str) -> subprocess.Popen[str]:
    """``retrain`` on the default config with ``hanging_reward``, once its first call has begun."""
    shutil.copy(REPO / "retrain.toml", folder / "retrain.toml")
    (folder / "plugs").mkdir()
    (folder / "plugs" / "hanging_reward.py").write_text(HANGING_REWARD)
    env = {name: value for name, value in os.environ.items() if not name.startswith("RETRAIN_")}
    env.update(RETRAIN_CACHE_DIR=str(folder / "cache"), OMP_NUM_THREADS="1")
    process = subprocess.Popen(
        [sys.executable, "-m", "retrain", "--max-steps", "2", "--search-paths", "plugs", "--reward.type", "custom",
         "--reward.custom_module", "hanging_reward", "--reward.timeout_s", timeout_s],
        cwd=folder, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # Loading the model takes long on a busy machine; the reward's first call starts the clock.
    deadline = time.monotonic() + 300
    while not (folder / "called").exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if not (folder / "called").exists():
        process.kill()
        _, stderr = process.communicate()
        pytest.fail(f"the reward was never called: {stderr[-2000:]}")
    return process


def _finish(process: subprocess.Popen[str], timeout: float) -> str:
    """What ``process`` wrote to stderr by its end, which must come within ``timeout`` seconds."""
    try:
        return process.communicate(timeout=timeout)[1]
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()


def test_a_run_whose_reward_never_returns_stops_with_a_named_error(tmp_path: Path) -> None:
    process = _start_hanging_run(tmp_path, timeout_s="1")
    # 1 s of deadline, then the error and the exit, with every worker still stuck.
    stderr = _finish(process, timeout=60)
    assert process.returncode == 2, stderr
    assert "Traceback" not in stderr, stderr
    assert ("retrain: custom reward hanging_reward.score did not return within 1 s on completion 0 (example "
            "'arithmetic-") in stderr, stderr
    assert "raise [reward] timeout_s" in stderr


def test_a_second_signal_stops_a_run_whose_reward_never_returns(tmp_path: Path) -> None:
    process = _start_hanging_run(tmp_path, timeout_s="3600")
    stream = process.stderr
    assert stream is not None
    lines: list[str] = []
    asked_again = threading.Event()

    def read_stderr() -> None:
        for line in stream:
            lines.append(line)
            if "send it again to stop now" in line:
                asked_again.set()

    reader = threading.Thread(target=read_stderr, daemon=True)
    reader.start()
    process.send_signal(signal.SIGINT)  # the first asks the step to finish, which it cannot
    try:
        assert asked_again.wait(60), "".join(lines)
        process.send_signal(signal.SIGINT)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    reader.join(30)
    assert process.returncode == 130, "".join(lines)
    assert "Traceback" not in "".join(lines), "".join(lines)


def test_non_finite_results_are_repaired_with_one_warning_and_counted_per_call(caplog: pytest.LogCaptureFixture) -> None:
    from retrain.config.schema import PluginsConfig
    from retrain.environments.single_turn import SingleTurn

    values = {"a": float("nan"), "b": float("inf"), "c": 1.0, "d": 0.5}
    config = Config(reward=RewardConfig(type="custom", custom_module="tests_rewards"),
                    plugins=PluginsConfig(strict=False))
    reward = CustomReward(config, function=lambda completion, reference: values[completion], label="m.score")
    with caplog.at_level("WARNING"):
        rewards = reward.score(["a", "b", "c", "d"], _examples(4))
    assert rewards.tolist() == [0.0, 0.0, 1.0, 0.5]
    assert reward.last_repaired == 2 and reward.repaired == 2
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == ["custom reward m.score returned non-finite values for 2 of 4 completions (1 NaN, 1 inf), "
                        "first completion 0; scored 0.0"]
    reward.score(["c", "d"], _examples(2))
    assert reward.last_repaired == 0 and reward.repaired == 2

    # The environment hands the call's count to the step's metrics row.
    from spine_fakes import FakeEngine

    from retrain.types import SamplingParams

    class Prompts:
        def examples(self) -> list[Example]:
            return _examples(2)

    nan_reward = CustomReward(config, function=lambda completion, reference: float("nan"), label="m.nan")
    environment = SingleTurn(config, data=lambda _: Prompts(), reward=lambda _: nan_reward)
    scored = environment.rollout(_examples(2), FakeEngine(config), lambda messages: [1, 2],
                                 SamplingParams(n=3, max_tokens=2))
    assert scored.counts == {"plugin_repaired_values": 6.0}


def test_an_integer_too_large_for_a_float_is_a_plugin_error() -> None:
    from retrain.registry import PluginOutputError

    reward = _reward(lambda completion, reference: 10**400)
    with pytest.raises(PluginOutputError, match="an integer of 401 digits for completion 0, too large for a float"):
        reward.score(["a"], _examples(1))
