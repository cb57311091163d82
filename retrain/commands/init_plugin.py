"""``retrain init-plugin --kind K --name N [--output-dir D] [--with-test]``: a plugin scaffold.

Writes ``D/N.py`` (default ``D = plugins``, the default search path) implementing the
exact contract the runtime calls for kind K, and with ``--with-test`` a ``D/test_N.py``
that loads the plugin through the registry and exercises that contract (it passes as
written: ``cd D && pytest``). Existing files are never overwritten. Prints the config
lines that select the new plugin.
"""

from __future__ import annotations

import argparse
import keyword
import string
import sys
from pathlib import Path

from retrain import registry_names
from retrain.errors import UsageError

DESCRIPTION = "write a plugin scaffold (and its test)"

KINDS = tuple(registry_names.BUILTINS)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"init-plugin: {message} (see `retrain init-plugin --help`)")


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="retrain init-plugin", description="Write a plugin scaffold that implements the runtime contract.")
    parser.add_argument("--kind", required=True, choices=KINDS, help="plugin kind")
    parser.add_argument("--name", required=True, help="module name, a Python identifier (also the function/class name)")
    parser.add_argument("--output-dir", default="plugins", help="where to write it (default: plugins)")
    parser.add_argument("--with-test", action="store_true", help="also write test_<name>.py (run it with pytest)")
    return parser


def class_name(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in name.split("_") if part) or "Plugin"


# Each kind: (module template, test template, config lines). Templates use $name,
# $Class and $dotted; they are string.Template, so Python braces need no escaping.

ADVANTAGE = '''"""$name: an advantage plugin for retrain.

Contract: ``$name(rewards_P_G, params) -> np.ndarray`` of shape [P, G] (or flat [N]),
one episode advantage per completion. This scaffold is GRPO with a scale:
``A = scale * (r - mean_group(r))``. Select it with::

    [algorithm]
    advantage_mode = "$dotted"

    [algorithm.advantage_params]
    scale = 1.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrain.plugin_api import register, setting


@dataclass(frozen=True)
class ${Class}Params:
    scale: float = setting(1.0, "Multiplies every advantage", gt=0.0)


@register("advantage", params=${Class}Params)
def $name(rewards_P_G: np.ndarray, params: ${Class}Params) -> np.ndarray:
    """Scaled group-relative advantages."""
    rewards = np.asarray(rewards_P_G, dtype=np.float64)
    return params.scale * (rewards - rewards.mean(axis=1, keepdims=True))
'''

ADVANTAGE_TEST = '''import numpy as np
from $name import ${Class}Params

from retrain.registry import check_params


def test_advantages_have_the_batch_shape_and_zero_group_mean():
    plugin = resolve_here("advantage", "$dotted")
    params = check_params(plugin, {"scale": 2.0}, "algorithm.advantage_params")
    assert params == ${Class}Params(scale=2.0)
    rewards = np.array([[1.0, 0.0, 0.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    advantages = plugin.obj(rewards, params)
    assert advantages.shape == (2, 4)
    assert np.all(np.isfinite(advantages))
    np.testing.assert_allclose(advantages.sum(axis=1), 0.0, atol=1e-12)
'''

TRANSFORM = '''"""$name: a token transform plugin for retrain.

Contract: ``$name(ctx: TransformContext, params) -> np.ndarray`` of shape [N, T] (or a
list of N per-completion arrays): the token advantages. ``ctx`` carries the episode
advantages, the uncertainty signal, the token and planning masks and the SEPA lambda.
This scaffold is GTPO weighting with its own beta. Select it with::

    [algorithm]
    transform_mode = "$dotted"

    [algorithm.transform_params]
    beta = 0.1
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from retrain.plugin_api import TransformContext, broadcast_advantages, gtpo_weights, register, setting


@dataclass(frozen=True)
class ${Class}Params:
    beta: float = setting(0.1, "GTPO weighting strength", ge=0.0)


@register("transform", params=${Class}Params)
def $name(ctx: TransformContext, params: ${Class}Params) -> np.ndarray:
    """Episode advantage times GTPO uncertainty weights."""
    weights = gtpo_weights(ctx.uncertainty_N_T, ctx.mask_N_T, params.beta)
    return broadcast_advantages(ctx.episode_advantages_N, ctx.mask_N_T) * weights
'''

