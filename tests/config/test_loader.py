"""The strict loader's layering (defaults < file < .env/env < CLI), snapshots and the
shipped configs."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from retrain.cli import load_dotenv_file, main
from retrain.config.flags import FLAGS, parse_run_args
from retrain.config.loader import load_config, resolve_config
from retrain.config.schema import (
    ALL_FIELDS,
    MAX_INT,
    SECTION_FIELDS,
    Config,
    FieldSpec,
    PrimeRLOptions,
)
from retrain.config.snapshot import config_to_dict, config_to_toml, write_snapshot
from retrain.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]


def write(tmp_path: Path, text: str, name: str = "c.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def load_with_flags(path: Path, *flags: str, environ: dict[str, str] | None = None,
                    refuse_unavailable: bool = True) -> Config:
    args = parse_run_args([str(path), *flags], {})
    return load_config(args.config, args.overrides, environ=environ or {}, refuse_unavailable=refuse_unavailable)


# -- shipped configs -------------------------------------------------------------------

SHIPPED = sorted([REPO / "retrain.toml", *REPO.glob("configs/**/*.toml"), *REPO.glob("campaigns/**/*.toml"),
                  *REPO.glob("retrain/templates/*.toml")])


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_every_shipped_config_loads(path: Path) -> None:
    if path.parent.name != "campaigns" and path.stem != "campaign":
        load_config(path, environ={})
        return
    # A campaign file: every one of its runs resolves.
    from retrain.campaign import plan_campaign

    assert plan_campaign(path).runs


def test_the_specification_full_config_loads_to_the_defaults() -> None:
    resolved = resolve_config(REPO / "tests/config/data/spec_full_annotated.toml", environ={})
    assert resolved.config == Config()
    # Its [backend.options] shows prime_rl's options under backend = "local": accepted, with a
    # warning each, and equal to prime_rl's documented defaults.
    assert [warning.key for warning in resolved.warnings] == list(PrimeRLOptions.__dataclass_fields__)
    assert PrimeRLOptions() == PrimeRLOptions(transport="filesystem", zmq_host="localhost", zmq_port=5555, zmq_hwm=10,
                                              strict_advantages=True, sync_wait_s=30.0, sync_poll_s=0.2)


def test_the_embedded_default_is_the_cpu_template() -> None:
    assert (REPO / "retrain.toml").read_text() == (REPO / "retrain/templates/cpu.toml").read_text()


def test_spec_defaults() -> None:
    config = Config()
    assert (config.backend.backend, config.backend.devices, config.backend.adapter_path) == ("local", "gpu:0", "/tmp/retrain_adapter")
    assert (config.model.model, config.model.lora_rank) == ("Qwen/Qwen3-4B-Instruct-2507", 32)
    assert (config.algorithm.advantage_mode, config.algorithm.transform_mode, config.algorithm.uncertainty_kind) == \
        ("maxrl", "gtpo_sepa", "surprisal")
    assert (config.training.seed, config.training.max_steps, config.training.batch_size, config.training.group_size,
            config.training.max_tokens, config.training.temperature, config.training.lr, config.training.save_every) == \
        (-1, 500, 8, 16, 10240, 0.7, 4e-5, 20)
    assert (config.optimizer.beta1, config.optimizer.beta2, config.optimizer.eps) == (0.9, 0.95, 1e-8)
    assert (config.gtpo.beta, config.hicra.alpha) == (0.1, 0.2)
    assert (config.sepa.steps, config.sepa.schedule, config.sepa.delay_steps, config.sepa.correct_rate_gate) == \
        (500, "linear", 50, 0.1)
    assert config.lora_alpha == 64  # alpha 0 means 2 x rank
    assert config.logging.log_dir == "logs/train" and config.resume.from_ == ""


# -- layering --------------------------------------------------------------------------

def test_int_is_accepted_for_a_float_and_stored_as_float(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[training]\nlr = 1\n"), environ={})
    assert config.training.lr == 1.0 and isinstance(config.training.lr, float)


def test_cli_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nlr = 1e-5\nbatch_size = 2\nseed = 3\n")
    environ = {"RETRAIN_TRAINING__LR": "2e-5", "RETRAIN_TRAINING__BATCH_SIZE": "5"}
    config = load_with_flags(path, "--lr", "3e-5", environ=environ)
    assert config.training.lr == 3e-5  # CLI wins
    assert config.training.batch_size == 5  # env beats file
    assert config.training.seed == 3  # file beats default


def test_every_flag_spelling_reaches_the_same_setting(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nseed = 1\n")
    for flags in (["--lr", "1e-4"], ["--lr=1e-4"], ["--training.lr", "1e-4"], ["--training-lr", "1e-4"],
                  ["--training.lr=1e-4"]):
        assert load_with_flags(path, *flags).training.lr == 1e-4


def test_section_prefixed_flags_for_shared_key_names(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nseed = 1\n")
    config = load_with_flags(path, "--hicra-alpha", "0.5", "--lora-alpha", "8", "--sepa-steps", "10",
                             "--inference-engine", "pytorch", "--planning-model", "m", "--model", "some/model",
                             "--resume", "logs/x", "--sepa-warmup-steps", "3", "--backpressure-warmup-steps", "4")
    assert config.hicra.alpha == 0.5 and config.lora.alpha == 8 and config.sepa.steps == 10
    assert config.planning.model == "m" and config.model.model == "some/model" and config.resume.from_ == "logs/x"
    assert config.sepa.warmup_steps == 3 and config.backpressure.warmup_steps == 4


def test_the_specification_flag_table() -> None:
    table = {"--advantage-mode": "algorithm.advantage_mode", "--transform-mode": "algorithm.transform_mode",
             "--seed": "training.seed", "--lr": "training.lr", "--batch-size": "training.batch_size",
             "--group-size": "training.group_size", "--max-steps": "training.max_steps",
             "--lora-rank": "model.lora_rank", "--log-dir": "logging.log_dir",
             "--wandb-project": "logging.wandb_project", "--wandb-entity": "logging.wandb_entity",
             "--wandb-group": "logging.wandb_group", "--wandb-tags": "logging.wandb_tags",
             "--wandb-run-name": "logging.wandb_run_name", "--resume": "resume.from"}
    assert {flag: FLAGS[flag].dotted for flag in table} == table


def test_every_setting_has_a_dotted_and_a_prefixed_flag() -> None:
    for spec in ALL_FIELDS:
        assert FLAGS[f"--{spec.section}.{spec.toml_key}"] is spec
        assert FLAGS[f"--{spec.section}-{spec.toml_key}".replace("_", "-")] is spec


# Tests of how values are read use settings of every section, including those for features
# this version cannot run (LoRA-Squeeze, other backends, environment providers), so they
# load with refuse_unavailable=False.


def test_string_settings_need_no_quotes_and_values_are_toml_literals(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nseed = 1\n")
    config = load_with_flags(path, "--devices", "cpu", "--wandb-tags", "a,b", "--strict", "false",
                             "--search-paths", "plugins,more", "--target-ranks", "[4, 8]", "--model", "\"quoted/name\"",
                             refuse_unavailable=False)
    assert config.backend.devices == "cpu" and config.logging.wandb_tags == "a,b"
    assert config.plugins.strict is False and config.plugins.search_paths == ["plugins", "more"]
    assert config.squeeze.target_ranks == [4, 8] and config.model.model == "quoted/name"


def test_bare_boolean_flag_means_true(tmp_path: Path) -> None:
    path = write(tmp_path, "[inference]\nprefix_caching = false\n")
    assert load_with_flags(path, "--prefix-caching").inference.prefix_caching is True
    assert load_with_flags(path, "--prefix-caching", "--seed", "2").training.seed == 2


def test_table_flags_fill_plugin_and_backend_tables(tmp_path: Path) -> None:
    path = write(tmp_path, '[backend]\nbackend = "prime_rl"\n[backend.options]\ntransport = "zmq"\n'
                           '[inference]\nengine = "vllm"\nurl = "http://127.0.0.1:8000"\n')
    config = load_with_flags(path, "--backend-opt", "zmq_port=6000", "--advantage-param", "scale=2.0",
                             "--transform-param", "cap=0.1", "--transform-param", "name=abc", refuse_unavailable=False)
    assert config.backend.options["transport"] == "zmq" and config.backend.options["zmq_port"] == 6000
    assert config.algorithm.advantage_params == {"scale": 2.0}
    assert config.algorithm.transform_params == {"cap": 0.1, "name": "abc"}


def test_environment_variables_set_any_setting_and_nested_tables(tmp_path: Path) -> None:
    path = write(tmp_path, '[backend]\nbackend = "prime_rl"\n[inference]\nengine = "vllm"\nurl = "http://h"\n')
    config = load_config(path, environ={"RETRAIN_BACKEND__OPTIONS__SYNC_WAIT_S": "5", "RETRAIN_MODEL__MODEL": "a/b",
                                        "RETRAIN_DEBUG": "1", "UNRELATED__X": "1"}, refuse_unavailable=False)
    assert config.backend.options["sync_wait_s"] == 5.0 and config.model.model == "a/b"


def test_unknown_environment_setting_is_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nseed = 1\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={"RETRAIN_TRAINING__LRR": "1"})
    assert "env RETRAIN_TRAINING__LRR" in str(error.value) and "lr" in str(error.value)


def test_dotenv_fills_only_unset_variables(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("RETRAIN_TEST_DOTENV_A=from-file\nRETRAIN_TEST_DOTENV_B=from-file\n")
    os.environ["RETRAIN_TEST_DOTENV_B"] = "from-environment"
    try:
        load_dotenv_file(tmp_path)
        assert os.environ["RETRAIN_TEST_DOTENV_A"] == "from-file"
        assert os.environ["RETRAIN_TEST_DOTENV_B"] == "from-environment"
    finally:
        os.environ.pop("RETRAIN_TEST_DOTENV_A", None)
        os.environ.pop("RETRAIN_TEST_DOTENV_B", None)


def test_dotenv_reaches_the_cli(tmp_path: Path) -> None:
    write(tmp_path, "[backend]\ndevices = \"cpu\"\n", "retrain.toml")
    (tmp_path / ".env").write_text("RETRAIN_TRAINING__BATCH_SIZE=3\n")
    result = subprocess.run([sys.executable, "-m", "retrain", "explain", "--json"], capture_output=True, text=True,
                            cwd=tmp_path, env={k: v for k, v in os.environ.items() if not k.startswith("RETRAIN_")})
    assert result.returncode == 0, result.stderr
    assert '"value": 3' in result.stdout and "env RETRAIN_TRAINING__BATCH_SIZE" in result.stdout


def test_errors_name_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nseed = 1\n\n[gtpo]\nbeta = -1\n")
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})
    assert f"{path}:5 [gtpo].beta" in str(error.value)


def test_all_problems_are_reported_together(tmp_path: Path) -> None:
    path = write(tmp_path, "[training]\nlr = 'x'\nbatch_size = 0\n[gtpo]\nbeta = -1\n")
    with pytest.raises(ConfigError) as error:
        load_with_flags(path, "--seed", "-5")
    assert len(error.value.issues) == 4
    assert error.value.issues[-1].where == "CLI --seed"


def test_legacy_keys_error_shows_the_migrated_block(tmp_path: Path) -> None:
    path = write(tmp_path, '[backend]\nbackend = "prime_rl"\nprime_rl_transport = "zmq"\nprime_rl_zmq_port = 7000\n')
    with pytest.raises(ConfigError) as error:
        load_config(path, environ={})
    text = str(error.value)
    assert "[backend.options]" in text and 'transport = "zmq"' in text and "zmq_port = 7000" in text
    assert f"retrain migrate-config {path} --write" in text


def test_entropy_mask_rho_is_accepted_as_the_older_name(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "[algorithm]\nentropy_mask_rho = 0.25\n"), environ={})
    assert config.algorithm.surprisal_mask_rho == 0.25


def test_environment_args_accept_a_json_string(tmp_path: Path) -> None:
    path = write(tmp_path, '[environment]\nprovider = "verifiers"\nid = "x"\nargs = \'{"split": "train", "n": 2}\'\n')
    assert load_config(path, environ={}, refuse_unavailable=False).environment.args == {"split": "train", "n": 2}


def test_missing_default_config_suggests_init(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cwd = Path.cwd()
    os.chdir(tmp_path)
    try:
        assert main(["explain"]) == 2
    finally:
        os.chdir(cwd)
    assert "retrain init" in capsys.readouterr().err


# -- snapshots -------------------------------------------------------------------------

def test_snapshot_redacts_secrets(tmp_path: Path) -> None:
    path = write(tmp_path, '[backend]\nbackend = "tinker"\n[backend.options]\napi_key = "sk-123"\n'
                           '[model]\nbase_url = "https://t"\n[algorithm.transform_params]\nauth_token = "t0k"\nkeep = "v"\n')
    config = load_config(path, environ={}, refuse_unavailable=False)
    snapshot = write_snapshot(config, tmp_path / "out" / "config.toml")
    text = snapshot.read_text()
    assert "sk-123" not in text and "t0k" not in text and 'keep = "v"' in text
    reloaded = load_config(snapshot, environ={}, refuse_unavailable=False)
    assert reloaded.backend.options["api_key"] == "" and reloaded.model.base_url == "https://t"


SAFE_FREE_STRINGS = {"backend.adapter_path", "model.model", "logging.log_dir", "logging.wandb_project",
                     "logging.wandb_run_name", "logging.wandb_entity", "logging.wandb_group", "logging.wandb_tags",
                     "logging.strategic_grams", "data.split", "squeeze.adapter_path", "squeeze.device",
                     "planning.model", "reward.custom_function", "resume.from"}


def _value_strategy(spec: FieldSpec) -> st.SearchStrategy[object]:
    if spec.type is bool:
        return st.booleans()
    if spec.type is int:
        low = int(spec.ge if spec.ge is not None else (spec.gt + 1 if spec.gt is not None else -1000))
        high = int(spec.le if spec.le is not None else (spec.lt - 1 if spec.lt is not None else MAX_INT))
        return st.integers(min_value=low, max_value=min(high, MAX_INT))
    if spec.type is float:
        low = spec.ge if spec.ge is not None else spec.gt if spec.gt is not None else -1e6
        high = spec.le if spec.le is not None else spec.lt if spec.lt is not None else 1e6
        return st.floats(min_value=low, max_value=high, allow_nan=False, allow_infinity=False,
                         exclude_min=spec.gt is not None, exclude_max=spec.lt is not None)
    if spec.type is str and spec.choices:
        return st.sampled_from(spec.choices)
    return st.text(alphabet=st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), max_size=12)


@st.composite
def valid_settings(draw: st.DrawFn) -> dict[str, dict[str, object]]:
    tables: dict[str, dict[str, object]] = {}
    for spec in ALL_FIELDS:
        if spec.section == "campaign" or isinstance(spec.default, (dict, list)) or spec.plugin_kind:
            continue
        if spec.type is str and not spec.choices and spec.dotted not in SAFE_FREE_STRINGS:
            continue
        if spec.section == "environment" or spec.dotted in ("backend.devices", "squeeze.compress_to"):
            continue  # only meaningful together with settings drawn below
        if draw(st.booleans()):
            tables.setdefault(spec.section, {})[spec.toml_key] = draw(_value_strategy(spec))
    if draw(st.booleans()):
        tables.setdefault("algorithm", {})["advantage_mode"] = draw(st.sampled_from(["grpo", "maxrl", "pkg.mod.adv"]))
    if draw(st.booleans()):
        tables.setdefault("backend", {})["devices"] = draw(st.sampled_from(["cpu", "gpu:0", "cuda:1", "gpu:0,gpu:1"]))
    if draw(st.booleans()):
        tables.setdefault("plugins", {})["search_paths"] = draw(st.lists(st.text(max_size=5), max_size=3))
    tables.setdefault("training", {})["seed"] = draw(st.integers(min_value=-1, max_value=2**32 - 1))
    backpressure = tables.get("backpressure", {})
    if "min_batch_size" in backpressure or "max_batch_size" in backpressure:
        low, high = sorted([backpressure.get("min_batch_size", 1), backpressure.get("max_batch_size", 64)])
        backpressure.update(min_batch_size=low, max_batch_size=high)
    training = tables["training"]
    if training.get("clip_eps_high") and not training.get("clip_eps"):
        training["clip_eps"] = 0.2
    return tables


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tables=valid_settings())
def test_snapshot_loads_back_equal(tables: dict[str, dict[str, object]], tmp_path: Path) -> None:
    import tomli_w

    path = tmp_path / "in.toml"
    path.write_text(tomli_w.dumps(tables))
    try:
        config = load_config(path, environ={}, refuse_unavailable=False)
    except ConfigError:
        assume(False)  # a combination the cross-field rules reject
        return
    snapshot = tmp_path / "snapshot.toml"
    write_snapshot(config, snapshot)
    assert load_config(snapshot, environ={}, refuse_unavailable=False) == config


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tables=valid_settings())
def test_overrides_equal_to_the_file_change_nothing(tables: dict[str, dict[str, object]], tmp_path: Path) -> None:
    import tomli_w

    path = tmp_path / "in.toml"
    path.write_text(tomli_w.dumps(tables))
    try:
        config = load_config(path, environ={}, refuse_unavailable=False)
    except ConfigError:
        assume(False)
        return
    flags = []
    for section, table in tables.items():
        for key, value in table.items():
            flags += [f"--{section}.{key}", tomli_w.dumps({"v": value}).partition("=")[2].strip()]
    assert load_with_flags(path, *flags, refuse_unavailable=False) == config


def test_snapshot_spells_out_every_setting() -> None:
    data = config_to_dict(Config())
    for section, specs in SECTION_FIELDS.items():
        if section == "campaign":
            continue
        assert set(data[section]) == {spec.toml_key for spec in specs}


def test_snapshot_is_valid_toml_with_a_header() -> None:
    text = config_to_toml(Config())
    assert text.startswith("# Resolved retrain")
    assert tomllib.loads(text)["training"]["lr"] == 4e-5
    assert not math.isnan(tomllib.loads(text)["training"]["temperature"])


# -- settings the chosen pipeline never reads --------------------------------------------


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_shipped_configs_set_nothing_without_effect(path: Path) -> None:
    resolved = resolve_config(path, environ={}, refuse_unavailable=False)
    assert not [w for w in resolved.warnings if "has no effect" in w.problem and w.section != "backend.options"]


@pytest.mark.parametrize(("text", "expected"), [
    # transform "none" has no GTPO/HICRA/SEPA stage and reads no planning mask.
    ('[algorithm]\ntransform_mode = "none"\n[gtpo]\nbeta = 0.3\n[hicra]\nalpha = 0.5\n[sepa]\nsteps = 9\n'
     '[planning]\ndetector = "semantic"\n',
     [("gtpo", "beta", 4), ("hicra", "alpha", 6), ("sepa", "steps", 8), ("planning", "detector", 10)]),
    # A built-in algorithm_mode decides the transform, whatever transform_mode says.
    ('[algorithm]\nalgorithm_mode = "maxrl_gtpo_hicra"\n[sepa]\nschedule = "auto"\n',
     [("sepa", "schedule", 4)]),
    # The regex detector reads strategic_grams but not the semantic model or threshold.
    ('[planning]\nthreshold = 0.1\n[logging]\nstrategic_grams = "wait,hmm"\n', [("planning", "threshold", 2)]),
    ('[planning]\ndetector = "semantic"\n[logging]\nstrategic_grams = "wait,hmm"\n', [("logging", "strategic_grams", 4)]),
    # Everything read: no warning.
    ('[algorithm]\ntransform_mode = "gtpo_sepa_hicra"\n[hicra]\nalpha = 0.5\n[sepa]\nsteps = 9\n', []),
    ('[sepa]\nschedule = "auto"\nema_decay = 0.5\n[model]\nlora_rank = 8\n[lora]\ndropout = 0.1\n'
     '[training]\ndynamic_sampling = true\ndynamic_sampling_max_rounds = 2\n', []),
    # Settings of parts of the run that are switched off.
    ('[model]\nlora_rank = 0\n[lora]\nalpha = 8\ndropout = 0.1\n', [("lora", "alpha", 4), ("lora", "dropout", 5)]),
    ('[training]\ndynamic_sampling_max_rounds = 3\n', [("training", "dynamic_sampling_max_rounds", 2)]),
    ('[sepa]\nwarmup_steps = 3\n', [("sepa", "warmup_steps", 2)]),
    ('[reward]\ncustom_function = "f"\n', [("reward", "custom_function", 2)]),
    ('[logging]\nwandb_tags = "a,b"\n', [("logging", "wandb_tags", 2)]),
    ('[backpressure]\nmax_batch_size = 8\n', [("backpressure", "max_batch_size", 2)]),
])
def test_settings_without_effect_are_warned_about_where_they_are(tmp_path: Path, text: str,
                                                                 expected: list[tuple[str, str, int]]) -> None:
    path = write(tmp_path, text)
    resolved = resolve_config(path, environ={})
    assert [(w.section, w.key, w.where) for w in resolved.warnings] == [(s, k, f"{path}:{line}") for s, k, line in expected]


def test_a_planning_detector_plugin_may_read_the_planning_settings(tmp_path: Path) -> None:
    path = write(tmp_path, '[algorithm]\ntransform_mode = "gtpo_hicra"\n[planning]\ndetector = "my.Detector"\n'
                           'threshold = 0.7\n[logging]\nstrategic_grams = "wait"\n')
    assert resolve_config(path, environ={}).warnings == []


def test_a_transform_plugin_may_read_any_section(tmp_path: Path) -> None:
    path = write(tmp_path, '[algorithm]\ntransform_mode = "my_pkg.MyTransform"\n[hicra]\nalpha = 0.5\n')
    assert resolve_config(path, environ={}).warnings == []


def test_arithmetic_has_no_other_split(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"c.toml:3 \[data\].split: .*has no \"test\" split"):
        load_config(write(tmp_path, '[data]\nsource = "arithmetic"\nsplit = "test"\n'), environ={})


@pytest.mark.parametrize(("text", "where"), [
    ('[training]\ngroup_size = 1\n', r"c.toml:2 \[training\].group_size: maxrl compares the completions"),
    ('[algorithm]\nalgorithm_mode = "grpo_none"\n[training]\ngroup_size = 1\n', r":4 \[training\].group_size: grpo"),
    ('[logging]\nlog_dir = " "\n', r":2 \[logging\].log_dir: is empty"),
    ('[backend]\nadapter_path = ""\n', r":2 \[backend\].adapter_path: is empty"),
])
def test_settings_that_would_train_nothing_or_write_into_the_working_directory(tmp_path: Path, text: str,
                                                                               where: str) -> None:
    with pytest.raises(ConfigError, match=where):
        load_config(write(tmp_path, text), environ={})


def test_one_completion_per_prompt_is_allowed_for_an_advantage_plugin(tmp_path: Path) -> None:
    load_config(write(tmp_path, '[algorithm]\nadvantage_mode = "my.adv"\n[training]\ngroup_size = 1\n'), environ={})
