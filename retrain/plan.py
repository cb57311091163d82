"""Planning a run: resolve every component once and check every combination, loading no
model and touching no server. ``retrain explain`` prints the plan; ``retrain.run`` builds
the run from it by calling the resolved factories with the config.

What is checked, all problems reported together:

- every configured name resolves (built-ins and dotted-path plugins) and has the shape
  of its kind;
- each backend and engine declares its ``capabilities`` for this config, and reports
  its own problems with the config (``config_issues``, optional);
- publication: the engine loads a kind of reference the backend publishes (the first
  such kind in the engine's order of preference is used);
- what the rest of the config asks of them: full fine-tuning (``lora_rank = 0``),
  per-token entropies (``shannon_entropy``), component settings such as
  ``[inference] url`` read by neither the backend nor the engine;
- preflight: data files, optional packages, planning grams.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from retrain.config.loader import ResolvedConfig, replace_setting
from retrain.config.schema import ALL_FIELDS, Config
from retrain.credit import CreditPipeline, build_credit_pipeline
from retrain.environments.single_turn import SingleTurn
from retrain.errors import ConfigError, ConfigIssue, PluginError
from retrain.registry import ResolvedPlugin, resolve, search_locations
from retrain.rewards.custom import CustomReward
from retrain.run_dirs import output_dir_issues
from retrain.sinks.wandb_run import wandb_issues
from retrain.types import (
    Backend,
    BackendCapabilities,
    Engine,
    EngineCapabilities,
    Environment,
    PlanningDetector,
    PolicyKind,
    Reward,
)

logger = logging.getLogger(__name__)

T = TypeVar("T")


@dataclass(frozen=True)
class Origin:
    """Where a component comes from, for ``retrain explain``."""

    name: str
    origin: str


@dataclass
class RunPlan:
    """Every component of a run, resolved and checked, not yet built."""

    resolved: ResolvedConfig
    config: Config
    backend: type[Backend]
    engine: type[Engine]
    environment: Callable[[Config], Environment]
    # None when no stage of the credit pipeline reads planning tokens.
    planning: Callable[[Config], PlanningDetector] | None
    credit: CreditPipeline
    backend_capabilities: BackendCapabilities
    engine_capabilities: EngineCapabilities
    publication: PolicyKind
    origins: dict[str, Origin]

    @property
    def exact_resume(self) -> bool:
        """Whether a resumed run repeats the uninterrupted one bit for bit."""
        return (self.backend_capabilities.exact_resume and self.engine_capabilities.exact_resume
                and self.config.training.max_staleness == 0)

    def describe(self) -> dict[str, object]:
        components = {kind: {"name": origin.name, "origin": origin.origin} for kind, origin in self.origins.items()}
        return {"components": components, "publication": self.publication, "credit": self.credit.describe()}


def config_base_dir(resolved: ResolvedConfig) -> Path:
    """Relative plugin search paths are resolved from the config file's folder."""
    return resolved.path.resolve().parent if resolved.path else Path.cwd()


def with_absolute_search_paths(resolved: ResolvedConfig) -> Config:
    """``[plugins] search_paths`` made absolute (relative ones start at the config file's
    folder), so every later lookup, and the snapshot a resumed run loads from its
    log_dir, finds the same plugins."""
    locations = search_locations(resolved.config.plugins, config_base_dir(resolved))
    # An entry naming a directory becomes its absolute path; a module prefix stays as written.
    paths = [str(location.directory) if location.directory is not None else location.entry for location in locations]
    if paths == list(resolved.config.plugins.search_paths):
        return resolved.config
    return replace_setting(resolved.config, "plugins.search_paths", paths)


# The setting that names each component kind.
COMPONENT_SETTINGS = {"backend": ("backend", "backend"), "engine": ("inference", "engine"),
                      "environment": ("environment", "provider"), "data": ("data", "source"),
                      "reward": ("reward", "type"), "planning": ("planning", "detector")}


