import dataclasses
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrain.config.schema import AlgorithmConfig, Config, PluginsConfig, SEPAConfig
from retrain.credit import build_credit_pipeline, synthetic_batch
from retrain.errors import RetrainError
from retrain.transforms import SEPAController


def test_linear_schedule_by_hand():
    # lambda = clamp((step - 10) / 40, 0, 1)
    controller = SEPAController(SEPAConfig(steps=40, delay_steps=10, correct_rate_gate=0.0))
    assert [controller.update(step, 0.0, 1.0) for step in (0, 10, 20, 30, 50, 90)] == [0.0, 0.0, 0.25, 0.5, 1.0, 1.0]


def test_gate_holds_lambda_at_zero_until_reached_then_stays_open():
    controller = SEPAController(SEPAConfig(steps=10, delay_steps=0, correct_rate_gate=0.5))
    assert controller.update(5, 0.2, 1.0) == 0.0 and not controller.gate_open
    assert controller.update(6, 0.5, 1.0) == 0.6 and controller.gate_open  # reached: 6 / 10
    assert controller.update(7, 0.0, 1.0) == 0.7  # sticky: a bad batch does not close it


def test_auto_schedule_follows_the_variance_decay():
    # warmup 2 steps: variances 4 and 4 -> v_0 = 4, EMA (decay 0.5) = 4.
    # step 2: variance 1 -> EMA = 0.5 * 4 + 0.5 * 1 = 2.5; lambda_auto = 1 - min(2.5 / 4 / 1, 1) = 0.375
    # step 3: variance 0 -> EMA = 1.25; lambda_auto = 1 - 1.25 / 4 = 0.6875
    # linear: delay 0, steps 100 -> 0.02, 0.03 (smaller), so auto wins.
    settings_ = SEPAConfig(schedule="auto", steps=100, delay_steps=0, correct_rate_gate=0.0, ema_decay=0.5,
                           warmup_steps=2, variance_threshold=1.0)
    controller = SEPAController(settings_)
    assert controller.update(0, 1.0, 4.0) == 0.0
    assert controller.update(1, 1.0, 4.0) == pytest.approx(0.01)  # warm-up just ended, EMA = v_0: auto = 0
    assert controller.update(2, 1.0, 1.0) == pytest.approx(0.375)
    assert controller.update(3, 1.0, 0.0) == pytest.approx(0.6875)


def test_auto_schedule_threshold_scales_the_ratio():
    # v_0 = 4 after one warm-up step; then variance 2 (decay 0) -> ratio 2 / 4 / 0.25 = 2 -> min 1 -> auto = 0
    controller = SEPAController(SEPAConfig(schedule="auto", steps=100, delay_steps=0, correct_rate_gate=0.0,
                                           ema_decay=0.0, warmup_steps=1, variance_threshold=0.25))
    controller.update(0, 1.0, 4.0)
    assert controller.update(1, 1.0, 2.0) == pytest.approx(0.01)


def test_auto_schedule_ignores_steps_without_execution_tokens_and_zero_reference():
    controller = SEPAController(SEPAConfig(schedule="auto", steps=10, delay_steps=0, correct_rate_gate=0.0,
                                           warmup_steps=1))
    controller.update(0, 1.0, float("nan"))
    assert controller.observed_steps == 0
    controller.update(1, 1.0, 0.0)  # reference variance 0: only the linear ramp applies
    assert controller.update(2, 1.0, 0.0) == pytest.approx(0.2)


@settings(max_examples=100, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 100)), min_size=1, max_size=60),
       st.sampled_from(["linear", "auto"]), st.floats(0, 1))
def test_lambda_stays_in_range_and_the_gate_never_closes(observations, schedule, gate):
    controller = SEPAController(SEPAConfig(schedule=schedule, steps=7, delay_steps=3, correct_rate_gate=gate,
                                           warmup_steps=2))
    was_open = False
    for step, (rate, variance) in enumerate(observations):
        lam = controller.update(step, rate, variance)
        assert 0.0 <= lam <= 1.0
        assert controller.gate_open or not was_open
        if not controller.gate_open:
            assert lam == 0.0
        was_open = controller.gate_open


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 100)), min_size=2, max_size=40), st.data())
def test_a_resumed_controller_continues_identically(observations, data):
    settings_ = SEPAConfig(schedule="auto", steps=20, delay_steps=2, correct_rate_gate=0.3, warmup_steps=3)
    cut = data.draw(st.integers(1, len(observations) - 1))
    straight = SEPAController(settings_)
    expected = [straight.update(step, rate, variance) for step, (rate, variance) in enumerate(observations)]
    first = SEPAController(settings_)
    for step, (rate, variance) in enumerate(observations[:cut]):
        first.update(step, rate, variance)
    saved = json.loads(json.dumps(first.state_dict()))  # really JSON
    resumed = SEPAController(settings_)
    resumed.load_state_dict(saved)
    rest = [resumed.update(step, rate, variance) for step, (rate, variance) in enumerate(observations) if step >= cut]
    assert rest == expected[cut:]
    assert resumed.state_dict() == straight.state_dict()


