"""Engines that sample from an inference server over HTTP: ``vllm``, ``sglang``,
``openai`` (any OpenAI-compatible server), ``max`` (Modular MAX) and ``mlx``
(``mlx_lm.server``). No server's Python package is imported — only its HTTP API is used,
so any server version that speaks it works.

Every engine here:

- probes the server when it is built, before any training (``server_probe``);
- sends the prompts as token ids where the server takes them, so the server and the
  trainer see the same tokens (a text prompt is counted in ``engine_text_prompts``);
- has all of a step's requests in flight at once, at most ``[inference]
  max_requests_in_flight``, through one HTTP client (``retrain/http.py``: deadline ``[inference]
  request_timeout_s`` per request with its retries, backoff on 429/5xx honouring Retry-After,
  cancellation on Ctrl-C); a request that fails for good fails the step — no partial
  step is trained;
- stops sampling on the tokenizer's end-of-turn tokens;
- loads every published policy version (``server_sync``): LoRA adapters under
  versioned names, full weights reloaded from disk where the server can, and checks that
  the server serves the version just loaded.

The engine's own tokenizer (``[model] model``'s) decodes texts, maps tokens to character
spans and checks that every sampled id is in the vocabulary.
"""

from __future__ import annotations

import abc
import collections
import json
import logging
import os
import threading
from pathlib import Path
from typing import ClassVar

import numpy as np

from retrain.concurrency import map_with_deadlines
from retrain.config.schema import Config
from retrain.engines import server_probe as probe
from retrain.engines.dialects import (
    Completion,
    Dialect,
    MalformedReply,
    MLXCompletions,
    OpenAICompletions,
    SampleRequest,
    SGLangGenerate,
    VLLMCompletions,
)
from retrain.engines.server_sync import (
    DiskReload,
    VersionedAdapters,
    WeightSync,
    adapter_prefix,
    sglang_reload,
    vllm_reload,
)
from retrain.engines.spans import SpanDecoder, end_of_turn_ids
from retrain.errors import ConfigIssue, EngineError
from retrain.http import DeadlineExceeded, HttpClient, HttpError, RequestCancelled, parse_endpoint
from retrain.types import EngineCapabilities, PolicyKind, PolicyRef, SampleBatch, SamplingParams

logger = logging.getLogger(__name__)

STATE_FILE = "http_engine_state.json"
# Component settings every HTTP engine reads (see EngineCapabilities.reads).
READS = ("inference.url", "inference.served_model", "inference.api_key", "inference.request_timeout_s",
         "inference.max_requests_in_flight", "inference.allow_stale_weights")


def server_root(url: str) -> str:
    """``[inference] url`` without a trailing ``/v1``: OpenAI clients are given the
    ``/v1`` base, native endpoints (SGLang's ``/generate``, ``/health``) live at the root."""
    stripped = url.rstrip("/")
    return stripped[:-3] if stripped.endswith("/v1") else stripped


