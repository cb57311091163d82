"""A policy service on loopback HTTP: the remote trainer and inference server that the
fake remote backend and the fake HTTP-style engine talk to.

The policy is a unigram distribution over ten digits and an end-of-turn token (it ignores
its prompt). The trainer side applies the token-level policy gradient ``-mean_t(a_t log
p(x_t))`` to its logits and publishes snapshots under opaque references
(``unigram://<service>/v<N>``); the inference side loads a snapshot under an adapter name
(``POST /v1/load_lora_adapter``, as vLLM does), samples completions from a named adapter
(``POST /v1/completions`` with token-id prompts, a per-request seed, and token ids and
logprobs in the response), and unloads names. Every request is recorded in ``events``.
"""

from __future__ import annotations

import contextlib
import json
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

VOCABULARY = [str(digit) for digit in range(10)] + ["<eos>"]
EOS = len(VOCABULARY) - 1


def log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = logits / temperature
    return scaled - np.logaddexp.reduce(scaled)


class UnigramService:
    """The state behind the HTTP endpoints."""

    def __init__(self) -> None:
        self.name = uuid.uuid4().hex[:8]
        self.logits = np.zeros(len(VOCABULARY))
        self.version = 0
        self.snapshots: dict[str, np.ndarray] = {}
        self.adapters: dict[str, np.ndarray] = {}
        self.events: list[tuple[str, object]] = []
        self.lock = threading.Lock()

    def handle(self, path: str, body: dict) -> tuple[int, dict]:
        with self.lock:
            self.events.append((path, body.get("lora_name") or body.get("model") or body.get("version")))
            route = ROUTES.get(path)
            if route is None:
                return 404, {"error": f"no endpoint {path}"}
            return route(self, body)

    def train(self, body: dict) -> tuple[int, dict]:
        tokens = np.asarray(body["tokens"], dtype=np.int64)
        advantages = np.asarray(body["advantages"], dtype=np.float64)
        if tokens.size == 0:
            return 200, {"loss": 0.0, "version": self.version, "trained_tokens": 0}
        log_probs = log_softmax(self.logits, body["temperature"])
        loss = float(-(advantages * log_probs[tokens]).mean())
        counts = np.bincount(tokens, weights=advantages, minlength=len(VOCABULARY))
        gradient = -(counts - advantages.sum() * np.exp(log_probs)) / (tokens.size * body["temperature"])
        self.logits = self.logits - body["lr"] * gradient
        self.version += 1
        return 200, {"loss": loss, "version": self.version, "trained_tokens": int(tokens.size)}

    def publish(self, body: dict) -> tuple[int, dict]:
        ref = f"unigram://{self.name}/v{self.version}"
        self.snapshots[ref] = self.logits.copy()
        return 200, {"ref": ref, "version": self.version}

    def get_state(self, body: dict) -> tuple[int, dict]:
        return 200, {"logits": self.logits.tolist(), "version": self.version}

    def set_state(self, body: dict) -> tuple[int, dict]:
        self.logits = np.asarray(body["logits"], dtype=np.float64)
        self.version = int(body["version"])
        return 200, {"version": self.version}

    def load_adapter(self, body: dict) -> tuple[int, dict]:
        snapshot = self.snapshots.get(body["lora_path"])
        if snapshot is None:
            return 404, {"error": f"unknown reference {body['lora_path']}"}
        self.adapters[body["lora_name"]] = snapshot
        return 200, {}

    def unload_adapter(self, body: dict) -> tuple[int, dict]:
        self.adapters.pop(body["lora_name"], None)
        return 200, {}

    def models(self, body: dict) -> tuple[int, dict]:
        return 200, {"data": [{"id": name} for name in self.adapters]}

    def complete(self, body: dict) -> tuple[int, dict]:
        logits = self.adapters.get(body["model"])
        if logits is None:
            return 404, {"error": f"model {body['model']} is not loaded"}
        rng = np.random.default_rng(body["seed"])
        log_probs = log_softmax(logits, body["temperature"])
        choices = []
        for prompt in body["prompt"]:
            for _ in range(body["n"]):
                tokens = []
                while len(tokens) < body["max_tokens"]:
                    tokens.append(int(rng.choice(len(VOCABULARY), p=np.exp(log_probs))))
                    if tokens[-1] == EOS:
                        break
                choices.append({
                    "index": len(choices),
                    "text": "".join(VOCABULARY[token] for token in tokens if token != EOS),
                    "logprobs": {"tokens": [f"token_id:{token}" for token in tokens],
                                 "token_logprobs": [float(log_probs[token]) for token in tokens]},
                    "finish_reason": "stop" if tokens[-1] == EOS else "length",
                    "prompt_length": len(prompt),
                })
        return 200, {"choices": choices}


ROUTES = {
    "/trainer/step": UnigramService.train,
    "/trainer/publish": UnigramService.publish,
    "/trainer/get_state": UnigramService.get_state,
    "/trainer/set_state": UnigramService.set_state,
    "/v1/load_lora_adapter": UnigramService.load_adapter,
    "/v1/unload_lora_adapter": UnigramService.unload_adapter,
    "/v1/models": UnigramService.models,
    "/v1/completions": UnigramService.complete,
}


@contextlib.contextmanager
def serve() -> Iterator[tuple[str, UnigramService]]:
    """Run a service on a free loopback port; yields its base URL and its state."""
    service = UnigramService()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length", 0))
            status, reply = service.handle(self.path, json.loads(self.rfile.read(length) or b"{}"))
            payload = json.dumps(reply).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, format: str, *args: object) -> None:
            """Quiet: the test reads ``service.events`` instead."""

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", service
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
