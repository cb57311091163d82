"""The OpenAI-shaped dialects of the fake inference server: ``vllm``, ``openai`` (a
generic OpenAI-compatible server) and ``max`` (Modular MAX); ``fakes.server_native`` has
``sglang`` and ``mlx``. Each route is ``(server, body, headers) -> (status, body, headers)``;
a ``ModelError`` becomes the dialect's error reply (``shape_error``).

Wire facts followed (vLLM 0.34.0, MAX 26.7.0, the OpenAI API reference):

- ``/v1/completions`` takes a string, strings, token ids or lists of token ids; choices are
  prompt-major (``index = prompt_i * n + j``). vLLM selects an adapter by ``model`` = its
  name (unknown -> 404 NotFoundError "The model `x` does not exist."), caps ``logprobs`` at
  20, takes ``return_tokens_as_token_ids`` (tokens ``"token_id:<id>"``), ``return_token_ids``
  (``token_ids``/``prompt_token_ids`` per choice), ``cache_salt`` (1..1024 characters) and
  gives ``stop_reason`` (the stop token id, null for EOS). The stop token is in the
  logprobs but not in ``text``. Logprobs are clamped at -9999.0 as vLLM does.
- vLLM errors are ``{"error": {"message", "type", "param", "code"}}``; an unknown route is
  FastAPI's 404 ``{"detail": "Not Found"}``. The LoRA routes exist only with runtime LoRA
  updating (``runtime_lora``); success is a plain-text body; a duplicate name is 400
  InvalidUserInput (unless ``load_inplace``), a name equal to the base model 400, a missing
  adapter folder 404, a rank above ``max_lora_rank`` 500 InternalServerError, an unknown
  unload 404. LoRA not enabled: 400 (the facts are silent; the fake's choice).
- vLLM dev-mode routes (served as if ``VLLM_SERVER_DEV_MODE=1``): ``/collective_rpc`` with
  ``reload_weights`` (``kwargs.weights_path``) reloads the base from a folder;
  ``/reset_prefix_cache``, ``/pause``, ``/resume``, ``/is_paused``, ``/update_weight_version``,
  ``/weight_info``, ``/server_info`` (``vllm_config`` as JSON). Also
  ``/inference/v1/generate`` (tokens in, tokens out, one prompt).
- MAX: ``n`` is ignored (one choice per prompt, ``index`` = prompt position); ``logprobs``
  must be 0..7, and non-zero is refused when ``max_overlap_scheduler`` is on; completion
  logprobs carry only ``token_logprobs``/``top_logprobs`` (``tokens``, ``text_offset`` null);
  unknown completion fields are 422; an unknown model is 400 "Value error."; errors use
  ``{"error": {"code": "<status>", "message", "param": "", "type"}}``. LoRA: success
  ``{"status": "success", "message"}``, disabled 501, same name with another path 409 (same
  path: success), bad path 400, rank too big 400, unknown unload 404.
- ``openai``: no ``return_tokens_as_token_ids`` (tokens are text pieces), ``logprobs`` up to
  5, no ``stop_reason``; vLLM's LoRA routes when ``runtime_lora``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from fakes.model_server import ModelError, Sample, Sampling, adapter_rank

if TYPE_CHECKING:
    from fakes.model_server import Headers, ModelServer, Reply

Route = Callable[["ModelServer", dict, "Headers"], "Reply"]
SAMPLING_PATHS = {"/v1/completions", "/v1/chat/completions", "/chat/completions", "/generate",
                  "/inference/v1/generate"}
MAX_COMPLETION_FIELDS = {
    "model", "prompt", "best_of", "echo", "frequency_penalty", "logit_bias", "logprobs", "max_tokens", "n",
    "presence_penalty", "seed", "stop", "stream", "stream_options", "suffix", "temperature", "top_p", "user", "top_k",
    "min_p", "repetition_penalty", "min_tokens", "stop_token_ids", "ignore_eos", "return_token_ids", "cache_salt",
    "target_endpoint",
}
LOGPROB_CAPS = {"vllm": 20, "openai": 5, "max": 7}
MAX_ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 409: "conflict_error",
                   422: "invalid_request_error", 501: "not_implemented_error"}


# --- request fields -----------------------------------------------------------------------

def integer(body: dict, key: str, default: int | None, low: int | None = None, high: int | None = None) -> int | None:
    value = body.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ModelError(f"'{key}' must be an integer, got {value!r}.")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ModelError(f"'{key}' must be in [{low}, {high}], got {value}.")
    return value


def number(body: dict, key: str, default: float, low: float, high: float | None = None) -> float:
    value = body.get(key, default)
    if value is None:
        return default
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ModelError(f"'{key}' must be a number, got {value!r}.")
    if value < low or (high is not None and value > high):
        raise ModelError(f"'{key}' must be in [{low}, {high}], got {value}.")
    return float(value)


def token_list(value: object, key: str) -> list[int]:
    if not isinstance(value, list) or not all(isinstance(t, int) and not isinstance(t, bool) for t in value):
        raise ModelError(f"'{key}' must be a list of token ids.")
    return list(value)


def encode(server: ModelServer, text: str) -> list[int]:
    return list(server.model.tokenizer(text, add_special_tokens=False)["input_ids"])


def prompts_of(server: ModelServer, prompt: object) -> list[list[int]]:
    """A completions prompt (a string, strings, token ids or lists of them) as token id lists."""
    if isinstance(prompt, str):
        return [encode(server, prompt)]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(item, str) for item in prompt):
            return [encode(server, item) for item in prompt]
        if all(isinstance(item, list) for item in prompt):
            return [token_list(item, "prompt") for item in prompt]
        return [token_list(prompt, "prompt")]
    raise ModelError("'prompt' must be a string, a list of strings, a list of token ids or a list of token id lists.")


def check_length(server: ModelServer, prompt: list[int], max_tokens: int) -> None:
    server.model.check_prompt(prompt)
    limit, size = server.max_model_len, len(prompt)
    if size >= limit:
        raise ModelError(f"This model's maximum context length is {limit} tokens. However, your request has {size} "
                         "input tokens. Please reduce the length of the input messages.")
    if size + max_tokens > limit:
        raise ModelError(f"'max_tokens' or 'max_completion_tokens' is too large: {max_tokens}. This model's maximum "
                         f"context length is {limit} tokens and your request has {size} input tokens ({max_tokens} > "
                         f"{limit} - {size}).")


def sampling(server: ModelServer, body: dict, prompts: list[list[int]], max_key: str = "max_tokens") -> Sampling:
    """The sampling parameters of an OpenAI-style request, checked against the context length."""
    n = integer(body, "n", 1, 1) if server.dialect in ("vllm", "openai") else 1
    max_tokens = integer(body, max_key, 16 if server.dialect == "openai" else None, 1)
    temperature = number(body, "temperature", 1.0, 0.0)
    top_p = number(body, "top_p", 1.0, 0.0, 1.0)
    if top_p <= 0:
        raise ModelError(f"top_p must be in (0, 1], got {top_p}.")
    seed = integer(body, "seed", None, -(2 ** 63), 2 ** 63 - 1)
    stops = token_list(body.get("stop_token_ids") or [], "stop_token_ids")
    if max_tokens is None:
        max_tokens = server.max_model_len - max(len(prompt) for prompt in prompts)
    for prompt in prompts:
        check_length(server, prompt, max_tokens)
    return Sampling(n, max_tokens, temperature, top_p, seed, tuple(stops), bool(body.get("ignore_eos")))


def sample_all(server: ModelServer, adapter: str | None, prompts: list[list[int]], params: Sampling,
               top_k: int = 0) -> list[tuple[int, Sample]]:
    """(prompt index, sample) for every sample, prompt-major; one seeded generator per request."""
    generator = torch.Generator().manual_seed(params.seed) if params.seed is not None else None
    return [(index, sample) for index, prompt in enumerate(prompts)
            for sample in server.model.sample(adapter, prompt, params, generator, top_k)]


def text_of(server: ModelServer, sample: Sample, skip_special: bool = True, trim_stop: bool = True) -> str:
    ids = sample.token_ids[:-1] if trim_stop and sample.finish_reason == "stop" else sample.token_ids
    return server.model.tokenizer.decode(ids, skip_special_tokens=skip_special)


def piece(server: ModelServer, token: int, as_id: bool = False) -> str:
    return f"token_id:{token}" if as_id else server.model.tokenizer.decode([token])


def usage(prompts: list[list[int]], samples: list[tuple[int, Sample]]) -> dict[str, int]:
    prompt_tokens = sum(len(prompt) for prompt in prompts)
    completion_tokens = sum(len(sample.token_ids) for _, sample in samples)
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


# --- OpenAI-style sampling routes -----------------------------------------------------------

def model_param(server: ModelServer, name: object) -> str | None:
    """The adapter ``model`` names (None: the base model)."""
    if name is None or name == server.served_name:
        return None
    if isinstance(name, str) and name in server.model.adapters:
        return name
    if server.dialect == "max":
        raise ModelError("Value error.", 400)
    raise ModelError(f"The model `{name}` does not exist.", 404, "NotFoundError")


def logprobs_count(server: ModelServer, body: dict) -> int | None:
    cap = LOGPROB_CAPS[server.dialect]
    count = integer(body, "logprobs", None)
    if count is not None and not 0 <= count <= cap:
        raise ModelError(f"Requested sample logprobs of {count}, which is greater than max allowed: {cap}")
    if server.dialect == "max" and count and server.max_overlap_scheduler:
        raise ModelError("Log probabilities are not supported with the overlap scheduler. Start the server with "
                         "--no-enable-overlap-scheduler or --allow-unsupported-logprobs.")
    return None if server.dialect == "max" and count == 0 else count


def check_cache_salt(body: dict) -> None:
    salt = body.get("cache_salt")
    if salt is not None and (not isinstance(salt, str) or not 1 <= len(salt) <= 1024):
        raise ModelError("Parameter 'cache_salt' must be a non-empty string if provided.")


def completions(server: ModelServer, body: dict, headers: Headers) -> Reply:
    if server.dialect == "max" and set(body) - MAX_COMPLETION_FIELDS:
        raise ModelError(f"Extra inputs are not permitted: {sorted(set(body) - MAX_COMPLETION_FIELDS)}", 422)
    adapter = model_param(server, body.get("model"))
    prompts = prompts_of(server, body.get("prompt"))
    count = logprobs_count(server, body)
    check_cache_salt(body)
    params = sampling(server, body, prompts)
    samples = sample_all(server, adapter, prompts, params, count or 0)
    as_ids = server.dialect == "vllm" and bool(body.get("return_tokens_as_token_ids"))
    skip = body.get("skip_special_tokens")
    choices = []
    for index, (prompt_index, sample) in enumerate(samples):
        text = text_of(server, sample, skip is not False, not body.get("include_stop_str_in_output"))
        choice = {"index": index, "text": text, "logprobs": None,
                  "finish_reason": sample.finish_reason}
        if count is not None:
            choice["logprobs"] = legacy_logprobs(server, sample, count, as_ids)
        add_token_fields(server, choice, sample, prompts[prompt_index], body)
        choices.append(choice)
    return 200, {"id": new_id("cmpl"), "object": "text_completion", "created": int(time.time()),
                 "model": body.get("model") or server.served_name, "choices": choices,
                 "usage": usage(prompts, samples)}, {}


def legacy_logprobs(server: ModelServer, sample: Sample, count: int, as_ids: bool) -> dict[str, object]:
    tokens = [piece(server, token, as_ids) for token in sample.token_ids]
    values = [max(value, -9999.0) for value in sample.logprobs]
    tops = []
    for token, value, top in zip(tokens, values, sample.top or [[] for _ in tokens]):
        entry = {token: value}
        for other, other_value in top[:count]:
            entry.setdefault(piece(server, other, as_ids), max(other_value, -9999.0))
        tops.append(entry)
    if server.dialect == "max":
        return {"text_offset": None, "token_logprobs": values, "tokens": None, "top_logprobs": tops}
    offsets = [sum(len(token) for token in tokens[:index]) for index in range(len(tokens))]
    return {"text_offset": offsets, "token_logprobs": values, "tokens": tokens, "top_logprobs": tops}


def add_token_fields(server: ModelServer, choice: dict, sample: Sample, prompt: list[int], body: dict) -> None:
    if server.dialect == "vllm":
        choice["stop_reason"] = sample.matched if sample.matched != server.model.eos_token_id else None
    if server.dialect in ("vllm", "max") and body.get("return_token_ids"):
        choice["token_ids"] = list(sample.token_ids)
        choice["prompt_token_ids"] = list(prompt)


def chat_prompt(server: ModelServer, body: dict) -> list[int]:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(
            isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
            for m in messages):
        raise ModelError("'messages' must be a non-empty list of {role, content} objects with string content.")
    text = server.model.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return encode(server, text)


def chat_completions(server: ModelServer, body: dict, headers: Headers) -> Reply:
    adapter = model_param(server, body.get("model"))
    prompt = chat_prompt(server, body)
    wanted = bool(body.get("logprobs"))
    top = integer(body, "top_logprobs", 0, 0, 20) or 0
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    params = sampling(server, body, [prompt], key)
    samples = sample_all(server, adapter, [prompt], params, top)
    as_ids = server.dialect == "vllm" and bool(body.get("return_tokens_as_token_ids"))
    choices = []
    for index, (_, sample) in enumerate(samples):
        choice = {"index": index, "message": {"role": "assistant", "content": text_of(server, sample)},
                  "logprobs": {"content": chat_logprobs(server, sample, top, as_ids)} if wanted else None,
                  "finish_reason": sample.finish_reason}
        add_token_fields(server, choice, sample, prompt, body)
        choices.append(choice)
    return 200, {"id": new_id("chatcmpl"), "object": "chat.completion", "created": int(time.time()),
                 "model": body.get("model") or server.served_name, "choices": choices,
                 "usage": usage([prompt], samples)}, {}


def chat_logprobs(server: ModelServer, sample: Sample, top: int, as_ids: bool) -> list[dict[str, object]]:
    def entry(token: int, value: float) -> dict[str, object]:
        text = piece(server, token, as_ids)
        return {"token": text, "logprob": max(value, -9999.0), "bytes": list(text.encode())}

    tops = sample.top or [[] for _ in sample.token_ids]
    return [{**entry(token, value), "top_logprobs": [entry(other, other_value) for other, other_value in alternatives]}
            for token, value, alternatives in zip(sample.token_ids, sample.logprobs, tops)]


def vllm_generate(server: ModelServer, body: dict, headers: Headers) -> Reply:
    """``/inference/v1/generate``: token ids in, token ids and logprobs out, one prompt."""
    adapter = model_param(server, body.get("model"))
    prompt = token_list(body.get("token_ids"), "token_ids")
    options = body.get("sampling_params") or {}
    if not isinstance(options, dict):
        raise ModelError("'sampling_params' must be an object.")
    count = integer(options, "logprobs", None, 0, 20)
    check_cache_salt(body)
    params = sampling(server, {"max_tokens": 16, **options}, [prompt])
    samples = sample_all(server, adapter, [prompt], params, count or 0)
    choices = []
    for index, (_, sample) in enumerate(samples):
        content = [{"token_id": token, "logprob": max(value, -9999.0), "rank": rank,
                    "top_logprobs": [{"token_id": other, "logprob": other_value, "rank": place + 1}
                                     for place, (other, other_value) in enumerate(top)]}
                   for token, value, rank, top in zip(sample.token_ids, sample.logprobs, sample.ranks,
                                                      sample.top or [[] for _ in sample.token_ids])]
        choice = {"index": index, "token_ids": list(sample.token_ids), "finish_reason": sample.finish_reason,
                  "logprobs": {"content": content} if count is not None else None}
        add_token_fields(server, choice, sample, prompt, {})
        choices.append(choice)
    return 200, {"request_id": body.get("request_id") or new_id("gen"), "model": body.get("model") or
                 server.served_name, "created": int(time.time()), "output_mode": "tokens", "choices": choices,
                 "usage": usage([prompt], samples),
                 "prompt_token_ids": prompt if body.get("return_token_ids") else None}, {}


# --- models, health, admin ------------------------------------------------------------------

def models(server: ModelServer, body: dict, headers: Headers) -> Reply:
    created = int(time.time())
    owner = {"vllm": "vllm", "max": "", "openai": "system"}[server.dialect]
    base: dict[str, object] = {"id": server.served_name, "object": "model", "created": created, "owned_by": owner}
    cards = [base]
    if server.dialect == "vllm":
        base.update(root=server.model_dir, parent=None, max_model_len=server.max_model_len, permission=[])
    elif server.dialect == "max":
        base["max_model_len"] = server.max_model_len
    elif server.dialect == "openai":
        base.update(root=server.model_dir, parent=None)
    for name, path in server.model.adapters.items():
        card: dict[str, object] = {"id": name, "object": "model", "created": created, "owned_by": owner}
        if server.dialect == "max":
            card["max_model_len"] = server.max_model_len
        else:
            card.update(root=path, parent=server.served_name)
            if server.dialect == "vllm":
                card.update(max_model_len=None, permission=[])
        cards.append(card)
    return 200, {"object": "list", "data": cards}, {}


def empty(server: ModelServer, body: dict, headers: Headers) -> Reply:
    return 200, None, {}


def adapter_folder(path: str) -> bool:
    return Path(path).is_dir() and (Path(path) / "adapter_config.json").is_file()


def vllm_load(server: ModelServer, body: dict, headers: Headers) -> Reply:
    name, path = body.get("lora_name"), body.get("lora_path")
    if not name or not path:
        raise ModelError("Both 'lora_name' and 'lora_path' must be provided.", 400, "InvalidUserInput")
    if not server.enable_lora:
        raise ModelError("LoRA is not enabled. Use --enable-lora to enable LoRA.", 400)
    if name == server.served_name:
        raise ModelError(f"The lora adapter '{name}' conflicts with a served base model.", 400, "InvalidUserInput")
    with server.model.lock:
        in_place = bool(body.get("load_inplace"))
        if name in server.model.adapters and not in_place:
            raise ModelError(f"The lora adapter '{name}' has already been loaded. If you want to load the adapter in "
                             "place, set 'load_inplace' to True.", 400, "InvalidUserInput")
        if not adapter_folder(path):
            raise ModelError(f"Loading lora {name} failed: No adapter found for {path}", 404, "NotFoundError")
        rank = adapter_rank(path)
        if rank > server.max_lora_rank:
            raise ModelError(f"LoRA rank {rank} is greater than max_lora_rank {server.max_lora_rank}.", 500,
                             "InternalServerError")
        if name in server.model.adapters:
            server.model.unload_adapter(name)
        server.model.load_adapter(name, path)
        server.record_load("load", name, path)
    return 200, f"Success: LoRA adapter '{name}' added successfully.", {}


def vllm_unload(server: ModelServer, body: dict, headers: Headers) -> Reply:
    name = body.get("lora_name")
    if not name:
        raise ModelError("'lora_name' needs to be provided to unload a LoRA adapter.", 400, "InvalidUserInput")
    with server.model.lock:
        if name not in server.model.adapters:
            raise ModelError(f"The lora adapter '{name}' cannot be found.", 404, "NotFoundError")
        path = server.model.adapters[name]
        server.model.unload_adapter(name)
        server.record_load("unload", name, path)
    return 200, f"Success: LoRA adapter '{name}' removed successfully.", {}


def max_load(server: ModelServer, body: dict, headers: Headers) -> Reply:
    name, path = body.get("lora_name"), body.get("lora_path")
    if set(body) - {"lora_name", "lora_path"} or not isinstance(name, str) or not isinstance(path, str):
        raise ModelError("The body must be exactly {lora_name: str, lora_path: str}.", 422)
    if not server.enable_lora:
        raise ModelError("LoRA is not enabled on this server; start it with --enable-lora.", 501)
    with server.model.lock:
        if server.model.adapters.get(name) == path:
            return 200, {"status": "success", "message": f"LoRA adapter '{name}' loaded successfully"}, {}
        if name in server.model.adapters:
            raise ModelError(f"LoRA adapter '{name}' is already loaded from a different path.", 409)
        if not adapter_folder(path):
            raise ModelError(f"Invalid LoRA adapter path: {path}", 400)
        rank = adapter_rank(path)
        if rank > server.max_lora_rank:
            raise ModelError(f"LoRA of rank {rank} exceeds maximum rank of {server.max_lora_rank}.", 400)
        server.model.load_adapter(name, path)
        server.record_load("load", name, path)
    return 200, {"status": "success", "message": f"LoRA adapter '{name}' loaded successfully"}, {}


def max_unload(server: ModelServer, body: dict, headers: Headers) -> Reply:
    name = body.get("lora_name")
    if not server.enable_lora:
        raise ModelError("LoRA is not enabled on this server; start it with --enable-lora.", 501)
    with server.model.lock:
        if name not in server.model.adapters:
            raise ModelError(f"LoRA adapter '{name}' is not loaded.", 404)
        path = server.model.adapters[name]
        server.model.unload_adapter(name)
        server.record_load("unload", name, path)
    return 200, {"status": "success", "message": f"LoRA adapter '{name}' unloaded successfully"}, {}


def vllm_rpc(server: ModelServer, body: dict, headers: Headers) -> Reply:
    if body.get("method") != "reload_weights":
        raise ModelError(f"This server does not run the method {body.get('method')!r}.", 500, "InternalServerError")
    kwargs = body.get("kwargs") or {}
    path = kwargs.get("weights_path") or server.model_dir
    try:
        server.model.reload_weights(path)
    except ModelError as error:
        raise ModelError(error.message, 500, "InternalServerError") from None
    server.record_load("reload_weights", path, path)
    return 200, {"results": [None]}, {}


def vllm_admin(server: ModelServer, body: dict, headers: Headers, path: str) -> Reply:
    """The dev-mode routes that only set or report state."""
    if path == "/update_weight_version":
        server.weight_version = str(body.get("new_version"))
        return 200, {"success": True, "new_version": server.weight_version}, {}
    if path in ("/pause", "/resume"):
        server.paused = path == "/pause"
        return 200, {"status": "paused" if server.paused else "resumed"}, {}
    replies = {"/reset_prefix_cache": {"success": True}, "/is_paused": {"is_paused": server.paused},
               "/weight_info": {"weight_version": server.weight_version}, "/version": {"version": "0.34.0"}}
    return 200, replies[path], {}


def vllm_server_info(server: ModelServer, body: dict, headers: Headers) -> Reply:
    """Dev-mode ``/server_info?config_format=json``: the engine configuration as JSON
    (dtypes as their torch names), the VLLM_* environment and a system report."""
    lora = {"max_lora_rank": server.max_lora_rank, "max_loras": 1, "fully_sharded_loras": False} \
        if server.enable_lora else None
    config = {"model_config": {"model": server.model_dir, "dtype": f"torch.{server.dtype}",
                               "max_model_len": server.max_model_len, "served_model_name": server.served_name},
              "cache_config": {"cache_dtype": server.kv_cache_dtype, "enable_prefix_caching": True},
              "lora_config": lora, "attention_config": {"backend": None}}
    env = {"VLLM_SERVER_DEV_MODE": True, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": server.runtime_lora}
    return 200, {"vllm_config": config, "vllm_env": env, "system_env": {"os": "Linux"}}, {}


def admin_route(path: str) -> Route:
    return lambda server, body, headers: vllm_admin(server, body, headers, path)


def openai_routes(server: ModelServer) -> dict[tuple[str, str], Route]:
    table: dict[tuple[str, str], Route] = {
        ("GET", "/health"): empty, ("GET", "/v1/models"): models,
        ("POST", "/v1/completions"): completions, ("POST", "/v1/chat/completions"): chat_completions,
    }
    lora = {("POST", "/v1/load_lora_adapter"): vllm_load, ("POST", "/v1/unload_lora_adapter"): vllm_unload}
    if server.dialect == "vllm":
        table[("POST", "/inference/v1/generate")] = vllm_generate
        table[("POST", "/collective_rpc")] = vllm_rpc
        table[("GET", "/server_info")] = vllm_server_info
        for method, path in [("GET", "/version"), ("POST", "/reset_prefix_cache"), ("POST", "/pause"),
                             ("POST", "/resume"), ("GET", "/is_paused"), ("POST", "/update_weight_version"),
                             ("GET", "/weight_info")]:
            table[(method, path)] = admin_route(path)
    if server.dialect == "max":
        lora = {("POST", "/v1/load_lora_adapter"): max_load, ("POST", "/v1/unload_lora_adapter"): max_unload}
        table.update({("GET", "/v1/health"): empty, ("GET", "/version"): lambda *_: (200, {"version": "26.7.0"}, {}),
                      ("POST", "/reset_prefix_cache"): empty})
    if server.dialect == "max" or server.runtime_lora:
        table.update(lora)
    return table


def openai_error(server: ModelServer, error: ModelError, route: bool = True) -> object:
    if server.dialect == "max":
        kind = MAX_ERROR_TYPES.get(error.status, "api_error")
        return {"error": {"code": str(error.status), "message": error.message, "param": "", "type": kind}}
    if not route:
        return {"detail": error.message}
    return {"error": {"message": error.message, "type": error.kind, "param": None, "code": error.status}}


def routes_for(server: ModelServer) -> tuple[dict[tuple[str, str], Route], set[str], Callable[..., object]]:
    """The dialect's routes, the paths that sample (and so wait ``latency_s``), and its error shape."""
    if server.dialect in ("sglang", "mlx"):
        from fakes.server_native import native_error, native_routes

        return native_routes(server), SAMPLING_PATHS, lambda error, route=True: native_error(server, error, route)
    return openai_routes(server), SAMPLING_PATHS, lambda error, route=True: openai_error(server, error, route)
