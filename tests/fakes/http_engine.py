"""An engine that samples from a server over HTTP and loads references by name, the way
a vLLM engine does: every published reference is loaded under a new versioned adapter
name (``POST /v1/load_lora_adapter``), requests name that adapter, and the previous name
is unloaded. Each request carries a seed derived from a counter, so sampling resumes
exactly from the saved counter. The server's URL is ``[inference] url``; every load and
unload is also appended to ``<log_dir>/engine_loads.jsonl`` for the tests to read."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fakes.client import post_json
from fakes.unigram_service import EOS
from retrain.plugin_api import Config, EngineCapabilities, PolicyRef, SampleBatch, SamplingParams


class HttpEngine:
    @classmethod
    def capabilities(cls, config: Config) -> EngineCapabilities:
        return EngineCapabilities(loads=("remote",), exact_resume=True, reads=("inference.url",))

    def __init__(self, config: Config) -> None:
        self.url = config.inference.url
        self.seed = config.training.seed
        self.requests = 0
        self.policy_version = -1
        self.adapter = ""
        self.record = Path(config.logging.log_dir) / "engine_loads.jsonl"

    def load(self, ref: PolicyRef) -> None:
        name = f"policy-v{ref.version}"
        post_json(self.url, "/v1/load_lora_adapter", {"lora_name": name, "lora_path": ref.location})
        previous, self.adapter, self.policy_version = self.adapter, name, ref.version
        if previous and previous != name:
            post_json(self.url, "/v1/unload_lora_adapter", {"lora_name": previous})
        with self.record.open("a") as log:
            log.write(json.dumps({"loaded": name, "ref": ref.location, "unloaded": previous}) + "\n")

    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams) -> SampleBatch:
        self.requests += 1
        reply = post_json(self.url, "/v1/completions", {
            "model": self.adapter, "prompt": prompt_token_ids, "n": params.n, "max_tokens": params.max_tokens,
            "temperature": params.temperature, "seed": self.seed * 1_000_003 + self.requests,
        })
        choices = reply["choices"]
        rows = [[int(token.removeprefix("token_id:")) for token in choice["logprobs"]["tokens"]] for choice in choices]
        width = max(len(row) for row in rows)
        mask = np.array([[column < len(row) for column in range(width)] for row in rows])
        tokens = np.array([row + [0] * (width - len(row)) for row in rows])
        logprobs = np.array([choice["logprobs"]["token_logprobs"] + [0.0] * (width - len(row))
                             for choice, row in zip(choices, rows)], dtype=np.float32)
        spans = [[(min(t, len(choice["text"])), min(t + (token != EOS), len(choice["text"]))) for t, token in
                  enumerate(row)] for choice, row in zip(choices, rows)]
        return SampleBatch(
            prompt_token_ids=prompt_token_ids, group_size=params.n, token_ids_N_T=tokens, mask_N_T=mask,
            loss_mask_N_T=mask, logprobs_N_T=logprobs, finish_reasons=[choice["finish_reason"] for choice in choices],
            texts=[choice["text"] for choice in choices], token_char_spans=spans, policy_version=self.policy_version,
        )

    def save_state(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "requests.json").write_text(json.dumps({"requests": self.requests}))

    def load_state(self, directory: Path) -> None:
        self.requests = json.loads((directory / "requests.json").read_text())["requests"]

    def close(self) -> None:
        if self.adapter:
            post_json(self.url, "/v1/unload_lora_adapter", {"lora_name": self.adapter})
            self.adapter = ""
