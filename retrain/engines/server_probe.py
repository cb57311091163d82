"""The start-up probe: before any training, ask the server what it serves and how, and
stop with every problem at once, each naming the server flag that fixes it.

Checked: the server answers (``/health``), the model it serves (``/v1/models`` or SGLang's
``/get_model_info``) matches ``[inference] served_model`` (or is the only one), its
maximum model length leaves room for ``[training] max_tokens``, LoRA loading at runtime
is possible when the run trains an adapter, its maximum LoRA rank is at least ``[model]
lora_rank`` where it says, and the server-side settings (``[inference] dtype``,
``kv_cache_dtype``, ``prefix_caching``, ``attention_kernel``) agree with what it reports.
A server that does not report a setting is not guessed at: the setting is only shown.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from retrain.config.schema import Config
from retrain.errors import EngineError
from retrain.http import HttpClient, HttpError, HttpStatusError, RequestCancelled

logger = logging.getLogger(__name__)

# [inference] setting -> (what it is, the flag that sets it on vLLM, on SGLang).
SERVER_SIDE_SETTINGS: dict[str, tuple[str, str, str]] = {
    "dtype": ("weights and activations dtype", "--dtype", "--dtype"),
    "kv_cache_dtype": ("KV cache dtype", "--kv-cache-dtype", "--kv-cache-dtype"),
    "prefix_caching": ("prefix caching", "--enable-prefix-caching / --no-enable-prefix-caching",
                       "--disable-radix-cache"),
    "attention_kernel": ("attention kernel", "--attention-backend", "--attention-backend"),
}

# How servers spell our dtype choices.
_DTYPES = {"bf16": ("bfloat16", "bf16"), "fp8": ("fp8", "float8", "fp8_e4m3", "fp8_e5m2"), "fp4": ("fp4", "nvfp4"),
           "int8": ("int8",)}


@dataclass
class ServerFacts:
    """What the server said about itself; None = it did not say."""

    models: list[str] = field(default_factory=list)
    max_model_len: int | None = None
    runtime_lora: bool | None = None
    lora_enabled: bool | None = None
    max_lora_rank: int | None = None
    version: str = ""
    # [inference] setting -> the server's value, for the settings it reports.
    reported: dict[str, str] = field(default_factory=dict)


def get_json(client: HttpClient, path: str, what: str, *, optional: bool = False) -> object:
    """The JSON of ``GET path``; with ``optional``, None when the server has no such endpoint."""
    try:
        response = client.get(path, what)
    except HttpStatusError as error:
        if optional and error.status in (404, 405):
            return None
        raise
    try:
        return json.loads(response.body) if response.body.strip() else None
    except ValueError:
        if optional:
            return None
        raise HttpError(f"{what} answered with something that is not JSON: {response.body[:120]!r}") from None


def openai_models(client: HttpClient) -> tuple[list[str], dict[str, str], int | None]:
    """``/v1/models``: the base models, the loaded adapters ``{name: folder}`` (entries
    with a ``parent``, as vLLM lists them) and the maximum model length where given."""
    reply = get_json(client, "v1/models", "listing the served models")
    data = reply.get("data") if isinstance(reply, dict) else None
    if not isinstance(data, list):
        raise HttpError(f"/v1/models answered without a model list: {str(reply)[:200]}")
    bases, adapters, lengths = [], {}, []
    for entry in data:
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            continue
        if entry.get("parent"):
            adapters[entry["id"]] = str(entry.get("root") or "")
        else:
            bases.append(entry["id"])
            if isinstance(entry.get("max_model_len"), int):
                lengths.append(entry["max_model_len"])
    return bases, adapters, min(lengths) if lengths else None


def probe_runtime_lora(client: HttpClient, unload_path: str) -> bool:
    """Whether the runtime LoRA endpoints exist: unloading a name nobody loaded is refused
    by a server that has them ("cannot be found") and unrouted by one that has not (or
    answered 501 Not Implemented, as MAX does when started without --enable-lora)."""
    try:
        client.post_json(unload_path, {"lora_name": "retrain-probe-not-loaded"}, "probing runtime LoRA loading")
    except HttpStatusError as error:
        detail = error.detail.lower()
        if error.status == 501:
            return False
        return not (error.status in (404, 405) and ("not found" in detail and "adapter" not in detail
                                                    or detail.strip() in ("", "{}")))
    return True


def choose_model(facts: ServerFacts, configured: str, url: str) -> str:
    """The served model to sample from: ``configured``, or the only one the server lists."""
    if configured:
        if facts.models and configured not in facts.models:
            raise EngineError(f"[inference] served_model = \"{configured}\" is not served by {url}; it serves "
                              f"{facts.models} — set served_model to one of them (or start the server with "
                              f"--served-model-name {configured})")
        return configured
    if len(facts.models) == 1:
        return facts.models[0]
    if not facts.models:
        raise EngineError(f"{url} lists no served model — set [inference] served_model to the model name the server "
                          "answers to")
    raise EngineError(f"{url} serves several models {facts.models} — set [inference] served_model to one of them")


def facts_problems(facts: ServerFacts, config: Config, server: str, lora_flags: str) -> list[str]:
    """Everything about the server that stops this run, each with its fix."""
    problems = []
    training = config.training
    if facts.max_model_len is not None and facts.max_model_len <= training.max_tokens:
        problems.append(f"its maximum model length is {facts.max_model_len} tokens, no room for a prompt plus "
                        f"[training] max_tokens = {training.max_tokens} — restart it with a larger --max-model-len "
                        "(or --context-length on SGLang), or lower max_tokens")
    if config.model.lora_rank > 0:
        if facts.runtime_lora is False or facts.lora_enabled is False:
            problems.append(f"it cannot load LoRA adapters at runtime, which a LoRA run needs after every update — "
                            f"{lora_flags}")
        if facts.max_lora_rank is not None and facts.max_lora_rank < config.model.lora_rank:
            problems.append(f"its maximum LoRA rank is {facts.max_lora_rank}, below [model] lora_rank = "
                            f"{config.model.lora_rank} — restart it with --max-lora-rank {config.model.lora_rank}")
    problems.extend(setting_mismatches(facts, config, server))
    return problems


def setting_mismatches(facts: ServerFacts, config: Config, server: str) -> list[str]:
    """Server-side ``[inference]`` settings asked for that the server reports otherwise."""
    problems = []
    inference = config.inference
    for key, (meaning, vllm_flag, sglang_flag) in SERVER_SIDE_SETTINGS.items():
        asked = getattr(inference, key)
        default = key == "prefix_caching" and asked is True or asked in ("auto", "default")
        if default or key not in facts.reported:
            continue
        said = facts.reported[key].lower()
        agrees = said in ("true", "1") if key == "prefix_caching" else \
            said in _DTYPES.get(str(asked), (str(asked),)) or said == str(asked)
        if key == "prefix_caching" and asked is False:
            agrees = said in ("false", "0")
        if not agrees:
            flag = sglang_flag if server == "SGLang" else vllm_flag
            problems.append(f"[inference] {key} = {json.dumps(asked)} but the server reports {meaning} "
                            f"{facts.reported[key]!r} — restart it with {flag}, or set {key} to match")
    return problems


def reachable(client: HttpClient, url: str, server: str, launch: str) -> None:
    """``/health`` answers; otherwise an error saying how to start the server."""
    try:
        client.get("health", f"the {server} server's health check")
    except RequestCancelled:
        raise
    except HttpError as error:
        raise EngineError(f"cannot reach the {server} server at {url}: {error} — start it ({launch}) or fix "
                          "[inference] url") from error


def report(facts: ServerFacts, config: Config, server: str, url: str, model: str) -> None:
    """One log line: what the server serves and the server-side settings it reported."""
    shown = ", ".join(f"{key}={value}" for key, value in sorted(facts.reported.items())) or "none reported"
    logger.info("%s at %s%s serves %s (max model length %s); server-side settings: %s", server, url,
                f" {facts.version}" if facts.version else "", model,
                facts.max_model_len if facts.max_model_len is not None else "not reported", shown)


def vllm_reported(config: dict[str, object], facts: ServerFacts) -> None:
    """The LoRA limit and server-side settings in vLLM's ``/server_info`` configuration."""
    sections = {name: config.get(name) if isinstance(config.get(name), dict) else {}
                for name in ("lora_config", "model_config", "cache_config", "attention_config")}
    lora, model, cache = sections["lora_config"], sections["model_config"], sections["cache_config"]
    assert isinstance(lora, dict) and isinstance(model, dict) and isinstance(cache, dict)
    facts.lora_enabled = bool(lora)
    if isinstance(lora.get("max_lora_rank"), int):
        facts.max_lora_rank = int(lora["max_lora_rank"])
    for key, value in (("dtype", model.get("dtype")), ("kv_cache_dtype", cache.get("cache_dtype")),
                       ("prefix_caching", cache.get("enable_prefix_caching"))):
        if value is not None:
            facts.reported[key] = str(value).removeprefix("torch.").lower()


def refuse_tied_reload(model: str) -> None:
    """vLLM's in-place reload (checked on 0.32) loads the input embeddings but leaves a
    TIED output embedding (lm_head) at its old values: the server would then sample from a
    model that is neither the old nor the new policy (measured on the tiny model: after one
    reload the server's log-probabilities were exactly those of the new weights with the
    old lm_head, 0.85 nats per token off the trainer's)."""
    from retrain.models.tiny import resolve_model_path

    config_file = Path(resolve_model_path(model)) / "config.json"
    if config_file.is_file() and json.loads(config_file.read_text()).get("tie_word_embeddings") is True:
        raise EngineError(f"{model} ties its output embedding to its input embedding, and vLLM's in-place weight "
                          "reload leaves a tied output embedding at its old values, so after the first update the "
                          "server would sample from neither policy — train a LoRA adapter ([model] lora_rank > 0), "
                          "or use engine = \"sglang\" for full fine-tuning")
