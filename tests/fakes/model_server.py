"""A real loopback inference server for tests: a Hugging Face causal LM folder (the tiny
model) with PEFT LoRA adapters loaded by name, served over HTTP/1.1 (keep-alive,
Content-Length, JSON bodies) in the wire dialect of one of five servers: ``vllm``,
``sglang``, ``openai`` (a generic OpenAI-compatible server), ``max`` (Modular MAX) and
``mlx`` (mlx_lm.server). The routes and reply shapes live in ``fakes.server_dialects``
(vllm, openai, max) and ``fakes.server_native`` (sglang, mlx); their docstrings list the
wire facts each dialect follows (vLLM 0.34.0, SGLang 0.5.23, MAX 26.7.0, mlx-lm 0.32.0,
the OpenAI API reference).

``ModelServer`` is a context manager (``serve_forever`` on a daemon thread). Tests read
what clients sent (``requests``), what was loaded (``adapters``, ``load_history``,
``weights_path``, ``weight_version``), answer queued failures before routing
(``fail_next``), rewrite replies (``mutate``: a replacement JSON, raw bytes, or None to
keep), and score tokens in-process (``probe_logprobs``). ``latency_s`` is slept before each
sampling request outside the model lock, so concurrent requests overlap.

Sampling recomputes the whole forward for every new token over a batch of ``n`` rows that
share the prompt (the tiny model has two layers, so no KV cache is needed), seeded per
request when a seed is given. A row stops when it samples a stop token (the request's
``stop_token_ids`` plus the tokenizer's end-of-sequence token); that token IS part of the
returned ids and log-probabilities, which is what a trainer trains on (the dialects drop
it from the text). Otherwise a row stops after ``max_tokens`` tokens. Stop strings are not
supported.

Log-probabilities: under ``logprobs_mode="processed"`` they are
``log_softmax(logits / temperature)`` (the distribution the token was drawn from, before
top-p truncation; temperature 0 gives ``log_softmax(logits)``); under ``"raw"`` they are
``log_softmax(logits)`` whatever the temperature. The default is "raw" for mlx (as mlx-lm
reports them) and "processed" for the others.
"""

from __future__ import annotations

import json
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

import torch


class DropConnection(Exception):
    """Raised by a route to close the connection without answering (a server that crashed
    on the request)."""


class ModelError(ValueError):
    """A request or adapter that cannot be served; the dialect shapes it into an error
    reply with ``status`` and (for OpenAI-style errors) ``kind`` as its type."""

    def __init__(self, message: str, status: int = 400, kind: str = "BadRequestError") -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.kind = kind


@dataclass(frozen=True)
class Sampling:
    """What one prompt's samples are drawn with."""

    n: int = 1
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop_token_ids: tuple[int, ...] = ()
    ignore_eos: bool = False


@dataclass
class Sample:
    """One sampled completion: its token ids, their log-probabilities, why it stopped
    (``"stop"`` with the stop token in ``matched``, or ``"length"``), and the top
    alternatives at each position (``top``: lists of (token id, log-probability))."""

    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str
    matched: int | None = None
    top: list[list[tuple[int, float]]] = field(default_factory=list)
    ranks: list[int] = field(default_factory=list)


def adapter_rank(path: str | Path) -> int:
    """The largest LoRA rank named in ``path``'s adapter_config.json."""
    config_file = Path(path) / "adapter_config.json"
    if not config_file.is_file():
        raise ModelError(f"No adapter found at {path}: it has no adapter_config.json")
    config = json.loads(config_file.read_text())
    ranks = [int(config.get("r", 8)), *(int(rank) for rank in (config.get("rank_pattern") or {}).values())]
    return max(ranks)