TRANSFORM_TEST = '''import dataclasses

import numpy as np

from retrain.config.schema import AlgorithmConfig, Config
from retrain.credit import build_credit_pipeline


def test_it_loads_and_runs_in_a_pipeline():
    resolve_here("transform", "$dotted")
    config = dataclasses.replace(
        Config(),
        algorithm=AlgorithmConfig(transform_mode="$dotted", transform_params={"beta": 0.2}),
        plugins=dataclasses.replace(Config().plugins, search_paths=[str(HERE)]),
    )
    result = build_credit_pipeline(config).probe()
    assert result.token_advantages_N_T.shape == result.uncertainty_N_T.shape
    assert np.all(np.isfinite(result.token_advantages_N_T))
'''

UNCERTAINTY = '''"""$name: an uncertainty plugin for retrain.

Contract: ``$name(batch: SampleBatch) -> np.ndarray`` of shape [N, T] (or a list of N
per-completion arrays), finite, one value per sampled token. This scaffold is the
surprisal in bits, ``-logprob / ln 2``. Select it with::

    [algorithm]
    uncertainty_kind = "$dotted"
"""

from __future__ import annotations

import numpy as np

from retrain.plugin_api import SampleBatch, register


@register("uncertainty")
def $name(batch: SampleBatch) -> np.ndarray:
    """Surprisal of the sampled token in bits, 0 on padding."""
    bits = -np.asarray(batch.logprobs_N_T, dtype=np.float32) / np.float32(np.log(2.0))
    return np.where(np.asarray(batch.mask_N_T, dtype=bool), bits, np.float32(0.0))
'''

UNCERTAINTY_TEST = '''import numpy as np

from retrain.plugin_api import synthetic_batch


def test_one_finite_value_per_token():
    plugin = resolve_here("uncertainty", "$dotted")
    batch = synthetic_batch(num_prompts=2, group_size=3, max_tokens=8)
    values = plugin.obj(batch)
    assert values.shape == batch.mask_N_T.shape
    assert np.all(np.isfinite(values))
    assert np.all(values[~batch.mask_N_T] == 0.0)
'''

ALGORITHM = '''"""$name: a whole-pipeline algorithm plugin for retrain.

Contract: ``$name(ctx: AlgorithmContext, params) -> AlgorithmOutput`` with the episode
advantages [P, G] and the token advantages [N, T]. ``ctx`` carries the rewards, the
batch, the uncertainty signal, the masks and the SEPA lambda. This scaffold is MaxRL
advantages spread evenly over the tokens. Select it with::

    [algorithm]
    algorithm_mode = "$dotted"

    [algorithm.params]
    scale = 1.0
"""

from __future__ import annotations

from dataclasses import dataclass

from retrain.plugin_api import (
    AlgorithmContext,
    AlgorithmOutput,
    broadcast_advantages,
    maxrl_advantages,
    register,
    setting,
)


@dataclass(frozen=True)
class ${Class}Params:
    scale: float = setting(1.0, "Multiplies every advantage", gt=0.0)


@register("algorithm", params=${Class}Params)
def $name(ctx: AlgorithmContext, params: ${Class}Params) -> AlgorithmOutput:
    """Scaled MaxRL episode advantages, the same on every token."""
    advantages_P_G = params.scale * maxrl_advantages(ctx.rewards_P_G)
    return AlgorithmOutput(
        episode_advantages=advantages_P_G,
        token_advantages=broadcast_advantages(advantages_P_G.reshape(-1), ctx.mask_N_T),
    )
'''

ALGORITHM_TEST = '''import dataclasses

import numpy as np

from retrain.config.schema import AlgorithmConfig, Config
from retrain.credit import build_credit_pipeline


def test_it_loads_and_runs_as_the_whole_pipeline():
    resolve_here("algorithm", "$dotted")
    config = dataclasses.replace(
        Config(),
        algorithm=AlgorithmConfig(algorithm_mode="$dotted", params={"scale": 0.5}),
        plugins=dataclasses.replace(Config().plugins, search_paths=[str(HERE)]),
    )
    pipeline = build_credit_pipeline(config)
    assert pipeline.describe()["mode"] == "algorithm"
    result = pipeline.probe()
    assert np.all(np.isfinite(result.token_advantages_N_T))
'''

