"""Saving and loading policy weights as ordinary Hugging Face / PEFT folders.

With LoRA the saved folder is a PEFT adapter (``adapter_config.json`` +
``adapter_model.safetensors``) that ``peft.PeftModel.from_pretrained`` loads as-is; with
full fine-tuning (``lora_rank = 0``) it is a complete ``transformers`` model folder. Both
are written into a temporary sibling folder and renamed into place, so a crash never
leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from typing import TYPE_CHECKING

import torch

from retrain.errors import EngineError

if TYPE_CHECKING:
    from peft import PeftModel
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

ADAPTER_CONFIG = "adapter_config.json"


def is_peft_model(model: torch.nn.Module) -> bool:
    return hasattr(model, "peft_config")


def save_weights(model: PreTrainedModel | PeftModel, tokenizer: PreTrainedTokenizerBase, path: Path) -> None:
    """Write ``model`` (adapter or full model, plus its tokenizer) to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    try:
        model.save_pretrained(str(staging))
        tokenizer.save_pretrained(staging)
        replace_directory(staging, path)
    finally:
        if staging.exists():
            shutil.rmtree(staging)


def replace_directory(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target``, replacing an existing ``target``.

    A directory cannot be renamed over a non-empty one, so an existing target is first
    moved aside; a crash between the two renames leaves the old copy under a hidden name,
    never a partial one under ``target``.
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(source, 0o777 & ~umask)
    if not target.exists():
        os.rename(source, target)
        return
    aside = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
    os.rmdir(aside)
    os.rename(target, aside)
    os.rename(source, target)
    shutil.rmtree(aside)


def load_saved_weights(model: torch.nn.Module, path: Path) -> None:
    """Load a folder written by ``save_weights`` into ``model`` in place."""
    from safetensors.torch import load_file

    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise EngineError(f"{path} holds no .safetensors weights; expected a folder written by save_adapter")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update(load_file(str(file)))
    if (path / ADAPTER_CONFIG).exists():
        if not is_peft_model(model):
            raise EngineError(f"{path} is a LoRA adapter but the engine's model has no LoRA layers (lora_rank = 0?)")
        from peft import set_peft_model_state_dict

        result = set_peft_model_state_dict(model, state)
        unexpected = list(getattr(result, "unexpected_keys", []) or [])
        if unexpected:
            raise EngineError(f"{path} does not match the engine's LoRA layout: unexpected {unexpected[:3]}")
        return
    if is_peft_model(model):
        raise EngineError(f"{path} is a full model but the engine's model uses LoRA; save with the same lora_rank")
    result = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [key for key in result.missing_keys if key not in tied]
    if missing or result.unexpected_keys:
        raise EngineError(
            f"{path} does not match the engine's model: missing {missing[:3]}, unexpected {result.unexpected_keys[:3]}"
        )
