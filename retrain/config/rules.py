"""Cross-field rules: combinations of individually valid settings that cannot work.

Each rule returns the issues it finds; ``check`` runs them all, and ``not_in_this_version``
runs those refusing features this version cannot run. Rules only look at the config (no
model, no network), so the loader runs them with its own checks and ``retrain explain``
reports everything a run would reject at startup in one report.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from retrain import registry_names
from retrain.config.schema import SECTION_FIELDS, Config
from retrain.errors import ConfigIssue


Sources = dict[tuple[str, str], str]
Rule = Callable[[Config, Sources], list[ConfigIssue]]
# (section, key) of settings whose given value was rejected.
Invalid = frozenset[tuple[str, str]]


def _where(sources: Sources, section: str, key: str) -> str:
    return sources.get((section, key), "")


def _issue(sources: Sources, section: str, key: str, problem: str, fix: str) -> ConfigIssue:
    return ConfigIssue(_where(sources, section, key), section, key, problem, fix)


def _environment(config: Config, sources: Sources) -> list[ConfigIssue]:
    """The [environment] settings other than provider are read by the environment it names."""
    env = config.environment
    if env.provider:
        return []
    default = type(env)()
    unused = [key for key in ("id", "args", "max_turns", "auto_install") if getattr(env, key) != getattr(default, key)]
    if unused:
        return [_issue(sources, "environment", unused[0], "is only used when an environment provider is set",
                       "set provider (a built-in or a dotted path to an environment plugin) or remove it")]
    return []


def _backpressure(config: Config, sources: Sources) -> list[ConfigIssue]:
    bp = config.backpressure
    if bp.min_batch_size > bp.max_batch_size:
        return [_issue(sources, "backpressure", "min_batch_size",
                       f"min_batch_size ({bp.min_batch_size}) is larger than max_batch_size ({bp.max_batch_size})",
                       "make min_batch_size <= max_batch_size")]
    return []


def _reward(config: Config, sources: Sources) -> list[ConfigIssue]:
    if config.environment.provider:
        return []  # the environment scores its own episodes; [reward] is its to read, or not
    reward = config.reward
    if reward.type == "custom" and not reward.custom_module:
        return [_issue(sources, "reward", "custom_module", "type = \"custom\" needs the module holding the function",
                       "set custom_module, e.g. \"my_rewards\" (with custom_function = \"score\")")]
    if reward.type != "custom" and reward.custom_module:
        return [_issue(sources, "reward", "custom_module", f"is only used with type = \"custom\" (type is \"{reward.type}\")",
                       "set type = \"custom\" or remove custom_module")]
    if reward.type != "judge" and reward.judge_model:
        return [_issue(sources, "reward", "judge_model", f"is only used with type = \"judge\" (type is \"{reward.type}\")",
                       "set type = \"judge\" or remove judge_model")]
    return []


def _data(config: Config, sources: Sources) -> list[ConfigIssue]:
    if config.environment.provider:
        return []  # the environment lists its own prompts; [data] is its to read, or not
    data = config.data
    if data.source == "jsonl" and not data.path:
        return [_issue(sources, "data", "path", "source = \"jsonl\" needs the file to read",
                       "set path, e.g. \"data/train.jsonl\"")]
    if data.source == "jsonl" and data.split != "train":
        return [_issue(sources, "data", "split", f"a JSONL file has no splits (split = \"{data.split}\")",
                       "point path at the file holding that split and leave split = \"train\"")]
    if data.source == "arithmetic" and data.split != "train":
        return [_issue(sources, "data", "split", f"source = \"arithmetic\" generates one problem set and has no \"{data.split}\" split",
                       "remove split, or use source = \"math\" or \"jsonl\" for held-out splits")]
    if data.path and data.source == "arithmetic":
        return [_issue(sources, "data", "path", f"source = \"{data.source}\" does not read a file",
                       "remove path, or set source = \"jsonl\"")]
    return []


def _group_size(config: Config, sources: Sources) -> list[ConfigIssue]:
    algorithm = config.algorithm
    advantage = registry_names.ALGORITHM_RECIPES.get(algorithm.algorithm_mode, (algorithm.advantage_mode, ""))[0]
    if config.training.group_size < 2 and advantage in registry_names.ADVANTAGES:
        return [_issue(sources, "training", "group_size",
                       f"{advantage} compares the completions of a prompt with each other, so one per prompt gives "
                       "every completion a zero advantage and nothing is ever trained",
                       "sample at least 2 per prompt (8 to 16 is typical)")]
    return []


def _paths(config: Config, sources: Sources) -> list[ConfigIssue]:
    issues = []
    for section, key in (("logging", "log_dir"), ("backend", "adapter_path")):
        if not getattr(getattr(config, section), key).strip():
            issues.append(_issue(sources, section, key, "is empty, which would write the run's files into the "
                                 "working directory", "name a folder, e.g. \"logs/my-run\" (adapter_path: "
                                 "\"{log_dir}/adapter\")"))
    return issues


def _clipping(config: Config, sources: Sources) -> list[ConfigIssue]:
    training = config.training
    if training.clip_eps_high > 0 and training.clip_eps == 0:
        return [_issue(sources, "training", "clip_eps_high", "upper clipping needs clip_eps > 0 (clipping is off)",
                       "set clip_eps, e.g. 0.2, or remove clip_eps_high")]
    return []


def _algorithm(config: Config, sources: Sources) -> list[ConfigIssue]:
    algorithm = config.algorithm
    issues = []
    if algorithm.algorithm_mode:
        default = type(algorithm)()
        for key in ("advantage_mode", "transform_mode", "advantage_params", "transform_params"):
            if getattr(algorithm, key) != getattr(default, key):
                issues.append(_issue(sources, "algorithm", key,
                                     f"is not used because algorithm_mode = \"{algorithm.algorithm_mode}\" selects the whole pipeline",
                                     f"remove {key}, or remove algorithm_mode to use the composable path"))
    elif algorithm.params:
        issues.append(_issue(sources, "algorithm", "params", "is only passed to an algorithm_mode plugin, and none is set",
                             "set algorithm_mode or remove [algorithm.params]"))
    return issues


def _squeeze(config: Config, sources: Sources) -> list[ConfigIssue]:
    if config.squeeze.compress_to and not config.squeeze.output_path:
        return [_issue(sources, "squeeze", "compress_to", "a compression rank is set but there is nowhere to write the result",
                       "set output_path")]
    return []


def _campaign(config: Config, sources: Sources) -> list[ConfigIssue]:
    names: dict[str, int] = {}
    issues = []
    for index, condition in enumerate(config.campaign.conditions):
        name = condition.name or f"{condition.advantage_mode or config.algorithm.advantage_mode}+" \
                                  f"{condition.transform_mode or config.algorithm.transform_mode}"
        if name in names:
            issues.append(ConfigIssue(_where(sources, "campaign", "conditions"), f"campaign.conditions[{index}]", "name",
                                      f"duplicate condition name '{name}' (also condition {names[name]})",
                                      "give each condition a distinct name"))
        names[name] = index
    if len(set(config.campaign.seeds)) != len(config.campaign.seeds):
        issues.append(_issue(sources, "campaign", "seeds", "a seed is listed twice", "list each seed once"))
    return issues


RULES: tuple[Rule, ...] = (
    _environment,
    _backpressure,
    _reward,
    _data,
    _group_size,
    _paths,
    _clipping,
    _algorithm,
    _squeeze,
    _campaign,
)


def _unshipped_component(kind: str, section: str, key: str, otherwise: str = "") -> Rule:
    """A rule refusing a built-in ``kind`` whose module this version does not ship."""
    builtins = registry_names.BUILTINS[kind]

    def rule(config: Config, sources: Sources) -> list[ConfigIssue]:
        name = getattr(getattr(config, section), key)
        if name not in builtins or registry_names.shipped(kind, name):
            return []
        available = [other for other in builtins if registry_names.shipped(kind, other)]
        shipped = f"one that is ({', '.join(available)}) or " if available else ""
        return [_issue(sources, section, key, f"the {kind} '{name}' is not part of this version of retrain",
                       f"choose {shipped}a dotted-path plugin{otherwise}")]

    return rule


UNAVAILABLE: tuple[Rule, ...] = (
    _unshipped_component("backend", "backend", "backend"),
    _unshipped_component("engine", "inference", "engine"),
    _unshipped_component("environment", "environment", "provider", ", or remove provider to take prompts from [data]"),
)


def not_in_this_version(config: Config, sources: Sources, invalid: Invalid = frozenset()) -> list[ConfigIssue]:
    """Valid settings asking for a feature this version of retrain cannot run yet: a run
    must refuse them rather than train while ignoring them. ``invalid`` as for ``check``."""
    return _run(UNAVAILABLE, config, sources, invalid)


def check(config: Config, sources: Sources, invalid: Invalid = frozenset()) -> list[ConfigIssue]:
    """Every cross-field problem of ``config``; ``sources`` says which keys were set explicitly.

    ``invalid`` holds the (section, key) of settings whose given value was rejected, so
    ``config`` has their defaults instead: a rule that read one of them says nothing, since
    its verdict was about a value the user did not write."""
    return _run(RULES, config, sources, invalid)


def _run(rules: tuple[Rule, ...], config: Config, sources: Sources, invalid: Invalid) -> list[ConfigIssue]:
    issues: list[ConfigIssue] = []
    for rule in rules:
        if not invalid:
            issues.extend(rule(config, sources))
            continue
        found, read = _watching_reads(rule, config, sources)
        if not read & invalid:
            issues.extend(issue for issue in found if (issue.section, issue.key) not in invalid)
    return issues


def _watching_reads(rule: Rule, config: Config, sources: Sources) -> tuple[list[ConfigIssue], set[tuple[str, str]]]:
    """Run ``rule`` on a copy of ``config`` whose sections note each setting the rule reads."""
    read: set[tuple[str, str]] = set()
    watched = {name: _watched_copy(getattr(config, name), name, read) for name in SECTION_FIELDS}
    return rule(dataclasses.replace(config, **watched), sources), read  # type: ignore[arg-type]


_WATCHED_TYPES: dict[type, type] = {}


def _watched_copy(section: object, name: str, read: set[tuple[str, str]]) -> object:
    """A copy of one section that adds (section, key) to ``read`` for every setting read.

    Its class is a subclass of the section's, made once, so a rule comparing it with a
    default built as ``type(section)()`` compares like with like."""
    cls = type(section)
    if cls not in _WATCHED_TYPES:
        keys = {spec.name: spec.toml_key for spec in SECTION_FIELDS[name]}

        def __getattribute__(self: object, attribute: str) -> object:
            log = object.__getattribute__(self, "__dict__").get("_read_log")
            if log is not None and attribute in keys:
                log.add((name, keys[attribute]))
            return object.__getattribute__(self, attribute)

        _WATCHED_TYPES[cls] = type(cls.__name__, (cls,), {"__getattribute__": __getattribute__})
    copy: object = object.__new__(_WATCHED_TYPES[cls])
    copy.__dict__.update(vars(section), _read_log=read)
    return copy


def _changed(section: object, keys: tuple[str, ...]) -> list[str]:
    default = type(section)()
    return [key for key in keys if getattr(section, key) != getattr(default, key)]


def no_effect(config: Config, sources: Sources) -> list[ConfigIssue]:
    """Warnings for valid, changed settings that the chosen setup never reads."""
    return _unused_by_run(config, sources) + _unused_by_transform(config, sources)


def _unused_by_run(config: Config, sources: Sources) -> list[ConfigIssue]:
    warnings = []

    def unused(section: str, keys: tuple[str, ...], problem: str, fix: str) -> None:
        for key in _changed(getattr(config, section), keys):
            warnings.append(_issue(sources, section, key, f"has no effect: {problem}", fix))

    if config.model.lora_rank == 0:
        unused("lora", ("alpha", "dropout"), "lora_rank = 0 trains the whole model, without LoRA",
               "remove it, or set [model] lora_rank > 0")
    if not config.training.dynamic_sampling:
        unused("training", ("dynamic_sampling_max_rounds",), "dynamic_sampling is off",
               "remove it, or set dynamic_sampling = true")
    if config.reward.type != "custom":
        unused("reward", ("custom_function",), f"only type = \"custom\" calls it (type is \"{config.reward.type}\")",
               "remove it, or set type = \"custom\" with custom_module")
    if not config.logging.wandb_project:
        unused("logging", ("wandb_run_name", "wandb_entity", "wandb_group", "wandb_tags"),
               "wandb logging is off until wandb_project is set", "set wandb_project, or remove it")
    if not config.backpressure.enabled:
        unused("backpressure", tuple(f.name for f in dataclasses.fields(config.backpressure) if f.name != "enabled"),
               "backpressure is off", "remove it")
    return warnings


def _unused_by_transform(config: Config, sources: Sources) -> list[ConfigIssue]:
    """Only built-in transforms are judged: a transform or algorithm plugin may read any
    section it likes."""
    algorithm = config.algorithm
    transform = registry_names.ALGORITHM_RECIPES.get(algorithm.algorithm_mode, ("", algorithm.transform_mode))[1]
    if algorithm.algorithm_mode and algorithm.algorithm_mode not in registry_names.ALGORITHM_RECIPES:
        return []
    if transform not in registry_names.TRANSFORMS:
        return []
    stages = set(transform.split("_"))
    warnings = []
    unused_sections = [("gtpo", ("beta",)), ("hicra", ("alpha",)),
                       ("sepa", tuple(f.name for f in dataclasses.fields(config.sepa)))]
    for name, keys in unused_sections:
        for key in _changed(getattr(config, name), keys) if name not in stages else []:
            warnings.append(_issue(sources, name, key, f"has no effect: transform \"{transform}\" has no {name.upper()} stage",
                                   f"remove it, or choose a transform with {name.upper()} (e.g. gtpo_{name})"
                                   if name != "gtpo" else "remove it, or choose a gtpo transform"))
    if "sepa" in stages and config.sepa.schedule == "linear":
        for key in _changed(config.sepa, ("ema_decay", "warmup_steps", "variance_threshold")):
            warnings.append(_issue(sources, "sepa", key, "has no effect: only schedule = \"auto\" reads it",
                                   "remove it, or set schedule = \"auto\""))
    reads_planning = bool(stages & {"hicra", "sepa"})
    planning = config.planning
    if reads_planning and planning.detector not in registry_names.PLANNING_DETECTORS:
        return warnings  # a detector plugin is built with the config and may read any of it
    if not reads_planning:
        for key in _changed(planning, ("detector", "model", "threshold")):
            warnings.append(_issue(sources, "planning", key, f"has no effect: transform \"{transform}\" uses no planning tokens",
                                   "remove it, or choose a transform with HICRA or SEPA"))
    elif planning.detector != "semantic":
        for key in _changed(planning, ("model", "threshold")):
            warnings.append(_issue(sources, "planning", key, f"is only read by the semantic detector (detector is \"{planning.detector}\")",
                                   "remove it, or set detector = \"semantic\""))
    if config.logging.strategic_grams and (not reads_planning or planning.detector != "regex"):
        warnings.append(_issue(sources, "logging", "strategic_grams", "has no effect: only the regex planning detector reads it",
                               "remove it, or use detector = \"regex\" with a HICRA or SEPA transform"))
    return warnings
