import dataclasses
import json
import logging
import textwrap
from pathlib import Path

import credit_reference as ref
import numpy as np
import pytest

from retrain.config.loader import load_config
from retrain.config.schema import (
    AlgorithmConfig,
    Config,
    GTPOConfig,
    HICRAConfig,
    PluginsConfig,
    SEPAConfig,
)
from retrain.credit import build_credit_pipeline, synthetic_batch
from retrain.errors import ConfigError, EngineError
from retrain.registry import PluginOutputError
from retrain.types import SampleBatch

REPO = Path(__file__).resolve().parents[2]
STAGES = {"none": (), "gtpo": ("gtpo",), "hicra": ("hicra",), "gtpo_hicra": ("gtpo", "hicra"),
          "gtpo_sepa": ("sepa", "gtpo"), "gtpo_sepa_hicra": ("sepa", "gtpo", "hicra")}
# Gate always open, lambda = step / 4 (so steps 0..4 cover 0 -> 1).
OPEN_SEPA = SEPAConfig(steps=4, delay_steps=0, correct_rate_gate=0.0)


def make_config(search_paths: list[str] | None = None, strict: bool = True, beta: float = 0.5, alpha: float = 0.3,
                sepa: SEPAConfig = OPEN_SEPA, **algorithm: object) -> Config:
    return dataclasses.replace(
        Config(),
        algorithm=AlgorithmConfig(**algorithm),  # type: ignore[arg-type]
        gtpo=GTPOConfig(beta=beta),
        hicra=HICRAConfig(alpha=alpha),
        sepa=sepa,
        plugins=PluginsConfig(search_paths=search_paths if search_paths is not None else ["plugins"], strict=strict),
    )


def random_case(seed: int, groups: int = 3, group_size: int = 4, max_len: int = 40):
    """A ragged batch with environment turns; the planning mask also marks some
    environment tokens, which the pipeline must ignore."""
    rng = np.random.default_rng(seed)
    batch = synthetic_batch(num_prompts=groups, group_size=group_size, max_tokens=max_len, seed=seed,
                            with_environment_turns=True)
    rewards = rng.choice([0.0, 0.5, 1.0], size=(groups, group_size))
    rewards[0] = 1.0  # one all-correct group
    planning = batch.mask_N_T & (rng.random(batch.mask_N_T.shape) < 0.25)
    return rewards, batch, planning


def rows(array: np.ndarray, mask: np.ndarray) -> list[list[float]]:
    return [list(map(float, array[i][mask[i]])) for i in range(len(array))]


@pytest.mark.parametrize("transform", list(STAGES))
@pytest.mark.parametrize(("advantage", "uncertainty"), [("grpo", "surprisal"), ("maxrl", "predictive_variance")])
@pytest.mark.parametrize("rho", [0.0, 0.3])
def test_the_pipeline_equals_the_per_token_reference(transform, advantage, uncertainty, rho):
    config = make_config(advantage_mode=advantage, transform_mode=transform, uncertainty_kind=uncertainty,
                         surprisal_mask_rho=rho)
    pipeline = build_credit_pipeline(config, REPO)
    for seed in range(8):
        rewards, batch, planning = random_case(seed)
        step = seed % 5
        result = pipeline(rewards, batch, planning, step=step)
        sampled = batch.loss_mask_N_T
        logprobs = rows(batch.logprobs_N_T, sampled)
        signal = [ref.surprisal(row) if uncertainty == "surprisal" else ref.predictive_variance(row) for row in logprobs]
        np.testing.assert_allclose(result.uncertainty_N_T[sampled], np.concatenate([np.array(s, dtype=np.float64)
                                   for s in signal]), rtol=1e-6, atol=1e-7)
        episode = ref.episode_advantages(rewards.tolist(), advantage)
        np.testing.assert_allclose(result.episode_advantages_N, episode, rtol=1e-9, atol=1e-12)
        expected = ref.token_advantages(episode, signal, rows(planning & sampled, sampled), group_size=4,
                                        stages=STAGES[transform], beta=0.5, alpha=0.3, lam=step / 4, rho=rho)
        for index, expected_row in enumerate(expected):
            ref.assert_close(result.token_advantages_N_T[index][sampled[index]], expected_row)
        assert np.all(result.token_advantages_N_T[~sampled] == 0.0)
        assert np.all(result.uncertainty_N_T[~sampled] == 0.0)


