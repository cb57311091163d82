"""Built-in plugin names per kind: the one table the config schema and the registry share.

Each entry maps a built-in name to ``"module:attribute"``; nothing here is imported
until a run resolves it (see ``retrain.registry``). Kinds listed in
``DOTTED_PATH_KINDS`` also accept a user plugin as a dotted path ``pkg.module.attr``.
"""

from __future__ import annotations

import importlib.util

ADVANTAGES: dict[str, str] = {
    "grpo": "retrain.advantages.grpo:grpo_advantages",
    "maxrl": "retrain.advantages.maxrl:maxrl_advantages",
}

# "gtpo" and "hicra" are single stages; the other names are compositions of stages.
TRANSFORMS: dict[str, str] = {
    "none": "retrain.transforms.compositions:NoTransform",
    "gtpo": "retrain.transforms.gtpo:gtpo",
    "hicra": "retrain.transforms.hicra:hicra",
    "gtpo_hicra": "retrain.transforms.compositions:GTPOHICRATransform",
    "gtpo_sepa": "retrain.transforms.compositions:GTPOSEPATransform",
    "gtpo_sepa_hicra": "retrain.transforms.compositions:GTPOSEPAHICRATransform",
}

UNCERTAINTIES: dict[str, str] = {
    "surprisal": "retrain.uncertainty.surprisal:surprisal",
    "predictive_variance": "retrain.uncertainty.predictive_variance:predictive_variance",
    "shannon_entropy": "retrain.uncertainty.shannon_entropy:shannon_entropy",
}

# Every (advantage, transform) pair is a named whole-pipeline recipe, e.g.
# "maxrl_gtpo_sepa" = maxrl advantages, then the gtpo_sepa transform.
ALGORITHM_RECIPES: dict[str, tuple[str, str]] = {
    f"{advantage}_{transform}": (advantage, transform)
    for advantage in ADVANTAGES
    for transform in TRANSFORMS
}
ALGORITHMS: dict[str, str] = {name: "retrain.algorithms:Recipe" for name in ALGORITHM_RECIPES}

REWARDS: dict[str, str] = {
    "match": "retrain.rewards.match:MatchReward",
    "math": "retrain.rewards.math:MathReward",
    "judge": "retrain.rewards.judge:JudgeReward",
    "custom": "retrain.rewards.custom:CustomReward",
}

DATA_SOURCES: dict[str, str] = {
    "math": "retrain.data.math:MathSource",
    "arithmetic": "retrain.data.arithmetic:ArithmeticSource",
    "jsonl": "retrain.data.jsonl:JsonlSource",
}

PLANNING_DETECTORS: dict[str, str] = {
    "regex": "retrain.planning:RegexPlanningDetector",
    "semantic": "retrain.planning:SemanticPlanningDetector",
}

BACKENDS: dict[str, str] = {
    "local": "retrain.backends.local:LocalBackend",
    "tinker": "retrain.backends.tinker:TinkerBackend",
    "prime_rl": "retrain.backends.prime_rl:PrimeRLBackend",
}

ENGINES: dict[str, str] = {
    "pytorch": "retrain.engines.pytorch:PyTorchEngine",
    "vllm": "retrain.engines.openai_http:VLLMEngine",
    "sglang": "retrain.engines.openai_http:SGLangEngine",
    "openai": "retrain.engines.openai_http:OpenAIEngine",
    "max": "retrain.engines.openai_http:MaxEngine",
    "mlx": "retrain.engines.openai_http:MLXEngine",
}

ENVIRONMENTS: dict[str, str] = {
    "verifiers": "retrain.environments.verifiers:VerifiersEnvironment",
}

BUILTINS: dict[str, dict[str, str]] = {
    "advantage": ADVANTAGES,
    "transform": TRANSFORMS,
    "uncertainty": UNCERTAINTIES,
    "algorithm": ALGORITHMS,
    "reward": REWARDS,
    "data": DATA_SOURCES,
    "planning": PLANNING_DETECTORS,
    "backend": BACKENDS,
    "engine": ENGINES,
    "environment": ENVIRONMENTS,
}

# Rewards take user code through [reward] custom_module/custom_function instead.
DOTTED_PATH_KINDS = frozenset(BUILTINS) - {"reward"}


def is_dotted_path(name: str) -> bool:
    """True for ``pkg.module.attr``-style names (at least one dot, no empty parts)."""
    parts = name.split(".")
    return len(parts) >= 2 and all(part.isidentifier() for part in parts)


def shipped(kind: str, name: str) -> bool:
    """Whether the module of the built-in ``name`` of ``kind`` is part of this version
    (the table also names built-ins that later versions add)."""
    return importlib.util.find_spec(BUILTINS[kind][name].partition(":")[0]) is not None
