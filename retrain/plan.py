"""Planning a run: resolve every component and check every combination, loading no
model and touching no server. ``retrain explain`` prints the plan; ``retrain.run``
builds from it."""

from __future__ import annotations

import dataclasses
import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

from retrain import registry_names
from retrain.config.loader import ResolvedConfig
from retrain.config.rules import not_in_this_version
from retrain.config.schema import Config
from retrain.errors import ConfigError, ConfigIssue, PluginError
from retrain.registry import resolve

logger = logging.getLogger(__name__)


@dataclass
class RunPlan:
    """Every component of a run, resolved (where each came from) but not yet built."""

    resolved: ResolvedConfig
    config: Config
    base_dir: Path
    components: dict[str, dict[str, str]]
    credit: object  # retrain.credit.CreditPipeline

    def describe(self) -> dict[str, object]:
        return {"components": self.components, "credit": self.credit.describe()}  # type: ignore[attr-defined]


def config_base_dir(resolved: ResolvedConfig) -> Path:
    """Relative plugin search paths are resolved from the config file's folder."""
    return resolved.path.resolve().parent if resolved.path else Path.cwd()


def plan_run(resolved: ResolvedConfig) -> RunPlan:
    """Resolve and check everything a run needs, loading no model and touching no server."""
    from retrain.credit import build_credit_pipeline

    config = resolved.config
    unavailable = not_in_this_version(config, resolved.sources)
    if unavailable:
        raise ConfigError(unavailable)
    base_dir = config_base_dir(resolved)
    components: dict[str, dict[str, str]] = {}
    for kind, name in (("backend", config.backend.backend), ("engine", config.inference.engine),
                       ("data", config.data.source), ("reward", config.reward.type)):
        components[kind] = {"name": name, "origin": locate(kind, name, config, base_dir)}
    if config.reward.type == "custom":
        components["reward"]["origin"] = locate_custom_reward(config, base_dir)
    credit = build_credit_pipeline(config, base_dir)
    credit.probe()
    if credit.needs_planning:
        plugin = resolve("planning", config.planning.detector, config.plugins, base_dir)
        components["planning"] = {"name": config.planning.detector, "origin": plugin.origin}
    if config.backend.backend not in registry_names.BACKENDS:
        # A plugin backend is already imported: check what it declares before any model loads.
        backend_class = resolve("backend", config.backend.backend, config.plugins, base_dir).obj
        check_capabilities(backend_class, config, credit, resuming=bool(config.resume.from_))
    problems = preflight_issues(config, needs_planning=credit.needs_planning)
    if problems:
        raise ConfigError([dataclasses.replace(issue, where=issue.where or resolved.sources.get((issue.section, issue.key), ""))
                           for issue in problems])
    return RunPlan(resolved, config, base_dir, components, credit)


# (module, extra, section, key, feature) of the optional packages a setting needs.
def _needed_packages(config: Config, needs_planning: bool) -> list[tuple[str, str, str, str, str]]:
    needed = []
    if config.reward.type == "math":
        needed.append(("math_verify", "math", "reward", "type", "type = \"math\""))
    if config.data.source == "math" and not config.data.path:
        needed.append(("datasets", "local", "data", "source", "source = \"math\" from the hub"))
    if config.logging.wandb_project:
        needed.append(("wandb", "wandb", "logging", "wandb_project", "wandb logging"))
    if needs_planning and config.planning.detector == "semantic":
        needed.append(("sentence_transformers", "semantic", "planning", "detector", "detector = \"semantic\""))
    return needed


def preflight_issues(config: Config, needs_planning: bool) -> list[ConfigIssue]:
    """Cheap checks of what a run will read — files, optional packages, planning grams —
    so ``retrain explain`` finds them instead of a run after its model has loaded."""
    from retrain.planning import parse_strategic_grams

    issues = []
    for module, extra, section, key, feature in _needed_packages(config, needs_planning):
        if importlib.util.find_spec(module) is None:
            issues.append(ConfigIssue("", section, key, f"{feature} needs the Python package '{module}', which is "
                                      "not installed", f"install it with: pip install 'retrain[{extra}]'"))
    data = config.data
    if data.source == "jsonl" and data.path and not Path(data.path).is_file():
        issues.append(ConfigIssue("", "data", "path", f"{data.path} is not a file",
                                  "fix the path (relative paths start at the current directory)"))
    if needs_planning and config.planning.detector == "regex":
        try:
            parse_strategic_grams(config.logging.strategic_grams)
        except ConfigError as exc:
            issues.extend(exc.issues)
    return issues


def locate(kind: str, name: str, config: Config, base_dir: Path) -> str:
    """Where a component comes from, checked without importing heavy built-in modules
    (a built-in backend imports torch); a dotted-path plugin is imported and checked."""
    if name in registry_names.BUILTINS[kind]:
        return "built-in"  # not_in_this_version has checked that its module exists
    return resolve(kind, name, config.plugins, base_dir).origin


def locate_custom_reward(config: Config, base_dir: Path) -> str:
    """Import the ``[reward] custom_module`` function and check its signature, so a
    missing module or a wrong signature shows up in ``retrain explain``."""
    from retrain.rewards.custom import check_reward_function

    label = f"{config.reward.custom_module}.{config.reward.custom_function}"
    plugin = resolve("reward", label, config.plugins, base_dir)
    check_reward_function(plugin.obj, label)
    return plugin.origin


def check_capabilities(backend: object, config: Config, credit: object, resuming: bool) -> None:
    """What the run asks of the backend against what it declares (``capabilities``)."""
    capabilities = backend.capabilities  # type: ignore[attr-defined]
    name = config.backend.backend
    if config.inference.engine == "pytorch" and not capabilities.in_process_engine:
        raise PluginError(f"backend '{name}' has no in-process engine, which [inference] engine = \"pytorch\" "
                          "asks for — choose an engine that runs on its own (an engine plugin or server)")
    if credit.needs_entropies and not capabilities.supports_entropies:  # type: ignore[attr-defined]
        raise PluginError(f"the credit pipeline needs per-token entropies, which backend '{name}' cannot supply — "
                          "choose another uncertainty_kind (surprisal, predictive_variance)")
    if resuming and not capabilities.exact_resume:
        logger.warning("backend '%s' does not restore every piece of its state: the resumed run will not "
                       "repeat the uninterrupted one exactly", name)
