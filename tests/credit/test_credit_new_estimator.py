"""Adding an advantage estimator touches one new module and one line of
``retrain.registry_names.ADVANTAGES`` (docs/advantages.md, "Adding an estimator").

Here the contributor's module lives in a temporary package and the table line goes into
a copy of ``registry_names.py`` that a fresh interpreter loads in place of the real one,
so the source tree stays untouched; everything else (config validation, recipes, the
pipeline, ``retrain plugins``) is the code as shipped.
"""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import retrain.registry_names

# The whole contribution: one module ...
RLOO_MODULE = '''
"""RLOO: the reward minus the mean reward of the other completions of its group.

    A_i = r_i - (1 / (G - 1)) sum_{j != i} r_j  =  G / (G - 1) (r_i - mean(r))

REINFORCE Leave-One-Out (Kool et al., 2019, "Buy 4 REINFORCE Samples, Get a Baseline
for Free!"; Ahmadian et al., 2024, arXiv:2402.14740).
"""

from __future__ import annotations

import numpy as np

from retrain.registry import register


@register("advantage")
def rloo_advantages(rewards_P_G: np.ndarray, params: object = None) -> np.ndarray:
    """RLOO: A = r - mean of the other rewards of the group."""
    rewards = np.asarray(rewards_P_G, dtype=np.float64)
    group_size = rewards.shape[1]
    return group_size / max(group_size - 1, 1) * (rewards - rewards.mean(axis=1, keepdims=True))
'''
# ... and one line in the table.
TABLE_LINE = '    "rloo": "contrib_credit.rloo:rloo_advantages",\n'

RUN = '''
import importlib.util, json, sys
import numpy as np
import retrain

spec = importlib.util.spec_from_file_location("retrain.registry_names", sys.argv[1])
names = importlib.util.module_from_spec(spec)
sys.modules["retrain.registry_names"] = names
spec.loader.exec_module(names)
retrain.registry_names = names

from retrain.commands.plugins import builtins_listing
from retrain.config.loader import load_config
from retrain.credit import build_credit_pipeline, synthetic_batch

batch = synthetic_batch(num_prompts=1, group_size=4, max_tokens=6, with_environment_turns=True)
out = {}
for config_path in sys.argv[2:]:
    result = build_credit_pipeline(load_config(config_path)).__call__(np.array([[1.0, 0.0, 0.0, 1.0]]), batch, None, 0)
    out[config_path] = {"episode": result.episode_advantages_N.tolist(), "tokens": result.token_advantages_N_T.tolist()}
out["loss_mask"] = batch.loss_mask_N_T.tolist()
out["listed"] = [entry for entry in builtins_listing()["advantage"] if entry["name"] == "rloo"]
out["recipes"] = [entry["name"] for entry in builtins_listing()["algorithm"] if entry["name"].startswith("rloo_")]
print(json.dumps(out))
'''


def test_a_new_estimator_is_one_module_and_one_table_line(tmp_path: Path):
    package = tmp_path / "contrib_credit"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "rloo.py").write_text(RLOO_MODULE)
    source = Path(retrain.registry_names.__file__).read_text()
    anchor = "ADVANTAGES: dict[str, str] = {\n"
    assert anchor in source
    (tmp_path / "registry_names.py").write_text(source.replace(anchor, anchor + TABLE_LINE))
    by_mode = tmp_path / "by_mode.toml"
    by_mode.write_text('[algorithm]\nadvantage_mode = "rloo"\ntransform_mode = "none"\n')
    by_recipe = tmp_path / "by_recipe.toml"
    by_recipe.write_text('[algorithm]\nalgorithm_mode = "rloo_none"\n')
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(RUN), str(tmp_path / "registry_names.py"),
                          str(by_mode), str(by_recipe)], capture_output=True, text=True, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    # rewards 1, 0, 0, 1: mean 0.5, G / (G - 1) = 4/3 -> A = +-0.5 * 4/3 = +-2/3
    # (completion 0: 1 - mean(0, 0, 1) = 2/3; completion 1: 0 - mean(1, 0, 1) = -2/3)
    for config_path in (str(by_mode), str(by_recipe)):
        episode = out[config_path]["episode"]
        assert episode == [2 / 3, -2 / 3, -2 / 3, 2 / 3]
        # transform none: A on every sampled token, 0 on environment tokens and padding
        for row, (advantage, sampled) in enumerate(zip(episode, out["loss_mask"])):
            expected = [float(f"{advantage:.7g}") if keep else 0.0 for keep in sampled]
            assert [float(f"{x:.7g}") for x in out[config_path]["tokens"][row]] == expected
    # Its docstring is its description; every transform gives it a recipe.
    assert out["listed"] == [{"name": "rloo", "description": "RLOO: A = r - mean of the other rewards of the group.",
                              "reads": "", "available": True}]
    assert len(out["recipes"]) == len(retrain.registry_names.TRANSFORMS)
