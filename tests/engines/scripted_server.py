"""A loopback server speaking vLLM's or SGLang's HTTP API with scripted samples, for the
HTTP engines' tests: every request is recorded, adapters are kept by name, and faults can
be queued (a status with a body and headers, or a reply rewritten by ``mutate``).

Samples are not drawn from a model: completion ``j`` of a prompt is the tokens
``sample_tokens`` (default ``[5, 6, EOS]``-style ids given by the test), each with
log-probability ``-0.5``, finish reason "stop".
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclass
class Recorded:
    method: str
    path: str
    body: dict | None


@dataclass
class ScriptedServer:
    dialect: str = "vllm"  # "vllm" | "sglang"
    served_name: str = "tiny"
    max_model_len: int = 512
    runtime_lora: bool = True
    sample_tokens: list[int] = field(default_factory=lambda: [5, 6, 7])
    requests: list[Recorded] = field(default_factory=list)
    adapters: dict[str, str] = field(default_factory=dict)
    fail_next: list[tuple[int, object, dict[str, str]]] = field(default_factory=list)
    mutate: Callable[[str, object], object] | None = None
    server_info: dict[str, object] = field(default_factory=dict)
    # Seconds each sampling request waits before its reply (a server's latency).
    latency_s: float = 0.0
    lock: threading.Lock = field(default_factory=threading.Lock)
    httpd: ThreadingHTTPServer | None = None

    @property
    def url(self) -> str:
        assert self.httpd is not None
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def __enter__(self) -> ScriptedServer:
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                return None

            def do_GET(self) -> None:
                owner.answer(self, "GET", None)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                owner.answer(self, "POST", json.loads(self.rfile.read(length) or b"{}"))

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.httpd is not None
        self.httpd.shutdown()
        self.httpd.server_close()

    def paths(self, method: str = "POST") -> list[str]:
        return [request.path for request in self.requests if request.method == method]

    def bodies(self, path: str) -> list[dict]:
        return [request.body for request in self.requests if request.path == path and request.body is not None]

    def answer(self, handler: BaseHTTPRequestHandler, method: str, body: dict | None) -> None:
        path = handler.path.split("?")[0]
        with self.lock:
            self.requests.append(Recorded(method, path, body))
            fault = self.fail_next.pop(0) if self.fail_next and path not in ("/health", "/v1/models") else None
        if fault is not None:
            status, reply, headers = fault
            return _send(handler, status, reply, headers)
        status, reply = self.route(method, path, body or {})
        if self.mutate is not None and status == 200:
            reply = self.mutate(path, reply)
        _send(handler, status, reply, {})

    def route(self, method: str, path: str, body: dict) -> tuple[int, object]:
        if path == "/health":
            return 200, b""
        if path == "/v1/models":
            data = [{"id": self.served_name, "object": "model", "root": "/models/tiny", "parent": None,
                     "max_model_len": self.max_model_len}]
            data += [{"id": name, "object": "model", "root": where, "parent": self.served_name}
                     for name, where in self.adapters.items()]
            return 200, {"object": "list", "data": data}
        if path == "/version":
            return 200, {"version": "0.32.0"}
        if path in ("/get_model_info",):
            return 200, {"model_path": self.served_name, "is_generation": True}
        if path in ("/get_server_info", "/server_info") and self.dialect == "sglang":
            return 200, {"context_length": self.max_model_len, "enable_lora": True, "max_lora_rank": 16,
                         "version": "0.5.0", **self.server_info}
        if path.endswith("load_lora_adapter"):
            return self.lora(path, body)
        if path == "/v1/completions":
            time.sleep(self.latency_s)
            return 200, self.completions(body)
        if path == "/generate":
            return 200, self.generate(body)
        return 404, {"detail": "Not Found"}

    def lora(self, path: str, body: dict) -> tuple[int, object]:
        if not self.runtime_lora:
            return 404, {"detail": "Not Found"}
        name = body.get("lora_name", "")
        if path.endswith("/unload_lora_adapter"):
            if name not in self.adapters:
                return 404, {"error": {"message": f"The lora adapter '{name}' cannot be found.", "code": 404}}
            del self.adapters[name]
            return 200, f"Success: LoRA adapter '{name}' removed successfully."
        if name in self.adapters:
            return 400, {"error": {"message": f"The lora adapter '{name}' has already been loaded.", "code": 400}}
        self.adapters[name] = body["lora_path"]
        if self.dialect == "sglang":
            return 200, {"success": True, "error_message": "", "loaded_adapters": dict(self.adapters)}
        return 200, f"Success: LoRA adapter '{name}' added successfully."

    def completions(self, body: dict) -> dict:
        prompts = body["prompt"] if body["prompt"] and isinstance(body["prompt"][0], list) else [body["prompt"]]
        choices = []
        for _ in prompts:
            for _ in range(body.get("n", 1)):
                tokens = [f"token_id:{token}" for token in self.sample_tokens]
                choices.append({"index": len(choices), "text": "x", "finish_reason": "stop",
                                "logprobs": {"tokens": tokens, "token_logprobs": [-0.5] * len(tokens)}})
        return {"id": "cmpl-1", "object": "text_completion", "model": body["model"], "choices": choices}

    def generate(self, body: dict) -> object:
        n = body["sampling_params"].get("n", 1)
        outputs = [{"text": "x", "output_ids": list(self.sample_tokens),
                    "meta_info": {"finish_reason": {"type": "stop", "matched": self.sample_tokens[-1]},
                                  "output_token_logprobs": [[-0.5, token, None] for token in self.sample_tokens]}}
                   for _ in range(n)]
        return outputs if n > 1 else outputs[0]


def _send(handler: BaseHTTPRequestHandler, status: int, reply: object, headers: dict[str, str]) -> None:
    payload = reply if isinstance(reply, bytes) else (reply.encode() if isinstance(reply, str)
                                                       else json.dumps(reply).encode())
    handler.send_response(status)
    for key, value in {"Content-Type": "application/json", **headers}.items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)
