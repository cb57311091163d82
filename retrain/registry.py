"""The plugin registry: one way to turn a configured name into the object that runs.

Every kind (advantage, transform, uncertainty, algorithm, reward, data, planning,
backend, engine) has a literal table of built-ins in ``retrain.registry_names`` mapping
a name to ``"module:attr"``; a built-in's module is imported only when it is resolved,
so listing or checking names never pulls in torch.

Any other name must be a dotted path ``pkg.module.attr``. The module is looked up:

1. in each ``[plugins] search_paths`` entry, in order: an entry naming an existing
   directory (relative to the config file's folder, then the working directory) is
   searched for ``pkg`` directly (no reliance on the working directory being on
   ``sys.path``); any other entry is a module prefix, tried as ``<entry>.pkg.module``;
2. then by a plain ``import pkg.module``.

Failures raise a ``PluginError`` subclass whose type and message say which of these
happened: the module was not found (``PluginNotFoundError``), it has no such attribute
(``PluginAttributeError``), the object has the wrong shape for its kind
(``PluginSignatureError``), or importing it failed on the plugin's own dependency or
code (``PluginDependencyError``). A plugin may declare its kind, description and a
dataclass of parameters with ``register`` (re-exported by ``retrain.plugin_api``);
``check_params`` then type-checks the plugin's params table like any other config.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import os
import sys
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from importlib.machinery import ModuleSpec, PathFinder
from pathlib import Path

from retrain import registry_names
from retrain.config.schema import PluginsConfig
from retrain.errors import PluginError

KINDS: tuple[str, ...] = tuple(registry_names.BUILTINS)
BUILTIN_ORIGIN = "built-in"
PLUGIN_ATTRIBUTE = "__retrain_plugin__"


class PluginNotFoundError(PluginError):
    """The plugin's module exists in none of the search paths nor on the Python path."""


class PluginAttributeError(PluginError):
    """The module was imported but has no attribute of that name."""


class PluginSignatureError(PluginError):
    """The object does not have the call signature or methods its kind requires."""


class PluginDependencyError(PluginError):
    """Importing the plugin's module failed inside the plugin (its own import or code)."""


class PluginOutputError(PluginError):
    """A plugin returned output of the wrong shape or with non-finite values."""


# ---------------------------------------------------------------------------------------
# Declaring plugins


@dataclass(frozen=True)
class PluginSpec:
    """What a stage declares about itself through ``register`` (built-ins and plugins alike).

    ``params_section`` names the config section (``"gtpo"`` for ``[gtpo]``) whose values
    are the stage's parameters; without it they come from the kind's params table
    (``[algorithm.advantage_params]``, ``[algorithm.transform_params]``,
    ``[algorithm.params]``). ``needs_sepa``: the stage reads ``sepa_lambda``, so the run
    keeps the SEPA schedule going.
    """

    kind: str
    params: type | None = None
    description: str = ""
    needs_planning: bool = False
    needs_entropies: bool = False
    params_section: str = ""
    needs_sepa: bool = False


