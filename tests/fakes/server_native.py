"""The native dialects of the fake inference server: ``sglang`` and ``mlx`` (mlx_lm.server).

Wire facts followed (SGLang 0.5.23, mlx-lm 0.32.0):

- SGLang ``POST /generate``: ``input_ids`` (a list, or a list of lists for a batch) or
  ``text``; ``sampling_params`` (one dict, or one per prompt with the same ``n``) with
  unknown keys refused (400 ``{"error": "unknown field ..."}``); the seed key is
  ``sampling_seed`` (honoured: the fake behaves like ``--enable-deterministic-inference``);
  ``lora_path`` = an adapter *name* (or one per prompt, null = base). A single prompt with
  n = 1 answers one object, anything else a prompt-major list. ``output_token_logprobs`` are
  ``[logprob, token_id, null]`` triples (the text only with ``return_text_in_logprobs``);
  ``finish_reason`` is ``{"type": "stop", "matched": id}`` or ``{"type": "length",
  "length": n}``; ``meta_info.weight_version`` (default "default"). The stop token stays in
  ``output_ids``; the text drops it unless ``no_stop_trim``.
- SGLang LoRA routes answer ``{"success", "error_message", "loaded_adapters"}``, 200 or 400,
  with SGLang's texts (not enabled, already loaded, rank incompatible with the pool).
  ``/update_weights_from_disk`` reloads the base from ``model_path`` and makes it the
  served model name; ``weight_version`` sets the version. ``/update_weight_version``,
  ``/model_info`` (+ ``/get_model_info``), ``/server_info`` (+ ``/get_server_info``,
  ``context_length`` null unless ``max_model_len`` differs from the model's own length, as
  if ``--context-length`` was given), ``/v1/models`` (``max_model_len``), ``/flush_cache``
  (text), ``/health``, ``/health_generate``, ``/ready``. Errors: ``{"error": {"message"}}``.
- mlx: ``/v1/completions`` (string prompts only: token ids fail in the tokenizer and come
  back as 404 ``{"error": ...}``), ``/v1/chat/completions`` and ``/chat/completions``;
  ``n`` is ignored (one choice, index 0); ``logprobs`` must be a bool and ``top_logprobs``
  -1 or 0..11, else the server fails without an answer (the connection drops);
  ``logprobs: true`` gives ``{"content": [{"id", "logprob"}]}`` on both routes, and with
  ``top_logprobs`` k > 0 each entry is the first of the top k (not the sampled token) plus
  ``top_logprobs: [{"id", "token", "logprob"}]``. Log-probabilities are log_softmax of the
  logits before temperature (logprobs_mode "raw" by default). One model is resident: a
  request's ``model`` (a folder path; "default_model" or none = the served folder) and
  ``adapters`` (a path; ignored for the default model) switch it. The fake reads PEFT
  adapter folders (real mlx-lm reads its own format only). ``/health`` answers
  ``{"status": "ok"}``; unknown routes 404 text "Not Found". Default temperature 0, default
  max_tokens 512; no context-length check.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fakes.model_server import DropConnection, ModelError, Sample, Sampling, adapter_rank
from fakes.server_dialects import (
    Route,
    adapter_folder,
    chat_prompt,
    empty,
    encode,
    integer,
    new_id,
    number,
    text_of,
    token_list,
    usage,
)

if TYPE_CHECKING:
    from fakes.model_server import Headers, ModelServer, Reply

SGLANG_VERSION = "0.5.23"
SGLANG_SAMPLING_KEYS = {
    "max_new_tokens", "stop", "stop_token_ids", "stop_regex", "temperature", "top_p", "top_k", "min_p",
    "frequency_penalty", "presence_penalty", "repetition_penalty", "min_new_tokens", "n", "beam_width", "json_schema",
    "regex", "ebnf", "structural_tag", "ignore_eos", "skip_special_tokens", "spaces_between_special_tokens",
    "no_stop_trim", "stream_interval", "logit_bias", "sampling_seed", "custom_params", "watermark", "choice",
}
FLUSHED = ("Cache flushed.\nPlease check backend logs for more details. (When there are running or waiting requests, "
           "the operation will not be performed.)\n")


# --- sglang ---------------------------------------------------------------------------------

def sglang_prompts(server: ModelServer, body: dict) -> tuple[list[list[int]], bool]:
    """The prompts as token id lists, and whether the request was a batch."""
    ids, text = body.get("input_ids"), body.get("text")
    if ids is None and isinstance(text, str):
        return [encode(server, text)], False
    if ids is None and isinstance(text, list) and all(isinstance(item, str) for item in text):
        return [encode(server, item) for item in text], True
    if isinstance(ids, list) and ids and all(isinstance(item, list) for item in ids):
        return [token_list(item, "input_ids") for item in ids], True
    if isinstance(ids, list) and ids:
        return [token_list(ids, "input_ids")], False
    raise ModelError("Either text or input_ids should be provided.")


def sglang_sampling(server: ModelServer, options: object, prompt: list[int]) -> Sampling:
    if not isinstance(options, dict):
        raise ModelError("sampling_params must be an object")
    unknown = sorted(set(options) - SGLANG_SAMPLING_KEYS)
    if unknown:
        raise ModelError(f"unknown field `{unknown[0]}` in sampling_params", 400, "schema")
    max_new = integer(options, "max_new_tokens", 128, 0) or 0
    server.model.check_prompt(prompt)
    limit = server.max_model_len
    if len(prompt) >= limit:
        raise ModelError(f"The input ({len(prompt)} tokens) is longer than the model's context length ({limit} "
                         "tokens).")
    if len(prompt) + max_new > limit:
        raise ModelError(f"Requested token count exceeds the model's maximum context length of {limit} tokens. You "
                         f"requested a total of {len(prompt) + max_new} tokens: {len(prompt)} tokens from the input "
                         f"messages and {max_new} tokens for the completion. Please reduce the number of tokens in "
                         "the input messages or the completion to fit within the limit.")
    stops = tuple(token_list(options.get("stop_token_ids") or [], "stop_token_ids"))
    return Sampling(integer(options, "n", 1, 1) or 1, max_new, number(options, "temperature", 1.0, 0.0),
                    number(options, "top_p", 1.0, 0.0, 1.0), integer(options, "sampling_seed", None), stops,
                    bool(options.get("ignore_eos")))


def sglang_adapter(server: ModelServer, name: object) -> str | None:
    if name is None:
        return None
    if not server.enable_lora:
        raise ModelError(f"LoRA adapter '{name}' was requested, but LoRA is not enabled. Please launch the server "
                         "with --enable-lora.")
    if not isinstance(name, str) or name not in server.model.adapters:
        raise ModelError(f"The following requested LoRA adapters are not loaded: {name}")
    return name


def per_prompt(value: object, count: int, key: str) -> list[object]:
    if isinstance(value, list):
        if len(value) != count:
            raise ModelError(f"{key} has {len(value)} entries for {count} prompts")
        return value
    return [value] * count


def generate(server: ModelServer, body: dict, headers: Headers) -> Reply:
    started = time.monotonic()
    prompts, batch = sglang_prompts(server, body)
    options = per_prompt(body.get("sampling_params") or {}, len(prompts), "sampling_params")
    params = [sglang_sampling(server, item, prompt) for item, prompt in zip(options, prompts)]
    if len({item.n for item in params}) > 1:
        raise ModelError("The n parameter must be the same for all sampling_params in a batch.")
    adapters = [sglang_adapter(server, name) for name in per_prompt(body.get("lora_path"), len(prompts), "lora_path")]
    top = integer(body, "top_logprobs_num", 0, 0) or 0
    outputs = []
    for prompt, item, adapter, option in zip(prompts, params, adapters, options):
        generator = torch.Generator().manual_seed(item.seed) if item.seed is not None else None
        for sample in server.model.sample(adapter, prompt, item, generator, top):
            outputs.append(sglang_output(server, body, option, prompt, adapter, sample, started))
    return 200, outputs if batch or params[0].n > 1 else outputs[0], {}


def sglang_output(server: ModelServer, body: dict, options: dict, prompt: list[int], adapter: str | None,
                  sample: Sample, started: float) -> dict[str, object]:
    finish = ({"type": "stop", "matched": sample.matched} if sample.finish_reason == "stop"
              else {"type": "length", "length": len(sample.token_ids)})
    meta: dict[str, object] = {
        "id": uuid.uuid4().hex, "finish_reason": finish, "prompt_tokens": len(prompt),
        "completion_tokens": len(sample.token_ids), "cached_tokens": 0, "weight_version": server.weight_version,
        "e2e_latency": time.monotonic() - started,
    }
    if body.get("return_logprob"):
        with_text = bool(body.get("return_text_in_logprobs"))

        def triple(value: float | None, token: int) -> list[object]:
            return [value, token, server.model.tokenizer.decode([token]) if with_text else None]

        start = integer(body, "logprob_start_len", -1)
        meta["input_token_logprobs"] = [] if start is None or start < 0 else [
            triple(value, token) for value, token in zip(prompt_logprobs(server, adapter, prompt), prompt)][start:]
        meta["output_token_logprobs"] = [triple(v, t) for v, t in zip(sample.logprobs, sample.token_ids)]
        meta["output_top_logprobs"] = [[triple(v, t) for t, v in top] for top in sample.top] or [
            [] for _ in sample.token_ids]
    text = text_of(server, sample, options.get("skip_special_tokens", True) is not False,
                   trim_stop=not options.get("no_stop_trim"))
    return {"text": text, "output_ids": list(sample.token_ids), "meta_info": meta}


def prompt_logprobs(server: ModelServer, adapter: str | None, prompt: list[int]) -> list[float | None]:
    return [None, *server.model.probe(adapter, prompt[:1], prompt[1:])]


def sglang_result(ok: bool, message: str | None, server: ModelServer) -> Reply:
    return (200 if ok else 400), {"success": ok, "error_message": message,
                                  "loaded_adapters": server.model.adapters if ok else None}, {}


def sglang_load(server: ModelServer, body: dict, headers: Headers) -> Reply:
    name, path = body.get("lora_name"), body.get("lora_path")
    if not server.enable_lora:
        return sglang_result(False, "LoRA is not enabled. Please set `--enable-lora` to enable LoRA.", server)
    if not isinstance(name, str) or not isinstance(path, str):
        return sglang_result(False, "lora_name and lora_path must be given", server)
    with server.model.lock:
        if name in server.model.adapters:
            return sglang_result(False, f"Failed to load LoRA adapter {name} because it is already loaded", server)
        if not adapter_folder(path):
            return sglang_result(False, f"Failed to load LoRA adapter {name}: no adapter_config.json in {path}",
                                 server)
        rank = adapter_rank(path)
        if rank > server.max_lora_rank:
            return sglang_result(False, f"LoRA adapter {name} with rank {rank} is incompatible with the current LoRA "
                                 "memory pool configuration. Please ensure that the LoRA adapter's rank is within the "
                                 "configured `--max-lora-rank` and that the target modules are included in "
                                 "`--lora-target-modules`.", server)
        server.model.load_adapter(name, path)
        server.record_load("load", name, path)
    return sglang_result(True, None, server)


def sglang_unload(server: ModelServer, body: dict, headers: Headers) -> Reply:
    name = body.get("lora_name")
    if not server.enable_lora:
        return sglang_result(False, "LoRA is not enabled. Please set `--enable-lora` to enable LoRA.", server)
    with server.model.lock:
        if name not in server.model.adapters:
            return sglang_result(False, f"Failed to unload LoRA adapter {name}: it is not loaded", server)
        path = server.model.adapters[name]
        server.model.unload_adapter(name)
        server.record_load("unload", name, path)
    return sglang_result(True, None, server)


def update_weights(server: ModelServer, body: dict, headers: Headers) -> Reply:
    path = body.get("model_path")
    try:
        if not isinstance(path, str):
            raise ModelError("model_path must be given")
        server.model.reload_weights(path)
    except ModelError as error:
        return 400, {"success": False, "message": f"Failed to update weights: {error.message}",
                     "num_paused_requests": 0}, {}
    server.served_name = path
    message = "Succeeded to update model weights."
    if body.get("weight_version") is not None:
        server.weight_version = str(body["weight_version"])
        message += f" Weight version updated to {server.weight_version}."
    server.record_load("reload_weights", path, path)
    return 200, {"success": True, "message": message, "num_paused_requests": 0}, {}


def update_weight_version(server: ModelServer, body: dict, headers: Headers) -> Reply:
    server.weight_version = str(body.get("new_version"))
    return 200, {"success": True, "message": f"Weight version updated to {server.weight_version}.",
                 "new_version": server.weight_version}, {}


def model_info(server: ModelServer, body: dict, headers: Headers) -> Reply:
    config = json.loads((Path(server.weights_path) / "config.json").read_text())
    return 200, {"model_path": server.weights_path, "served_model_name": server.served_name,
                 "tokenizer_path": server.model_dir, "is_generation": True, "preferred_sampling_params": None,
                 "weight_version": server.weight_version, "load_format": "auto", "reasoning_parser": None,
                 "tool_call_parser": None, "disaggregation_mode": "null", "has_image_understanding": False,
                 "has_audio_understanding": False, "model_type": config.get("model_type"),
                 "architectures": config.get("architectures")}, {}


def server_info(server: ModelServer, body: dict, headers: Headers) -> Reply:
    own = json.loads((Path(server.model_dir) / "config.json").read_text()).get("max_position_embeddings")
    return 200, {
        "model_path": server.model_dir, "tokenizer_path": server.model_dir, "served_model_name": server.served_name,
        "context_length": None if own == server.max_model_len else server.max_model_len, "dtype": server.dtype,
        "kv_cache_dtype": server.kv_cache_dtype, "disable_radix_cache": False, "attention_backend": "torch_native",
        "enable_lora": server.enable_lora, "max_lora_rank": server.max_lora_rank, "lora_target_modules": None,
        "max_loras_per_batch": 8, "enable_deterministic_inference": True, "weight_version": server.weight_version,
        "max_total_num_tokens": server.max_model_len * 8, "max_req_input_len": server.max_model_len - 1,
        "version": SGLANG_VERSION, "frontend": "python", "internal_states": [{}],
    }, {}


def sglang_models(server: ModelServer, body: dict, headers: Headers) -> Reply:
    created = int(time.time())
    cards = [{"id": server.served_name, "object": "model", "created": created, "owned_by": "sglang",
              "root": server.served_name, "max_model_len": server.max_model_len}]
    cards += [{"id": name, "object": "model", "created": created, "owned_by": "sglang", "root": path,
               "parent": server.served_name, "max_model_len": None} for name, path in server.model.adapters.items()]
    return 200, {"object": "list", "data": cards}, {}


# --- mlx ------------------------------------------------------------------------------------

def mlx_switch(server: ModelServer, model: object, adapters: object) -> str | None:
    """Make (model, adapters) the resident model; the adapter name to sample from."""
    default = model in (None, "default_model")
    path = server.model_dir if default else str(model)
    wanted = (path, None if default or adapters is None else str(adapters))
    if wanted == server.mlx_key:
        return wanted[1]
    for name, adapter_path in list(server.model.adapters.items()):
        server.model.unload_adapter(name)
        server.record_load("unload", name, adapter_path)
    server.mlx_key = (server.weights_path, None)
    if path != server.weights_path:
        server.model.reload_weights(path)
        server.record_load("reload_weights", path, path)
        server.mlx_key = (path, None)
    if wanted[1] is not None:
        if not adapter_folder(wanted[1]):
            raise ModelError(f"No adapter found at {wanted[1]}")
        server.model.load_adapter(wanted[1], wanted[1])
        server.record_load("load", wanted[1], wanted[1])
    server.mlx_key = wanted
    return wanted[1]


def mlx_options(body: dict) -> tuple[bool, int]:
    """``logprobs`` and ``top_logprobs``; invalid ones crash the real server's handler."""
    wanted, top = body.get("logprobs", False), body.get("top_logprobs", -1)
    if not isinstance(wanted, bool) or not isinstance(top, int) or isinstance(top, bool) or not -1 <= top <= 11:
        raise DropConnection
    return wanted, top