class ServerEngine(abc.ABC):
    """What every HTTP engine shares; a subclass names its server, dialect, probe and sync."""

    server: ClassVar[str] = "OpenAI-compatible"
    launch: ClassVar[str] = "see docs/inference-servers.md"
    # How to let the server load adapters at runtime.
    lora_flags: ClassVar[str] = "use a server that loads LoRA adapters at runtime (vllm, sglang)"
    # None when the server can reload full weights, else the plan-time error's fix.
    full_weights_fix: ClassVar[str | None] = "train a LoRA adapter ([model] lora_rank > 0), or use engine = \"sglang\""
    # Whether a reload replaces the weights in place (sampling must pause around it).
    in_place_reload: ClassVar[bool] = True

    @classmethod
    def capabilities(cls, config: Config) -> EngineCapabilities:
        kind: PolicyKind = "lora_adapter" if config.model.lora_rank > 0 else "full_weights"
        flags = tuple((f"inference.{key}", cls.server_flag(key)) for key in probe.SERVER_SIDE_SETTINGS)
        return EngineCapabilities(loads=(kind,), reads=READS, server_settings=flags)

    @classmethod
    def server_flag(cls, key: str) -> str:
        """The server flag that sets ``[inference] key``."""
        return "a server launch option (see the server's documentation)"

    @classmethod
    def config_issues(cls, config: Config) -> list[ConfigIssue]:
        issues = []
        if not config.inference.url:
            issues.append(ConfigIssue("", "inference", "url", f"engine = \"{config.inference.engine}\" samples from a "
                                      "server, and no url is set", "set url, e.g. \"http://127.0.0.1:8000\""))
        else:
            try:
                parse_endpoint(server_root(config.inference.url), "[inference] url")
            except HttpError as error:
                issues.append(ConfigIssue("", "inference", "url", str(error), "give an http:// or https:// URL"))
        if config.model.lora_rank == 0 and cls.full_weights_fix is not None:
            issues.append(ConfigIssue("", "model", "lora_rank", f"0 (full fine-tuning) needs the {cls.server} server "
                                      "to reload full weights after every update, which it cannot",
                                      cls.full_weights_fix))
        return issues

    def __init__(self, config: Config) -> None:
        from retrain.backends.model_loading import load_tokenizer
        from retrain.models.tiny import resolve_model_path

        inference = config.inference
        self.config = config
        self.url = parse_endpoint(server_root(inference.url), "[inference] url").shown
        headers = self.auth_headers(config)
        endpoint = parse_endpoint(server_root(inference.url), "[inference] url")
        timeout_s = inference.request_timeout_s
        self.client = HttpClient(endpoint, deadline_s=timeout_s, read_timeout_s=timeout_s, headers=headers)
        self.control = HttpClient(endpoint, deadline_s=min(inference.request_timeout_s, 300.0), max_attempts=3,
                                  backoff_s=0.5, headers=headers)
        model_path = resolve_model_path(config.model.model)
        self.tokenizer = load_tokenizer(config.model.model, model_path)
        self.vocab_size = len(self.tokenizer)
        self.stop_token_ids = end_of_turn_ids(self.tokenizer, model_path)
        self.spans = SpanDecoder(self.tokenizer)
        self.seed = config.training.seed
        self.requests = 0
        self.prefix = adapter_prefix(str(Path(config.logging.log_dir).resolve()))
        self.policy_version = -1
        self.lock = threading.Condition()
        self.in_use: collections.Counter[str] = collections.Counter()
        self.retired: set[str] = set()
        self.dialect = self.make_dialect()
        facts = self.probe()
        problems = probe.facts_problems(facts, config, self.server, self.lora_flags)
        if problems:
            raise EngineError(f"the {self.server} server at {self.url} cannot serve this run:\n  - "
                              + "\n  - ".join(problems))
        self.model = probe.choose_model(facts, inference.served_model, self.url)
        self.max_model_len = facts.max_model_len
        probe.report(facts, config, self.server, self.url, self.model)
        self.sampling_name = self.model
        self.sync: WeightSync = self.make_sync()

    # -- what a server's engine provides ------------------------------------------------

    def auth_headers(self, config: Config) -> dict[str, str]:
        key = config.inference.api_key
        return {"Authorization": f"Bearer {key}"} if key else {}

    @abc.abstractmethod
    def make_dialect(self) -> Dialect:
        """The request and reply shapes of the server's sampling endpoint."""

    @abc.abstractmethod
    def probe(self) -> probe.ServerFacts:
        """What the server says about itself (``server_probe.ServerFacts``)."""

    @abc.abstractmethod
    def make_sync(self) -> WeightSync:
        """How published policies reach the server (``server_sync``)."""

    # -- the Engine contract ----------------------------------------------------------------

    def load(self, ref: PolicyRef) -> None:
        if ref.kind not in ("lora_adapter", "full_weights"):
            raise EngineError(f"the {self.server} engine loads adapter or model folders; it was given a {ref.kind} "
                              "reference")
        if self.in_place_reload and ref.kind == "full_weights":
            with self.lock:  # weights replaced in place: no request may be sampling meanwhile
                self.lock.wait_for(lambda: not self.in_use)
                self._switch(ref, self.sync.load(ref))
        else:
            name = self.sync.load(ref)
            with self.lock:
                self._switch(ref, name)
        self._unload_retired()
        logger.info("%s serves policy version %d as %s", self.server, ref.version, self.sampling_name)

    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams) -> SampleBatch:
        with self.lock:
            version, name = self.policy_version, self.sampling_name
            self.in_use[name] += 1
        try:
            requests = self._requests(prompt_token_ids, params, version, name)
            replies = map_with_deadlines(lambda index: self._sample(requests[index]), len(requests),
                                         max_workers=min(self.config.inference.max_requests_in_flight, len(requests)),
                                         timeout_s=self.config.inference.request_timeout_s + 5.0, overdue=self._overdue,
                                         name="engine-request")
        finally:
            with self.lock:
                self.in_use[name] -= 1
                if not self.in_use[name]:
                    del self.in_use[name]
                self.lock.notify_all()
            self._unload_retired()
        completions = [completion for reply in replies for completion in reply]
        text_prompts = 0 if self.dialect.token_id_prompts else len(requests)
        return self._batch(prompt_token_ids, params.n, completions, version, text_prompts)

    def save_state(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / STATE_FILE).write_text(json.dumps({"requests": self.requests}))

    def load_state(self, directory: Path) -> None:
        state_file = directory / STATE_FILE
        if state_file.is_file():
            self.requests = int(json.loads(state_file.read_text())["requests"])

    def close(self) -> None:
        """Unload this run's adapters from the server and close the connections."""
        sync = getattr(self, "sync", None)  # None when the probe failed in __init__
        if sync is not None:
            sync.close()
        for client in (getattr(self, "client", None), getattr(self, "control", None)):
            if client is not None:
                client.close()  # its pooled keep-alive connections

    # -- internals --------------------------------------------------------------------------

    def _switch(self, ref: PolicyRef, name: str) -> None:
        previous, self.sampling_name, self.policy_version = self.sampling_name, name, ref.version
        if previous not in (name, self.model):
            self.retired.add(previous)

    def _unload_retired(self) -> None:
        """Unload the adapters of older versions that no request samples from any more."""
        with self.lock:
            idle = [name for name in self.retired if not self.in_use[name]]
            self.retired.difference_update(idle)
        for name in idle:
            unload = getattr(self.sync, "unload", None)
            if unload is not None:
                unload(name)

    def _requests(self, prompts: list[list[int]], params: SamplingParams, version: int,
                  name: str) -> list[SampleRequest]:
        per_request = params.n if self.dialect.samples_per_request else 1
        adapter = name if name != self.model else ""
        requests = []
        for prompt in prompts:
            if self.max_model_len is not None and len(prompt) + params.max_tokens > self.max_model_len:
                raise EngineError(f"a prompt of {len(prompt)} tokens plus [training] max_tokens = {params.max_tokens} "
                                  f"exceeds the server's maximum model length {self.max_model_len} — restart it with "
                                  "a larger --max-model-len, or lower max_tokens")
            text = "" if self.dialect.token_id_prompts else self.tokenizer.decode(prompt, skip_special_tokens=False)
            for _ in range(params.n // per_request):
                self.requests += 1
                requests.append(SampleRequest(prompt, text, per_request, params, name, self.seed * 1_000_003 +
                                              self.requests, self.stop_token_ids, f"{self.prefix}-v{version}", adapter))
        return requests

    def _sample(self, request: SampleRequest) -> list[Completion]:
        path = self.dialect.path
        try:
            response = self.client.post_json(path, self.dialect.body(request), f"sampling request /{path}")
        except (RequestCancelled, DeadlineExceeded):
            raise
        except HttpError as error:
            raise EngineError(f"{error} — no step is trained on a partial batch; check the {self.server} server "
                              "(its log says why it refused)") from error
        try:
            reply = json.loads(response.body)
        except ValueError:
            raise MalformedReply(f"/{path} at {self.url} answered with something that is not JSON: "
                                 f"{response.body[:200]!r}") from None
        return self.dialect.parse(reply, request, self._tokenize)

    def _tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False))

    def _overdue(self, index: int) -> BaseException:
        return DeadlineExceeded(f"a sampling request to {self.url} took longer than [inference] request_timeout_s = "
                                f"{self.config.inference.request_timeout_s:g}")

    def _batch(self, prompts: list[list[int]], n: int, completions: list[Completion], version: int,
               text_prompts: int) -> SampleBatch:
        rows = [completion.token_ids for completion in completions]
        lengths = np.array([len(row) for row in rows], dtype=np.int64)
        width = int(lengths.max()) if len(rows) else 0
        mask = np.arange(width)[None, :] < lengths[:, None]
        tokens = np.zeros((len(rows), width), dtype=np.int64)
        logprobs = np.zeros((len(rows), width), dtype=np.float32)
        flat_tokens = np.fromiter((token for row in rows for token in row), dtype=np.int64, count=int(lengths.sum()))
        tokens[mask] = flat_tokens
        logprobs[mask] = np.fromiter((value for c in completions for value in c.logprobs), dtype=np.float32,
                                     count=int(lengths.sum()))
        if flat_tokens.size and (flat_tokens.min() < 0 or flat_tokens.max() >= self.vocab_size):
            bad = int(flat_tokens.max() if flat_tokens.max() >= self.vocab_size else flat_tokens.min())
            raise MalformedReply(f"the {self.server} server at {self.url} sampled token id {bad}, outside the "
                                 f"vocabulary of [model] model ({self.vocab_size} tokens) — it serves another model")
        texts = self.tokenizer.batch_decode(rows, skip_special_tokens=True, clean_up_tokenization_spaces=False)
        return SampleBatch(
            prompt_token_ids=prompts, group_size=n, token_ids_N_T=tokens, mask_N_T=mask, loss_mask_N_T=mask.copy(),
            logprobs_N_T=logprobs, finish_reasons=[c.finish_reason for c in completions], texts=texts,
            token_char_spans=self.spans.batch_spans(rows, texts), policy_version=version,
            counts={"engine_text_prompts": float(text_prompts)},
        )


