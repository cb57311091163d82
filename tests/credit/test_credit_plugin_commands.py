import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from retrain import registry_names
from retrain.cli import main as cli_main
from retrain.commands.init_plugin import class_name
from retrain.config.loader import load_config
from retrain.config.schema import PluginsConfig
from retrain.credit import build_credit_pipeline
from retrain.plan import reward_factory
from retrain.registry import PluginSignatureError, resolve
from retrain.types import Example, SamplingParams

REPO = Path(__file__).resolve().parents[2]


def test_plugins_lists_builtins_and_the_example_plugins(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert cli_main(["plugins"]) == 0
    out = capsys.readouterr().out
    for kind, names in registry_names.BUILTINS.items():
        assert f"  {kind}:" in out
        assert all(f"    {name}" in out for name in names)
    assert "advantage   rank_advantage.rank_advantages" in out
    assert "params.scale: float = 1.0" in out
    assert f"plugins: {REPO / 'plugins'}" in out


def test_builtin_credit_stages_are_described_by_their_docstrings(capsys):
    import inspect

    from retrain.registry import BUILTIN_DESCRIPTIONS

    assert not {"advantage", "transform", "uncertainty", "algorithm"} & set(BUILTIN_DESCRIPTIONS)
    assert cli_main(["plugins", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)["builtins"]
    for kind in ("advantage", "transform", "uncertainty"):
        for entry in listing[kind]:
            obj = resolve(kind, entry["name"], PluginsConfig()).obj
            assert entry["description"] == inspect.getdoc(obj).splitlines()[0], (kind, entry["name"])
    transforms = {entry["name"]: entry for entry in listing["transform"]}
    assert transforms["gtpo_sepa_hicra"]["reads"] == "[sepa], [gtpo] beta, [hicra] alpha"
    recipes = {entry["name"]: entry for entry in listing["algorithm"]}
    assert recipes["maxrl_gtpo"] == {"name": "maxrl_gtpo", "description": "recipe: advantage maxrl, then transform gtpo",
                                     "reads": "[gtpo] beta", "available": True}
    engines = {entry["name"]: entry["available"] for entry in listing["engine"]}
    assert all(engines[name] for name in ("pytorch", "vllm", "sglang", "openai", "max", "mlx"))


def test_plugins_json_with_a_config(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "broken_listing.py").write_text("import not_installed_pkg_q\n")
    config = tmp_path / "run.toml"
    config.write_text('[plugins]\nsearch_paths = ["mine", "also_missing"]\n')
    assert cli_main(["plugins", str(config), "--json"]) == 0
    payload = json.loads(capsys.readouterr().out)
    assert set(payload["builtins"]) == set(registry_names.BUILTINS)
    assert payload["search_paths"][0] == {"entry": "mine", "directory": str(tmp_path / "mine"), "module_prefix": "",
                                          "found": True}
    assert payload["search_paths"][1]["found"] is False
    (module,) = payload["discovered"]
    assert module["status"] == "error" and "not_installed_pkg_q" in module["error"]


def test_plugins_usage_error_exits_2(capsys):
    assert cli_main(["plugins", "--bogus"]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err


def test_init_plugin_refuses_to_overwrite_and_checks_the_name(tmp_path, capsys):
    assert cli_main(["init-plugin", "--kind", "advantage", "--name", "once", "--output-dir", str(tmp_path)]) == 0
    before = (tmp_path / "once.py").read_text()
    assert cli_main(["init-plugin", "--kind", "transform", "--name", "once", "--output-dir", str(tmp_path)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert (tmp_path / "once.py").read_text() == before
    for bad in ("9lives", "class", "test_x", "json"):
        assert cli_main(["init-plugin", "--kind", "advantage", "--name", bad, "--output-dir", str(tmp_path)]) == 2
    assert cli_main(["init-plugin", "--kind", "nope", "--name", "x"]) == 2


CONFIG_LINES = {
    "advantage": '[algorithm]\nadvantage_mode = "{dotted}"\n',
    "transform": '[algorithm]\ntransform_mode = "{dotted}"\n',
    "uncertainty": '[algorithm]\nuncertainty_kind = "{dotted}"\n',
    "algorithm": '[algorithm]\nalgorithm_mode = "{dotted}"\n',
    "reward": '[reward]\ntype = "custom"\ncustom_module = "{name}"\ncustom_function = "{name}"\n',
    "data": '[data]\nsource = "{dotted}"\n',
    "planning": '[planning]\ndetector = "{dotted}"\n',
    "engine": '[inference]\nengine = "{dotted}"\n',
    "backend": '[backend]\nbackend = "{dotted}"\n',
    "environment": '[environment]\nprovider = "{dotted}"\n',
}


def exercise_from_config(kind: str, config_path: Path) -> None:
    """Load the scaffold through a config file, as a run would, and call its contract."""
    config = load_config(config_path)
    base = config_path.parent
    if kind in ("advantage", "transform", "uncertainty", "algorithm"):
        result = build_credit_pipeline(config, base).probe()
        assert np.all(np.isfinite(result.token_advantages_N_T))
    elif kind == "reward":
        example = Example("e", ({"role": "user", "content": "q"},), "4")
        reward = reward_factory(resolve("reward", config.reward.plugin_name, config.plugins, base))(config)
        assert reward.score(["it is 4", "5"], [example, example]).tolist() == [1.0, 0.0]
    elif kind == "data":
        assert resolve("data", config.data.source, config.plugins, base).obj(config).examples()
    elif kind == "planning":
        detector = resolve("planning", config.planning.detector, config.plugins, base).obj(config)
        marked = detector.detect(["Why? ok"], [[(0, 4), (5, 7)]])
        assert marked.tolist() == [[True, False]]
    elif kind == "environment":
        environment = resolve("environment", config.environment.provider, config.plugins, base).obj(config)
        assert len(environment.examples()) == 100
    elif kind == "engine":
        engine = resolve("engine", config.inference.engine, config.plugins, base).obj(config)
        assert len(engine.generate([[1]], SamplingParams(n=2, max_tokens=4)).texts) == 2
    elif kind == "backend":
        backend = resolve("backend", config.backend.backend, config.plugins, base).obj(config)
        prompt = backend.encode_prompt(({"role": "user", "content": "12"},))
        assert prompt == [1, 2]
        assert backend.publish("remote", config_path.parent / "published").version == 0


def test_init_plugin_for_every_kind_generates_passing_tests_and_loads_from_a_config(tmp_path, capsys):
    plugin_dir = tmp_path / "my_plugins"
    for kind in registry_names.BUILTINS:
        assert cli_main(["init-plugin", "--kind", kind, "--name", f"scaffold_{kind}", "--output-dir", str(plugin_dir),
                         "--with-test"]) == 0
        out = capsys.readouterr().out
        assert f"test_scaffold_{kind}.py" in out and "search_paths" in out
    # The generated tests pass as written, run by pytest from the output folder.
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], check=False, cwd=plugin_dir,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    # One test per kind, and the backend's second one for encode_prompt.
    assert f"{len(registry_names.BUILTINS) + 1} passed" in run.stdout
    for kind in registry_names.BUILTINS:
        name = f"scaffold_{kind}"
        attribute = name if kind in ("advantage", "transform", "uncertainty", "algorithm", "reward") else class_name(name)
        config_path = tmp_path / f"{kind}.toml"
        config_path.write_text(CONFIG_LINES[kind].format(dotted=f"{name}.{attribute}", name=name)
                               + '\n[plugins]\nsearch_paths = ["my_plugins"]\n')
        exercise_from_config(kind, config_path)


@pytest.mark.parametrize("kind", ["advantage", "transform"])
def test_a_scaffold_changed_by_the_user_still_meets_its_own_test(tmp_path, kind):
    # The scaffold test is a real check: break the contract and it fails.
    assert cli_main(["init-plugin", "--kind", kind, "--name", f"edited_{kind}", "--output-dir", str(tmp_path),
                     "--with-test"]) == 0
    module = tmp_path / f"edited_{kind}.py"
    text = module.read_text()
    broken = text.replace("return params.scale * (rewards - rewards.mean(axis=1, keepdims=True))",
                          "return rewards[:, :1]") if kind == "advantage" else \
        text.replace("return broadcast_advantages(ctx.episode_advantages_N, ctx.mask_N_T) * weights",
                     "return weights[:1]")
    assert broken != text
    module.write_text(textwrap.dedent(broken))
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], check=False, cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 1, run.stdout


BACKEND_RUN_CONFIG = """\
[backend]
backend = "scaffold_backend.ScaffoldBackend"
adapter_path = "{log_dir}/adapter"

[model]
lora_rank = 8

[inference]
engine = "scaffold_engine.ScaffoldEngine"

[training]
max_steps = 2
batch_size = 2
group_size = 4
max_tokens = 4

[data]
source = "arithmetic"

[logging]
log_dir = "logs"

[plugins]
search_paths = ["my_plugins"]
"""


def test_a_scaffolded_backend_and_engine_train_through_the_cli(tmp_path):
    # The backend publishes remote references that the engine scaffold loads; the run
    # encodes every prompt with the backend's encode_prompt.
    for kind in ("backend", "engine"):
        assert cli_main(["init-plugin", "--kind", kind, "--name", f"scaffold_{kind}",
                         "--output-dir", str(tmp_path / "my_plugins")]) == 0
    (tmp_path / "c.toml").write_text(BACKEND_RUN_CONFIG)
    run = subprocess.run([sys.executable, "-m", "retrain", "c.toml"], check=False, cwd=tmp_path, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr
    rows = [json.loads(line) for line in (tmp_path / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [row["step"] for row in rows] == [1, 2]


def test_a_backend_without_encode_prompt_is_refused_when_it_loads(tmp_path, capsys):
    assert cli_main(["init-plugin", "--kind", "backend", "--name", "no_encoder", "--output-dir", str(tmp_path)]) == 0
    capsys.readouterr()
    module = tmp_path / "no_encoder.py"
    text = module.read_text()
    without = text.replace("    def encode_prompt(", "    def encode_prompt_unused(")
    assert without != text
    module.write_text(without)
    plugins = PluginsConfig(search_paths=[str(tmp_path)])
    with pytest.raises(PluginSignatureError, match=r"no method encode_prompt\(\).*encode_prompt\(messages\) -> list\[int\]"):
        resolve("backend", "no_encoder.NoEncoder", plugins, tmp_path)



def test_a_component_added_by_its_registry_line_alone_is_listed_from_its_docstring(monkeypatch):
    from retrain import registry_names
    from retrain.commands.plugins import builtins_listing

    monkeypatch.setitem(registry_names.ENGINES, "second_pytorch", "retrain.engines.pytorch:PyTorchEngine")
    monkeypatch.setitem(registry_names.BUILTINS, "engine", registry_names.ENGINES)
    (entry,) = [entry for entry in builtins_listing()["engine"] if entry["name"] == "second_pytorch"]
    assert entry["available"] and entry["description"].startswith("Samples in this process")