def test_metrics_by_hand():
    # 2 prompts x 2 completions; rewards: [1, 0] (informative), [1, 1] (all correct)
    # surprisal per token: row0 [1, 2, 6], row1 [4], row2 [2, 2], row3 []; planning: row0 token 2 (6)
    batch = ref.ragged_batch([[-1.0, -2.0, -6.0], [-4.0], [-2.0, -2.0], []], group_size=2)
    planning = np.zeros(batch.mask_N_T.shape, dtype=bool)
    planning[0, 2] = True
    config = make_config(advantage_mode="grpo", transform_mode="gtpo_sepa",
                         sepa=SEPAConfig(steps=2, delay_steps=0, correct_rate_gate=0.0))
    result = build_credit_pipeline(config)(np.array([[1.0, 0.0], [1.0, 1.0]]), batch, planning, step=1)
    m = result.metrics
    assert (m["groups_total"], m["groups_informative"], m["groups_all_correct"], m["groups_all_wrong"],
            m["groups_other_ties"]) == (2, 1, 1, 0, 0)
    assert m["correct_rate"] == 0.75
    # GRPO: [0.5, -0.5, 0, 0] -> mean 0, std 0.5**0.5 / 2**0.5 = 0.353553...
    assert m["advantage_mean"] == 0.0 and m["advantage_std"] == pytest.approx(np.std([0.5, -0.5, 0, 0]))
    # execution tokens 1, 2, 4, 2, 2: mean 2.2, variance (1.44 + 0.04 + 3.24 + 0.04 + 0.04) / 5 = 0.96
    assert m["exec_uncertainty_mean"] == pytest.approx(2.2) and m["exec_uncertainty_var"] == pytest.approx(0.96)
    assert m["planning_uncertainty_mean"] == pytest.approx(6.0) and m["planning_uncertainty_var"] == 0.0
    # lambda = 1 / 2: row0 execution mean 1.5 -> 1.25, 1.75; row1 -> 4; row2 -> 2, 2
    # pooled execution values 1.25, 1.75, 4, 2, 2: mean 2.2, variance (0.9025 + 0.2025 + 3.24 + 0.04 + 0.04) / 5
    assert m["sepa_lambda"] == 0.5 and m["sepa_gate_open"] == 1.0
    assert m["exec_uncertainty_mean_pooled"] == pytest.approx(2.2)
    assert m["exec_uncertainty_var_pooled"] == pytest.approx(0.885, rel=1e-6)
    assert m["planning_uncertainty_mean_pooled"] == pytest.approx(6.0)
    assert m["tokens_total"] == 6 and m["planning_token_fraction"] == pytest.approx(1 / 6)
    assert m["uncertainty_max"] == 6.0
    assert m["plugin_repaired_values"] == 0 and m["plugin_repaired_sequences"] == 0
    assert "rho_threshold" not in m
    assert result.informative_P.tolist() == [True, False]
    np.testing.assert_allclose(result.episode_advantages_N, [0.5, -0.5, 0.0, 0.0])