def make_adapter(model_dir: str | Path, out_dir: str | Path, *, rank: int = 4, seed: int = 0,
                 scale: float = 0.5) -> Path:
    """Save a LoRA adapter for ``model_dir`` with random non-zero weights into ``out_dir``
    (so that sampling from it differs from the base). For tests."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    config = LoraConfig(r=rank, lora_alpha=rank, target_modules=["q_proj", "v_proj", "o_proj"],
                        init_lora_weights=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = get_peft_model(base, config)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
    model.save_pretrained(str(out_dir))
    return Path(out_dir)


class ServedModel:
    """A base model with named adapters. Every method that touches the weights holds
    ``lock``, so HTTP threads may call them concurrently."""

    def __init__(self, model_dir: str | Path, *, dtype: str = "float32", logprobs_mode: str = "processed",
                 seed: int = 0) -> None:
        from transformers import AutoTokenizer

        if logprobs_mode not in ("processed", "raw"):
            raise ValueError(f"logprobs_mode must be 'processed' or 'raw', not {logprobs_mode!r}")
        self.lock = threading.RLock()
        self.dtype = getattr(torch, dtype)
        self.logprobs_mode = logprobs_mode
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        self.adapters: dict[str, str] = {}
        self.generator = torch.Generator().manual_seed(seed)
        self.model = self._load_base(model_dir)
        self.model_dir = str(model_dir)

    @property
    def vocab_size(self) -> int:
        return int(self.model.get_input_embeddings().weight.shape[0])

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer.eos_token_id

    def _load_base(self, model_dir: str | Path) -> torch.nn.Module:
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=self.dtype)
        model.eval()
        return model

    def load_adapter(self, name: str, path: str) -> None:
        """Load the adapter at ``path`` under ``name`` (the caller checks names and ranks)."""
        from peft import PeftModel

        with self.lock, warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # transformers' deprecations that PEFT triggers
            try:
                if isinstance(self.model, PeftModel):
                    self.model.load_adapter(path, adapter_name=name)
                else:
                    self.model = PeftModel.from_pretrained(self.model, path, adapter_name=name)
            except (OSError, ValueError, KeyError, RuntimeError) as error:
                raise ModelError(f"Loading the adapter at {path} failed: {error}") from None
            self.model.eval()
            self.adapters[name] = path

    def unload_adapter(self, name: str) -> None:
        with self.lock:
            if len(self.adapters) == 1:
                # PEFT keeps no model without an adapter; strip the LoRA layers instead.
                self.model = self.model.unload()
            else:
                self.model.delete_adapter(name)
            del self.adapters[name]

    def reload_weights(self, model_dir: str | Path) -> None:
        """Serve the base weights in ``model_dir``, keeping the loaded adapters."""
        config = Path(model_dir) / "config.json"
        if not config.is_file():
            raise ModelError(f"{model_dir} is not a model folder (no config.json)")
        with self.lock:
            adapters = dict(self.adapters)
            self.model = self._load_base(model_dir)
            self.model_dir = str(model_dir)
            self.adapters = {}
            for name, path in adapters.items():
                self.load_adapter(name, path)

    def check_prompt(self, prompt_ids: list[int]) -> None:
        if not prompt_ids:
            raise ModelError("The prompt is empty.")
        bad = [token for token in prompt_ids if not isinstance(token, int) or isinstance(token, bool)
               or not 0 <= token < self.vocab_size]
        if bad:
            raise ModelError(f"Token id {bad[0]} is out of vocabulary (vocabulary size {self.vocab_size}).")

    def _logits(self, adapter: str | None, input_ids: torch.Tensor) -> torch.Tensor:
        """The last position's logits for each row, from ``adapter`` or the base alone."""
        if adapter is None:
            if hasattr(self.model, "disable_adapter"):
                with self.model.disable_adapter():
                    return self.model(input_ids=input_ids).logits.float()
            return self.model(input_ids=input_ids).logits.float()
        self.model.set_adapter(adapter)
        return self.model(input_ids=input_ids).logits.float()

    def _scored(self, logits: torch.Tensor, temperature: float) -> torch.Tensor:
        if self.logprobs_mode == "raw" or temperature <= 0:
            return torch.log_softmax(logits, dim=-1)
        return torch.log_softmax(logits / temperature, dim=-1)

    def sample(self, adapter: str | None, prompt_ids: list[int], params: Sampling,
               generator: torch.Generator | None = None, top_k: int = 0) -> list[Sample]:
        """``params.n`` completions after ``prompt_ids`` (see the module docstring)."""
        self.check_prompt(prompt_ids)
        stops = set(params.stop_token_ids)
        if self.eos_token_id is not None and not params.ignore_eos:
            stops.add(self.eos_token_id)
        samples = [Sample([], [], "length") for _ in range(params.n)]
        active = list(range(params.n))
        generator = generator or self.generator
        with self.lock, torch.no_grad():
            for _ in range(params.max_tokens):
                rows = torch.tensor([prompt_ids + samples[row].token_ids for row in active])
                logits = self._logits(adapter, rows)[:, -1, :]
                tokens = _draw(logits, params.temperature, params.top_p, generator)
                scored = self._scored(logits, params.temperature)
                for position, row in enumerate(list(active)):
                    _extend(samples[row], int(tokens[position]), scored[position], top_k, stops)
                    if samples[row].finish_reason == "stop":
                        active.remove(row)
                if not active:
                    break
        return samples

    def probe(self, adapter: str | None, prompt_ids: list[int], completion_ids: list[int],
              temperature: float = 1.0) -> list[float]:
        """The log-probabilities of ``completion_ids`` after ``prompt_ids``, scored like sampling."""
        self.check_prompt(prompt_ids)
        if not completion_ids:
            return []
        with self.lock, torch.no_grad():
            logits = self._logits(adapter, torch.tensor([prompt_ids + completion_ids]))[0]
            scored = self._scored(logits[len(prompt_ids) - 1:-1], temperature)
        return [float(scored[index, token]) for index, token in enumerate(completion_ids)]


