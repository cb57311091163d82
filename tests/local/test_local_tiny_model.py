"""The built-in tiny model: an ordinary HF folder, format-only warm start, safe cache builds."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from retrain.data.arithmetic import all_pairs, arithmetic_answer, arithmetic_prompt
from retrain.models.tiny import (
    TINY_MODEL_NAME,
    TINY_MODEL_VERSION,
    build_tiny_model,
    ensure_tiny_model,
    resolve_model_path,
)


def test_tiny_model_is_a_plain_qwen3_folder(tiny_model_dir: Path) -> None:
    config = AutoConfig.from_pretrained(tiny_model_dir)
    assert config.model_type == "qwen3"
    # vLLM's CPU attention kernels need head size 64.
    assert config.head_dim == 64
    assert f"v{TINY_MODEL_VERSION}" in tiny_model_dir.name
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert sum(p.numel() for p in model.parameters()) < 300_000


def test_tokenizer_is_character_level_and_keeps_whitespace(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = "Let me check:\n  7+8 mod 10=5"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert len(ids) == len(text)
    assert tokenizer.decode(ids) == text
    assert tokenizer.unk_token_id not in ids


def test_chat_template_is_chatml(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "3+9 mod 10="}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<|im_start|>user\n3+9 mod 10=<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_warm_start_teaches_the_format_but_not_the_sums(tiny_model_dir: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir).eval()
    digit_ids = tokenizer.convert_tokens_to_ids(list("0123456789"))
    prompts = [
        tokenizer.apply_chat_template([{"role": "user", "content": arithmetic_prompt(a, b)}], tokenize=False,
                                      add_generation_prompt=True)
        for a, b in all_pairs()
    ]
    ids = torch.tensor([tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts])
    answers = torch.tensor([tokenizer.convert_tokens_to_ids(arithmetic_answer(a, b)) for a, b in all_pairs()])
    with torch.no_grad():
        first = model(ids).logits[:, -1].softmax(-1)
        after_digit = model(torch.cat([ids, answers[:, None]], dim=1)).logits[:, -1].softmax(-1)
    # Format: a digit first, then end of turn.
    assert first[:, digit_ids].sum(-1).min() > 0.9
    assert after_digit[:, tokenizer.eos_token_id].min() > 0.9
    # Not the task: the right digit gets about chance probability (1/10), not more.
    correct_probability = first.gather(1, answers[:, None]).mean()
    assert 0.05 < correct_probability < 0.2


def test_resolve_model_path_passes_other_names_through() -> None:
    assert resolve_model_path("Qwen/Qwen3-4B-Instruct-2507") == "Qwen/Qwen3-4B-Instruct-2507"
    assert resolve_model_path("/models/mine") == "/models/mine"
    assert TINY_MODEL_NAME == "retrain/tiny"


def test_ensure_reuses_the_built_folder(tiny_model_dir: Path) -> None:
    weights = tiny_model_dir / "model.safetensors"
    before = weights.stat().st_mtime_ns
    assert ensure_tiny_model(tiny_model_dir.parent) == tiny_model_dir
    assert weights.stat().st_mtime_ns == before
    # No staging folders are left behind.
    assert [p.name for p in tiny_model_dir.parent.iterdir()] == [tiny_model_dir.name]


def test_build_is_deterministic(tiny_model_dir: Path, tmp_path: Path) -> None:
    threads = torch.get_num_threads()
    # Whatever thread count an earlier test or the machine left behind.
    torch.set_num_threads(3)
    try:
        build_tiny_model(tmp_path)
    finally:
        torch.set_num_threads(threads)
    assert torch.get_num_threads() == threads
    again = AutoModelForCausalLM.from_pretrained(tmp_path).state_dict()
    first = AutoModelForCausalLM.from_pretrained(tiny_model_dir).state_dict()
    assert again.keys() == first.keys()
    for name in first:
        assert torch.equal(again[name], first[name]), name


BUILD_WITH_THREADS = """
import sys
from pathlib import Path
import torch
from retrain.models.tiny import build_tiny_model
torch.set_num_threads(int(sys.argv[1]))
build_tiny_model(Path(sys.argv[2]))
"""


@pytest.mark.slow  # two builds of the model in fresh processes (~30 s); test_build_is_deterministic covers one
def test_builds_in_processes_with_one_and_two_threads_write_identical_files(tmp_path: Path) -> None:
    folders = []
    for threads in (1, 2):
        folder = tmp_path / f"threads-{threads}"
        folder.mkdir()
        subprocess.run([sys.executable, "-c", BUILD_WITH_THREADS, str(threads), str(folder)], check=True, timeout=300)
        folders.append(folder)
    names = sorted(path.name for path in folders[0].iterdir())
    assert names == sorted(path.name for path in folders[1].iterdir())
    assert "model.safetensors" in names
    for name in names:
        assert (folders[0] / name).read_bytes() == (folders[1] / name).read_bytes(), name


@pytest.mark.slow
def test_concurrent_builds_leave_one_complete_model(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        from pathlib import Path
        from retrain.models.tiny import ensure_tiny_model
        print(ensure_tiny_model(Path({str(tmp_path)!r})))
        """
    )
    processes = [subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True) for _ in range(3)]
    outputs = [process.communicate(timeout=300)[0].strip() for process in processes]
    assert all(process.returncode == 0 for process in processes)
    assert len(set(outputs)) == 1
    built = Path(outputs[0])
    assert [p.name for p in tmp_path.iterdir()] == [built.name]
    AutoModelForCausalLM.from_pretrained(built)
    AutoTokenizer.from_pretrained(built)