def mlx_complete(server: ModelServer, body: dict, chat: bool) -> Reply:
    wanted, top = mlx_options(body)
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    with server.model.lock:
        try:
            adapter = mlx_switch(server, body.get("model"), body.get("adapters"))
            prompt = chat_prompt(server, body) if chat else mlx_encode(server, body.get("prompt"))
            params = Sampling(1, integer(body, key, 512, 1) or 512, number(body, "temperature", 0.0, 0.0),
                              number(body, "top_p", 1.0, 0.0, 1.0), integer(body, "seed", None))
            generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
            sample = server.model.sample(adapter, prompt, params, generator, max(top, 0))[0]
        except ModelError as error:
            raise ModelError(error.message, 404) from None
    text = text_of(server, sample)
    choice: dict[str, object] = {"index": 0, "finish_reason": sample.finish_reason}
    choice.update({"message": {"role": "assistant", "content": text, "tool_calls": []}} if chat else {"text": text})
    if wanted or top > 0:
        choice["logprobs"] = {"content": mlx_logprobs(server, sample, top)}
    counts = usage([prompt], [(0, sample)])
    return 200, {"id": new_id("chatcmpl" if chat else "cmpl"), "system_fingerprint": "fp_fake",
                 "object": "chat.completion" if chat else "text_completion",
                 "model": body.get("model", "default_model"), "created": int(time.time()), "choices": [choice],
                 "usage": {**counts, "prompt_tokens_details": {"cached_tokens": 0}}}, {}