REWARD = '''"""$name: a custom reward for retrain.

Contract: ``$name(completion: str, reference: str) -> float`` (optionally with an
``example=None`` parameter to receive the whole Example), called once per completion.
This scaffold gives 1.0 when the last whitespace-separated word of the completion equals
the reference, ignoring case and a trailing period. Select it with::

    [reward]
    type = "custom"
    custom_module = "$name"
    custom_function = "$name"
"""

from __future__ import annotations


def $name(completion: str, reference: str) -> float:
    """1.0 when the completion's last word is the reference, else 0.0."""
    words = completion.strip().rstrip(".").split()
    return 1.0 if words and words[-1].lower() == reference.strip().lower() else 0.0
'''

REWARD_TEST = '''import dataclasses

from retrain.config.schema import Config, RewardConfig
from retrain.rewards.custom import CustomReward
from retrain.types import Example


def test_scores_through_the_custom_reward():
    resolve_here("reward", "$dotted")
    config = dataclasses.replace(
        Config(),
        reward=RewardConfig(type="custom", custom_module="$name", custom_function="$name"),
        plugins=dataclasses.replace(Config().plugins, search_paths=[str(HERE)]),
    )
    example = Example(example_id="e1", messages=({"role": "user", "content": "2+2?"},), reference="4")
    rewards = CustomReward(config).score(["so it is 4.", "it is 5"], [example, example])
    assert rewards.tolist() == [1.0, 0.0]
'''

DATA = '''"""$name: a prompt source for retrain.

Contract: ``$Class(config)`` with ``examples() -> list[Example]``, in a deterministic
order (the run loop shuffles). Honour ``[training] max_examples`` (0 = all). This
scaffold asks for products of single digits. Select it with::

    [data]
    source = "$dotted"
"""

from __future__ import annotations

from retrain.plugin_api import Config, Example, register


@register("data")
class $Class:
    """Single-digit multiplication problems."""

    def __init__(self, config: Config) -> None:
        self.max_examples = config.training.max_examples

    def examples(self) -> list[Example]:
        examples = [
            Example(
                example_id=f"$name-{a}x{b}",
                messages=({"role": "user", "content": f"What is {a} times {b}? Answer with the number only."},),
                reference=str(a * b),
            )
            for a in range(10)
            for b in range(10)
        ]
        return examples[: self.max_examples] if self.max_examples else examples
'''

DATA_TEST = '''import dataclasses

from retrain.config.schema import Config, TrainingConfig
from retrain.types import Example


def test_examples_are_deterministic_and_capped():
    plugin = resolve_here("data", "$dotted")
    config = dataclasses.replace(Config(), training=TrainingConfig(max_examples=7))
    examples = plugin.obj(config).examples()
    assert len(examples) == 7
    assert all(isinstance(example, Example) and example.reference for example in examples)
    assert [e.example_id for e in examples] == [e.example_id for e in plugin.obj(config).examples()]
'''

PLANNING = '''"""$name: a planning-token detector for retrain.

Contract: ``$Class(config)`` with ``detect(texts, token_char_spans) -> np.ndarray``, bool
[N, T] padded to the longest span list: True on planning tokens. ``token_char_spans[i]``
holds each token's (start, end) character span in ``texts[i]``. This scaffold marks every
sentence that ends with a question mark (self-questioning). Select it with::

    [planning]
    detector = "$dotted"
"""

from __future__ import annotations

import re

import numpy as np

from retrain.plugin_api import Config, register
from retrain.planning import spans_to_mask

QUESTION = re.compile(r"[^.!?\\n]*\\?")


@register("planning")
class $Class:
    """Tokens of sentences that end with a question mark."""

    def __init__(self, config: Config) -> None:
        self.config = config

    def detect(self, texts: list[str], token_char_spans: list[list[tuple[int, int]]]) -> np.ndarray:
        width = max((len(spans) for spans in token_char_spans), default=0)
        planning = np.zeros((len(texts), width), dtype=bool)
        for row, (text, spans) in enumerate(zip(texts, token_char_spans)):
            questions = [match.span() for match in QUESTION.finditer(text)]
            planning[row, : len(spans)] = spans_to_mask(questions, spans)
        return planning
'''

