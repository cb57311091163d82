"""The custom reward (retrain.rewards.custom): plugin lookup, signature check, output checks."""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest

from retrain.config.schema import Config, PluginsConfig, RewardConfig
from retrain.errors import PluginError
from retrain.plan import reward_factory
from retrain.registry import (
    PluginAttributeError,
    PluginDependencyError,
    PluginNotFoundError,
    PluginOutputError,
    PluginSignatureError,
    resolve,
)
from retrain.types import Example, Reward

EXAMPLES = [
    Example("a", ({"role": "user", "content": "2+2?"},), "4", {"weight": 2.0}),
    Example("b", ({"role": "user", "content": "3+3?"},), "6", {"weight": 0.5}),
]


def _write_plugin(directory: Path, module: str, body: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{module}.py").write_text(textwrap.dedent(body))


def _config(module: str, search_paths: list[str], function: str = "score", strict: bool = True) -> Config:
    return Config(
        reward=RewardConfig(type="custom", custom_module=module, custom_function=function),
        plugins=PluginsConfig(search_paths=search_paths, strict=strict),
    )


def build_reward(config: Config, base_dir: Path) -> Reward:
    """The reward a run plans and builds for ``config``."""
    return reward_factory(resolve("reward", config.reward.plugin_name, config.plugins, base_dir))(config)


def _module_name(tmp_path: Path, stem: str) -> str:
    # Modules stay in sys.modules: one name per test keeps tests independent.
    return f"{stem}_{abs(hash(tmp_path)) % 10**8}"


def test_plain_two_argument_function_from_a_search_path(tmp_path):
    name = _module_name(tmp_path, "rewards_plain")
    _write_plugin(tmp_path / "plugins", name, """
        def score(completion, reference):
            return 1.0 if completion.strip() == reference else 0.0
    """)
    reward = build_reward(_config(name, ["plugins"]), base_dir=tmp_path)
    rewards = reward.score(["4", "5", "6", " 6 "], EXAMPLES)
    assert rewards.dtype == np.float64
    # Two completions per example: rows 0-1 against "4", rows 2-3 against "6".
    assert rewards.tolist() == [1.0, 0.0, 1.0, 1.0]


def test_example_keyword_receives_the_example(tmp_path):
    name = _module_name(tmp_path, "rewards_example")
    _write_plugin(tmp_path, name, """
        def judge(completion: str, reference: str, example=None) -> float:
            return float(completion == reference) * example.metadata["weight"]
    """)
    # An absolute search path works from any base directory.
    reward = build_reward(_config(name, [str(tmp_path)], function="judge"), base_dir=Path("/"))
    # "4" is right for a (weight 2.0); "6" is right for b (weight 0.5).
    assert reward.score(["4", "6"], EXAMPLES).tolist() == [2.0, 0.5]


def test_bool_and_numpy_results_are_accepted(tmp_path):
    name = _module_name(tmp_path, "rewards_bool")
    _write_plugin(tmp_path, name, """
        import numpy as np
        def score(completion, reference):
            return np.float32(0.25) if completion == "x" else completion == reference
    """)
    reward = build_reward(_config(name, [str(tmp_path)]), base_dir=tmp_path)
    assert reward.score(["4", "x"], EXAMPLES).tolist() == [1.0, 0.25]


def test_wrong_signature_fails_at_construction(tmp_path):
    name = _module_name(tmp_path, "rewards_sig")
    _write_plugin(tmp_path, name, """
        def score(completion, reference, tokenizer):
            return 0.0
    """)
    with pytest.raises(PluginSignatureError) as caught:
        build_reward(_config(name, [str(tmp_path)]), base_dir=tmp_path)
    message = str(caught.value)
    assert f"{name}.score" in message and "expected: def score(completion: str, reference: str" in message


def test_async_function_is_rejected(tmp_path):
    name = _module_name(tmp_path, "rewards_async")
    _write_plugin(tmp_path, name, "async def score(c, r):\n    return 1.0\n")
    with pytest.raises(PluginSignatureError, match="async"):
        build_reward(_config(name, [str(tmp_path)]), base_dir=tmp_path)


def test_missing_module_function_and_dependency(tmp_path):
    with pytest.raises(PluginNotFoundError, match="module 'surely_not_a_module_xyz' not found"):
        build_reward(_config("surely_not_a_module_xyz", [str(tmp_path)]), base_dir=tmp_path)
    name = _module_name(tmp_path, "rewards_nofn")
    _write_plugin(tmp_path, name, "def other(c, r):\n    return 0.0\n")
    with pytest.raises(PluginAttributeError, match="has no attribute 'score'"):
        build_reward(_config(name, [str(tmp_path)]), base_dir=tmp_path)
    broken = _module_name(tmp_path, "rewards_dep")
    _write_plugin(tmp_path, broken, "import surely_missing_dependency_xyz\ndef score(c, r):\n    return 0.0\n")
    with pytest.raises(PluginDependencyError, match="surely_missing_dependency_xyz"):
        build_reward(_config(broken, [str(tmp_path)]), base_dir=tmp_path)


def test_non_finite_result_strict_names_function_and_completion(tmp_path):
    name = _module_name(tmp_path, "rewards_nan")
    _write_plugin(tmp_path, name, """
        def score(completion, reference):
            return float("nan") if completion == "bad" else 1.0
    """)
    reward = build_reward(_config(name, [str(tmp_path)]), base_dir=tmp_path)
    with pytest.raises(PluginOutputError) as caught:
        reward.score(["ok", "bad"], EXAMPLES)
    assert f"{name}.score" in str(caught.value) and "completion 1" in str(caught.value)


def test_non_finite_result_repaired_when_not_strict(tmp_path, caplog):
    name = _module_name(tmp_path, "rewards_inf")
    _write_plugin(tmp_path, name, """
        def score(completion, reference):
            return float("inf") if completion == "bad" else 1.0
    """)
    reward = build_reward(_config(name, [str(tmp_path)], strict=False), base_dir=tmp_path)
    assert reward.score(["bad", "ok"], EXAMPLES).tolist() == [0.0, 1.0]
    assert reward.repaired == 1
    assert "completion 0" in caplog.text


def test_wrong_type_and_exceptions_name_the_completion(tmp_path):
    name = _module_name(tmp_path, "rewards_types")
    _write_plugin(tmp_path, name, """
        def score(completion, reference):
            if completion == "raise":
                raise KeyError("boom")
            return "1.0"
    """)
    reward = build_reward(_config(name, [str(tmp_path)], strict=False), base_dir=tmp_path)
    with pytest.raises(PluginOutputError, match="returned str .* completion 0"):
        reward.score(["x", "raise"], EXAMPLES)
    name_ok = _module_name(tmp_path, "rewards_raise")
    _write_plugin(tmp_path, name_ok, """
        def score(completion, reference):
            if completion == "raise":
                raise KeyError("boom")
            return 0.5
    """)
    reward = build_reward(_config(name_ok, [str(tmp_path)]), base_dir=tmp_path)
    with pytest.raises(PluginError, match="raised on completion 1: KeyError"):
        reward.score(["fine", "raise"], EXAMPLES)
