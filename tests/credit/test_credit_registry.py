import dataclasses
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Literal

import pytest

from retrain.advantages import grpo_advantages
from retrain.config.schema import Config, GTPOConfig, HICRAConfig, PluginsConfig, setting
from retrain.errors import ConfigError
from retrain.plugin_discovery import discover
from retrain.plugin_params import check_params
from retrain.registry import (
    PluginAttributeError,
    PluginDependencyError,
    PluginNotFoundError,
    PluginSignatureError,
    register,
    resolve,
)
from retrain.transforms import GTPOSEPATransform
from retrain.transforms.gtpo import gtpo


def write(directory: Path, name: str, source: str) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(source))
    return path


def plugins_at(*paths: object, strict: bool = True) -> PluginsConfig:
    return PluginsConfig(search_paths=[str(path) for path in paths], strict=strict)


def test_builtins_resolve_lazily_to_their_objects():
    resolved = resolve("advantage", "grpo", PluginsConfig())
    assert resolved.obj is grpo_advantages and resolved.origin == "built-in" and resolved.builtin
    assert resolve("transform", "gtpo_sepa", PluginsConfig()).obj is GTPOSEPATransform
    code = ("import sys\nfrom retrain.registry import resolve\nfrom retrain.config.schema import PluginsConfig\n"
            "for kind, name in [('advantage', 'maxrl'), ('transform', 'gtpo_hicra'), ('uncertainty', 'surprisal'),"
            " ('algorithm', 'maxrl_gtpo'), ('planning', 'regex')]:\n"
            "    resolve(kind, name, PluginsConfig())\n"
            "loaded = [m for m in sys.modules if m.startswith(('retrain.backends', 'retrain.engines', 'torch'))]\n"
            "assert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_unknown_plain_name_suggests_the_builtin():
    with pytest.raises(PluginNotFoundError, match="did you mean 'grpo'"):
        resolve("advantage", "grpoo", PluginsConfig())


def test_a_dotted_path_loads_from_a_search_directory_relative_to_the_config_folder(tmp_path):
    write(tmp_path / "plugins", "doubled.py", """
        def doubled(rewards_P_G, params):
            return 2 * (rewards_P_G - rewards_P_G.mean(axis=1, keepdims=True))
    """)
    resolved = resolve("advantage", "doubled.doubled", PluginsConfig(search_paths=["plugins"]), base_dir=tmp_path)
    assert resolved.origin == f"plugin doubled.doubled from {tmp_path / 'plugins' / 'doubled.py'}"
    assert resolved.spec is None


def test_relative_search_paths_fall_back_to_the_working_directory(tmp_path, monkeypatch):
    write(tmp_path / "mine", "cwd_plugin.py", "def weights(rewards_P_G, params):\n    return rewards_P_G\n")
    monkeypatch.chdir(tmp_path)
    resolved = resolve("advantage", "cwd_plugin.weights", PluginsConfig(search_paths=["mine"]),
                       base_dir=tmp_path / "elsewhere")
    assert "mine/cwd_plugin.py" in resolved.origin


def test_packages_and_submodules_load_from_a_search_directory(tmp_path):
    write(tmp_path, "credit_pkg/__init__.py", "")
    write(tmp_path, "credit_pkg/estimators.py", """
        from .helpers import center

        def centered(rewards_P_G, params):
            return center(rewards_P_G)
    """)
    write(tmp_path, "credit_pkg/helpers.py", "def center(r):\n    return r - r.mean(axis=1, keepdims=True)\n")
    resolved = resolve("advantage", "credit_pkg.estimators.centered", plugins_at(tmp_path))
    assert resolved.obj.__module__ == "credit_pkg.estimators"


def test_a_search_path_can_be_a_module_prefix(tmp_path, monkeypatch):
    write(tmp_path, "org_plugins/__init__.py", "")
    write(tmp_path, "org_plugins/adv.py", "def flat(rewards_P_G, params):\n    return 0 * rewards_P_G\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    resolved = resolve("advantage", "adv.flat", PluginsConfig(search_paths=["org_plugins"]), base_dir=tmp_path / "x")
    assert resolved.obj.__module__ == "org_plugins.adv"


def test_a_typo_in_the_module_name_is_module_not_found(tmp_path):
    write(tmp_path, "real_module.py", "def f(rewards_P_G, params):\n    return rewards_P_G\n")
    with pytest.raises(PluginNotFoundError, match=r"module 'reel_module' not found \(searched: .*" + tmp_path.name):
        resolve("advantage", "reel_module.f", plugins_at(tmp_path))


def test_a_missing_attribute_is_reported_with_a_suggestion(tmp_path):
    write(tmp_path, "has_attrs.py", "def rank_advantages(rewards_P_G, params):\n    return rewards_P_G\n")
    with pytest.raises(PluginAttributeError, match="has no attribute 'rank_advantage'.*did you mean 'rank_advantages'"):
        resolve("advantage", "has_attrs.rank_advantage", plugins_at(tmp_path))


@pytest.mark.parametrize(("kind", "source", "message"), [
    ("advantage", "def f(rewards_P_G):\n    return rewards_P_G\n", r"signature f\(rewards_P_G\).*expected: def f\(rewards_P_G"),
    ("transform", "class f:\n    def __init__(self, ctx, params):\n        pass\n", "is a class"),
    ("uncertainty", "f = 3\n", "not callable"),
    ("planning", "class f:\n    def __init__(self, config):\n        pass\n", r"no method detect\(\)"),
    ("planning", "class f:\n    def __init__(self, config):\n        pass\n    def detect(self, texts):\n        pass\n",
     "detect.*takes the wrong arguments"),
    ("engine", "class f:\n    def __init__(self):\n        pass\n", "signature"),
])
def test_wrong_shapes_are_signature_errors(tmp_path, kind, source, message):
    module = f"shape_{kind}_{abs(hash(source))}"
    write(tmp_path, f"{module}.py", source)
    with pytest.raises(PluginSignatureError, match=message):
        resolve(kind, f"{module}.f", plugins_at(tmp_path))


def test_a_plugin_registered_for_another_kind_is_refused(tmp_path):
    write(tmp_path, "other_kind.py", """
        from retrain.plugin_api import register

        @register("transform")
        def f(ctx, params):
            return None
    """)
    with pytest.raises(PluginSignatureError, match="registered as a transform plugin, so it cannot serve as the advantage"):
        resolve("advantage", "other_kind.f", plugins_at(tmp_path))


def test_the_plugins_own_import_error_is_a_dependency_error(tmp_path):
    write(tmp_path, "needs_dep.py", "import no_such_dependency_xyz\n\ndef f(rewards_P_G, params):\n    return rewards_P_G\n")
    with pytest.raises(PluginDependencyError, match="its own import of 'no_such_dependency_xyz' failed"):
        resolve("advantage", "needs_dep.f", plugins_at(tmp_path))
    assert "needs_dep" not in sys.modules


def test_a_syntax_error_in_the_plugin_names_the_line(tmp_path):
    path = write(tmp_path, "broken_syntax.py", "def f(rewards_P_G, params)\n    return 1\n")
    with pytest.raises(PluginDependencyError, match=f"SyntaxError at {path}:1"):
        resolve("advantage", "broken_syntax.f", plugins_at(tmp_path))


def test_the_same_module_name_in_another_search_directory_replaces_the_first(tmp_path):
    for index in (1, 2):
        write(tmp_path / f"dir{index}", "same_name.py", f"VALUE = {index}\n\ndef f(rewards_P_G, params):\n    return VALUE\n")
    assert resolve("advantage", "same_name.f", plugins_at(tmp_path / "dir1")).obj(None, None) == 1
    assert resolve("advantage", "same_name.f", plugins_at(tmp_path / "dir2")).obj(None, None) == 2
    assert resolve("advantage", "same_name.f", plugins_at(tmp_path / "dir2")).obj(None, None) == 2


def test_a_plugin_file_shadowing_an_imported_module_is_refused(tmp_path):
    write(tmp_path, "json.py", "def f(rewards_P_G, params):\n    return rewards_P_G\n")
    with pytest.raises(PluginDependencyError, match="same name as the already imported module 'json'"):
        resolve("advantage", "json.f", plugins_at(tmp_path))


# ---------------------------------------------------------------------------------------
# Parameters


@dataclasses.dataclass(frozen=True)
class ExampleParams:
    scale: float = setting(1.0, "Multiplier", gt=0.0)
    rounds: int = 2
    mode: Literal["fast", "exact"] = "fast"
    names: list[str] = dataclasses.field(default_factory=list)
    limit: float | None = None


@dataclasses.dataclass(frozen=True)
class RequiredParams:
    temperature: float


def declared(params_type: type) -> object:
    @register("advantage", params=params_type)
    def plugin(rewards_P_G, params):
        return rewards_P_G

    return types.SimpleNamespace(builtin=False, spec=plugin.__retrain_plugin__, name="mod.plugin", kind="advantage",
                                 obj=plugin)


def test_declared_params_are_built_with_ints_accepted_for_floats():
    params = check_params(declared(ExampleParams), {"scale": 2, "mode": "exact", "names": ["a"], "limit": 3},
                          "algorithm.advantage_params")
    assert params == ExampleParams(scale=2.0, rounds=2, mode="exact", names=["a"], limit=3.0)
    assert isinstance(params.scale, float)


def test_declared_params_report_every_problem_together():
    with pytest.raises(ConfigError) as caught:
        check_params(declared(ExampleParams),
                     {"scale": -1.0, "rounds": True, "mode": "slow", "names": [1], "scael": 1.0},
                     "algorithm.advantage_params")
    text = str(caught.value)
    assert "5 problems" in text
    assert "[algorithm.advantage_params].scale: -1.0 is out of range" in text and "> 0" in text
    assert "[algorithm.advantage_params].rounds: expected int, got bool" in text
    assert "[algorithm.advantage_params].mode: 'slow' is not a valid choice — choose one of 'fast', 'exact'" in text
    assert "[algorithm.advantage_params].names: expected list[str]" in text
    assert "has no parameter 'scael'" in text and "did you mean 'scale'" in text


def test_required_params_must_be_given():
    with pytest.raises(ConfigError, match="temperature: 'mod.plugin' requires this parameter"):
        check_params(declared(RequiredParams), {}, "algorithm.params")


def test_undeclared_params_pass_through_read_only():
    plugin = types.SimpleNamespace(builtin=False, spec=None, name="m.f", kind="advantage", obj=lambda r, p: r)
    params = check_params(plugin, {"anything": [1, 2]}, "algorithm.advantage_params")
    assert params["anything"] == [1, 2]
    with pytest.raises(TypeError):
        params["anything"] = 3  # type: ignore[index]


def test_builtins_read_their_own_section_and_take_no_params_table():
    with pytest.raises(ConfigError, match=r"\[algorithm.transform_params\].beta: the transform 'gtpo' reads its "
                                          r"parameters from \[gtpo\] — set them in \[gtpo\]"):
        check_params(resolve("transform", "gtpo", PluginsConfig()), {"beta": 0.2}, "algorithm.transform_params", Config())
    with pytest.raises(ConfigError, match="built-in advantage 'grpo' takes no parameters table"):
        check_params(resolve("advantage", "grpo", PluginsConfig()), {"scale": 2}, "algorithm.advantage_params")


def test_a_builtin_stage_is_built_like_a_plugin_from_its_declared_dataclass():
    # The built-in GTPO is registered with params=GTPOConfig, params_section="gtpo": its
    # parameters go through the same checks as a plugin's table.
    assert gtpo.__retrain_plugin__.params is GTPOConfig
    resolved = resolve("transform", "gtpo", PluginsConfig())
    config = dataclasses.replace(Config(), gtpo=GTPOConfig(beta=3))
    params = check_params(resolved, {}, "algorithm.transform_params", config)
    assert params == GTPOConfig(beta=3.0) and isinstance(params.beta, float)
    with pytest.raises(ConfigError, match=r"\[gtpo\].beta: 2000.0 is out of range — use a value <= 1000"):
        check_params(resolved, {}, "algorithm.transform_params", dataclasses.replace(Config(), gtpo=GTPOConfig(2000.0)))


def test_a_plugin_can_read_a_builtin_section_too(tmp_path):
    write(tmp_path, "reads_hicra.py", """
        from retrain.config.schema import HICRAConfig
        from retrain.plugin_api import register

        @register("transform", params=HICRAConfig, params_section="hicra", needs_planning=True)
        def doubled_hicra(ctx, params):
            return ctx.token_advantages_N_T * (1 + 2 * params.alpha * ctx.planning_N_T)
    """)
    resolved = resolve("transform", "reads_hicra.doubled_hicra", plugins_at(tmp_path))
    config = dataclasses.replace(Config(), hicra=HICRAConfig(alpha=0.25))
    assert check_params(resolved, {}, "algorithm.transform_params", config) == HICRAConfig(alpha=0.25)


def test_register_rejects_an_unknown_kind_and_a_non_dataclass():
    with pytest.raises(ValueError, match="unknown plugin kind"):
        register("advantages")
    with pytest.raises(TypeError, match="dataclass"):
        register("advantage", params=dict)
    with pytest.raises(TypeError, match="params_section='gtpo' needs params="):
        register("transform", params_section="gtpo")


# ---------------------------------------------------------------------------------------
# Discovery


def test_discover_lists_registered_plugins_and_import_errors(tmp_path):
    write(tmp_path, "listed_ok.py", """
        from dataclasses import dataclass
        from retrain.plugin_api import register, setting

        @dataclass(frozen=True)
        class P:
            beta: float = setting(0.5, "strength")

        @register("transform", params=P, description="a listed transform")
        def listed(ctx, params):
            return None
    """)
    write(tmp_path, "listed_broken.py", "import missing_thing_abc\n")
    write(tmp_path, "test_skipped.py", "raise RuntimeError('never imported')\n")
    found = {module.module: module for module in discover(plugins_at(tmp_path))}
    assert set(found) == {"listed_ok", "listed_broken"}
    assert found["listed_broken"].status == "error" and "missing_thing_abc" in found["listed_broken"].error
    (plugin,) = found["listed_ok"].plugins
    assert (plugin.name, plugin.kind, plugin.description) == ("listed_ok.listed", "transform", "a listed transform")
    assert plugin.params == [{"name": "beta", "type": "float", "default": 0.5, "help": "strength"}]