PLANNING_TEST = '''from retrain.config.schema import Config


def test_marks_the_tokens_of_a_question():
    plugin = resolve_here("planning", "$dotted")
    text = "x is 3. Is that right? yes"
    spans = [(0, 1), (2, 4), (5, 7), (8, 10), (11, 15), (16, 22), (23, 26)]
    planning = plugin.obj(Config()).detect([text, ""], [spans, []])
    assert planning.shape == (2, 7)
    assert planning[0].tolist() == [False, False, False, True, True, True, False]
    assert not planning[1].any()
'''

ENGINE = '''"""$name: an inference engine for retrain.

Contract: ``$Class(config)`` with
``generate(prompt_token_ids, n, max_tokens, temperature, top_p, want_entropies=False)
-> SampleBatch`` (n completions per prompt, prompt-major, sampler logprobs of the sampled
tokens under the temperature, finish reasons, texts and per-token character spans) and
``load_adapter(path, version)``. This scaffold samples letters from a unigram policy whose
logits it reads from ``unigram.npy`` in the adapter folder (uniform until one is
loaded); replace the sampler with calls to your server. Select it with::

    [inference]
    engine = "$dotted"
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from retrain.plugin_api import Config, SampleBatch, register

VOCABULARY = list("abcdefghijklmnopqrstuvwxyz .") + ["<eos>"]
EOS = len(VOCABULARY) - 1

def sampling_log_probs(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """Log-probabilities after temperature and nucleus (top-p) filtering."""
    scaled = logits / temperature
    log_probs = scaled - np.logaddexp.reduce(scaled)
    order = np.argsort(-log_probs)
    sorted_probs = np.exp(log_probs[order])
    # Keep the most likely tokens until their mass reaches top_p (always at least one).
    keep = np.zeros(len(logits), dtype=bool)
    keep[order] = (np.cumsum(sorted_probs) - sorted_probs) < top_p
    kept = np.where(keep, log_probs, -np.inf)
    return kept - np.logaddexp.reduce(kept[keep])


@register("engine")
class $Class:
    """Samples characters from a unigram policy."""

    def __init__(self, config: Config) -> None:
        self.rng = np.random.default_rng(max(config.training.seed, 0))
        self.logits = np.zeros(len(VOCABULARY))
        self.version = 0

    def load_adapter(self, path: Path, version: int) -> None:
        self.logits = np.load(Path(path) / "unigram.npy")
        self.version = version

    def generate(self, prompt_token_ids: list[list[int]], n: int, max_tokens: int, temperature: float,
                 top_p: float, want_entropies: bool = False) -> SampleBatch:
        rows = len(prompt_token_ids) * n
        log_probs = sampling_log_probs(self.logits, temperature, top_p)
        tokens = self.rng.choice(len(VOCABULARY), size=(rows, max_tokens), p=np.exp(log_probs))
        # Everything after the first end-of-sequence token is padding.
        ended = np.cumsum(tokens == EOS, axis=1)
        mask = (ended == 0) | ((ended == 1) & (tokens == EOS))
        texts, spans = [], []
        for row in range(rows):
            pieces = ["" if token == EOS else VOCABULARY[token] for token in tokens[row][mask[row]]]
            ends = np.cumsum([len(piece) for piece in pieces], dtype=np.int64)
            spans.append([(int(end - len(piece)), int(end)) for piece, end in zip(pieces, ends)])
            texts.append("".join(pieces))
        probabilities = np.exp(log_probs)
        entropy = float(-(probabilities * np.where(probabilities > 0, log_probs, 0.0)).sum())
        return SampleBatch(
            prompt_token_ids=prompt_token_ids,
            group_size=n,
            token_ids_N_T=np.where(mask, tokens, 0),
            mask_N_T=mask,
            logprobs_N_T=np.where(mask, log_probs[tokens], 0.0).astype(np.float32),
            finish_reasons=["stop" if (row_tokens[mask_row] == EOS).any() else "length"
                            for row_tokens, mask_row in zip(tokens, mask)],
            texts=texts,
            entropies_N_T=np.where(mask, entropy, 0.0).astype(np.float32) if want_entropies else None,
            token_char_spans=spans,
            policy_version=self.version,
        )
'''