def test_rho_metrics_are_reported():
    # one group of 2: surprisal 5, 1, 3 | 2, 4; rho 0.4 keeps 5 and 4 (threshold 4, 3 of 5 masked)
    batch = ref.ragged_batch([[-5.0, -1.0, -3.0], [-2.0, -4.0]], group_size=2)
    config = make_config(advantage_mode="grpo", transform_mode="none", surprisal_mask_rho=0.4)
    result = build_credit_pipeline(config)(np.array([[1.0, 0.0]]), batch, None, step=0)
    assert result.metrics["rho_threshold"] == 4.0
    assert result.metrics["rho_masked_fraction"] == pytest.approx(0.6)
    # GRPO advantages 0.5 and -0.5 survive only on the kept tokens
    np.testing.assert_allclose(result.token_advantages_N_T, [[0.5, 0.0, 0.0], [0.0, -0.5, 0.0]])


def test_a_recipe_equals_the_same_advantage_and_transform():
    rewards, batch, planning = random_case(3)
    recipe = build_credit_pipeline(make_config(algorithm_mode="grpo_gtpo_hicra"))
    composed = build_credit_pipeline(make_config(advantage_mode="grpo", transform_mode="gtpo_hicra"))
    np.testing.assert_array_equal(recipe(rewards, batch, planning, 2).token_advantages_N_T,
                                  composed(rewards, batch, planning, 2).token_advantages_N_T)
    description = recipe.describe()
    assert description["recipe"] == "grpo_gtpo_hicra" and description["mode"] == "composable"
    assert [stage["stage"] for stage in description["transform"]["stages"]] == ["gtpo", "hicra"]


def test_needs_planning_and_entropies_follow_the_stages():
    assert not build_credit_pipeline(make_config(transform_mode="gtpo")).needs_planning
    assert build_credit_pipeline(make_config(transform_mode="gtpo_sepa")).needs_planning
    assert build_credit_pipeline(make_config(transform_mode="hicra")).needs_planning
    assert not build_credit_pipeline(make_config()).needs_entropies
    assert build_credit_pipeline(make_config(uncertainty_kind="shannon_entropy")).needs_entropies


def test_describe_names_every_stage_its_origin_and_description():
    description = build_credit_pipeline(make_config(transform_mode="capped_gtpo.capped_gtpo",
                                                    transform_params={"max_weight": 1.5}), REPO).describe()
    assert description["advantage"] == {"name": "maxrl", "origin": "built-in", "params": {},
                                        "description": "MaxRL: A = (r - mean) / (mean + 1e-6) per group, 0 when mean <= 1e-6."}
    assert description["uncertainty"] == {"name": "surprisal", "origin": "built-in",
                                          "description": "min(-logprob, 50) of the sampled token."}
    transform = description["transform"]
    assert transform["origin"] == f"plugin capped_gtpo.capped_gtpo from {REPO / 'plugins' / 'capped_gtpo.py'}"
    assert transform["params"] == {"beta": 0.1, "max_weight": 1.5}
    assert transform["description"] == "GTPO token advantages with every weight capped at max_weight."
    assert "sepa" not in description  # a registered plugin that does not declare needs_sepa
    json.dumps(description)


def test_builtin_stages_get_their_settings_from_their_sections():
    description = build_credit_pipeline(make_config(transform_mode="gtpo_sepa_hicra", beta=0.7, alpha=0.4)).describe()
    stages = {stage["stage"]: stage["params"] for stage in description["transform"]["stages"]}
    assert list(stages) == ["sepa", "gtpo", "hicra"]
    assert stages["gtpo"] == {"beta": 0.7} and stages["hicra"] == {"alpha": 0.4}
    assert stages["sepa"] == dataclasses.asdict(OPEN_SEPA)
    assert description["sepa"] == dataclasses.asdict(OPEN_SEPA)


def test_probe_runs_a_synthetic_batch_and_leaves_the_sepa_state_alone():
    pipeline = build_credit_pipeline(make_config(sepa=SEPAConfig(schedule="auto", correct_rate_gate=0.2)))
    before = pipeline.state_dict()
    result = pipeline.probe()
    assert result.token_advantages_N_T.shape == result.uncertainty_N_T.shape
    assert pipeline.state_dict() == before


