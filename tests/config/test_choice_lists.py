"""Every message that lists the valid values of a setting lists the names of the one table
they come from, in its order: help texts (and so `retrain train --help` and the reference
page), the loader's unknown-choice errors and the registry's "neither a built-in" errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from retrain import registry_names
from retrain.commands.train import flags_help
from retrain.config.flags import short_flag
from retrain.config.loader import load_config
from retrain.config.schema import ALL_FIELDS, BACKEND_OPTIONS, CampaignCondition, FieldSpec, PluginsConfig, fields_of
from retrain.errors import ConfigError
from retrain.registry import PluginNotFoundError, resolve

OPTIONS = {name: fields_of(options, "backend.options") for name, options in BACKEND_OPTIONS.items()}
EVERY_SPEC = [*ALL_FIELDS, *(spec for specs in OPTIONS.values() for spec in specs),
              *fields_of(CampaignCondition, "campaign.conditions")]
CHOICE_SPECS = [spec for spec in EVERY_SPEC if spec.allowed_names()]
REGISTRY_SPECS = [spec for spec in ALL_FIELDS if spec.plugin_kind]
NOT_A_NAME = "qqq_not_a_choice"  # far from every name, so no did-you-mean replaces the list


def table_names(spec: FieldSpec) -> list[str]:
    """The names the setting takes, from the one table they come from."""
    if spec.plugin_kind:
        return list(registry_names.BUILTINS[spec.plugin_kind])
    return [name for name in spec.choices or () if name]


def test_the_listed_choices_are_the_table_in_order() -> None:
    # Hand-computed: "a, b or c", then the plugin path for kinds that take plugins.
    transform = next(spec for spec in ALL_FIELDS if spec.dotted == "algorithm.transform_mode")
    assert transform.listed_choices() == \
        "none, gtpo, hicra, gtpo_hicra, gtpo_sepa, gtpo_sepa_hicra or a dotted plugin path"
    for spec in CHOICE_SPECS:
        names = table_names(spec) + (["a dotted plugin path"] if spec.accepts_dotted_path else [])
        assert spec.listed_choices() == (", ".join(names[:-1]) + " or " if len(names) > 1 else "") + names[-1]


@pytest.mark.parametrize("spec", EVERY_SPEC, ids=[spec.dotted for spec in EVERY_SPEC])
def test_help_texts_list_the_choices_from_the_table(spec: FieldSpec) -> None:
    assert "{choices}" not in spec.help
    if spec.allowed_names():
        assert spec.listed_choices() in spec.help


def test_train_help_lists_the_same_choices() -> None:
    lines = flags_help().splitlines()
    for spec in (spec for spec in CHOICE_SPECS if spec in ALL_FIELDS and spec.section != "campaign"):
        line = next(line for line in lines if line.split()[:1] == [short_flag(spec)])
        assert line.endswith(spec.help) and spec.listed_choices() in line


def _unknown_choice_fix(tmp_path: Path, spec: FieldSpec) -> str:
    if spec.section == "backend.options":
        backend = next(name for name, specs in OPTIONS.items() if spec in specs)
        text = f'[backend]\nbackend = "{backend}"\n[backend.options]\n{spec.toml_key} = "{NOT_A_NAME}"\n'
    else:
        text = f'[{spec.section}]\n{spec.toml_key} = "{NOT_A_NAME}"\n'
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={}, refuse_unavailable=False)
    (issue,) = [issue for issue in caught.value.issues if issue.key == spec.toml_key]
    return issue.fix


@pytest.mark.parametrize("spec", [spec for spec in CHOICE_SPECS if spec.section != "campaign.conditions"],
                         ids=lambda spec: spec.dotted)
def test_unknown_choice_errors_list_the_same_choices(tmp_path: Path, spec: FieldSpec) -> None:
    assert _unknown_choice_fix(tmp_path, spec) == f"choose one of {spec.listed_choices()}"


@pytest.mark.parametrize("spec", REGISTRY_SPECS, ids=[spec.dotted for spec in REGISTRY_SPECS])
def test_registry_errors_list_the_same_names(spec: FieldSpec) -> None:
    assert spec.plugin_kind is not None
    with pytest.raises(PluginNotFoundError) as caught:
        resolve(spec.plugin_kind, NOT_A_NAME, PluginsConfig())
    assert f"is neither a built-in ({', '.join(table_names(spec))})" in str(caught.value)