ENGINE_TEST = '''import numpy as np

from retrain.config.schema import Config


def test_generate_returns_a_consistent_batch(tmp_path):
    engine = resolve_here("engine", "$dotted").obj(Config())
    batch = engine.generate([[1, 2], [3]], n=4, max_tokens=6, temperature=1.0, top_p=1.0, want_entropies=True)
    assert batch.token_ids_N_T.shape == batch.mask_N_T.shape == batch.logprobs_N_T.shape == (8, 6)
    assert batch.group_size == 4 and len(batch.texts) == len(batch.finish_reasons) == 8
    assert np.all(batch.logprobs_N_T <= 0.0) and batch.entropies_N_T is not None
    for text, spans, length in zip(batch.texts, batch.token_char_spans, batch.lengths_N):
        assert len(spans) == length
        assert all(text[start:end] for start, end in spans if end > start)
    np.save(tmp_path / "unigram.npy", np.where(np.arange(29) == 0, 50.0, 0.0))
    engine.load_adapter(tmp_path, version=3)
    assert engine.generate([[1]], n=2, max_tokens=3, temperature=1.0, top_p=1.0).texts == ["aaa", "aaa"]
'''

BACKEND = '''"""$name: a training backend for retrain.

Contract: ``$Class(config)`` with ``capabilities`` (a BackendCapabilities),
``train_step(batch: TrainBatch) -> TrainResult``, ``save_adapter(path)``,
``save_state(directory)``, ``load_state(directory)``, ``engine()`` (the in-process
engine, when ``capabilities.in_process_engine``), ``sync_engine_weights() -> int`` and
``shutdown()``. This scaffold trains a unigram policy over characters with the
token-level policy gradient ``-mean_t(a_t log p(x_t))`` in numpy, and serves it with an
in-process engine; replace the model and the update with yours. Select it with::

    [backend]
    backend = "$dotted"
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from retrain.backends.base import BackendCapabilities
from retrain.plugin_api import Config, SampleBatch, TrainBatch, TrainResult, register

VOCABULARY = list("0123456789 ") + ["<eos>"]
EOS = len(VOCABULARY) - 1

def sampling_log_probs(logits: np.ndarray, temperature: float, top_p: float) -> np.ndarray:
    """Log-probabilities after temperature and nucleus (top-p) filtering."""
    scaled = logits / temperature
    log_probs = scaled - np.logaddexp.reduce(scaled)
    order = np.argsort(-log_probs)
    sorted_probs = np.exp(log_probs[order])
    # Keep the most likely tokens until their mass reaches top_p (always at least one).
    keep = np.zeros(len(logits), dtype=bool)
    keep[order] = (np.cumsum(sorted_probs) - sorted_probs) < top_p
    kept = np.where(keep, log_probs, -np.inf)
    return kept - np.logaddexp.reduce(kept[keep])


class ${Class}Engine:
    """Samples from the backend's current unigram logits."""

    def __init__(self, backend: $Class) -> None:
        self.backend = backend
        self.rng = np.random.default_rng(backend.seed)

    def load_adapter(self, path: Path, version: int) -> None:
        self.backend.logits = np.load(Path(path) / "unigram.npy")

    def generate(self, prompt_token_ids: list[list[int]], n: int, max_tokens: int, temperature: float,
                 top_p: float, want_entropies: bool = False) -> SampleBatch:
        rows = len(prompt_token_ids) * n
        log_probs = sampling_log_probs(self.backend.logits, temperature, top_p)
        tokens = self.rng.choice(len(VOCABULARY), size=(rows, max_tokens), p=np.exp(log_probs))
        ended = np.cumsum(tokens == EOS, axis=1)
        mask = (ended == 0) | ((ended == 1) & (tokens == EOS))
        texts, spans = [], []
        for row in range(rows):
            pieces = ["" if token == EOS else VOCABULARY[token] for token in tokens[row][mask[row]]]
            ends = np.cumsum([len(piece) for piece in pieces], dtype=np.int64)
            spans.append([(int(end - len(piece)), int(end)) for piece, end in zip(pieces, ends)])
            texts.append("".join(pieces))
        return SampleBatch(
            prompt_token_ids=prompt_token_ids,
            group_size=n,
            token_ids_N_T=np.where(mask, tokens, 0),
            mask_N_T=mask,
            logprobs_N_T=np.where(mask, log_probs[tokens], 0.0).astype(np.float32),
            finish_reasons=["stop" if (t[m] == EOS).any() else "length" for t, m in zip(tokens, mask)],
            texts=texts,
            token_char_spans=spans,
            policy_version=self.backend.version,
        )


@register("backend")
class $Class:
    """A unigram policy trained with the token-level policy gradient."""

    capabilities = BackendCapabilities(
        reports_loss=True,
        preserves_token_advantages=True,
        exact_resume=True,
        supports_entropies=False,
        in_process_engine=True,
    )

    def __init__(self, config: Config) -> None:
        self.lr = config.training.lr
        self.seed = max(config.training.seed, 0)
        self.logits = np.zeros(len(VOCABULARY))
        self.version = 0
        self._engine = ${Class}Engine(self)

    def engine(self) -> ${Class}Engine:
        return self._engine

    def train_step(self, batch: TrainBatch) -> TrainResult:
        mask = np.asarray(batch.mask_N_T, dtype=bool)
        tokens = np.asarray(batch.token_ids_N_T)[mask]
        advantages = np.asarray(batch.token_advantages_N_T, dtype=np.float64)[mask]
        if tokens.size == 0:
            return TrainResult(loss=0.0, skipped=True)
        scaled = self.logits / batch.temperature
        log_probs = scaled - np.logaddexp.reduce(scaled)
        loss = float(-(advantages * log_probs[tokens]).mean())
        # d/dlogits of -mean(a_t log softmax(logits / temperature)[x_t]).
        counts = np.bincount(tokens, weights=advantages, minlength=len(VOCABULARY))
        gradient = -(counts - advantages.sum() * np.exp(log_probs)) / (tokens.size * batch.temperature)
        self.logits = self.logits - self.lr * gradient
        return TrainResult(loss=loss, metrics={"trained_tokens": float(tokens.size),
                                               "grad_norm": float(np.linalg.norm(gradient))})

    def save_adapter(self, path: Path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        temporary = path / "unigram.npy.tmp"
        with open(temporary, "wb") as handle:
            np.save(handle, self.logits)
        os.replace(temporary, path / "unigram.npy")

    def save_state(self, directory: Path) -> None:
        self.save_adapter(directory)
        rng_state = np.array([self.version], dtype=np.int64)
        np.save(Path(directory) / "version.npy", rng_state)

    def load_state(self, directory: Path) -> None:
        self.logits = np.load(Path(directory) / "unigram.npy")
        self.version = int(np.load(Path(directory) / "version.npy")[0])

    def sync_engine_weights(self) -> int:
        self.version += 1
        return self.version

    def shutdown(self) -> None:
        self.logits = self.logits.copy()
'''

