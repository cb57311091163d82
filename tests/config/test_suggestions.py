"""Did-you-mean suggestions are for typos of a name, never for another valid name that
merely looks alike (retrain.config.values.did_you_mean, used for keys, sections, flags,
commands and plugin names)."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from retrain import registry_names
from retrain.cli import SUBCOMMANDS, main
from retrain.config.flags import FLAGS, parse_run_args
from retrain.config.loader import load_config
from retrain.config.schema import SECTION_FIELDS, SECTIONS, PluginsConfig
from retrain.config.values import did_you_mean
from retrain.errors import ConfigError, UsageError
from retrain.registry import PluginNotFoundError, resolve

TRANSFORMS = list(registry_names.TRANSFORMS)
ADVANTAGES = list(registry_names.ADVANTAGES)
UNCERTAINTIES = list(registry_names.UNCERTAINTIES)
TRAINING_KEYS = [spec.toml_key for spec in SECTION_FIELDS["training"]]

TYPOS = [
    ("gtpo_sep", TRANSFORMS, "gtpo_sepa"),  # a letter left out
    ("gtpo-sepa", TRANSFORMS, "gtpo_sepa"),  # another separator
    ("GTPO_SEPA", TRANSFORMS, "gtpo_sepa"),  # another case
    ("gtpo_hirca", TRANSFORMS, "gtpo_hicra"),  # two letters swapped
    ("gtpo_sepa_hicr", TRANSFORMS, "gtpo_sepa_hicra"),
    ("maxrll", ADVANTAGES, "maxrl"),  # a letter doubled
    ("grpoo", ADVANTAGES, "grpo"),
    ("surprsial", UNCERTAINTIES, "surprisal"),
    ("shanon_entropy", UNCERTAINTIES, "shannon_entropy"),
    ("predictive-variance", UNCERTAINTIES, "predictive_variance"),
    ("trainng", list(SECTIONS), "training"),
    ("optimiser", list(SECTIONS), "optimizer"),
    ("lrr", TRAINING_KEYS, "lr"),
    ("batchsize", TRAINING_KEYS, "batch_size"),
    ("max_step", TRAINING_KEYS, "max_steps"),
    ("--batchsize", list(FLAGS), "--batch-size"),
    ("--Seed", list(FLAGS), "--seed"),
    ("explian", list(SUBCOMMANDS), "explain"),
    ("plugin", list(SUBCOMMANDS), "plugins"),
    ("migrate_config", list(SUBCOMMANDS), "migrate-config"),
    ("rank_advantage", ["rank_advantages", "helpers"], "rank_advantages"),
]

NOT_TYPOS = [
    ("delight_sepa", TRANSFORMS),  # another algorithm, not a slip in writing gtpo_sepa
    ("sepa", TRANSFORMS),  # a stage, not the name of a transform
    ("hicra_sepa", TRANSFORMS),
    ("dr_grpo", ADVANTAGES),
    ("rloo", ADVANTAGES),
    ("ppo", ADVANTAGES),
    ("entropy", UNCERTAINTIES),
    ("trainer", list(SECTIONS)),
    ("learning_rate", TRAINING_KEYS),
    ("--learning-rate", list(FLAGS)),
    ("run", list(SUBCOMMANDS)),
]


@pytest.mark.parametrize(("word", "names", "meant"), TYPOS, ids=[typo[0] for typo in TYPOS])
def test_a_typo_gets_the_name_it_misspells(word: str, names: list[str], meant: str) -> None:
    assert did_you_mean(word, names, "no suggestion") == f"did you mean '{meant}'?"


@pytest.mark.parametrize(("word", "names"), NOT_TYPOS, ids=[case[0] for case in NOT_TYPOS])
def test_a_name_that_merely_looks_alike_gets_none(word: str, names: list[str]) -> None:
    assert did_you_mean(word, names, "no suggestion") == "no suggestion"


def test_equally_close_names_are_all_offered_once() -> None:
    assert did_you_mean("gkpo", ["grpo", "gtpo"], "") == "did you mean 'grpo' or 'gtpo'?"
    # Two spellings of one flag are one suggestion.
    assert did_you_mean("--training_lrr", ["--training.lr", "--training-lr"], "") == "did you mean '--training.lr'?"


POOLS = [TRANSFORMS, ADVANTAGES, UNCERTAINTIES, list(registry_names.ALGORITHMS), list(registry_names.ENGINES),
         list(SECTIONS), TRAINING_KEYS, [spec.toml_key for spec in SECTION_FIELDS["backpressure"]],
         list(FLAGS), list(SUBCOMMANDS)]
TYPED = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-"


def same_name(a: str, b: str) -> bool:
    """Equal once case and separators are ignored, as the suggestion rule says."""
    def fold(name: str) -> str:
        return name.lower().replace("-", "_").replace(".", "_")
    return fold(a) == fold(b)


@st.composite
def one_slip(draw: st.DrawFn) -> tuple[str, str, list[str]]:
    """(a valid name, that name with one letter inserted, deleted, replaced or swapped with
    its neighbour, the names it is one of)."""
    pool = draw(st.sampled_from(POOLS))
    name = draw(st.sampled_from(pool))
    at = draw(st.integers(0, len(name) - 1))
    typed = draw(st.sampled_from(TYPED))
    edit = draw(st.sampled_from(["insert", "delete", "replace", "swap"]))
    if edit == "insert":
        slipped = name[:at] + typed + name[at:]
    elif edit == "delete":
        slipped = name[:at] + name[at + 1:]
    elif edit == "replace":
        slipped = name[:at] + typed + name[at + 1:]
    else:
        at = min(at, len(name) - 2)
        slipped = name[:at] + name[at + 1] + name[at] + name[at + 2:] if len(name) > 1 else name
    return name, slipped, pool


@given(one_slip())
def test_one_slip_in_a_valid_name_always_gets_that_name_suggested(case: tuple[str, str, list[str]]) -> None:
    name, slipped, pool = case
    assume(slipped)
    # A slip that spells another valid name is that name, not a typo.
    assume(not any(same_name(slipped, other) for other in pool if not same_name(other, name)))
    hint = did_you_mean(slipped, pool, "")
    assert any(f"'{other}'" in hint for other in pool if same_name(other, name)), (slipped, hint)


# -- where suggestions appear ----------------------------------------------------------


def config_error(tmp_path: Path, text: str) -> str:
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    return str(caught.value)


def test_an_unknown_transform_in_a_file(tmp_path: Path) -> None:
    assert "did you mean 'gtpo_sepa'?" in config_error(tmp_path, '[algorithm]\ntransform_mode = "gtpo_sep"\n')
    other = config_error(tmp_path, '[algorithm]\ntransform_mode = "delight_sepa"\n')
    assert "did you mean" not in other and "choose one of none, gtpo, hicra" in other


def test_keys_and_sections(tmp_path: Path) -> None:
    assert "did you mean 'batch_size'?" in config_error(tmp_path, "[training]\nbatchsize = 4\n")
    assert "did you mean 'lr'" not in config_error(tmp_path, "[training]\nlearning_rate = 1e-4\n")
    assert "did you mean 'optimizer'?" in config_error(tmp_path, "[optimiser]\nbeta1 = 0.9\n")


def test_flags() -> None:
    with pytest.raises(UsageError, match="did you mean '--batch-size'"):
        parse_run_args(["--batchsize", "4"], {})
    with pytest.raises(UsageError, match=r"did you mean '--hicra-alpha'\?"):
        parse_run_args(["--hicra_alpha", "0.1"], {})
    with pytest.raises(UsageError) as caught:
        parse_run_args(["--learning-rate", "1e-4"], {})
    assert "did you mean" not in str(caught.value)


def test_plugin_names() -> None:
    with pytest.raises(PluginNotFoundError, match="did you mean 'gtpo_sepa'"):
        resolve("transform", "GTPO_SEPA", PluginsConfig())
    with pytest.raises(PluginNotFoundError) as caught:
        resolve("transform", "delight_sepa", PluginsConfig())
    assert "did you mean" not in str(caught.value)


def test_commands(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plugin"]) == 2
    assert "unknown command 'plugin' — did you mean 'plugins'?" in capsys.readouterr().err