# ---------------------------------------------------------------------------------------
# The servers


class VLLMEngine(ServerEngine):
    """vLLM's OpenAI-compatible server (checked against vLLM 0.32)."""

    server = "vLLM"
    launch = ("VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 vllm serve MODEL --enable-lora --max-lora-rank R "
              "--max-model-len L")
    lora_flags = ("start it with VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 in its environment and --enable-lora "
                  "--max-lora-rank R")
    full_weights_fix = None

    @classmethod
    def server_flag(cls, key: str) -> str:
        return probe.SERVER_SIDE_SETTINGS[key][1]

    def make_dialect(self) -> Dialect:
        return VLLMCompletions()

    def probe(self) -> probe.ServerFacts:
        probe.reachable(self.control, self.url, self.server, self.launch)
        bases, _, max_len = probe.openai_models(self.control)
        version = probe.get_json(self.control, "version", "asking the server's version", optional=True)
        facts = probe.ServerFacts(models=bases, max_model_len=max_len,
                                  version=str(version.get("version", "")) if isinstance(version, dict) else "")
        info = probe.get_json(self.control, "server_info?config_format=json", "reading the server's configuration",
                              optional=True)
        config = info.get("vllm_config") if isinstance(info, dict) else None
        if isinstance(config, dict):
            probe.vllm_reported(config, facts)
        if self.config.model.lora_rank > 0:
            facts.runtime_lora = probe.probe_runtime_lora(self.control, "v1/unload_lora_adapter")
        elif config is None:
            raise EngineError(f"full fine-tuning reloads the weights into the vLLM server at {self.url} after every "
                              "update, through its development endpoints (/collective_rpc, /reset_prefix_cache) — "
                              "restart it with VLLM_SERVER_DEV_MODE=1 in its environment")
        else:
            probe.refuse_tied_reload(self.config.model.model)
        return facts

    def make_sync(self) -> WeightSync:
        if self.config.model.lora_rank > 0:
            return VersionedAdapters(self.control, "v1/load_lora_adapter", "v1/unload_lora_adapter", self.prefix,
                                     served=lambda: probe.openai_models(self.control)[1])
        return DiskReload(self.control, vllm_reload, reported=lambda: None, served_model=self.model)