BACKEND_TEST = '''import dataclasses

import numpy as np

from retrain.config.schema import Config, TrainingConfig
from retrain.types import TrainBatch


def test_a_positive_advantage_raises_the_probability_of_its_tokens(tmp_path):
    plugin = resolve_here("backend", "$dotted")
    config = dataclasses.replace(Config(), training=TrainingConfig(lr=0.5, seed=1))
    backend = plugin.obj(config)
    assert backend.capabilities.in_process_engine
    samples = backend.engine().generate([[1]], n=4, max_tokens=5, temperature=1.0, top_p=1.0)
    token = 3
    batch = TrainBatch(
        prompt_token_ids=[[1]],
        token_ids_N_T=np.full((1, 4), token),
        mask_N_T=np.ones((1, 4), dtype=bool),
        sampler_logprobs_N_T=np.full((1, 4), -2.0, dtype=np.float32),
        token_advantages_N_T=np.ones((1, 4), dtype=np.float32),
        prompt_index_N=np.zeros(1, dtype=np.int64),
        temperature=1.0,
    )
    before = backend.logits.copy()
    result = backend.train_step(batch)
    assert np.isfinite(result.loss) and not result.skipped
    assert backend.logits[token] > before[token]
    assert backend.sync_engine_weights() == 1
    backend.save_state(tmp_path)
    restored = plugin.obj(config)
    restored.load_state(tmp_path)
    np.testing.assert_array_equal(restored.logits, backend.logits)
    assert len(samples.texts) == 4
    backend.shutdown()
'''