def test_state_round_trips_and_a_resumed_pipeline_continues_identically():
    config = make_config(sepa=SEPAConfig(schedule="auto", steps=6, delay_steps=1, correct_rate_gate=0.5,
                                         warmup_steps=2))
    cases = [random_case(seed) for seed in range(8)]
    straight = build_credit_pipeline(config)
    expected = [straight(r, b, p, step).token_advantages_N_T for step, (r, b, p) in enumerate(cases)]
    first = build_credit_pipeline(config)
    for step, (r, b, p) in enumerate(cases[:4]):
        first(r, b, p, step)
    resumed = build_credit_pipeline(config)
    resumed.load_state_dict(json.loads(json.dumps(first.state_dict())))
    for step, (r, b, p) in enumerate(cases[4:], start=4):
        np.testing.assert_array_equal(resumed(r, b, p, step).token_advantages_N_T, expected[step])


def test_zero_length_completions_and_all_equal_rewards_stay_finite():
    batch = ref.ragged_batch([[], [], [-1.0], []], group_size=2)
    result = build_credit_pipeline(make_config(transform_mode="gtpo_sepa_hicra"))(
        np.zeros((2, 2)), batch, np.zeros((4, 1), dtype=bool), step=3)
    assert np.all(np.isfinite(result.token_advantages_N_T)) and not result.token_advantages_N_T.any()
    assert all(np.isfinite(value) for value in result.metrics.values())
    assert result.metrics["groups_all_wrong"] == 2


def test_missing_entropies_and_mismatched_rewards_are_clear_errors():
    pipeline = build_credit_pipeline(make_config(uncertainty_kind="shannon_entropy"))
    with pytest.raises(EngineError, match="entropies"):
        pipeline(np.zeros((3, 4)), synthetic_batch(3, 4), None, 0)
    with pytest.raises(ValueError, match="do not match"):
        build_credit_pipeline(make_config())(np.zeros((2, 4)), synthetic_batch(3, 4), None, 0)


# ---------------------------------------------------------------------------------------
# The example plugins in plugins/, loaded through the default search path


def test_example_rank_advantage_plugin():
    # rewards 0, 1, 1, 0.5: ranks 0, 2.5, 2.5, 1 -> minus 1.5 -> -1.5, 1, 1, -0.5 -> / 3 -> x scale 2
    config = make_config(advantage_mode="rank_advantage.rank_advantages", advantage_params={"scale": 2.0},
                         transform_mode="none")
    pipeline = build_credit_pipeline(config, REPO)
    batch = ref.ragged_batch([[-1.0], [-1.0], [-1.0], [-1.0]], group_size=4)
    result = pipeline(np.array([[0.0, 1.0, 1.0, 0.5]]), batch, None, 0)
    np.testing.assert_allclose(result.episode_advantages_N, [-1.0, 2 / 3, 2 / 3, -1 / 3])
    np.testing.assert_allclose(result.token_advantages_N_T[:, 0], [-1.0, 2 / 3, 2 / 3, -1 / 3], rtol=1e-6)


def test_example_capped_gtpo_plugin():
    # u = 0, 0, 9: ubar 3, beta 2: raw weights 0, 0, 5 -> capped at 1.5; GRPO A = +0.5
    config = make_config(advantage_mode="grpo", transform_mode="capped_gtpo.capped_gtpo",
                         transform_params={"beta": 2.0, "max_weight": 1.5})
    batch = ref.ragged_batch([[0.0, 0.0, -9.0], [-1.0, -1.0, -1.0]], group_size=2)
    result = build_credit_pipeline(config, REPO)(np.array([[1.0, 0.0]]), batch, None, 0)
    np.testing.assert_allclose(result.token_advantages_N_T[0], [0.0, 0.0, 0.75], atol=1e-6)
    np.testing.assert_allclose(result.token_advantages_N_T[1], [-0.5, -0.5, -0.5], atol=1e-6)


