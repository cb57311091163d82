"""Loading a policy's tokenizer and weights for the local backend, with clear errors.

``[model] model`` is a hub id, a local folder (as ``save_pretrained`` writes it) or
``retrain/tiny``. Whatever keeps it from serving (no folder, no tokenizer files, no chat
template, unreadable or mismatched weights) is a ``BackendError`` that names the model
and says what to give instead, raised before training starts.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch

from retrain.errors import BackendError

# The files one of transformers' tokenizers is read from; a model folder with none of them
# has no tokenizer (transformers would build an empty one from config.json alone).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "tekken.json",
)


MODEL_FIX = (
    "give a local model folder (config.json, weights and tokenizer files, as save_pretrained writes them), "
    "a Hugging Face id reachable from this machine (or already in its cache), or \"retrain/tiny\""
)


def load_tokenizer(name: str, path: str):  # -> transformers.PreTrainedTokenizerBase
    """The tokenizer of ``[model] model`` (``name``, loaded from ``path``), with a chat
    template; any reason it cannot serve is a ``BackendError``, raised before the
    weights load."""
    from transformers import AutoTokenizer

    where = f"[model] model = \"{name}\""
    folder = Path(path)
    if (folder.is_absolute() or path.startswith(("./", "../"))) and not folder.exists():
        raise BackendError(f"{where}: there is no folder {folder}; {MODEL_FIX}")
    if folder.is_dir() and not any((folder / file).is_file() for file in TOKENIZER_FILES):
        raise BackendError(
            f"{where}: the folder {folder} has no tokenizer files (none of {', '.join(TOKENIZER_FILES)}); "
            "save the tokenizer next to the model (tokenizer.save_pretrained(folder)), or " + MODEL_FIX
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as exc:
        # OSError: missing files, unreachable hub id, invalid config.json; ValueError:
        # unreadable or unsupported tokenizer files (json.JSONDecodeError among them).
        raise BackendError(f"{where}: its tokenizer could not be loaded from {path}: {exc} — {MODEL_FIX}") from exc
    if not tokenizer.chat_template:
        raise BackendError(
            f"{where}: its tokenizer has no chat template, so prompts (chat messages) cannot be formatted for it — "
            "typical of a base model; use an instruct/chat model, or a model folder whose tokenizer_config.json "
            "has a \"chat_template\" (or that holds a chat_template.jinja)"
        )
    return tokenizer


def load_causal_lm(name: str, path: str, kwargs: dict[str, object]) -> torch.nn.Module:
    """The weights of ``[model] model`` (``name``, loaded from ``path``); a folder or id
    that holds no loadable causal LM is a ``BackendError``."""
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError, SafetensorError, pickle.UnpicklingError, RuntimeError) as exc:
        # OSError: no weights file, invalid config.json, unreachable hub id; ValueError: no
        # or unknown model_type; SafetensorError / UnpicklingError: a corrupt weights file;
        # RuntimeError: a truncated pytorch_model.bin, or weights whose shapes do not match
        # config.json (the message carries transformers' report either way).
        raise BackendError(f"[model] model = \"{name}\": the model could not be loaded from {path}: {exc} — {MODEL_FIX}") from exc