# Every generated test starts with this: it loads the plugin the way a run does, through
# the registry with the test's own folder as the search path.
TEST_HEADER = '''"""Tests for the $name plugin; run them with `python -m pytest` in this folder."""

from pathlib import Path

from retrain.config.schema import PluginsConfig
from retrain.registry import ResolvedPlugin, resolve

HERE = Path(__file__).resolve().parent


def resolve_here(kind: str, name: str) -> ResolvedPlugin:
    return resolve(kind, name, PluginsConfig(search_paths=[str(HERE)], strict=True))


'''

SCAFFOLDS: dict[str, tuple[str, str, str]] = {
    "advantage": (ADVANTAGE, ADVANTAGE_TEST, '[algorithm]\nadvantage_mode = "$dotted"'),
    "transform": (TRANSFORM, TRANSFORM_TEST, '[algorithm]\ntransform_mode = "$dotted"'),
    "uncertainty": (UNCERTAINTY, UNCERTAINTY_TEST, '[algorithm]\nuncertainty_kind = "$dotted"'),
    "algorithm": (ALGORITHM, ALGORITHM_TEST, '[algorithm]\nalgorithm_mode = "$dotted"'),
    "reward": (REWARD, REWARD_TEST, '[reward]\ntype = "custom"\ncustom_module = "$name"\ncustom_function = "$name"'),
    "data": (DATA, DATA_TEST, '[data]\nsource = "$dotted"'),
    "planning": (PLANNING, PLANNING_TEST, '[planning]\ndetector = "$dotted"'),
    "engine": (ENGINE, ENGINE_TEST, '[inference]\nengine = "$dotted"'),
    "backend": (BACKEND, BACKEND_TEST, '[backend]\nbackend = "$dotted"'),
}


def render(kind: str, name: str) -> tuple[str, str, str]:
    """(module source, test source, config lines) of the scaffold for ``kind``."""
    module, test, config_lines = SCAFFOLDS[kind]
    test = TEST_HEADER + test
    function_kinds = ("advantage", "transform", "uncertainty", "algorithm", "reward")
    attribute = name if kind in function_kinds else class_name(name)
    values = {"name": name, "Class": class_name(name), "dotted": f"{name}.{attribute}"}
    return tuple(string.Template(text).substitute(values) for text in (module, test, config_lines))  # type: ignore[return-value]


def write_scaffold(kind: str, name: str, output_dir: Path, with_test: bool) -> list[Path]:
    """Write the scaffold files; raise ``UsageError`` rather than overwrite anything."""
    if not name.isidentifier() or keyword.iskeyword(name) or name.startswith("test_"):
        raise UsageError(f"init-plugin: --name '{name}' must be a Python identifier (not a keyword, not test_*), "
                         "e.g. my_advantage")
    if name in sys.stdlib_module_names:
        raise UsageError(f"init-plugin: --name '{name}' is a Python standard-library module; pick another name")
    module_text, test_text, _ = render(kind, name)
    targets = {output_dir / f"{name}.py": module_text}
    if with_test:
        targets[output_dir / f"test_{name}.py"] = test_text
    existing = [str(path) for path in targets if path.exists()]
    if existing:
        raise UsageError(f"init-plugin: refusing to overwrite {', '.join(existing)} — choose another --name or "
                         "--output-dir, or remove the file")
    output_dir.mkdir(parents=True, exist_ok=True)
    for path, text in targets.items():
        path.write_text(text, encoding="utf-8")
    return list(targets)


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    output_dir = Path(args.output_dir)
    written = write_scaffold(args.kind, args.name, output_dir, args.with_test)
    _, _, config_lines = render(args.kind, args.name)
    print(f"wrote {', '.join(str(path) for path in written)}")
    print("\nselect it in your config with:\n")
    print(config_lines)
    print(f'\n[plugins]\nsearch_paths = ["{args.output_dir}"]')
    if args.with_test:
        print(f"\nrun its test with: cd {output_dir} && python -m pytest test_{args.name}.py")
    return 0
