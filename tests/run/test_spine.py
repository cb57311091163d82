"""The run's spine with in-memory components: the step, the collectors, weight
publication and checkpoints, through the real plan and build (no model; milliseconds)."""

from __future__ import annotations

import dataclasses
import threading
from pathlib import Path

import numpy as np
import pytest
import spine_fakes
from spine_fakes import FakeBackend, FakeEngine

from retrain.checkpoint import read_trainer_state, restore, save_checkpoint
from retrain.config.loader import replace_setting, resolve_config
from retrain.errors import ConfigError, EngineError
from retrain.plan import plan_run
from retrain.publication import Publisher
from retrain.run import build_run, start
from retrain.sampling import LookaheadCollector
from retrain.step import Run, rl_step
from retrain.types import PolicyKind, PolicyRef

HERE = Path(__file__).resolve().parent


def fake_config(tmp_path: Path, extra: str = "", engine: str = "FakeEngine", training: str = "") -> Path:
    """A config of the in-memory components; ``training`` adds lines to [training]."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / "fake.toml"
    path.write_text(f"""
[backend]
backend = "spine_fakes.FakeBackend"
adapter_path = "{{log_dir}}/adapter"
[inference]
engine = "spine_fakes.{engine}"
[data]
source = "spine_fakes.SayDigit"
[reward]
type = "custom"
custom_module = "spine_fakes"
custom_function = "contains_reference"
[algorithm]
advantage_mode = "grpo"
transform_mode = "none"
[training]
seed = 3
batch_size = 4
group_size = 4
max_tokens = 3
temperature = 1.0
lr = 0.5
max_steps = 6
save_every = 0
{training}
[logging]
log_dir = "{tmp_path / 'logs'}"
generations_per_step = 0
[plugins]
search_paths = ["{HERE}"]
{extra}
""")
    return path


def built(tmp_path: Path, extra: str = "", engine: str = "FakeEngine", training: str = "") -> Run:
    plan = plan_run(resolve_config(fake_config(tmp_path, extra, engine, training), environ={}))
    run = build_run(plan)
    start(run, None, plan)
    return run


def test_a_step_trains_the_informative_groups_and_publishes_the_update(tmp_path):
    run = built(tmp_path)
    try:
        assert run.engine.policy_version == 0  # the initial weights were published at start
        record = rl_step(run, 1)
        informative = record.credit.informative_P
        batch = spine_fakes.TRAINED[-1]
        assert batch.num_rows == int(informative.sum()) * 4
        assert set(batch.prompt_index_N.tolist()) == set(np.flatnonzero(informative).tolist())
        assert record.staleness == 0 and record.policy_version == 1
        assert run.engine.policy_version == 1 and isinstance(run.backend, FakeBackend)
        assert set(record.timings) == {"collect_time_s", "credit_time_s", "train_time_s", "sync_time_s"}
    finally:
        run.close()
    assert run.backend.closed and run.engine.closed


def test_environment_tokens_get_no_credit_and_no_loss(tmp_path):
    run = built(tmp_path, engine="MultiTurnEngine")
    try:
        record = rl_step(run, 1)
        samples = record.collected.samples
        environment = samples.mask_N_T & ~samples.loss_mask_N_T
        assert environment[:, 1:3].all() and environment.sum() == 2 * len(samples.texts)
        assert not record.credit.token_advantages_N_T[environment].any()
        batch = spine_fakes.TRAINED[-1]
        assert not (batch.token_advantages_N_T * ~batch.loss_mask_N_T).any()
    finally:
        run.close()


def test_sampling_ahead_overlaps_training_by_at_most_max_staleness(tmp_path):
    run = built(tmp_path, training="max_staleness = 2")
    try:
        assert isinstance(run.collector, LookaheadCollector)
        staleness = [rl_step(run, step).staleness for step in range(1, 7)]
        assert max(staleness) <= 2 and staleness[0] == 0
        # Six steps of four prompts: the cursor covers exactly the prompts handed to training.
        assert run.collector.state_dict()["position"] == 24 % 16 and run.collector.state_dict()["epoch"] == 1
    finally:
        run.close()


def test_the_lookahead_cursor_never_includes_steps_still_in_flight(tmp_path):
    run = built(tmp_path, training="max_staleness = 1")
    gate = threading.Event()
    FakeEngine.gate = gate
    try:
        gate.set()
        rl_step(run, 1)  # step 2 is now sampling (or sampled) in the background
        assert run.collector.state_dict()["position"] == 4
        gate.clear()
    finally:
        gate.set()
        FakeEngine.gate = None
        run.close()


def test_a_checkpoint_resumes_bit_identically_on_policy(tmp_path):
    uninterrupted = built(tmp_path / "a")
    try:
        expected = [rl_step(uninterrupted, step).collected.rewards_P_G for step in range(1, 5)]
        expected_logits = uninterrupted.backend.logits.copy()
    finally:
        uninterrupted.close()
    first = built(tmp_path / "b")
    try:
        for step in (1, 2):
            rl_step(first, step)
        save_checkpoint(first, 2, {})
    finally:
        first.close()
    state = read_trainer_state(tmp_path / "b" / "logs")
    resolved = resolve_config(fake_config(tmp_path / "b"), environ={})
    # A resume (the plan refuses a new run into a folder holding one).
    config = replace_setting(resolved.config, "resume.from", str(tmp_path / "b" / "logs"))
    plan = plan_run(dataclasses.replace(resolved, config=config))
    resumed = build_run(plan, state)
    try:
        restore(resumed, state)
        assert resumed.engine.policy_version == 2 == resumed.backend.policy_version
        again = [rl_step(resumed, step).collected.rewards_P_G for step in (3, 4)]
        np.testing.assert_array_equal(np.stack(again), np.stack(expected[2:]))
        np.testing.assert_array_equal(resumed.backend.logits, expected_logits)
    finally:
        resumed.close()


class StaleEngine(FakeEngine):
    def load(self, ref: PolicyRef) -> None:
        super().load(ref)
        self.policy_version = ref.version - 1


def test_publication_is_skipped_without_an_update_and_stale_engines_are_refused(tmp_path):
    from retrain.config.schema import Config

    backend, engine = FakeBackend(Config()), FakeEngine(Config())
    kind: PolicyKind = "remote"
    publisher = Publisher(backend, engine, kind, tmp_path)
    publisher.publish_now()
    before = len(spine_fakes.PUBLISHED)
    assert publisher.publish() == 0 and len(spine_fakes.PUBLISHED) == before
    backend.policy_version = 5
    assert publisher.publish() == 5 and engine.policy_version == 5
    stale = Publisher(backend, StaleEngine(Config()), kind, tmp_path)
    with pytest.raises(EngineError, match="serves policy version 4 after loading version 5"):
        stale.publish_now()


def test_a_backend_and_an_engine_with_no_publication_in_common_are_refused_at_plan_time(tmp_path):
    path = fake_config(tmp_path)
    path.write_text(path.read_text().replace('engine = "spine_fakes.FakeEngine"', 'engine = "pytorch"'))
    with pytest.raises(ConfigError) as caught:
        plan_run(resolve_config(path, environ={}))
    message = str(caught.value)
    assert "engine 'pytorch' loads in_process but backend 'spine_fakes.FakeBackend' publishes remote" in message


def test_split_mode_publishes_only_to_the_in_process_engine(tmp_path):
    path = fake_config(tmp_path)
    path.write_text(path.read_text().replace('backend = "spine_fakes.FakeBackend"',
                                             'backend = "local"\ndevices = "cpu,cpu"'))
    with pytest.raises(ConfigError, match="engine 'spine_fakes.FakeEngine' loads remote but backend 'local' "
                                          "publishes in_process"):
        plan_run(resolve_config(path, environ={}))


def test_dynamic_sampling_refills_the_batch_with_informative_groups(tmp_path):
    run = built(tmp_path, training="dynamic_sampling = true\ndynamic_sampling_max_rounds = 3")
    drawn = 0
    try:
        for step in range(1, 7):
            before = len(spine_fakes.SAMPLED)
            collected = run.collector.collect(step)
            rounds = collected.counts["refill_rounds"]
            # One engine call per round; each extra round asks only for the groups still missing.
            assert len(spine_fakes.SAMPLED) - before == 1 + rounds
            asked = [entry["prompts"] for entry in spine_fakes.SAMPLED[before:]]
            assert asked[0] == 4 and all(later <= 4 for later in asked[1:])
            assert collected.counts["refill_prompts"] == sum(asked[1:])
            drawn += sum(asked)
            informative = collected.rewards_P_G.max(axis=1) > collected.rewards_P_G.min(axis=1)
            # The first round's groups are all kept; a refill keeps only informative groups.
            assert len(collected.examples) == 4 + int(informative[4:].sum())
            assert informative[4:].all()
            assert collected.samples.num_prompts == len(collected.examples)
        # The cursor moved by every prompt drawn, refills included (16 prompts per epoch).
        cursor = run.collector.state_dict()
        assert cursor["epoch"] * 16 + cursor["position"] == drawn > 24
    finally:
        run.close()


def test_an_environment_s_round_is_checked_before_it_is_trained_on():
    from retrain.credit import synthetic_batch
    from retrain.errors import PluginError
    from retrain.sampling import checked_rewards
    from retrain.types import Scored

    samples = synthetic_batch(num_prompts=2, group_size=4, max_tokens=5, seed=0)
    rewards = np.array([1.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0])
    assert checked_rewards(Scored(samples, rewards, {}), 2, 4, "Env").tolist() == [[1, 0, 0, 1], [0, 0, 0, 1]]
    with pytest.raises(PluginError, match=r"environment Env returned 8 trajectories in groups of 4 for 3 prompts x 4"):
        checked_rewards(Scored(samples, rewards, {}), 3, 4, "Env")
    with pytest.raises(PluginError, match=r"rewards of shape \(7,\) for 8 trajectories"):
        checked_rewards(Scored(samples, rewards[:7], {}), 2, 4, "Env")
    rewards[5] = np.nan
    with pytest.raises(PluginError, match="gave trajectory 5 the reward nan; rewards must be finite"):
        checked_rewards(Scored(samples, rewards, {}), 2, 4, "Env")