def mlx_encode(server: ModelServer, prompt: object) -> list[int]:
    if not isinstance(prompt, str):
        raise ModelError("TextEncodeInput must be Union[TextInputSequence, Tuple[InputSequence, InputSequence]]")
    return encode(server, prompt)


def mlx_logprobs(server: ModelServer, sample: Sample, top: int) -> list[dict[str, object]]:
    if top <= 0:
        return [{"id": token, "logprob": value} for token, value in zip(sample.token_ids, sample.logprobs)]
    entries = []
    for alternatives in sample.top:
        listed = [{"id": token, "token": server.model.tokenizer.decode([token]), "logprob": value}
                  for token, value in alternatives]
        entries.append({"id": listed[0]["id"], "logprob": listed[0]["logprob"], "top_logprobs": listed})
    return entries


def mlx_models(server: ModelServer, body: dict, headers: Headers) -> Reply:
    return 200, {"object": "list", "data": [{"id": server.weights_path, "object": "model",
                                             "created": int(time.time())}]}, {}


def native_routes(server: ModelServer) -> dict[tuple[str, str], Route]:
    if server.dialect == "mlx":
        def complete(s: ModelServer, b: dict, h: Headers) -> Reply:
            return mlx_complete(s, b, chat=False)

        def chat(s: ModelServer, b: dict, h: Headers) -> Reply:
            return mlx_complete(s, b, chat=True)

        return {("GET", "/health"): lambda *_: (200, {"status": "ok"}, {}), ("GET", "/v1/models"): mlx_models,
                ("POST", "/v1/completions"): complete, ("POST", "/v1/chat/completions"): chat,
                ("POST", "/chat/completions"): chat}
    table: dict[tuple[str, str], Route] = {
        ("POST", "/generate"): generate, ("PUT", "/generate"): generate,
        ("POST", "/load_lora_adapter"): sglang_load, ("POST", "/unload_lora_adapter"): sglang_unload,
        ("POST", "/update_weights_from_disk"): update_weights, ("POST", "/update_weight_version"): update_weight_version,
        ("GET", "/v1/models"): sglang_models,
    }
    for path in ("/health", "/health_generate", "/ready"):
        table[("GET", path)] = empty
    for path in ("/model_info", "/get_model_info"):
        table[("GET", path)] = model_info
    for path in ("/server_info", "/get_server_info"):
        table[("GET", path)] = server_info
    for method in ("GET", "POST"):
        table[(method, "/flush_cache")] = lambda *_: (200, FLUSHED, {})
    return table


def native_error(server: ModelServer, error: ModelError, route: bool = True) -> object:
    if server.dialect == "mlx":
        return error.message if not route else {"error": error.message}
    if not route:
        return {"detail": error.message}
    if error.kind == "schema":
        return {"error": error.message}
    return {"error": {"message": error.message}}