def test_example_miss_probability_plugin():
    # p = 0.25 -> u = 0.75; p = 1 -> u = 0: GTPO beta 1: ubar 0.375, w = 2 and 0
    config = make_config(advantage_mode="grpo", transform_mode="gtpo", beta=1.0,
                         uncertainty_kind="miss_probability.miss_probability")
    batch = ref.ragged_batch([[np.log(0.25), 0.0], [np.log(0.25), 0.0]], group_size=2)
    result = build_credit_pipeline(config, REPO)(np.array([[1.0, 0.0]]), batch, None, 0)
    np.testing.assert_allclose(result.uncertainty_N_T, [[0.75, 0.0], [0.75, 0.0]], atol=1e-7)
    np.testing.assert_allclose(result.token_advantages_N_T, [[1.0, 0.0], [-1.0, 0.0]], atol=1e-6)


def test_example_length_penalty_algorithm_plugin():
    # lengths 4, 2 (longest 4), rewards 1, 1: r' = 1 - 0.2 * 1 = 0.8 and 1 - 0.2 * 0.5 = 0.9 -> GRPO -0.05, +0.05
    config = make_config(algorithm_mode="length_penalty.length_penalty", params={"penalty": 0.2})
    pipeline = build_credit_pipeline(config, REPO)
    assert pipeline.describe()["mode"] == "algorithm"
    batch = ref.ragged_batch([[-1.0] * 4, [-1.0] * 2], group_size=2)
    result = pipeline(np.array([[1.0, 1.0]]), batch, None, 0)
    np.testing.assert_allclose(result.episode_advantages_N, [-0.05, 0.05])
    np.testing.assert_allclose(result.token_advantages_N_T, [[-0.05] * 4, [0.05, 0.05, 0.0, 0.0]], atol=1e-7)
    assert result.metrics["length_penalty_mean"] == pytest.approx(0.2 * 0.75)


def test_example_plugins_load_from_a_config_file(tmp_path):
    config_path = tmp_path / "run.toml"
    config_path.write_text(textwrap.dedent(f"""
        [algorithm]
        advantage_mode = "rank_advantage.rank_advantages"
        transform_mode = "capped_gtpo.capped_gtpo"
        uncertainty_kind = "miss_probability.miss_probability"

        [algorithm.transform_params]
        max_weight = 1.2

        [plugins]
        search_paths = ["{REPO / 'plugins'}"]
    """))
    pipeline = build_credit_pipeline(load_config(config_path), config_path.parent)
    pipeline.probe()
    assert pipeline.describe()["transform"]["params"] == {"beta": 0.1, "max_weight": 1.2}


def test_plugin_params_are_checked_when_the_pipeline_is_built():
    with pytest.raises(ConfigError, match=r"\[algorithm.transform_params\].max_weight: expected float, got str"):
        build_credit_pipeline(make_config(transform_mode="capped_gtpo.capped_gtpo",
                                          transform_params={"max_weight": "big"}), REPO)
    with pytest.raises(ConfigError, match="takes no parameters table"):
        build_credit_pipeline(make_config(advantage_mode="grpo", advantage_params={"scale": 2}))


# ---------------------------------------------------------------------------------------
# Output validation: strict raises, non-strict repairs, warns and counts


BAD_PLUGINS = '''
import numpy as np

def short_rows(ctx, params):
    """Every sequence one token short."""
    return [np.ones(max(int(n) - 1, 0)) for n in ctx.mask_N_T.sum(axis=1)]

def nan_tokens(ctx, params):
    out = np.ones(ctx.mask_N_T.shape)
    out[1, 0] = np.nan
    return out

def wrong_rows(ctx, params):
    return np.ones((1, ctx.mask_N_T.shape[1]))

def wrong_columns(ctx, params):
    return np.ones((ctx.mask_N_T.shape[0], ctx.mask_N_T.shape[1] + 2))

def nan_advantages(rewards_P_G, params):
    out = rewards_P_G - rewards_P_G.mean(axis=1, keepdims=True)
    out[0, 1] = np.inf
    return out

def flat_advantages(rewards_P_G, params):
    return np.zeros(rewards_P_G.size + 1)

def nan_uncertainty(batch):
    return np.full(batch.mask_N_T.shape, np.nan)

def crashing_advantages(rewards_P_G, params):
    return rewards_P_G / params["missing"]

def crashing_transform(ctx, params):
    raise ZeroDivisionError("division by zero in my transform")

def crashing_uncertainty(batch):
    return batch.no_such_field
'''