class _Planner:
    """Collects every problem while resolving and checking, then raises them together."""

    def __init__(self, resolved: ResolvedConfig) -> None:
        self.resolved = resolved
        self.config = with_absolute_search_paths(resolved)
        self.base_dir = config_base_dir(resolved)
        self.issues: list[ConfigIssue] = []
        self.origins: dict[str, Origin] = {}
        # The first exception raised inside a plugin, chained to the error for RETRAIN_DEBUG.
        self.cause: BaseException | None = None

    def issue(self, section: str, key: str, problem: str, fix: str = "") -> None:
        self.issues.append(ConfigIssue(self.resolved.sources.get((section, key), ""), section, key, problem, fix))

    def resolve(self, kind: str, name: str) -> ResolvedPlugin | None:
        section, key = COMPONENT_SETTINGS[kind]
        try:
            plugin = resolve(kind, name, self.config.plugins, self.base_dir)
        except PluginError as exc:
            self.cause = self.cause or exc
            self.issue(section, key, str(exc))
            return None
        self.origins[kind] = Origin(name, plugin.origin)
        return plugin

    def declared(self, kind: str, plugin: ResolvedPlugin, expected: type) -> object | None:
        """The plugin's ``capabilities(config)`` (None when it has problems with the
        config, which are recorded, or cannot say)."""
        section, key = COMPONENT_SETTINGS[kind]
        if not self.own_issues(kind, plugin):
            return None
        # Capabilities are declared for a config the component accepts.
        raised = len(self.issues)
        capabilities = self.ask(kind, plugin, "declaring its capabilities", lambda: plugin.obj.capabilities(self.config))
        if len(self.issues) > raised:
            return None
        if not isinstance(capabilities, expected):
            self.issue(section, key, f"{kind} '{plugin.name}' ({plugin.origin}): capabilities(config) returned "
                       f"{type(capabilities).__name__}, not a {expected.__name__}",
                       f"return retrain.plugin_api.{expected.__name__}(...)")
            return None
        return capabilities

    def own_issues(self, kind: str, plugin: ResolvedPlugin) -> bool:
        """Record what the component reports about the config (``config_issues``, optional);
        False when that includes an error."""
        if not hasattr(plugin.obj, "config_issues"):
            return True
        raised = len(self.issues)
        issues = self.ask(kind, plugin, "checking the config", lambda: plugin.obj.config_issues(self.config))
        if len(self.issues) > raised:
            return False
        if not isinstance(issues, list) or not all(isinstance(problem, ConfigIssue) for problem in issues):
            section, key = COMPONENT_SETTINGS[kind]
            self.issue(section, key, f"{kind} '{plugin.name}' ({plugin.origin}): config_issues(config) returned "
                       f"{_shape(issues)}, not a list of ConfigIssue",
                       "return a list of retrain.plugin_api.ConfigIssue (an empty list when the config is fine)")
            return False
        for problem in issues:
            where = self.resolved.sources.get((problem.section, problem.key), "")
            located = dataclasses.replace(problem, where=problem.where or where)
            if located.warning:
                self.resolved.warnings.append(located)
            elif located not in self.issues:
                self.issues.append(located)
        return not any(not problem.warning for problem in issues)

    def ask(self, kind: str, plugin: ResolvedPlugin, doing: str, call: Callable[[], T]) -> T | None:
        """``call()``; an exception inside a plugin is recorded as a problem naming it (a
        built-in's is a bug in retrain and keeps its traceback)."""
        try:
            return call()
        except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() is still a plugin error
            if plugin.builtin:
                raise
            section, key = COMPONENT_SETTINGS[kind]
            self.cause = self.cause or exc
            self.issue(section, key, f"{kind} '{plugin.name}' ({plugin.origin}) raised {type(exc).__name__} while "
                       f"{doing}: {exc}", "fix the plugin (RETRAIN_DEBUG=1 shows where)")
            return None

    def credit(self) -> CreditPipeline | None:
        """The credit pipeline, probed with a synthetic batch; its problems recorded."""
        try:
            credit = build_credit_pipeline(self.config, self.base_dir)
            credit.probe()
        except ConfigError as exc:
            self.issues.extend(exc.issues)
            return None
        except PluginError as exc:
            self.cause = self.cause or exc
            self.issues.append(ConfigIssue("", "algorithm", "", str(exc)))
            return None
        return credit