class SGLangEngine(ServerEngine):
    """SGLang's native API (checked against SGLang 0.5)."""

    server = "SGLang"
    launch = "python -m sglang.launch_server --model-path MODEL --enable-lora --max-lora-rank R"
    lora_flags = "start it with --enable-lora --max-lora-rank R (and --lora-target-modules all)"
    full_weights_fix = None

    @classmethod
    def server_flag(cls, key: str) -> str:
        return probe.SERVER_SIDE_SETTINGS[key][2]

    def make_dialect(self) -> Dialect:
        return SGLangGenerate()

    def probe(self) -> probe.ServerFacts:
        probe.reachable(self.control, self.url, self.server, self.launch)
        model = self._model_info()
        info = probe.get_json(self.control, "server_info", "reading the server's configuration", optional=True)
        if info is None:  # before SGLang 0.5.x: the older, now deprecated name
            info = probe.get_json(self.control, "get_server_info", "reading the server's configuration", optional=True)
        info = info if isinstance(info, dict) else {}
        path = model.get("model_path") if isinstance(model, dict) else None
        name = info.get("served_model_name") or path
        facts = probe.ServerFacts(models=[str(name)] if name else [], version=str(info.get("version", "")))
        for key in ("context_length", "max_model_len"):
            if isinstance(info.get(key), int):
                facts.max_model_len = int(info[key])
        if facts.max_model_len is None:  # server_info's context_length is null unless set by flag
            facts.max_model_len = probe.openai_models(self.control)[2]
        if "enable_lora" in info or "lora_paths" in info:
            facts.lora_enabled = bool(info.get("enable_lora") or info.get("lora_paths"))
        if isinstance(info.get("max_lora_rank"), int):
            facts.max_lora_rank = int(info["max_lora_rank"])
        for key, field_name in (("dtype", "dtype"), ("kv_cache_dtype", "kv_cache_dtype"),
                                ("attention_kernel", "attention_backend")):
            if info.get(field_name) not in (None, "auto"):
                facts.reported[key] = str(info[field_name]).lower()
        if "disable_radix_cache" in info:
            facts.reported["prefix_caching"] = str(not info["disable_radix_cache"]).lower()
        return facts

    def make_sync(self) -> WeightSync:
        if self.config.model.lora_rank > 0:
            return VersionedAdapters(self.control, "load_lora_adapter", "unload_lora_adapter", self.prefix,
                                     served=lambda: None)
        return DiskReload(self.control, sglang_reload, reported=self._weight_version, served_model=self.model)

    def _model_info(self) -> object:
        reply = probe.get_json(self.control, "model_info", "reading the served model", optional=True)
        return reply if reply is not None else probe.get_json(self.control, "get_model_info", "reading the served model")

    def _weight_version(self) -> str | None:
        """The ``weight_version`` SGLang reports in its model info (set by each reload)."""
        reply = self._model_info()
        if isinstance(reply, dict) and reply.get("weight_version") is not None:
            return str(reply["weight_version"])
        return None


