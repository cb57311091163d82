"""In-memory components for fast tests of the run's spine (no model, no server).

A unigram policy over ten digits and an end-of-turn token, trained by ``FakeBackend``
with the token-level policy gradient and published as ``remote`` references into
``PUBLISHED`` (a stand-in for a remote store); ``FakeEngine`` loads those references.
``MultiTurnEngine`` interleaves an environment turn (two tokens the policy did not
sample) into every trajectory. ``SayDigit`` prompts always have the answer "7", scored by
``contains_reference``.
Tests select them by dotted path with this folder in ``[plugins] search_paths``.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path

import numpy as np

from retrain.plugin_api import (
    BackendCapabilities,
    Config,
    EngineCapabilities,
    Example,
    PolicyKind,
    PolicyRef,
    SampleBatch,
    SamplingParams,
    TrainBatch,
    TrainResult,
)

VOCABULARY = [str(digit) for digit in range(10)] + ["<eos>"]
EOS = len(VOCABULARY) - 1
# Published policies by reference, and what every engine sampled (for the tests to read).
PUBLISHED: dict[str, np.ndarray] = {}
SAMPLED: list[dict[str, int]] = []
TRAINED: list[TrainBatch] = []


def log_softmax(logits: np.ndarray, temperature: float) -> np.ndarray:
    scaled = logits / temperature
    return scaled - np.logaddexp.reduce(scaled)


def contains_reference(completion: str, reference: str) -> float:
    """1 when the reference digit appears anywhere in the completion: frequent enough for
    an untrained policy that most groups carry signal."""
    return float(reference in completion)


class SayDigit:
    """Sixteen prompts, each answered by "7"."""

    def __init__(self, config: Config) -> None:
        self.count = 16

    def examples(self) -> list[Example]:
        return [Example(f"say-{index}", ({"role": "user", "content": f"say seven ({index})"},), "7")
                for index in range(self.count)]


class FakeBackend:
    @classmethod
    def capabilities(cls, config: Config) -> BackendCapabilities:
        return BackendCapabilities(publishes=("remote",), reports_loss=True, preserves_token_advantages=True,
                                   exact_resume=True)

    def __init__(self, config: Config) -> None:
        self.lr = config.training.lr
        self.logits = np.zeros(len(VOCABULARY))
        self.policy_version = 0
        self.store = uuid.uuid4().hex[:6]
        self.closed = False

    def encode_prompt(self, messages: tuple[dict[str, str], ...]) -> list[int]:
        return [1, 2, 3]

    def train_step(self, batch: TrainBatch) -> TrainResult:
        TRAINED.append(batch)
        sampled = np.asarray(batch.loss_mask_N_T, dtype=bool)
        tokens = np.asarray(batch.token_ids_N_T)[sampled]
        advantages = np.asarray(batch.token_advantages_N_T, dtype=np.float64)[sampled]
        log_probs = log_softmax(self.logits, batch.temperature)
        loss = float(-(advantages * log_probs[tokens]).mean()) if tokens.size else 0.0
        counts = np.bincount(tokens, weights=advantages, minlength=len(VOCABULARY))
        gradient = -(counts - advantages.sum() * np.exp(log_probs)) / (max(tokens.size, 1) * batch.temperature)
        self.logits = self.logits - self.lr * gradient
        self.policy_version += 1
        return TrainResult(loss=loss, metrics={"trained_tokens": float(tokens.size)})

    def publish(self, kind: PolicyKind, directory: Path) -> PolicyRef:
        ref = f"memory://{self.store}/v{self.policy_version}"
        PUBLISHED[ref] = self.logits.copy()
        return PolicyRef(self.policy_version, kind, location=ref)

    def save_adapter(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        np.save(path / "logits.npy", self.logits)

    def save_state(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        np.save(directory / "logits.npy", self.logits)
        (directory / "version.json").write_text(json.dumps(self.policy_version))

    def load_state(self, directory: Path) -> None:
        self.logits = np.load(directory / "logits.npy")
        self.policy_version = json.loads((directory / "version.json").read_text())

    def close(self) -> None:
        self.closed = True


class FakeEngine:
    """Samples from the last loaded ``remote`` reference; ``gate`` (when set) holds each
    generate call until the test releases it."""

    gate: threading.Event | None = None

    @classmethod
    def capabilities(cls, config: Config) -> EngineCapabilities:
        return EngineCapabilities(loads=("remote",), exact_resume=True)

    def __init__(self, config: Config) -> None:
        self.rng = np.random.default_rng(max(config.training.seed, 0))
        self.logits = np.zeros(len(VOCABULARY))
        self.policy_version = -1
        self.closed = False

    def load(self, ref: PolicyRef) -> None:
        self.logits = PUBLISHED[ref.location]
        self.policy_version = ref.version

    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams) -> SampleBatch:
        if self.gate is not None:
            self.gate.wait(timeout=10)
        SAMPLED.append({"version": self.policy_version, "prompts": len(prompt_token_ids)})
        rows = len(prompt_token_ids) * params.n
        log_probs = log_softmax(self.logits, params.temperature)
        tokens = self.rng.choice(len(VOCABULARY), size=(rows, params.max_tokens), p=np.exp(log_probs))
        ended = np.cumsum(tokens == EOS, axis=1)
        mask = (ended == 0) | ((ended == 1) & (tokens == EOS))
        return self.package(prompt_token_ids, params.n, tokens, mask, mask.copy(), log_probs)

    def package(self, prompts: list[list[int]], n: int, tokens: np.ndarray, mask: np.ndarray, loss_mask: np.ndarray,
                log_probs: np.ndarray) -> SampleBatch:
        texts = ["".join(VOCABULARY[t] for t, real, own in zip(row, m, lm) if real and own and t != EOS)
                 for row, m, lm in zip(tokens, mask, loss_mask)]
        spans = [[(0, 0)] * int(m.sum()) for m in mask]
        return SampleBatch(
            prompt_token_ids=prompts, group_size=n, token_ids_N_T=np.where(mask, tokens, 0), mask_N_T=mask,
            loss_mask_N_T=loss_mask, logprobs_N_T=np.where(loss_mask, log_probs[tokens], 0.0).astype(np.float32),
            finish_reasons=["stop" if (row[m] == EOS).any() else "length" for row, m in zip(tokens, mask)],
            texts=texts, token_char_spans=spans, policy_version=self.policy_version,
        )

    def save_state(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "rng.json").write_text(json.dumps(self.rng.bit_generator.state))

    def load_state(self, directory: Path) -> None:
        self.rng.bit_generator.state = json.loads((directory / "rng.json").read_text())

    def close(self) -> None:
        self.closed = True


ENVIRONMENT_TURN = [0, 0]


class MultiTurnEngine(FakeEngine):
    """One sampled token, an environment turn of two tokens, then sampled tokens to the
    end: trajectories whose loss mask is False on the environment's tokens."""

    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams) -> SampleBatch:
        sampled = super().generate(prompt_token_ids, params)
        rows, width = sampled.token_ids_N_T.shape
        turn = len(ENVIRONMENT_TURN)
        tokens = np.concatenate([sampled.token_ids_N_T[:, :1], np.tile(ENVIRONMENT_TURN, (rows, 1)),
                                 sampled.token_ids_N_T[:, 1:]], axis=1)
        mask = np.concatenate([sampled.mask_N_T[:, :1], np.ones((rows, turn), bool), sampled.mask_N_T[:, 1:]], axis=1)
        loss_mask = mask.copy()
        loss_mask[:, 1:1 + turn] = False
        log_probs = log_softmax(self.logits, params.temperature)
        return self.package(prompt_token_ids, params.n, tokens, mask, loss_mask, log_probs)