def plan_run(resolved: ResolvedConfig) -> RunPlan:
    """Resolve and check everything a run needs, loading no model and touching no server."""
    planner = _Planner(resolved)
    config = planner.config
    backend = planner.resolve("backend", config.backend.backend)
    engine = planner.resolve("engine", config.inference.engine)
    environment = plan_environment(planner)
    credit = planner.credit()
    needs_planning = credit is not None and credit.needs_planning
    planning = planner.resolve("planning", config.planning.detector) if needs_planning else None
    if planning is not None:
        planner.own_issues("planning", planning)
    backend_caps = planner.declared("backend", backend, BackendCapabilities) if backend else None
    engine_caps = planner.declared("engine", engine, EngineCapabilities) if engine else None
    publication = None
    if isinstance(backend_caps, BackendCapabilities) and isinstance(engine_caps, EngineCapabilities):
        assert backend is not None and engine is not None
        # With a broken credit setting (reported already) the pairing is still checked, so
        # that every problem comes in this one report.
        publication = check_pairing(planner, backend, backend_caps, engine, engine_caps, credit)
    planner.issues.extend(preflight_issues(config, needs_planning, resolved.sources))
    if planner.issues or publication is None or environment is None or credit is None:
        raise ConfigError(planner.issues) from planner.cause
    assert isinstance(backend_caps, BackendCapabilities) and isinstance(engine_caps, EngineCapabilities)
    assert backend is not None and engine is not None
    return RunPlan(
        resolved=resolved, config=config, backend=backend.obj, engine=engine.obj, environment=environment,
        planning=planning.obj if planning else None, credit=credit,
        backend_capabilities=backend_caps, engine_capabilities=engine_caps, publication=publication,
        origins=planner.origins,
    )


def plan_environment(planner: _Planner) -> Callable[[Config], Environment] | None:
    """``[environment] provider``, or the single-turn environment of ``[data]`` and ``[reward]``."""
    config = planner.config
    if config.environment.provider:
        environment = planner.resolve("environment", config.environment.provider)
        if environment is None:
            return None
        planner.own_issues("environment", environment)
        factory: Callable[[Config], Environment] = environment.obj
        return factory
    data = planner.resolve("data", config.data.source)
    reward = planner.resolve("reward", config.reward.plugin_name)
    if data is None or reward is None:
        return None
    # Both report what they can about the config (a reward's missing API key, say) now,
    # not after the model has loaded.
    if not (planner.own_issues("data", data) & planner.own_issues("reward", reward)):
        return None
    return functools.partial(SingleTurn, data=data.obj, reward=reward_factory(reward))


def reward_factory(plugin: ResolvedPlugin) -> Callable[[Config], Reward]:
    """A built-in reward is a class built with the config; ``type = "custom"`` resolves to
    the user's per-completion function, which ``CustomReward`` calls."""
    if plugin.builtin:
        factory: Callable[[Config], Reward] = plugin.obj
        return factory
    return functools.partial(CustomReward, function=plugin.obj, label=plugin.name)