def test_loading_a_foreign_state_is_a_clear_error():
    with pytest.raises(RetrainError, match="SEPA state"):
        SEPAController(SEPAConfig()).load_state_dict({"gate_open": True})


def test_a_damaged_saved_value_is_named_not_converted():
    controller = SEPAController(SEPAConfig())
    state = {**controller.state_dict(), "warmup_sum": "0.5"}
    with pytest.raises(RetrainError, match=r"warmup_sum = '0.5', not a number; the checkpoint is damaged"):
        controller.load_state_dict(state)
    fresh = SEPAController(SEPAConfig())
    fresh.load_state_dict(json.loads(json.dumps(controller.state_dict())))
    assert fresh.state_dict() == controller.state_dict()


# ---------------------------------------------------------------------------------------
# The pipeline runs the schedule only for a stage that uses it


def pipeline_for(transform: str, search_paths: tuple[str, ...] = ()):
    config = dataclasses.replace(
        Config(), algorithm=AlgorithmConfig(transform_mode=transform),
        sepa=SEPAConfig(schedule="auto", steps=4, delay_steps=0, correct_rate_gate=0.0, warmup_steps=1),
        plugins=PluginsConfig(search_paths=list(search_paths)),
    )
    return build_credit_pipeline(config)


def steps(pipeline, count: int = 4):
    rewards = np.array([[1.0, 0.0, 1.0, 0.0], [1.0, 1.0, 0.0, 0.0]])
    for step in range(count):
        batch = synthetic_batch(num_prompts=2, group_size=4, max_tokens=10, seed=step, with_environment_turns=True)
        planning = batch.loss_mask_N_T & (np.arange(10)[None, :] % 3 == 0)
        yield pipeline(rewards, batch, planning, step)


@pytest.mark.parametrize("transform", ["none", "gtpo", "gtpo_hicra", "hicra"])
def test_without_a_sepa_stage_no_schedule_runs_and_the_state_still_round_trips(transform):
    pipeline = pipeline_for(transform)
    assert pipeline.state_dict() == {"sepa": None} and "sepa" not in pipeline.describe()
    first = [result.token_advantages_N_T for result in steps(pipeline)]
    for result in steps(pipeline):
        assert "sepa_lambda" not in result.metrics and "sepa_gate_open" not in result.metrics
    assert pipeline.state_dict() == {"sepa": None}  # nothing advanced
    resumed = pipeline_for(transform)
    resumed.load_state_dict(json.loads(json.dumps(pipeline.state_dict())))
    for expected, result in zip(first, steps(resumed)):
        np.testing.assert_array_equal(result.token_advantages_N_T, expected)


def test_with_a_sepa_stage_the_schedule_advances_and_resumes_exactly():
    pipeline = pipeline_for("gtpo_sepa")
    lambdas = [result.metrics["sepa_lambda"] for result in steps(pipeline, 2)]
    # gate open at once; the linear ramp gives 0, 0.25 (auto adds nothing while the
    # variance holds at its reference)
    assert lambdas[0] == 0.0 and lambdas[1] >= 0.25
    state = json.loads(json.dumps(pipeline.state_dict()))
    assert state["sepa"]["observed_steps"] == 2 and state["sepa"]["gate_open"] is True
    resumed = pipeline_for("gtpo_sepa")
    resumed.load_state_dict(state)
    assert resumed.state_dict() == pipeline.state_dict()


def test_resuming_into_a_pipeline_that_disagrees_about_sepa_is_a_clear_error():
    with pytest.raises(RetrainError, match="holds a SEPA schedule, but this pipeline has no SEPA stage"):
        pipeline_for("gtpo").load_state_dict(pipeline_for("gtpo_sepa").state_dict())
    with pytest.raises(RetrainError, match="has no SEPA schedule, but this pipeline has a SEPA stage"):
        pipeline_for("gtpo_sepa").load_state_dict({"sepa": None})


SEPA_PLUGINS = '''
from retrain.plugin_api import register

@register("transform", needs_sepa=True)
def asks(ctx, params):
    return ctx.token_advantages_N_T * (1.0 + ctx.sepa_lambda)

@register("transform")
def does_not_ask(ctx, params):
    return ctx.token_advantages_N_T

def unregistered(ctx, params):
    return ctx.token_advantages_N_T
'''


def test_a_plugin_gets_the_schedule_when_it_asks_or_declares_nothing(tmp_path):
    (tmp_path / "sepa_plugins.py").write_text(SEPA_PLUGINS)
    for name, runs in [("asks", True), ("does_not_ask", False), ("unregistered", True)]:
        pipeline = pipeline_for(f"sepa_plugins.{name}", (str(tmp_path),))
        (result,) = steps(pipeline, 1)
        assert ("sepa_lambda" in result.metrics) is runs, name
        assert (pipeline.state_dict()["sepa"] is not None) is runs, name