def register(
    kind: str,
    *,
    params: type | None = None,
    params_section: str = "",
    description: str = "",
    needs_planning: bool = False,
    needs_entropies: bool = False,
    needs_sepa: bool = False,
) -> Callable[[typing.Any], typing.Any]:
    """Decorator declaring a stage's kind, parameters and needs.

    ``params`` is a dataclass; the stage's parameters table is checked against its fields
    (types, bounds, unknown keys, missing required values) when the run is built, and the
    stage receives an instance instead of a plain mapping. The table is the kind's params
    table, or the config section named by ``params_section`` (how the built-in GTPO reads
    ``[gtpo]``). ``needs_planning`` asks the run to compute the planning mask;
    ``needs_entropies`` asks the engine for per-token entropies; ``needs_sepa`` keeps the
    SEPA schedule running and hands its lambda to the stage. The description shown by
    ``retrain plugins`` is ``description`` or the first line of the docstring.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown plugin kind {kind!r}; kinds are {', '.join(KINDS)}")
    if params is not None and not (isinstance(params, type) and dataclasses.is_dataclass(params)):
        raise TypeError(f"params must be a dataclass type, got {params!r}")
    if params_section and params is None:
        raise TypeError(f"params_section={params_section!r} needs params=, the dataclass of that section")

    def decorate(obj: typing.Any) -> typing.Any:
        description_text = description or _first_line(inspect.getdoc(obj))
        spec = PluginSpec(kind, params, description_text, needs_planning, needs_entropies, params_section, needs_sepa)
        setattr(obj, PLUGIN_ATTRIBUTE, spec)
        return obj

    return decorate


def plugin_spec(obj: object) -> PluginSpec | None:
    """The ``PluginSpec`` an object was registered with, if any."""
    spec = getattr(obj, PLUGIN_ATTRIBUTE, None)
    return spec if isinstance(spec, PluginSpec) else None


def _first_line(text: str | None) -> str:
    return text.strip().splitlines()[0].strip() if text and text.strip() else ""


# ---------------------------------------------------------------------------------------
# Built-in descriptions of the component kinds (for `retrain plugins`; no imports needed).
# A credit stage (advantage, transform, uncertainty, algorithm) is described by its own
# docstring and registration instead: see ``builtin_summary`` in retrain.commands.plugins.

BUILTIN_DESCRIPTIONS: dict[str, dict[str, tuple[str, str]]] = {
    "reward": {
        "match": ("final answer equals the reference after light normalisation", ""),
        "math": ("symbolic equivalence of the final answer (math-verify)", ""),
        "judge": ("an LLM judge over an OpenAI-compatible API", "[reward] judge_model"),
        "custom": ("your function: [reward] custom_module / custom_function", "[reward] custom_*"),
    },
    "data": {
        "math": ("hendrycks MATH problems (hub or a local copy)", "[data] path, split"),
        "arithmetic": ("seeded small arithmetic prompts, fully offline", ""),
        "jsonl": ("a JSONL file of prompt/answer objects", "[data] path"),
    },
    "planning": {
        "regex": ("strategic-gram regex mapped to tokens by character spans", "[logging] strategic_grams"),
        "semantic": ("sentence-transformers similarity to planning sentences", "[planning] model, threshold"),
    },
    "backend": {
        "local": ("PyTorch + PEFT LoRA on this machine", "[backend.options] gradient_checkpointing, micro_batch_size"),
        "tinker": ("remote training with the Tinker service", "[backend.options] api_key, loss_fn, timeout_s"),
        "prime_rl": ("batches sent to an external PRIME-RL trainer", "[backend.options] transport, zmq_*, sync_*"),
    },
    "environment": {
        "verifiers": ("a verifiers taskset: its prompts, multi-turn rollouts and rewards", "[environment] id, args"),
    },
    "engine": {
        "pytorch": ("in-process sampling with the training model", "[inference] attention_kernel, dtype, ..."),
        "vllm": ("a vLLM server: token-id prompts, versioned LoRA loads", "[inference] url, served_model, timeout_s, ..."),
        "sglang": ("an SGLang server: /generate, LoRA loads, full-weight reloads", "[inference] url, served_model, ..."),
        "openai": ("any OpenAI-compatible /v1/completions server", "[inference] url, api_key, served_model, ..."),
        "max": ("a Modular MAX server (OpenAI-compatible)", "[inference] url, served_model, ..."),
        "mlx": ("an mlx_lm.server (text prompts)", "[inference] url, served_model, ..."),
    },
}


# ---------------------------------------------------------------------------------------
# The contract of each kind, checked when a dotted-path plugin is loaded

@dataclass(frozen=True)
class KindContract:
    """How the runtime calls objects of one kind."""

    shape: str  # "function": called per step; "class": constructed with the config
    arguments: int
    methods: dict[str, int]
    signature: str


CONTRACTS: dict[str, KindContract] = {
    "advantage": KindContract("function", 2, {}, "def f(rewards_P_G: np.ndarray, params) -> np.ndarray  # [P, G]"),
    "uncertainty": KindContract("function", 1, {}, "def f(batch: SampleBatch) -> np.ndarray  # [N, T]"),
    "transform": KindContract(
        "function", 2, {}, "def f(ctx: TransformContext, params) -> np.ndarray | TransformOutput  # [N, T]"
    ),
    "algorithm": KindContract("function", 2, {}, "def f(ctx: AlgorithmContext, params) -> AlgorithmOutput"),
    "reward": KindContract(
        "function", 2, {},
        "def score(completion: str, reference: str, example: Example = None) -> float  "
        "([reward] custom_module / custom_function)",
    ),
    "data": KindContract("class", 1, {"examples": 0}, "class S: __init__(self, config); examples(self) -> list[Example]"),
    "planning": KindContract(
        "class", 1, {"detect": 2},
        "class D: __init__(self, config); detect(self, texts, token_char_spans) -> np.ndarray  # bool [N, T]",
    ),
    "backend": KindContract(
        "class", 1,
        {"capabilities": 1, "encode_prompt": 1, "train_step": 1, "publish": 2, "save_adapter": 1, "save_state": 1,
         "load_state": 1, "close": 0},
        "class B: __init__(self, config); @classmethod capabilities(cls, config) -> BackendCapabilities; "
        "policy_version: int; encode_prompt(messages) -> list[int]; train_step(batch) -> TrainResult; "
        "publish(kind, directory) -> PolicyRef; save_adapter(path); save_state(directory); load_state(directory); "
        "close()",
    ),
    "environment": KindContract(
        "class", 1, {"examples": 0, "rollout": 4, "close": 0},
        "class E: __init__(self, config); examples(self) -> list[Example]; "
        "rollout(self, examples, engine, encode, params: SamplingParams) -> Scored; close()",
    ),
    "engine": KindContract(
        "class", 1, {"capabilities": 1, "generate": 2, "load": 1, "save_state": 1, "load_state": 1, "close": 0},
        "class E: __init__(self, config); @classmethod capabilities(cls, config) -> EngineCapabilities; "
        "policy_version: int; generate(prompt_token_ids, params: SamplingParams) -> SampleBatch; load(ref: PolicyRef); "
        "save_state(directory); load_state(directory); close()",
    ),
}


def _binds(func: object, count: int) -> bool:
    try:
        signature = inspect.signature(func)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return True  # builtins without introspectable signatures: the call itself will tell
    try:
        signature.bind(*([None] * count))
    except TypeError:
        return False
    return True


def check_shape(kind: str, name: str, obj: object, origin: str) -> None:
    """Raise ``PluginSignatureError`` unless ``obj`` fits the contract of ``kind``."""
    contract = CONTRACTS[kind]
    where = f"{kind} plugin '{name}' ({origin})"
    expected = f"expected: {contract.signature}"
    spec = plugin_spec(obj)
    if spec is not None and spec.kind != kind:
        raise PluginSignatureError(f"{where} is registered as a {spec.kind} plugin, so it cannot serve as the {kind}; {expected}")
    if not callable(obj):
        raise PluginSignatureError(f"{where} is a {type(obj).__name__}, not callable; {expected}")
    if contract.shape == "function" and isinstance(obj, type):
        raise PluginSignatureError(f"{where} is a class; {expected}")
    if inspect.iscoroutinefunction(obj):
        raise PluginSignatureError(f"{where} is async; write a plain def; {expected}")
    if not _binds(obj, contract.arguments):
        raise PluginSignatureError(f"{where} has the signature {name.rsplit('.', 1)[-1]}{_signature_text(obj)}; {expected}")
    if contract.shape == "class" and isinstance(obj, type):
        for method, arguments in contract.methods.items():
            function = getattr(obj, method, None)
            if not callable(function):
                raise PluginSignatureError(f"{where} has no method {method}(); {expected}")
            # Looked up on the class, a plain method still needs self; a classmethod is bound.
            bound = isinstance(inspect.getattr_static(obj, method), (classmethod, staticmethod))
            if not _binds(function, arguments if bound else arguments + 1):
                raise PluginSignatureError(
                    f"{where}: {method}{_signature_text(function)} takes the wrong arguments; {expected}"
                )


def _signature_text(obj: object) -> str:
    try:
        return str(inspect.signature(obj))  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return "(...)"


# ---------------------------------------------------------------------------------------
# Resolution


@dataclass(frozen=True)
class ResolvedPlugin:
    """A loaded plugin: the object, where it came from, and what it declared."""

    kind: str
    name: str
    obj: typing.Any
    origin: str
    spec: PluginSpec | None = None

    @property
    def builtin(self) -> bool:
        return self.origin == BUILTIN_ORIGIN


@dataclass(frozen=True)
class SearchLocation:
    """One ``[plugins] search_paths`` entry as resolved: a directory or a module prefix."""

    entry: str
    directory: Path | None
    prefix: str | None

    def describe(self) -> str:
        if self.directory is not None:
            return str(self.directory)
        if self.prefix is not None:
            return f"{self.entry} (no such directory; tried as a module prefix)"
        return f"{self.entry} (no such directory)"


def search_locations(plugins: PluginsConfig, base_dir: Path | None = None) -> list[SearchLocation]:
    """Resolve ``search_paths``: directories relative to ``base_dir`` then the working
    directory; other dotted entries are module prefixes."""
    locations = []
    for entry in plugins.search_paths:
        path = Path(os.path.expanduser(entry))
        candidates = [path] if path.is_absolute() else [base / path for base in (base_dir, Path.cwd()) if base is not None]
        directory = next((candidate.resolve() for candidate in candidates if candidate.is_dir()), None)
        is_prefix = directory is None and registry_names.is_dotted_path(entry + ".x")
        locations.append(SearchLocation(entry, directory, entry if is_prefix else None))
    return locations


def resolve(kind: str, name: str, plugins: PluginsConfig, base_dir: Path | None = None) -> ResolvedPlugin:
    """Load the object a configured name stands for (a built-in or a dotted-path plugin)."""
    if kind not in registry_names.BUILTINS:
        raise ValueError(f"unknown plugin kind {kind!r}; kinds are {', '.join(KINDS)}")
    builtins = registry_names.BUILTINS[kind]
    if name in builtins:
        return ResolvedPlugin(kind, name, _load_builtin(kind, name, builtins[name]), BUILTIN_ORIGIN)
    if not registry_names.is_dotted_path(name):
        listed = ", ".join(builtins)
        hint = _suggest(name, builtins)
        raise PluginNotFoundError(
            f"{kind} '{name}' is neither a built-in ({listed}) nor a dotted path to a plugin (pkg.module.attr)"
            f"{hint}"
        )
    module_name, _, attribute = name.rpartition(".")
    locations = search_locations(plugins, base_dir)
    module = _import_plugin_module(kind, name, module_name, locations)
    origin_file = getattr(module, "__file__", None) or module_name
    if not hasattr(module, attribute):
        public = [item for item in dir(module) if not item.startswith("_")]
        raise PluginAttributeError(
            f"{kind} plugin '{name}': module '{module_name}' ({origin_file}) has no attribute '{attribute}'"
            f"{_suggest(attribute, public) or '; it defines: ' + (', '.join(public[:12]) or 'nothing public')}"
        )
    obj = getattr(module, attribute)
    origin = f"plugin {name} from {origin_file}"
    check_shape(kind, name, obj, origin)
    return ResolvedPlugin(kind, name, obj, origin, plugin_spec(obj))


def _suggest(word: str, candidates: typing.Iterable[str]) -> str:
    from retrain.config.values import did_you_mean

    hint = did_you_mean(word, candidates, "")
    return f" — {hint}" if hint else ""


def _load_builtin(kind: str, name: str, target: str) -> object:
    module_name, _, attribute = target.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name and (module_name == exc.name or module_name.startswith(exc.name + ".")):
            raise  # retrain itself is incomplete: a bug, not a user error
        raise PluginDependencyError(
            f"the built-in {kind} '{name}' needs the package '{exc.name}', which is not installed — install "
            f"retrain with the matching extra (e.g. `pip install 'retrain[local]'`)"
        ) from exc
    return getattr(module, attribute)


# Top-level module name -> the search directory it was loaded from, so the same name
# found in another search directory later replaces it instead of silently reusing it.
_LOADED_FROM: dict[str, Path] = {}


def _import_plugin_module(kind: str, name: str, module_name: str, locations: list[SearchLocation]) -> types.ModuleType:
    for location in locations:
        if location.directory is not None:
            module = import_from_directory(module_name, location.directory, f"{kind} plugin '{name}'")
        elif location.prefix is not None:
            module = _import_or_none(f"{location.prefix}.{module_name}", f"{kind} plugin '{name}'")
        else:
            continue
        if module is not None:
            return module
    module = _import_or_none(module_name, f"{kind} plugin '{name}'")
    if module is not None:
        return module
    searched = "; ".join(location.describe() for location in locations) or "no search paths"
    raise PluginNotFoundError(
        f"{kind} plugin '{name}': module '{module_name}' not found (searched: {searched}; then the Python path) — "
        f"check the spelling, or add the directory holding {module_name.split('.')[0]} to [plugins] search_paths"
    )


def _is_missing(exc: ModuleNotFoundError, module_name: str) -> bool:
    """True when ``exc`` says ``module_name`` (or a parent package of it) does not exist."""
    parts = module_name.split(".")
    return exc.name in {".".join(parts[:i]) for i in range(1, len(parts) + 1)}


def _dependency_error(what: str, module_name: str, exc: BaseException) -> PluginDependencyError:
    if isinstance(exc, ModuleNotFoundError) and exc.name:
        return PluginDependencyError(
            f"{what}: importing module '{module_name}' failed because its own import of '{exc.name}' failed ({exc}) "
            f"— install the package the plugin needs or fix the import in the plugin"
        )
    if isinstance(exc, ImportError) and exc.name:
        # "cannot import name 'x' from 'y'": the package is there, the name is not.
        return PluginDependencyError(
            f"{what}: importing module '{module_name}' failed: {exc} — fix the import in the plugin (or upgrade "
            f"'{exc.name}' if the name is new)"
        )
    location = ""
    if isinstance(exc, SyntaxError) and exc.filename:
        location = f" at {exc.filename}:{exc.lineno}"
    return PluginDependencyError(
        f"{what}: importing module '{module_name}' raised {type(exc).__name__}{location}: {exc} — fix the plugin's code"
    )


def _import_or_none(module_name: str, what: str) -> types.ModuleType | None:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if _is_missing(exc, module_name):
            return None
        raise _dependency_error(what, module_name, exc) from exc
    except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() is still a plugin error
        raise _dependency_error(what, module_name, exc) from exc


def _loaded_origin(module: types.ModuleType) -> tuple[str | None, tuple[str, ...]]:
    spec = getattr(module, "__spec__", None)
    locations = tuple(getattr(module, "__path__", ()) or ())
    return (spec.origin if spec is not None else None), locations


def _same_module(module: types.ModuleType, spec: ModuleSpec) -> bool:
    origin, locations = _loaded_origin(module)
    if spec.origin not in (None, "namespace") and origin == spec.origin:
        return True
    return bool(spec.submodule_search_locations) and set(locations) == set(spec.submodule_search_locations or ())


def import_from_directory(module_name: str, directory: Path, what: str) -> types.ModuleType | None:
    """Import ``module_name`` from ``directory`` itself (None when it is not there).

    The top-level module is loaded from its file in ``directory`` and registered in
    ``sys.modules``; submodules then import through the package as usual. The
    directory is also appended to ``sys.path`` so the plugin's own sibling imports work.
    """
    top = module_name.split(".")[0]
    spec = PathFinder.find_spec(top, [str(directory)])
    if spec is None or spec.loader is None and not spec.submodule_search_locations:
        return None
    existing = sys.modules.get(top)
    if existing is not None and not _same_module(existing, spec):
        if top not in _LOADED_FROM:
            origin, _ = _loaded_origin(existing)
            raise PluginDependencyError(
                f"{what}: the plugin module '{top}' in {directory} has the same name as the already imported "
                f"module '{top}' ({origin or 'built into Python'}) — rename the plugin file"
            )
        for loaded in [key for key in sys.modules if key == top or key.startswith(top + ".")]:
            del sys.modules[loaded]
        existing = None
    if existing is None:
        module = importlib.util.module_from_spec(spec)
        sys.modules[top] = module
        try:
            if spec.loader is not None:
                spec.loader.exec_module(module)
        except (Exception, SystemExit) as exc:  # a plugin calling sys.exit() is still a plugin error
            del sys.modules[top]
            raise _dependency_error(what, top, exc) from exc
        _LOADED_FROM[top] = directory
    if str(directory) not in sys.path:
        sys.path.append(str(directory))
    if module_name == top:
        return sys.modules[top]
    return _import_or_none(module_name, what)
