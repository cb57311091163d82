"""The training-backend contract, with the capabilities each backend declares.

A backend applies one policy-gradient update per step (``train_step``), saves adapters
and its full resumable state, and, when it holds the policy in this process, hands out
an in-process inference engine. It also turns a prompt's chat messages into the token
ids its policy samples from (``encode_prompt``): only the backend knows the policy's
tokenizer and chat format. Capabilities are declared once as class data, so the
run checks a config against them when it is built instead of probing attributes at call
sites.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol, runtime_checkable

from retrain.engines.base import Engine
from retrain.types import Message, TrainBatch, TrainResult


@dataclass(frozen=True)
class BackendCapabilities:
    """What a backend guarantees.

    ``reports_loss``: ``TrainResult.loss`` is the real loss of the update.
    ``preserves_token_advantages``: per-token advantages reach the loss unchanged (not
    averaged per sequence). ``exact_resume``: ``save_state``/``load_state`` restore
    everything needed to continue bit-identically. ``supports_entropies``: its engine can
    return full-distribution entropies. ``in_process_engine``: ``engine()`` returns an
    engine that samples from the policy held in this process.
    """

    reports_loss: bool
    preserves_token_advantages: bool
    exact_resume: bool
    supports_entropies: bool
    in_process_engine: bool


@runtime_checkable
class Backend(Protocol):
    capabilities: ClassVar[BackendCapabilities]

    def encode_prompt(self, messages: tuple[Message, ...]) -> list[int]:
        """The chat-formatted prompt token ids the engine samples from: ``messages``
        (``{"role", "content"}`` dicts) in the policy's chat format, ending where the
        assistant's answer begins."""
        ...

    def train_step(self, batch: TrainBatch) -> TrainResult:
        """One optimizer step on ``batch``."""
        ...

    def save_adapter(self, path: Path) -> None:
        """Write the current policy weights to ``path`` atomically."""
        ...

    def save_state(self, directory: Path) -> None:
        """Write everything needed to resume exactly into ``directory``."""
        ...

    def load_state(self, directory: Path) -> None:
        """Restore what ``save_state`` wrote."""
        ...

    def engine(self) -> Engine:
        """The in-process inference engine (only when ``capabilities.in_process_engine``)."""
        ...

    def sync_engine_weights(self) -> int:
        """Make the engine sample from the latest weights; return the policy version."""
        ...

    def shutdown(self) -> None:
        ...
