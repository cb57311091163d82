"""``retrain/tiny``: a small Qwen3-architecture model built offline on first use.

The default config has to learn visibly on a laptop CPU with no network, so the model is
built locally instead of downloaded:

- a character-level tokenizer (the ``tokenizers`` library's WordLevel model over the
  printable ASCII characters, one token per character) with ChatML-style turns
  (``<|im_start|>role\\n...<|im_end|>\\n``); ``<|im_end|>`` is the end-of-sequence token;
- a causal LM from a ``qwen3`` config with random weights: two layers, hidden size 64,
  attention heads of size 64 (the head size vLLM's CPU kernels accept, so the same model
  can be served by vLLM in integration tests), weights drawn with a large standard
  deviation (0.2) so that the output starts out depending on the prompt;
- a short format-only warm start: supervised steps that teach "one digit, then
  ``<|im_end|>``" after the assistant turn of arithmetic prompts, with the digit drawn at
  random. It teaches the answer format, not the task: afterwards the model answers each
  prompt with a roughly uniform random digit (reward about 0.1 on the arithmetic task),
  which gives reinforcement learning reward variance to start from. Without it, RL from
  random weights collapses onto one constant answer and the group advantages vanish.

The build is seeded and deterministic. It runs in a temporary folder next to the cache
entry and is renamed into place, so a concurrent build in another process can never
leave a half-written model behind: the first rename wins and the loser discards its copy.
The result is an ordinary Hugging Face model folder, loaded like any other with
``from_pretrained``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import shutil
import string
import tempfile
from collections.abc import Iterator
from pathlib import Path

from retrain.data.arithmetic import all_pairs, arithmetic_prompt

logger = logging.getLogger(__name__)

TINY_MODEL_NAME = "retrain/tiny"
# Bump when anything below changes what gets built, so old cache entries are not reused.
TINY_MODEL_VERSION = 3
BUILD_SEED = 1234

PAD_TOKEN = "<|pad|>"
UNK_TOKEN = "<|unk|>"
TURN_START = "<|im_start|>"
TURN_END = "<|im_end|>"
SPECIAL_TOKENS = (PAD_TOKEN, UNK_TOKEN, TURN_START, TURN_END)
CHARACTERS = string.digits + string.ascii_letters + string.punctuation + " \n"

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

MODEL_SHAPE = {
    "hidden_size": 64,
    "intermediate_size": 256,
    "num_hidden_layers": 2,
    "num_attention_heads": 2,
    "num_key_value_heads": 2,
    "head_dim": 64,
    "max_position_embeddings": 512,
    "tie_word_embeddings": True,
    # Ten times transformers' default. With std 0.02 the last position's output hardly
    # depends on the operands at all, and RL sits on a plateau for thousands of steps
    # before it finds them; with 0.2 the default config learns in about 1000-1900 steps.
    "initializer_range": 0.2,
}

WARM_START_STEPS = 100
WARM_START_BATCH = 64
WARM_START_LR = 3e-3


def cache_root() -> Path:
    """``$RETRAIN_CACHE_DIR``, or ``~/.cache/retrain``."""
    configured = os.environ.get("RETRAIN_CACHE_DIR")
    return Path(configured) if configured else Path.home() / ".cache" / "retrain"


def resolve_model_path(name: str) -> str:
    """The path or hub id to load for ``[model] model``: builds ``retrain/tiny`` if needed."""
    if name == TINY_MODEL_NAME:
        return str(ensure_tiny_model())
    return name


def ensure_tiny_model(cache_dir: Path | None = None) -> Path:
    """The folder of the built tiny model under ``cache_dir``, building it on first use."""
    root = Path(cache_dir) if cache_dir is not None else cache_root()
    target = root / f"tiny-qwen3-v{TINY_MODEL_VERSION}"
    if target.is_dir():
        return target
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.build-", dir=root))
    # mkdtemp makes a private folder; the cache entry should be as readable as any other.
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(staging, 0o777 & ~umask)
    try:
        logger.info("building the tiny model %s (once)", target)
        build_tiny_model(staging)
        try:
            os.rename(staging, target)
        except OSError:
            # Another process renamed its complete build into place first; use that one.
            if not target.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return target


def build_tokenizer():  # -> transformers.PreTrainedTokenizerFast
    """The character-level tokenizer with the chat template."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + tuple(CHARACTERS))}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK_TOKEN))
    # One piece per character, newlines included.
    core.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    core.decoder = decoders.Fuse()
    core.add_special_tokens(list(SPECIAL_TOKENS))
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token=PAD_TOKEN,
        unk_token=UNK_TOKEN,
        eos_token=TURN_END,
        additional_special_tokens=[TURN_START],
        clean_up_tokenization_spaces=False,
        model_max_length=MODEL_SHAPE["max_position_embeddings"],
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_model(directory: Path, seed: int = BUILD_SEED) -> None:
    """Build, warm-start and save the tiny model and its tokenizer into ``directory``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    tokenizer = build_tokenizer()
    config = AutoConfig.for_model(
        "qwen3",
        vocab_size=len(tokenizer),
        bos_token_id=None,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **MODEL_SHAPE,
    )
    with torch.random.fork_rng(devices=[]), single_thread():
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        warm_start(model, tokenizer, seed)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """Run torch's CPU kernels on one thread for the duration.

    Parallel kernels split their reductions by thread count, so the same seeded build
    gives weights that differ in the last bits between machines with different core
    counts (6.6e-6 between 1 and 2 threads). One thread makes every build of the model
    bit-identical, whatever the machine; the build is small enough not to miss the rest.
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def warm_start(model, tokenizer, seed: int, steps: int = WARM_START_STEPS) -> None:
    """Teach the answer format, "<digit><|im_end|>", with random digits (not the sums).

    The loss covers only the two answer tokens, so the prompt text itself is not
    modelled; every prompt of the arithmetic task appears, answered by a digit drawn
    uniformly at random each time.
    """
    import torch

    rng = random.Random(seed)
    pairs = all_pairs()
    prompts = [
        tokenizer.apply_chat_template(
            [{"role": "user", "content": arithmetic_prompt(a, b)}], tokenize=False, add_generation_prompt=True
        )
        for a, b in pairs
    ]
    prompt_ids = [tokenizer(text, add_special_tokens=False)["input_ids"] for text in prompts]
    digit_ids = tokenizer.convert_tokens_to_ids(list(string.digits))
    eos_id = tokenizer.eos_token_id
    # All prompts of this task have the same length, so sequences stack without padding.
    if len({len(ids) for ids in prompt_ids}) != 1:
        raise AssertionError("arithmetic prompts are expected to share one length")
    optimizer = torch.optim.AdamW(model.parameters(), lr=WARM_START_LR, weight_decay=0.0)
    model.train()
    for _ in range(steps):
        rows = [prompt_ids[rng.randrange(len(prompt_ids))] + [digit_ids[rng.randrange(10)], eos_id]
                for _ in range(WARM_START_BATCH)]
        input_ids = torch.tensor(rows)
        labels = torch.full_like(input_ids, -100)
        labels[:, -2:] = input_ids[:, -2:]
        loss = model(input_ids=input_ids, labels=labels).loss
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()