class OpenAIEngine(ServerEngine):
    """Any OpenAI-compatible ``/v1/completions`` server; adapters through the
    ``/v1/load_lora_adapter`` endpoints where the server has them."""

    server = "OpenAI-compatible"
    launch = "see the server's documentation"
    lora_flags = ("the server has no /v1/load_lora_adapter endpoint; use a server that loads adapters at runtime "
                  "(engine = \"vllm\" or \"sglang\")")

    def auth_headers(self, config: Config) -> dict[str, str]:
        key = config.inference.api_key or os.environ.get("OPENAI_API_KEY", "")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def make_dialect(self) -> Dialect:
        return OpenAICompletions()

    def probe(self) -> probe.ServerFacts:
        try:
            bases, _, max_len = probe.openai_models(self.control)
        except RequestCancelled:
            raise
        except HttpError as error:
            raise EngineError(f"cannot list the models of the {self.server} server at {self.url}: {error} — start "
                              "it, or fix [inference] url (and api_key)") from error
        facts = probe.ServerFacts(models=bases, max_model_len=max_len)
        if self.config.model.lora_rank > 0:
            facts.runtime_lora = probe.probe_runtime_lora(self.control, "v1/unload_lora_adapter")
        return facts

    def make_sync(self) -> WeightSync:
        return VersionedAdapters(self.control, "v1/load_lora_adapter", "v1/unload_lora_adapter", self.prefix,
                                 served=lambda: probe.openai_models(self.control)[1])


class MaxEngine(OpenAIEngine):
    """Modular MAX's OpenAI-compatible server (``max serve``)."""

    server = "MAX"
    launch = ("max serve --model MODEL --enable-lora --max-lora-rank R --no-enable-prefix-caching "
              "--no-enable-overlap-scheduler")
    lora_flags = ("start it with --enable-lora --max-lora-rank R --no-enable-prefix-caching (and "
                  "--no-enable-overlap-scheduler, without which MAX refuses logprobs)")
    def make_dialect(self) -> Dialect:
        # MAX 26.7 ignores n: one request per sample.
        return OpenAICompletions(token_id_prompts=True, samples_per_request=False)

    def make_sync(self) -> WeightSync:
        def served() -> dict[str, str]:
            # MAX lists a loaded adapter as one more model card, with no parent or root.
            bases, adapters, _ = probe.openai_models(self.control)
            return {**dict.fromkeys(bases, ""), **adapters}

        return VersionedAdapters(self.control, "v1/load_lora_adapter", "v1/unload_lora_adapter", self.prefix,
                                 served=served)


class MLXEngine(OpenAIEngine):
    """``mlx_lm.server``: text prompts only (counted in ``engine_text_prompts``)."""

    server = "mlx_lm"
    launch = "mlx_lm.server --model MODEL"

    def make_dialect(self) -> Dialect:
        return MLXCompletions()

    @classmethod
    def config_issues(cls, config: Config) -> list[ConfigIssue]:
        # mlx_lm.server (0.32) reads only its own adapter format and has no weight-reload
        # endpoint, so it cannot follow a policy that changes after every update.
        return [*super().config_issues(config), ConfigIssue(
            "", "inference", "engine", "mlx_lm.server cannot load retrain's adapters (it reads only MLX-format "
            "adapters, not PEFT) or reload weights at runtime, so it would keep sampling from the first policy",
            "use engine = \"vllm\" or \"sglang\" (or the in-process engine = \"pytorch\")")]