def check_pairing(planner: _Planner, backend: ResolvedPlugin, backend_caps: BackendCapabilities,
                  engine: ResolvedPlugin, engine_caps: EngineCapabilities,
                  credit: CreditPipeline | None) -> PolicyKind | None:
    """What the backend, the engine and the rest of the config ask of each other; the
    publication kind they share."""
    config = planner.config
    neither = f"neither backend '{backend.name}' nor engine '{engine.name}'"
    shared = [kind for kind in engine_caps.loads if kind in backend_caps.publishes]
    if not shared:
        planner.issue("inference", "engine",
                      f"engine '{engine.name}' loads {_kinds(engine_caps.loads)} but backend '{backend.name}' "
                      f"publishes {_kinds(backend_caps.publishes)}, so the engine could never receive new weights",
                      "choose an engine that loads what the backend publishes (`retrain plugins` lists them)")
    if config.model.lora_rank == 0 and not backend_caps.full_finetuning:
        planner.issue("model", "lora_rank", f"0 (full fine-tuning) is not supported by backend '{backend.name}'",
                      "set lora_rank > 0, or use a backend that trains every weight (backend = \"local\")")
    if credit is not None and credit.token_level and not backend_caps.preserves_token_advantages:
        planner.issue("algorithm", "transform_mode",
                      f"the credit pipeline gives each token its own advantage, but backend '{backend.name}' trains "
                      "on one advantage per sequence, which would silently undo it",
                      "use transform_mode = \"none\" (and surprisal_mask_rho = 0), or a backend that keeps per-token "
                      "advantages (its options may say how)")
    if credit is not None and credit.needs_entropies and not engine_caps.entropies:
        planner.issue("algorithm", "uncertainty_kind",
                      f"the credit pipeline needs per-token entropies of the full next-token distribution, which "
                      f"engine '{engine.name}' cannot return",
                      "use uncertainty_kind = \"surprisal\" or \"predictive_variance\", or an engine that returns "
                      "entropies (the in-process engine = \"pytorch\" with backend = \"local\")")
    reads = set(backend_caps.reads) | set(engine_caps.reads)
    defaults = Config()
    for spec in ALL_FIELDS:
        if spec.component_setting and spec.dotted not in reads and \
                getattr(getattr(config, spec.section), spec.name) != getattr(getattr(defaults, spec.section), spec.name):
            planner.issue(spec.section, spec.toml_key, f"is read by {neither}",
                          f"remove it, or choose a backend or engine that uses it ({spec.help})")
    return shared[0] if shared else None


def _shape(value: object) -> str:
    """What a plugin returned, for an error message: the type, and the item types of a list."""
    if isinstance(value, list):
        return "a list of " + (", ".join(sorted({type(item).__name__ for item in value})) or "nothing")
    return type(value).__name__


def _kinds(kinds: tuple[str, ...]) -> str:
    return " or ".join(kinds) if kinds else "nothing"


# (module, extra, section, key, feature) of the optional packages a setting needs.
def _needed_packages(config: Config, needs_planning: bool) -> list[tuple[str, str, str, str, str]]:
    needed = []
    # An environment provider lists and scores its own episodes: [data] and [reward] are not built.
    single_turn = not config.environment.provider
    if single_turn and config.reward.type == "math":
        needed.append(("math_verify", "math", "reward", "type", "type = \"math\""))
    if single_turn and config.data.source == "math" and not config.data.path:
        needed.append(("datasets", "local", "data", "source", "source = \"math\" from the hub"))
    if needs_planning and config.planning.detector == "semantic":
        needed.append(("sentence_transformers", "semantic", "planning", "detector", "detector = \"semantic\""))
    return needed


def preflight_issues(config: Config, needs_planning: bool,
                     sources: dict[tuple[str, str], str] | None = None) -> list[ConfigIssue]:
    """Cheap checks of what a run will read — files, optional packages, planning grams,
    wandb's login — so ``retrain explain`` finds them instead of a run after its model
    has loaded."""
    from retrain.planning import parse_strategic_grams

    issues = []
    for module, extra, section, key, feature in _needed_packages(config, needs_planning):
        if importlib.util.find_spec(module) is None:
            issues.append(ConfigIssue("", section, key, f"{feature} needs the Python package '{module}', which is "
                                      "not installed", f"install it with: pip install 'retrain[{extra}]'"))
    issues.extend(output_dir_issues(config))
    issues.extend(wandb_issues(config))
    if needs_planning and config.planning.detector == "regex":
        try:
            parse_strategic_grams(config.logging.strategic_grams)
        except ConfigError as exc:
            issues.extend(exc.issues)
    located = sources or {}
    return [dataclasses.replace(issue, where=issue.where or located.get((issue.section, issue.key), ""))
            for issue in issues]
