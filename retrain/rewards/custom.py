"""The ``custom`` reward: a user function scores each completion.

``[reward] custom_module`` names the module (a dotted name, or a path to a ``.py``
file) and ``custom_function`` (default ``score``) the function in it. The contract::

    def score(completion: str, reference: str) -> float: ...
    def score(completion: str, reference: str, example: Example) -> float: ...   # optional

The function is called once per completion, with the completion text and the reference
answer (and, when it declares an ``example`` parameter or ``**kwargs``, the whole
``retrain.types.Example`` as ``example=``). It must return a finite real number (a bool
counts as 0/1). The signature is checked when the run is built, before any model loads.

The module is looked up like any plugin: each ``[plugins] search_paths`` entry that is a
directory (relative to the config's folder) is put on ``sys.path``; an entry that is a
package name is tried as a prefix (``<entry>.<custom_module>``); then a plain import.
With ``[plugins] strict = false`` a non-finite result is replaced by 0.0 and logged.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import math
import numbers
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from types import ModuleType

import numpy as np

from retrain.config.schema import Config
from retrain.errors import PluginError
from retrain.registry_names import is_dotted_path
from retrain.rewards.base import examples_per_completion
from retrain.types import Example

logger = logging.getLogger(__name__)


def _load_file(path: Path) -> ModuleType:
    name = f"retrain_custom_reward_{path.stem}"
    spec = importlib.util.spec_from_file_location(name, path)
    if spec is None or spec.loader is None:
        raise PluginError(f"[reward] custom_module: cannot load {path} as a Python module — give a .py file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _import_named(name: str) -> ModuleType | None:
    """Import ``name``; None when that module (not one of its imports) does not exist."""
    try:
        return importlib.import_module(name)
    except ModuleNotFoundError as exc:
        missing = exc.name or ""
        if name == missing or name.startswith(missing + "."):
            return None
        raise PluginError(f"[reward] custom_module: importing '{name}' failed: {exc} — install the missing "
                          f"package '{missing}'") from exc


def import_reward_module(module: str, search_paths: Sequence[str], base_dir: Path) -> ModuleType:
    """Find and import the custom reward module (see the module docstring for the order)."""
    if module.endswith(".py") or "/" in module:
        path = Path(module) if Path(module).is_absolute() else base_dir / module
        if not path.is_file():
            raise PluginError(f"[reward] custom_module: file {path} does not exist — fix the path "
                              "(relative paths start at the config file's folder)")
        return _load_file(path)
    if not (module.isidentifier() or is_dotted_path(module)):
        raise PluginError(f"[reward] custom_module: '{module}' is neither a module name nor a .py file — "
                          "write e.g. \"my_rewards\" or \"rewards/my_rewards.py\"")
    candidates = []
    for entry in search_paths:
        directory = Path(entry) if Path(entry).is_absolute() else base_dir / entry
        if directory.is_dir():
            if str(directory) not in sys.path:
                sys.path.insert(0, str(directory))
        elif entry.isidentifier() or is_dotted_path(entry):
            candidates.append(f"{entry}.{module}")
    candidates.append(module)
    for name in candidates:
        found = _import_named(name)
        if found is not None:
            return found
    raise PluginError(
        f"[reward] custom_module: no module '{module}' (tried {', '.join(candidates)}; search paths "
        f"{list(search_paths)} from {base_dir}) — put {module}.py in a [plugins] search_paths directory "
        "or make it importable"
    )


def _accepts_example(signature: inspect.Signature) -> bool:
    for parameter in signature.parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            return True
        if parameter.name == "example" and parameter.kind is not inspect.Parameter.POSITIONAL_ONLY:
            return True
    return False


def check_reward_function(function: object, label: str) -> bool:
    """Raise ``PluginError`` unless ``function`` can be called as
    ``function(completion, reference)``; return whether it also takes ``example=``."""
    if not callable(function):
        raise PluginError(f"custom reward {label} is not a function — point custom_function at a function")
    if inspect.iscoroutinefunction(function):
        raise PluginError(f"custom reward {label} is async — write a plain def returning a float")
    try:
        signature = inspect.signature(function)
    except (TypeError, ValueError):
        # Builtins without introspectable signatures: trust the two-argument call.
        return False
    try:
        signature.bind("", "")
    except TypeError as exc:
        raise PluginError(
            f"custom reward {label}{signature} cannot be called as {label.rsplit('.', 1)[-1]}(completion, reference) "
            f"({exc}) — define it as def score(completion: str, reference: str) -> float "
            "(optionally with an example=None parameter)"
        ) from exc
    return _accepts_example(signature)


class CustomReward:
    """Rewards from a user function ``score(completion, reference[, example=]) -> float``.

    ``base_dir`` is where relative search paths and file paths start (the folder of the
    config file; default the current directory).
    """

    def __init__(self, config: Config, *, base_dir: Path | None = None) -> None:
        reward = config.reward
        if not reward.custom_module:
            raise PluginError("[reward] custom_module is empty — set it to the module holding your reward function")
        base_dir = Path.cwd() if base_dir is None else base_dir
        module = import_reward_module(reward.custom_module, config.plugins.search_paths, base_dir)
        self.label = f"{reward.custom_module}.{reward.custom_function}"
        function = getattr(module, reward.custom_function, None)
        if function is None:
            raise PluginError(f"custom reward: module '{reward.custom_module}' has no '{reward.custom_function}' — "
                              "define it, or set [reward] custom_function to the function's name")
        self.pass_example = check_reward_function(function, self.label)
        self.function: Callable[..., object] = function  # type: ignore[assignment]
        self.strict = config.plugins.strict
        # Non-finite results replaced by 0.0 (only under [plugins] strict = false).
        self.repaired = 0

    def score(self, texts: list[str], examples: list[Example]) -> np.ndarray:
        aligned = examples_per_completion(texts, examples)
        rewards_N = np.zeros(len(texts), dtype=np.float64)
        for index, (text, example) in enumerate(zip(texts, aligned)):
            rewards_N[index] = self._one(index, text, example)
        return rewards_N

    def _one(self, index: int, text: str, example: Example) -> float:
        try:
            if self.pass_example:
                value = self.function(text, example.reference, example=example)
            else:
                value = self.function(text, example.reference)
        except Exception as exc:
            raise PluginError(f"custom reward {self.label} raised on completion {index}: "
                              f"{type(exc).__name__}: {exc}") from exc
        if not isinstance(value, (numbers.Real, np.bool_)):
            raise PluginError(f"custom reward {self.label} returned {type(value).__name__} {value!r:.80} for "
                              f"completion {index}; it must return a float")
        number = float(value)
        if math.isfinite(number):
            return number
        if self.strict:
            raise PluginError(f"custom reward {self.label} returned {number} for completion {index}; rewards must "
                              "be finite — fix the function, or set [plugins] strict = false to score it 0.0")
        logger.warning("custom reward %s returned %s for completion %d; using 0.0", self.label, number, index)
        self.repaired += 1
        return 0.0
