"""A backend that trains nothing in this process: every update, publication and state
transfer is a request to the remote policy service (``fakes.unigram_service``), and what
it publishes is the service's opaque reference (``remote``). The service's URL is
``[backend.options] url``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fakes.client import post_json
from fakes.unigram_service import VOCABULARY
from retrain.plugin_api import BackendCapabilities, Config, ConfigIssue, PolicyKind, PolicyRef, TrainBatch, TrainResult

STATE_FILE = "remote_state.json"


class RemoteBackend:
    @classmethod
    def capabilities(cls, config: Config) -> BackendCapabilities:
        return BackendCapabilities(publishes=("remote",), reports_loss=True, preserves_token_advantages=True,
                                   exact_resume=True)

    def __init__(self, config: Config) -> None:
        self.url = str(config.backend.options["url"])
        self.lr = config.training.lr
        self.policy_version = post_json(self.url, "/trainer/get_state", {})["version"]

    def encode_prompt(self, messages: tuple[dict[str, str], ...]) -> list[int]:
        text = " ".join(message["content"] for message in messages)
        return [VOCABULARY.index(character) for character in text if character in VOCABULARY] or [0]

    def train_step(self, batch: TrainBatch) -> TrainResult:
        sampled = np.asarray(batch.loss_mask_N_T, dtype=bool)
        reply = post_json(self.url, "/trainer/step", {
            "tokens": np.asarray(batch.token_ids_N_T)[sampled].tolist(),
            "advantages": np.asarray(batch.token_advantages_N_T, dtype=np.float64)[sampled].tolist(),
            "temperature": batch.temperature, "lr": self.lr,
        })
        self.policy_version = reply["version"]
        return TrainResult(loss=reply["loss"], metrics={"trained_tokens": float(reply["trained_tokens"])})

    def publish(self, kind: PolicyKind, directory: Path) -> PolicyRef:
        reply = post_json(self.url, "/trainer/publish", {})
        return PolicyRef(version=reply["version"], kind=kind, location=reply["ref"])

    def save_adapter(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        (path / "unigram.json").write_text(json.dumps(post_json(self.url, "/trainer/get_state", {})))

    def save_state(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / STATE_FILE).write_text(json.dumps(post_json(self.url, "/trainer/get_state", {})))

    def load_state(self, directory: Path) -> None:
        state = json.loads((directory / STATE_FILE).read_text())
        self.policy_version = post_json(self.url, "/trainer/set_state", state)["version"]

    def close(self) -> None:
        """Nothing to release: every request opens and closes its own connection."""


class OutspokenRemoteBackend(RemoteBackend):
    """The same backend, warning about every config: shows that component warnings reach the user."""

    @classmethod
    def config_issues(cls, config: Config) -> list[ConfigIssue]:
        return [ConfigIssue("", "backend.options", "url", "points at a test service", "nothing to do", warning=True)]