def bad_batch() -> tuple[np.ndarray, SampleBatch]:
    return np.array([[1.0, 0.0]]), ref.ragged_batch([[-1.0, -1.0], [-1.0, -1.0, -1.0]], group_size=2)


@pytest.fixture
def bad_plugins(tmp_path: Path) -> list[str]:
    (tmp_path / "bad_plugins.py").write_text(BAD_PLUGINS)
    return [str(tmp_path)]


def test_wrong_sequence_length_strict_raises_naming_the_sequence(bad_plugins):
    config = make_config(bad_plugins, transform_mode="bad_plugins.short_rows")
    with pytest.raises(PluginOutputError, match=r"transform 'bad_plugins.short_rows' .* returned 1 values for sequence 0, "
                                                "which has 2 sampled tokens"):
        build_credit_pipeline(config)(*bad_batch(), None, 0)


def test_wrong_sequence_length_non_strict_pads_warns_and_counts(bad_plugins, caplog):
    config = make_config(bad_plugins, strict=False, transform_mode="bad_plugins.short_rows")
    with caplog.at_level(logging.WARNING, logger="retrain.credit"):
        result = build_credit_pipeline(config)(*bad_batch(), None, 0)
    assert result.metrics["plugin_repaired_sequences"] == 2
    np.testing.assert_array_equal(result.token_advantages_N_T, [[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    # One warning for the stage this step, not one per sequence.
    assert len(caplog.records) == 1
    assert "fitted 2 of 2 sequences to their number of sampled tokens" in caplog.text
    assert "first: sequence 0, 1 values for 2 sampled tokens" in caplog.text


def test_nan_tokens_strict_names_sequence_and_token(bad_plugins):
    config = make_config(bad_plugins, transform_mode="bad_plugins.nan_tokens")
    with pytest.raises(PluginOutputError, match=r"1 non-finite value\(s\); first at sequence 1 \(prompt 0, completion 1\), "
                                                "token 0: nan"):
        build_credit_pipeline(config)(*bad_batch(), None, 0)


def test_nan_tokens_non_strict_become_zero(bad_plugins, caplog):
    config = make_config(bad_plugins, strict=False, transform_mode="bad_plugins.nan_tokens")
    with caplog.at_level(logging.WARNING, logger="retrain.credit"):
        result = build_credit_pipeline(config)(*bad_batch(), None, 0)
    np.testing.assert_array_equal(result.token_advantages_N_T, [[1.0, 1.0, 0.0], [0.0, 1.0, 1.0]])
    assert result.metrics["plugin_repaired_values"] == 1
    assert "repaired 1 of 5 values (1 NaN → 0.0; first at sequence 1 (prompt 0, completion 1), token 0)" in caplog.text


@pytest.mark.parametrize("strict", [True, False])
def test_the_wrong_number_of_rows_is_always_an_error(bad_plugins, strict):
    config = make_config(bad_plugins, strict=strict, transform_mode="bad_plugins.wrong_rows")
    with pytest.raises(PluginOutputError, match="returned 1 rows for 2 completions"):
        build_credit_pipeline(config)(*bad_batch(), None, 0)


def test_wrong_columns_strict_raises_non_strict_truncates(bad_plugins):
    with pytest.raises(PluginOutputError, match="returned 5 token columns; the batch is padded to 3"):
        build_credit_pipeline(make_config(bad_plugins, transform_mode="bad_plugins.wrong_columns"))(*bad_batch(), None, 0)
    result = build_credit_pipeline(make_config(bad_plugins, strict=False, transform_mode="bad_plugins.wrong_columns"))(
        *bad_batch(), None, 0)
    np.testing.assert_array_equal(result.token_advantages_N_T, [[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])


def test_non_finite_episode_advantages(bad_plugins):
    with pytest.raises(PluginOutputError, match=r"non-finite episode advantage\(s\); first at sequence 1 "
                                                r"\(prompt 0, completion 1\): inf"):
        build_credit_pipeline(make_config(bad_plugins, advantage_mode="bad_plugins.nan_advantages"))(*bad_batch(), None, 0)
    result = build_credit_pipeline(make_config(bad_plugins, strict=False, transform_mode="none",
                                               advantage_mode="bad_plugins.nan_advantages"))(*bad_batch(), None, 0)
    np.testing.assert_array_equal(result.episode_advantages_N, [0.5, 0.0])


def test_advantages_of_the_wrong_size_are_always_an_error(bad_plugins):
    config = make_config(bad_plugins, strict=False, advantage_mode="bad_plugins.flat_advantages")
    with pytest.raises(PluginOutputError, match=r"shape \(3,\); expected \[P, G\] = \(1, 2\)"):
        build_credit_pipeline(config)(*bad_batch(), None, 0)


def test_non_finite_uncertainty_from_a_plugin(bad_plugins):
    config = make_config(bad_plugins, uncertainty_kind="bad_plugins.nan_uncertainty")
    with pytest.raises(PluginOutputError, match="uncertainty 'bad_plugins.nan_uncertainty'.*5 non-finite"):
        build_credit_pipeline(config)(*bad_batch(), None, 0)
    relaxed = build_credit_pipeline(make_config(bad_plugins, strict=False, uncertainty_kind="bad_plugins.nan_uncertainty"))
    result = relaxed(*bad_batch(), None, 0)
    assert not result.uncertainty_N_T.any() and result.metrics["plugin_repaired_values"] == 5


def test_probe_surfaces_a_shape_error_before_any_model(bad_plugins):
    pipeline = build_credit_pipeline(make_config(bad_plugins, transform_mode="bad_plugins.wrong_rows"))
    with pytest.raises(PluginOutputError, match="rows for 12 completions"):
        pipeline.probe()


@pytest.mark.parametrize("strict", [True, False])
def test_load_errors_stop_the_build_whatever_strict_says(bad_plugins, strict):
    from retrain.registry import PluginAttributeError, PluginNotFoundError

    with pytest.raises(PluginNotFoundError):
        build_credit_pipeline(make_config(bad_plugins, strict=strict, transform_mode="bad_plugin.short_rows"))
    with pytest.raises(PluginAttributeError, match="did you mean 'short_rows'"):
        build_credit_pipeline(make_config(bad_plugins, strict=strict, transform_mode="bad_plugins.short_row"))


@pytest.mark.parametrize(("setting", "name", "raised"), [
    ("advantage_mode", "crashing_advantages", "KeyError: 'missing'"),
    ("transform_mode", "crashing_transform", "ZeroDivisionError: division by zero in my transform"),
    ("uncertainty_kind", "crashing_uncertainty", "AttributeError: 'SampleBatch' object has no attribute"),
])
def test_an_exception_inside_a_plugin_names_the_plugin(bad_plugins, setting, name, raised):
    from retrain.errors import PluginError

    config = make_config(bad_plugins, **{setting: f"bad_plugins.{name}"})
    with pytest.raises(PluginError, match=rf"'bad_plugins.{name}' \(plugin .*bad_plugins.py\) raised {raised}") as caught:
        build_credit_pipeline(config)(*bad_batch(), None, 0)
    assert caught.value.__cause__ is not None  # the plugin's own traceback stays reachable
