"""What a plugin may return: real numbers only (complex, boolean, string and object
values are named errors), and ``strict = false`` repairs summed up in one warning per
stage and step."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import credit_reference as ref
import numpy as np
import pytest

from retrain.config.schema import AlgorithmConfig, Config, PluginsConfig
from retrain.credit import build_credit_pipeline
from retrain.registry import PluginOutputError

REPO = Path(__file__).resolve().parents[2]

ODD_PLUGINS = '''
import numpy as np

def complex_advantages(rewards_P_G, params):
    return (rewards_P_G - rewards_P_G.mean(axis=1, keepdims=True)) + 1j

def real_complex_advantages(rewards_P_G, params):
    return (rewards_P_G - rewards_P_G.mean(axis=1, keepdims=True)).astype(complex)

def bool_advantages(rewards_P_G, params):
    return rewards_P_G > 0.5

def string_advantages(rewards_P_G, params):
    return rewards_P_G.astype(str)

def none_advantages(rewards_P_G, params):
    return [[0.5, None]]

def mixed_advantages(rewards_P_G, params):
    return np.array([[0.5, -0.5]], dtype=object)

def complex_tokens(ctx, params):
    return np.where(ctx.mask_N_T, 1.0 + 2.0j, 0.0)

def complex_sequences(ctx, params):
    return [np.full(int(n), 1.0 + 0.5j) for n in ctx.mask_N_T.sum(axis=1)]

def string_sequences(ctx, params):
    return [["0.1"] * int(n) for n in ctx.mask_N_T.sum(axis=1)]

def object_tokens(ctx, params):
    out = np.ones(ctx.mask_N_T.shape, dtype=object)
    out[1, 2] = "x"
    return out

def complex_uncertainty(batch):
    return np.zeros(batch.mask_N_T.shape, dtype=complex)

def string_metric(ctx, params):
    from retrain.transforms import TransformOutput
    return TransformOutput(ctx.token_advantages_N_T, metrics={"spread": "wide"})

def many_nan_tokens(ctx, params):
    out = np.ones(ctx.mask_N_T.shape)
    out[0] = np.nan
    out[1, :2] = np.inf
    out[1, 2] = -np.inf
    return out

def huge_tokens(ctx, params):
    return np.where(ctx.mask_N_T, np.float32(3e38), 0.0).astype(np.float32)

def nan_and_short(ctx, params):
    rows = [np.full(int(n), np.nan) for n in ctx.mask_N_T.sum(axis=1)]
    rows[1] = rows[1][:1]
    return rows
'''


@pytest.fixture
def odd_plugins(tmp_path: Path) -> list[str]:
    (tmp_path / "odd_plugins.py").write_text(ODD_PLUGINS)
    return [str(tmp_path)]


def config(search_paths: list[str], strict: bool = True, **algorithm: object) -> Config:
    return Config(algorithm=AlgorithmConfig(**algorithm),  # type: ignore[arg-type]
                  plugins=PluginsConfig(search_paths=search_paths, strict=strict))


def batch() -> tuple[np.ndarray, object]:
    # Two completions of one prompt: 3 and 4 sampled tokens.
    return np.array([[1.0, 0.0]]), ref.ragged_batch([[-1.0] * 3, [-1.0] * 4], group_size=2)


def run(search_paths: list[str], strict: bool = True, **algorithm: object):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's ComplexWarning would be the silent drop
        return build_credit_pipeline(config(search_paths, strict, **algorithm))(*batch(), None, 0)


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize(("setting", "name"), [("advantage_mode", "complex_advantages"),
                                               ("transform_mode", "complex_tokens"),
                                               ("transform_mode", "complex_sequences")])
def test_a_complex_value_with_an_imaginary_part_is_an_error_in_both_modes(odd_plugins, strict, setting, name):
    with pytest.raises(PluginOutputError, match=rf"'odd_plugins.{name}' .* returned complex values.*non-zero "
                                                r"imaginary part, the first \(?[-0-9.]+\+[0-9.]+j"):
        run(odd_plugins, strict, **{setting: f"odd_plugins.{name}"})


def test_complex_values_with_zero_imaginary_parts_are_refused_strict_and_taken_as_real_otherwise(odd_plugins, caplog):
    with pytest.raises(PluginOutputError, match="real_complex_advantages' .* returned complex values .*all with a zero "
                                                "imaginary part — fix the plugin, or set .plugins. strict = false"):
        run(odd_plugins, advantage_mode="odd_plugins.real_complex_advantages")
    with caplog.at_level(logging.WARNING, logger="retrain.credit"):
        result = run(odd_plugins, False, advantage_mode="odd_plugins.real_complex_advantages", transform_mode="none")
    np.testing.assert_array_equal(result.episode_advantages_N, [0.5, -0.5])
    assert "took the real part of 2 complex values (all imaginary parts 0)" in caplog.text
    # A complex uncertainty plugin is checked the same way.
    relaxed = run(odd_plugins, False, uncertainty_kind="odd_plugins.complex_uncertainty")
    assert relaxed.uncertainty_N_T.dtype == np.float32


@pytest.mark.parametrize("strict", [True, False])
@pytest.mark.parametrize(("setting", "name", "message"), [
    ("advantage_mode", "bool_advantages", r"returned boolean values \(dtype bool\)"),
    ("advantage_mode", "string_advantages", r"returned string values \(dtype <U32\)"),
    ("advantage_mode", "none_advantages", r"returned NoneType None at index \[0, 1\]"),
    ("transform_mode", "string_sequences", r"returned string values \(sequence 0\)"),
    ("transform_mode", "object_tokens", r"returned str 'x' at index \[1, 2\]"),
    ("transform_mode", "string_metric", "returned the metric 'spread' = str 'wide'; a metric is one real number"),
])
def test_values_that_are_not_numbers_are_an_error_naming_the_plugin(odd_plugins, strict, setting, name, message):
    with pytest.raises(PluginOutputError, match=rf"'odd_plugins.{name}' \(plugin .*odd_plugins.py\) {message}"):
        run(odd_plugins, strict, **{setting: f"odd_plugins.{name}"})


def test_an_object_array_of_plain_numbers_is_read_as_numbers(odd_plugins):
    result = run(odd_plugins, advantage_mode="odd_plugins.mixed_advantages", transform_mode="none")
    np.testing.assert_array_equal(result.episode_advantages_N, [0.5, -0.5])


def test_non_strict_repairs_are_one_warning_per_stage_and_step_with_their_counts(odd_plugins, caplog):
    with caplog.at_level(logging.WARNING, logger="retrain.credit"):
        result = run(odd_plugins, False, transform_mode="odd_plugins.many_nan_tokens")
    # Row 0: its 3 sampled tokens NaN; row 1: two +inf and one -inf of its 4 (padding is ignored).
    assert result.metrics["plugin_repaired_values"] == 6
    expected = ("transform 'odd_plugins.many_nan_tokens' (plugin odd_plugins.many_nan_tokens from "
                f"{odd_plugins[0]}/odd_plugins.py): repaired 6 of 7 values (3 NaN, 2 +inf, 1 -inf → 0.0; first at "
                "sequence 0 (prompt 0, completion 0), token 0) — [plugins] strict = false; fix the plugin to need no "
                "repairs")
    assert [record.getMessage() for record in caplog.records] == [expected]
    np.testing.assert_array_equal(result.token_advantages_N_T, [[0, 0, 0, 0], [0, 0, 0, 1]])


def test_a_stage_with_two_kinds_of_repair_still_warns_once(odd_plugins, caplog):
    with caplog.at_level(logging.WARNING, logger="retrain.credit"):
        result = run(odd_plugins, False, transform_mode="odd_plugins.nan_and_short")
    assert (result.metrics["plugin_repaired_values"], result.metrics["plugin_repaired_sequences"]) == (4, 1)
    assert len(caplog.records) == 1
    assert ("repaired 4 of 7 values (4 NaN → 0.0; first at sequence 0 (prompt 0, completion 0), token 0); fitted 1 of 2 "
            "sequences to their number of sampled tokens (padded with 0 or cut; first: sequence 1, 1 values for 4 "
            "sampled tokens)") in caplog.text


def test_finite_values_whose_sum_overflows_are_not_taken_for_non_finite_ones(odd_plugins):
    # 7 x 3e38 overflows float32 in the one-reduction check; no value is non-finite.
    result = run(odd_plugins, transform_mode="odd_plugins.huge_tokens")
    assert result.metrics["plugin_repaired_values"] == 0 and np.isfinite(result.token_advantages_N_T).all()


def test_a_step_without_repairs_warns_nothing_and_counts_zero(odd_plugins, caplog):
    pipeline = build_credit_pipeline(config(odd_plugins, False, transform_mode="odd_plugins.many_nan_tokens"))
    with caplog.at_level(logging.WARNING, logger="retrain.credit"):
        pipeline(*batch(), None, 0)
        caplog.clear()
        clean = build_credit_pipeline(config(odd_plugins, False))(*batch(), None, 1)
    assert clean.metrics["plugin_repaired_values"] == 0 and not caplog.records


def test_explain_names_a_complex_valued_advantage_plugin(tmp_path: Path):
    (tmp_path / "odd_plugins.py").write_text(ODD_PLUGINS)
    toml = (REPO / "retrain.toml").read_text().replace('advantage_mode = "maxrl"',
                                                        'advantage_mode = "odd_plugins.complex_advantages"')
    (tmp_path / "retrain.toml").write_text(toml + '\n[plugins]\nsearch_paths = ["."]\n')
    result = subprocess.run([sys.executable, "-m", "retrain", "explain"], cwd=tmp_path, capture_output=True, text=True,
                            timeout=60, check=False, env={**os.environ, "PYTHONWARNINGS": "error::RuntimeWarning"})
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr and "ComplexWarning" not in result.stderr
    assert "advantage 'odd_plugins.complex_advantages'" in result.stderr, result.stderr
    assert "returned complex values" in result.stderr