def _draw(logits: torch.Tensor, temperature: float, top_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token per row: greedy at temperature 0, else from the top-p nucleus of softmax(logits / t)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        ordered, order = probs.sort(dim=-1, descending=True)
        outside = ordered.cumsum(dim=-1) - ordered >= top_p
        ordered = ordered.masked_fill(outside, 0.0)
        probs = torch.zeros_like(probs).scatter(-1, order, ordered)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _extend(sample: Sample, token: int, scored: torch.Tensor, top_k: int, stops: set[int]) -> None:
    sample.token_ids.append(token)
    sample.logprobs.append(float(scored[token]))
    sample.ranks.append(int((scored > scored[token]).sum()) + 1)
    if top_k > 0:
        values, indices = scored.topk(min(top_k, scored.shape[-1]))
        sample.top.append([(int(index), float(value)) for index, value in zip(indices, values)])
    if token in stops:
        sample.finish_reason = "stop"
        sample.matched = token


# --- HTTP -------------------------------------------------------------------------------

DIALECTS = ("vllm", "sglang", "openai", "max", "mlx")
Reply = tuple[int, object, dict[str, str]]


class Headers(dict):
    """Request headers, keyed in lower case and looked up in any case."""

    def __getitem__(self, key: str) -> str:
        return super().__getitem__(key.lower())

    def __contains__(self, key: object) -> bool:
        return super().__contains__(key.lower() if isinstance(key, str) else key)

    def get(self, key: str, default: str | None = None) -> str | None:  # type: ignore[override]
        return super().get(key.lower(), default)


@dataclass(frozen=True)
class Recorded:
    """One request as the server received it (``body`` is the parsed JSON, or None)."""

    method: str
    path: str
    body: dict | None
    headers: dict[str, str]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = 60  # an idle keep-alive connection is closed after this long
    server: _HTTPServer

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = urlsplit(self.path).path
        headers = Headers((key.lower(), value) for key, value in self.headers.items())
        status, reply, extra = self.server.owner.receive(method, path, raw, headers)
        if status == 0:  # the route dropped the connection
            self.close_connection = True
            return
        if isinstance(reply, (bytes, bytearray)):
            payload, kind = bytes(reply), "application/json"
        elif isinstance(reply, str):
            payload, kind = reply.encode(), "text/plain; charset=utf-8"
        elif reply is None:
            payload, kind = b"", "text/plain; charset=utf-8"
        else:
            payload, kind = json.dumps(reply).encode(), "application/json"
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(payload)))
        for key, value in extra.items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet: tests read ``ModelServer.requests``."""


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], owner: ModelServer) -> None:
        super().__init__(address, _Handler)
        self.owner = owner


class ModelServer:
    """A loopback inference server for the model in ``model_dir``, speaking ``dialect``
    (see ``fakes.server_dialects`` for each dialect's routes). Use it as a context manager."""

    def __init__(self, model_dir: str | Path, dialect: str, *, served_name: str = "tiny", max_model_len: int = 512,
                 enable_lora: bool = True, runtime_lora: bool = True, max_lora_rank: int = 16,
                 latency_s: float = 0.0, logprobs_mode: str | None = None, dtype: str = "float32",
                 kv_cache_dtype: str = "auto", host: str = "127.0.0.1", max_overlap_scheduler: bool = False) -> None:
        from fakes.server_dialects import routes_for

        if dialect not in DIALECTS:
            raise ValueError(f"dialect must be one of {DIALECTS}, not {dialect!r}")
        # mlx-lm reports log_softmax(logits) before temperature; the others what was sampled from.
        logprobs_mode = logprobs_mode or ("raw" if dialect == "mlx" else "processed")
        self.model = ServedModel(model_dir, dtype=dtype, logprobs_mode=logprobs_mode)
        self.model_dir, self.dialect, self.served_name = str(model_dir), dialect, served_name
        self.max_model_len, self.enable_lora, self.runtime_lora = max_model_len, enable_lora, runtime_lora
        self.max_lora_rank, self.latency_s, self.dtype = max_lora_rank, latency_s, dtype
        self.kv_cache_dtype, self.host, self.logprobs_mode = kv_cache_dtype, host, logprobs_mode
        self.max_overlap_scheduler, self.paused = max_overlap_scheduler, False
        self.mlx_key: tuple[str, str | None] = (self.model_dir, None)
        self.routes, self.sampling_paths, self.shape_error = routes_for(self)
        self.requests: list[Recorded] = []
        self.load_history: list[tuple[str, str, str]] = []
        self.weight_version = "default"
        self.mutate: Callable[[str, object], object] | None = None
        self.fail_next: list[tuple[int, dict | str, dict[str, str]]] = []
        self.url = ""
        self._state_lock = threading.Lock()
        self._http: _HTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def adapters(self) -> dict[str, str]:
        """Loaded adapter name -> path."""
        return dict(self.model.adapters)

    @property
    def weights_path(self) -> str:
        """The folder of the base weights now served."""
        return self.model.model_dir

    def __enter__(self) -> ModelServer:
        self._http = _HTTPServer((self.host, 0), self)
        self.url = f"http://{self.host}:{self._http.server_address[1]}"
        self._thread = threading.Thread(target=self._http.serve_forever, name=f"{self.dialect}-server", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
            self._http = None
        if self._thread is not None:
            self._thread.join(timeout=10)

    def probe_logprobs(self, name: str | None, prompt_ids: list[int], completion_ids: list[int],
                       temperature: float = 1.0) -> list[float]:
        """The served model's (the base, or adapter ``name``) log-probabilities of
        ``completion_ids`` after ``prompt_ids``, scored as sampling scores them."""
        return self.model.probe(name, prompt_ids, completion_ids, temperature)

    def receive(self, method: str, path: str, raw: bytes, headers: Headers) -> Reply:
        """Record one request and answer it: a queued failure, else its route's reply."""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        self.requests.append(Recorded(method, path, body, headers))
        with self._state_lock:
            failure = self.fail_next.pop(0) if self.fail_next else None
        if failure is not None:
            return failure[0], failure[1], dict(failure[2])
        if raw and body is None:
            return 400, self.shape_error(ModelError("The request body is not valid JSON.")), {}
        status, reply, extra = self._route(method, path, body, headers)
        if self.mutate is not None and isinstance(reply, (dict, list)):
            replaced = self.mutate(path, reply)
            reply = reply if replaced is None else replaced
        return status, reply, extra

    def _route(self, method: str, path: str, body: object, headers: Headers) -> Reply:
        handler = self.routes.get((method, path))
        if handler is None:
            known = any(route_path == path for _, route_path in self.routes)
            error = ModelError("Method Not Allowed" if known else "Not Found", 405 if known else 404, "NotFound")
            return error.status, self.shape_error(error, route=False), {}
        if path in self.sampling_paths and self.latency_s > 0:
            time.sleep(self.latency_s)
        body = body if body is not None else {}
        try:
            if not isinstance(body, dict):
                raise ModelError("The request body must be a JSON object.")
            return handler(self, body, headers)
        except ModelError as error:
            return error.status, self.shape_error(error), {}
        except DropConnection:
            return 0, None, {}
        except Exception as error:  # a bug in the fake: answer it rather than drop the connection
            failure = ModelError(f"Internal Server Error: {error!r}", 500, "InternalServerError")
            return 500, self.shape_error(failure), {}

    def record_load(self, kind: str, name: str, path: str) -> None:
        with self._state_lock:
            self.load_history.append((kind, name, path))
