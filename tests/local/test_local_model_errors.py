"""The local backend's prompt encoding, and the errors for models and state files it cannot use.

Every model folder below is a copy of the tiny model with one thing broken, so each test
names exactly the failure it covers.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import pytest
import torch
from local_helpers import local_config, local_pair

from retrain.backends.local_trainer import STATE_FILE
from retrain.errors import BackendError
from retrain.models.tiny import TURN_END, TURN_START


def broken_copy(tiny_model_dir: Path, tmp_path: Path, *remove: str) -> Path:
    """A copy of the tiny model folder without the files in ``remove``."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    for name in remove:
        (folder / name).unlink()
    return folder


def strip_chat_template(folder: Path) -> None:
    """Remove the chat template wherever transformers keeps it: its own file or the config."""
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    config_file = folder / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config))


def load_error(folder: Path | str) -> str:
    with pytest.raises(BackendError) as caught:
        local_pair(local_config(folder))
    return str(caught.value)


def test_encode_prompt_is_the_chat_templated_token_ids(tiny_model_dir: Path) -> None:
    backend = local_pair(local_config(tiny_model_dir))
    ids = backend.encode_prompt(({"role": "user", "content": "1+2"},))
    # The tiny tokenizer has one token per character; the template is ChatML, ending
    # where the assistant's answer begins.
    tokens = [TURN_START, *"user\n1+2", TURN_END, "\n", TURN_START, *"assistant\n"]
    assert ids == backend.tokenizer.convert_tokens_to_ids(tokens)
    assert all(isinstance(token, int) for token in ids)


def test_a_tokenizer_without_a_chat_template_is_refused_before_the_weights_load(tiny_model_dir: Path,
                                                                              tmp_path: Path) -> None:
    # The weights are gone too: the chat-template error must come first, at build time.
    folder = broken_copy(tiny_model_dir, tmp_path, "model.safetensors")
    strip_chat_template(folder)
    message = load_error(folder)
    assert f'model = "{folder}"' in message
    assert "no chat template" in message and "instruct/chat model" in message and "chat_template" in message


def test_an_empty_folder_is_a_backend_error(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    message = load_error(tmp_path / "empty")
    assert str(tmp_path / "empty") in message and "no tokenizer files" in message


def test_a_folder_without_tokenizer_files_is_a_backend_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    # transformers would build an empty one-token tokenizer from config.json alone.
    folder = broken_copy(tiny_model_dir, tmp_path, "tokenizer.json", "tokenizer_config.json", "chat_template.jinja")
    message = load_error(folder)
    assert "no tokenizer files" in message and "tokenizer.save_pretrained" in message


def test_unreadable_tokenizer_files_are_a_backend_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = broken_copy(tiny_model_dir, tmp_path)
    (folder / "tokenizer.json").write_text("{not json")
    message = load_error(folder)
    assert "tokenizer could not be loaded" in message and str(folder) in message


def test_a_missing_local_folder_is_a_backend_error(tmp_path: Path) -> None:
    message = load_error(tmp_path / "missing")
    assert f"there is no folder {tmp_path / 'missing'}" in message


def test_a_folder_without_weights_is_a_backend_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = broken_copy(tiny_model_dir, tmp_path, "model.safetensors")
    message = load_error(folder)
    assert "the model could not be loaded" in message and "model.safetensors" in message


def test_a_garbage_config_json_is_a_backend_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = broken_copy(tiny_model_dir, tmp_path)
    (folder / "config.json").write_text("{not json")
    message = load_error(folder)
    assert "config.json" in message and "not a valid JSON file" in message


def test_an_unknown_model_type_is_a_backend_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = broken_copy(tiny_model_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "no_such_architecture"
    (folder / "config.json").write_text(json.dumps(config))
    message = load_error(folder)
    assert "the model could not be loaded" in message and "no_such_architecture" in message


def test_truncated_weights_are_a_backend_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = broken_copy(tiny_model_dir, tmp_path)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    assert "the model could not be loaded" in load_error(folder)


def test_weights_that_do_not_fit_the_config_are_a_backend_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    folder = broken_copy(tiny_model_dir, tmp_path)
    config = json.loads((folder / "config.json").read_text())
    config["intermediate_size"] //= 2
    (folder / "config.json").write_text(json.dumps(config))
    assert "the model could not be loaded" in load_error(folder)


def saved_state_bytes() -> bytes:
    stream = io.BytesIO()
    torch.save({"format": 1, "trainable": {"w": torch.zeros(64)}}, stream)
    return stream.getvalue()


@pytest.mark.parametrize("content", [
    pytest.param(b"\x00garbage\xff" * 50, id="garbage"),
    pytest.param(saved_state_bytes()[:200], id="truncated"),
    pytest.param(b"", id="empty"),
])
def test_a_corrupt_state_file_is_a_backend_error(tiny_model_dir: Path, tmp_path: Path, content: bytes) -> None:
    backend = local_pair(local_config(tiny_model_dir))
    (tmp_path / STATE_FILE).write_bytes(content)
    with pytest.raises(BackendError) as caught:
        backend.load_state(tmp_path)
    message = str(caught.value)
    assert str(tmp_path / STATE_FILE) in message and "corrupt or truncated" in message
    assert "resume from another checkpoint" in message and "afresh" in message


def test_a_state_file_that_is_not_a_dict_is_a_backend_error(tiny_model_dir: Path, tmp_path: Path) -> None:
    backend = local_pair(local_config(tiny_model_dir))
    torch.save(torch.zeros(3), tmp_path / STATE_FILE)
    with pytest.raises(BackendError, match="holds a Tensor, not local backend state"):
        backend.load_state(tmp_path)
