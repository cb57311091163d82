"""One stage of the credit pipeline: a resolved built-in or plugin with its parameters.

Built-ins and plugins go through the same code: ``retrain.registry.resolve`` finds the
object, and ``retrain.registry.check_params`` builds its parameters from the dataclass
it registered (``[gtpo]`` for the built-in GTPO, ``[algorithm.transform_params]`` for a
transform plugin).
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from retrain.algorithms import Recipe
from retrain.config.schema import Config
from retrain.errors import PluginError, RetrainError
from retrain.plugin_params import check_params
from retrain.registry import (
    BUILTIN_ORIGIN,
    PluginOutputError,
    PluginSpec,
    ResolvedPlugin,
    plugin_spec,
    resolve,
)
from retrain.transforms.compositions import Composition

# The table each kind's plugins read their parameters from ([algorithm.<table>]).
PARAMS_TABLES = {"advantage": "advantage_params", "transform": "transform_params", "algorithm": "params"}


@dataclass(frozen=True)
class Stage:
    """A resolved stage and the parameters it is called with."""

    resolved: ResolvedPlugin
    params: object = None

    @property
    def spec(self) -> PluginSpec | None:
        return self.resolved.spec if self.resolved.spec is not None else plugin_spec(self.resolved.obj)

    @property
    def label(self) -> str:
        return f"{self.resolved.kind} '{self.resolved.name}' ({self.resolved.origin})"

    def needs(self, what: str) -> bool:
        """``needs_planning`` / ``needs_sepa`` / ``needs_entropies`` as declared. A stage
        that registered nothing gets the planning mask and the SEPA lambda, to be safe."""
        spec = self.spec
        if spec is None:
            return what != "needs_entropies" and not self.resolved.builtin
        return bool(getattr(spec, what))

    def __call__(self, *args: object) -> object:
        """Run the stage (``params`` last, when it takes any). An exception inside a
        user's plugin becomes a ``PluginError`` naming it (``RETRAIN_DEBUG=1`` shows its
        traceback); a built-in's is a bug in retrain and keeps its traceback."""
        call_args = args if self.resolved.kind == "uncertainty" else (*args, self.params)
        if self.resolved.builtin:
            return self.resolved.obj(*call_args)
        try:
            return self.resolved.obj(*call_args)
        except RetrainError:
            raise
        except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() is still a plugin error
            raise PluginError(f"{self.label} raised {type(exc).__name__}: {exc} — fix the plugin "
                              "(RETRAIN_DEBUG=1 shows where)") from exc

    def describe(self) -> dict[str, object]:
        return {"name": self.resolved.name, "origin": self.resolved.origin,
                "description": description_of(self.resolved), "params": params_view(self.params)}


def build_stage(kind: str, name: str, config: Config, base_dir: Path | None) -> Stage:
    """Resolve a configured stage and build its parameters (``check_params``)."""
    resolved = resolve(kind, name, config.plugins, base_dir)
    return Stage(resolved, _stage_params(resolved, config))


def _stage_params(resolved: ResolvedPlugin, config: Config) -> object:
    table = PARAMS_TABLES.get(resolved.kind)
    if table is None:
        return None
    return check_params(resolved, getattr(config.algorithm, table), f"algorithm.{table}", config)


def params_view(params: object) -> object:
    """A stage's parameters as plain data for display (``retrain explain``, its JSON),
    secrets blanked by the snapshot's rule."""
    from retrain.config.snapshot import redact_value

    if dataclasses.is_dataclass(params) and not isinstance(params, type):
        return redact_value(dataclasses.asdict(params))
    if isinstance(params, Mapping):
        return redact_value(dict(params))
    return params


def plugin_metrics(metrics: object, who: str) -> dict[str, float]:
    if not isinstance(metrics, Mapping):
        raise PluginOutputError(f"{who} returned metrics of type {type(metrics).__name__}; expected a dict of numbers")
    return {str(key): _metric_value(key, value, who) for key, value in metrics.items()}


def _metric_value(key: object, value: object, who: str) -> float:
    """A metric as a float: one real number or a flag (a bool counts as 0/1); a string, a
    complex number or an array is an error naming the metric."""
    array = None if isinstance(value, (str, bytes)) else np.asarray(value)
    if array is None or array.dtype.kind not in "biuf" or array.shape != ():
        raise PluginOutputError(f"{who} returned the metric {key!r} = {type(value).__name__} {value!r:.60}; a metric "
                                "is one real number (a bool counts as 0/1) — fix the plugin")
    return float(array)


def transform_stages(transform: Stage, config: Config) -> list[Stage]:
    """The stages a transform runs, each with its own parameters: a composition's
    stages, or the transform itself."""
    composition = transform.resolved.obj
    if not _is_composition(composition):
        return [transform]
    stages = []
    for function in composition.stages:
        resolved = ResolvedPlugin("transform", function.__name__, function, BUILTIN_ORIGIN, plugin_spec(function))
        stages.append(Stage(resolved, check_params(resolved, {}, "algorithm.transform_params", config)))
    return stages


def _is_composition(obj: object) -> bool:
    return isinstance(obj, type) and issubclass(obj, Composition)


def description_of(resolved: ResolvedPlugin) -> str:
    """A stage's one-line description: what it registered (by default its docstring's
    first line), else its docstring's first line; a recipe names its two parts."""
    if resolved.obj is Recipe:
        return Recipe(resolved.name).description
    spec = resolved.spec if resolved.spec is not None else plugin_spec(resolved.obj)
    if spec is not None and spec.description:
        return spec.description
    text = (inspect.getdoc(resolved.obj) or "").strip()
    return text.splitlines()[0] if text else ""


def settings_read(resolved: ResolvedPlugin) -> str:
    """The config sections a built-in stage reads its parameters from, e.g. ``[gtpo] beta``."""
    functions = resolved.obj.stages if _is_composition(resolved.obj) else (resolved.obj,)
    read = []
    for function in functions:
        spec = plugin_spec(function)
        if spec is None or not spec.params_section or spec.params is None:
            continue
        names = [field.name for field in dataclasses.fields(spec.params)]
        # A long section is named whole: listing seven SEPA settings says less than "[sepa]".
        read.append(f"[{spec.params_section}] {', '.join(names)}" if len(names) <= 2 else f"[{spec.params_section}]")
    return ", ".join(read)
