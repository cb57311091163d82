"""The local backend: policy-gradient updates on PyTorch + PEFT in this process.

The model is any ``AutoModelForCausalLM`` (a hub id, a local folder, or ``retrain/tiny``,
the built-in offline model) whose tokenizer has a chat template: prompts are chat
messages, formatted by that template (``encode_prompt``). It trains LoRA adapters or,
with ``[model] lora_rank = 0``, every weight; the torch side is
``retrain.backends.local_trainer``. A model or state file that cannot be loaded is a
``BackendError`` naming it.

Publication: the live model (``in_process``, for the in-process pytorch engine), or a
folder per version — a PEFT adapter with LoRA, a full model folder with
``lora_rank = 0`` — for engines with their own copy of the model (servers, plugins).

Devices (``[backend] devices``): training runs on the last device listed. With one
device an in-process engine samples from the very same weights; two devices
(``"gpu:0,gpu:1"``, or ``"cpu,cpu"``) are split mode, in which the in-process engine
keeps its own copy on the first device, so that only in-process publication makes sense.

This module imports no torch: its capabilities and checks are read without it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from retrain.config.schema import Config
from retrain.devices import device_issues, parse_devices
from retrain.errors import ConfigIssue
from retrain.types import BackendCapabilities, Message, PolicyKind, PolicyRef, TrainBatch, TrainResult

if TYPE_CHECKING:
    from retrain.backends.local_trainer import LocalTrainer


class LocalBackend:
    """Trains a causal LM in this process with PyTorch and PEFT."""

    @classmethod
    def capabilities(cls, config: Config) -> BackendCapabilities:
        folder: PolicyKind = "full_weights" if config.model.lora_rank == 0 else "lora_adapter"
        split = len(parse_devices(config.backend.devices)) == 2
        return BackendCapabilities(
            publishes=("in_process",) if split else ("in_process", folder),
            reports_loss=True,
            preserves_token_advantages=True,
            exact_resume=True,
            full_finetuning=True,
        )

    @classmethod
    def config_issues(cls, config: Config) -> list[ConfigIssue]:
        issues = device_issues(config.backend.devices)
        if not issues and config.backend.options.get("cpu_threads") and "cpu" not in parse_devices(config.backend.devices):
            issues.append(ConfigIssue("", "backend.options", "cpu_threads",
                                      f"has no effect: no device in \"{config.backend.devices}\" is a CPU",
                                      "remove it, or train on devices = \"cpu\"", warning=True))
        return issues

    def __init__(self, config: Config) -> None:
        from retrain.backends.local_trainer import LocalTrainer

        self.trainer: LocalTrainer = LocalTrainer(config)

    @property
    def policy_version(self) -> int:
        return self.trainer.policy_version

    def encode_prompt(self, messages: tuple[Message, ...]) -> list[int]:
        return self.trainer.encode_prompt(messages)

    def train_step(self, batch: TrainBatch) -> TrainResult:
        return self.trainer.train_step(batch)

    def publish(self, kind: PolicyKind, directory: Path) -> PolicyRef:
        return self.trainer.publish(kind, directory)

    def save_adapter(self, path: Path) -> None:
        self.trainer.save_adapter(path)

    def save_state(self, directory: Path) -> None:
        self.trainer.save_state(directory)

    def load_state(self, directory: Path) -> None:
        self.trainer.load_state(directory)

    def close(self) -> None:
        # Dropping the trainer (model, optimizer) is what frees their memory.
        if self.__dict__.pop("trainer", None) is not None:
            from retrain.backends.local_trainer import release_memory

            release_memory()
