"""The contracts of retrain: the data one RL step passes between its stages, and the
protocols of the components that produce and consume it. This is the map of the code.

One step (DESIGN §2)::

    Example ─ Environment.rollout ─▶ Scored                  (Collector.collect ─▶ Collected)
                  Backend.encode_prompt ─▶ prompt token ids
                  Engine.generate       ─▶ SampleBatch (trajectories with a loss mask)
                  Reward.score          ─▶ one reward per trajectory
            ─ PlanningDetector.detect ─▶ planning_N_T
            ─ credit pipeline       ─▶ CreditResult (token advantages)
            ─ Backend.train_step    ─▶ TrainResult
            ─ Backend.publish       ─▶ PolicyRef ─ Engine.load
            ─ Sink.log_step / log_generations

Shape suffixes: P prompts per step, G completions per prompt (the group), N = P * G
trajectories in prompt-major order (row ``p * G + g`` is trajectory ``g`` of prompt
``p``), T the longest trajectory in the batch. Per-token arrays are padded to ``[N, T]``.
Only numpy crosses stage boundaries, so the credit-assignment code never needs torch, and
nothing here imports it: a component's capabilities can be read without loading a model.

Components are classes constructed with the whole ``Config``. An ``Environment`` (a
``[data]`` source and a ``[reward]`` by default) supplies the prompts and plays the
rollouts. Backends and engines also declare, as a classmethod, what they can do for a
given config (``capabilities``); the run plan checks those declarations against each
other before anything is built, and may ask any component class for its own
configuration problems (``config_issues``, optional).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol, runtime_checkable

import numpy as np

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedTokenizerBase

    from retrain.config.schema import Config
    from retrain.errors import ConfigIssue

# A chat message as a tokenizer's chat template takes it: {"role": ..., "content": ...}.
Message = dict[str, str]
# Chat messages to the token ids the policy samples after (``Backend.encode_prompt``).
Encoder = Callable[[tuple[Message, ...]], list[int]]


@dataclass(frozen=True)
class Example:
    """One training prompt and the reference its completions are scored against."""

    example_id: str
    messages: tuple[Message, ...]
    reference: str
    metadata: dict[str, object] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class SamplingParams:
    """How an engine samples: ``n`` completions per prompt of at most ``max_tokens`` new
    tokens, at ``temperature`` with nucleus ``top_p``; ``want_entropies`` asks for the
    entropy of the full next-token distribution at each sampled position."""

    n: int
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    want_entropies: bool = False


@dataclass
class SampleBatch:
    """Trajectories: for each of the N rows, everything after the prompt.

    A row holds the model's sampled tokens and, in multi-turn environments, the tokens
    of environment turns between them. ``mask_N_T`` is True on every real token of a row
    (False on padding); ``loss_mask_N_T`` is True only on the tokens the policy sampled,
    a subset of ``mask_N_T``. Only sampled tokens carry credit and enter the loss;
    environment tokens are context. A single-turn completion has both masks equal.

    ``logprobs_N_T`` are the sampler's log-probabilities of the sampled tokens under the
    sampling temperature (0 elsewhere); ``entropies_N_T`` the Shannon entropy of the full
    next-token distribution at each sampled position (only when asked for and the engine
    can). ``finish_reasons`` is "stop" (end of turn or a stop string) or "length"
    (``max_tokens`` reached). ``token_char_spans[n][t]`` is the (start, end) character
    span of token t in ``texts[n]``, used to map planning phrases to tokens.
    ``policy_version`` is the version of the policy the rows were sampled from.
    """

    prompt_token_ids: list[list[int]]
    group_size: int
    token_ids_N_T: np.ndarray
    mask_N_T: np.ndarray
    loss_mask_N_T: np.ndarray
    logprobs_N_T: np.ndarray
    finish_reasons: list[str]
    texts: list[str]
    entropies_N_T: np.ndarray | None = None
    token_char_spans: list[list[tuple[int, int]]] | None = None
    policy_version: int = 0
    # Engine counts for the step's metrics row, e.g. ``engine_text_prompts``.
    counts: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        shape = np.shape(self.token_ids_N_T)
        for name in ("mask_N_T", "loss_mask_N_T", "logprobs_N_T"):
            if np.shape(getattr(self, name)) != shape:
                raise ValueError(f"SampleBatch.{name} has shape {np.shape(getattr(self, name))}; token_ids_N_T has {shape}")
        if self.entropies_N_T is not None and np.shape(self.entropies_N_T) != shape:
            raise ValueError(f"SampleBatch.entropies_N_T has shape {np.shape(self.entropies_N_T)}; expected {shape}")
        if np.any(np.asarray(self.loss_mask_N_T, dtype=bool) & ~np.asarray(self.mask_N_T, dtype=bool)):
            raise ValueError("SampleBatch.loss_mask_N_T marks padding as sampled; it must be a subset of mask_N_T")

    @property
    def num_prompts(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def lengths_N(self) -> np.ndarray:
        """Real tokens per row (sampled and environment tokens)."""
        return np.asarray(self.mask_N_T, dtype=bool).sum(axis=1)

    @property
    def sampled_lengths_N(self) -> np.ndarray:
        """Sampled tokens per row."""
        return np.asarray(self.loss_mask_N_T, dtype=bool).sum(axis=1)


@dataclass
class Scored:
    """One round of rollouts: the trajectories, one reward per trajectory, and where the
    time went (``sample_time_s``, ``reward_time_s``, ...)."""

    samples: SampleBatch
    rewards_N: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    # Per-round counts for the metrics row, e.g. ``plugin_repaired_values``.
    counts: dict[str, float] = field(default_factory=dict)


@dataclass
class Collected:
    """The scored groups of one step: ``examples[p]`` is the prompt of group ``p``."""

    examples: list[Example]
    samples: SampleBatch
    rewards_P_G: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)
    counts: dict[str, float] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Credit and training


@dataclass
class CreditResult:
    """Output of the credit-assignment pipeline for one step (0 off the loss mask)."""

    episode_advantages_N: np.ndarray
    token_advantages_N_T: np.ndarray
    uncertainty_N_T: np.ndarray
    # False for groups whose rewards are all equal: they carry no learning signal and
    # are dropped from the update.
    informative_P: np.ndarray
    metrics: dict[str, float] = field(default_factory=dict)
    # Plugin output values set to 0 this step under [plugins] strict = false (the
    # ``plugin_repaired_values`` field of the step's metrics row).
    repaired_values: int = 0


@dataclass
class TrainBatch:
    """What the backend trains on: the informative trajectories of one step.

    The model reads every real token (``mask_N_T``); the loss covers the sampled ones
    (``loss_mask_N_T``), whose sampler log-probabilities and token advantages are given.
    """

    prompt_token_ids: list[list[int]]
    token_ids_N_T: np.ndarray
    mask_N_T: np.ndarray
    loss_mask_N_T: np.ndarray
    sampler_logprobs_N_T: np.ndarray
    token_advantages_N_T: np.ndarray
    # Index into the step's SampleBatch rows, so a trajectory maps back to its prompt.
    prompt_index_N: np.ndarray
    temperature: float = 1.0

    @property
    def num_rows(self) -> int:
        return int(np.shape(self.token_ids_N_T)[0])


@dataclass
class TrainResult:
    """What one optimizer step reports."""

    loss: float
    metrics: dict[str, float] = field(default_factory=dict)
    skipped: bool = False


# ---------------------------------------------------------------------------------------
# Weight publication: a backend publishes a policy version, an engine loads it

# in_process: the live model in this process (shared, or copied by the engine);
# lora_adapter: a PEFT adapter folder; full_weights: a complete Hugging Face model folder;
# remote: an opaque reference the engine resolves itself (a sampler URI, a broadcast step).
PolicyKind = Literal["in_process", "lora_adapter", "full_weights", "remote"]
POLICY_KINDS: tuple[PolicyKind, ...] = ("in_process", "lora_adapter", "full_weights", "remote")


@dataclass(frozen=True)
class InProcessPolicy:
    """A policy held in this process: the model, its tokenizer, the lock that whoever
    changes or reads the weights holds, and the version of the weights as they are now
    (read under the lock, it names exactly the weights a sampler sees)."""

    model: torch.nn.Module
    tokenizer: PreTrainedTokenizerBase
    weights_lock: threading.Lock
    version: Callable[[], int]


@dataclass(frozen=True)
class PolicyRef:
    """One published policy version.

    ``location`` is the folder of a ``lora_adapter`` or ``full_weights`` publication,
    or the URI of a ``remote`` one; ``in_process`` holds the live policy of an
    ``in_process`` publication.
    """

    version: int
    kind: PolicyKind
    location: str = ""
    in_process: InProcessPolicy | None = None


@dataclass(frozen=True)
class EngineCapabilities:
    """What an engine can do under a given config.

    ``loads``: the publication kinds it can sample from, preferred first.
    ``entropies``: it can fill ``SampleBatch.entropies_N_T`` (needs the full next-token
    distribution). ``exact_resume``: its ``save_state``/``load_state`` make sampling after
    a resume repeat the uninterrupted run. ``reads``: component settings (see
    ``retrain.config.schema``) it uses, e.g. ``"inference.url"``. ``server_settings``:
    settings that belong to the server it talks to, each with the server flag that sets
    it (``("inference.dtype", "--dtype")``), which ``retrain explain`` shows.
    """

    loads: tuple[PolicyKind, ...]
    entropies: bool = False
    exact_resume: bool = False
    reads: tuple[str, ...] = ()
    server_settings: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class BackendCapabilities:
    """What a backend guarantees under a given config.

    ``publishes``: the publication kinds it can produce. ``reports_loss``:
    ``TrainResult.loss`` is the real loss of the update. ``preserves_token_advantages``:
    per-token advantages reach the loss unchanged (not averaged per sequence).
    ``exact_resume``: ``save_state``/``load_state`` restore everything needed to continue
    bit-identically. ``full_finetuning``: it can train every weight (``lora_rank = 0``).
    ``reads``: component settings it uses, e.g. ``"model.base_url"``.
    """

    publishes: tuple[PolicyKind, ...]
    reports_loss: bool
    preserves_token_advantages: bool
    exact_resume: bool
    full_finetuning: bool = False
    reads: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------
# Component protocols


@runtime_checkable
class Engine(Protocol):
    """Samples trajectories from the policy version it last loaded.

    ``load`` may be called from another thread while ``generate`` runs (sampling ahead,
    ``[training] max_staleness``); a ``generate`` call samples from one version throughout
    and reports it in ``SampleBatch.policy_version``.
    """

    policy_version: int

    def __init__(self, config: Config) -> None: ...

    @classmethod
    def capabilities(cls, config: Config) -> EngineCapabilities: ...

    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams) -> SampleBatch:
        """``params.n`` trajectories per prompt, prompt-major (row ``p * n + g``)."""
        ...

    def load(self, ref: PolicyRef) -> None:
        """Sample from ``ref`` from now on; afterwards ``policy_version == ref.version``."""
        ...

    def save_state(self, directory: Path) -> None:
        """Write what resuming needs (a sampler RNG, say) into ``directory``."""
        ...

    def load_state(self, directory: Path) -> None:
        """Restore what ``save_state`` wrote."""
        ...

    def close(self) -> None:
        """Release connections, threads and memory; called on every exit path."""
        ...


@runtime_checkable
class Backend(Protocol):
    """Trains the policy and publishes its versions.

    ``policy_version`` counts the updates applied (0 = the initial weights); it is the
    version ``publish`` reports.
    """

    policy_version: int

    def __init__(self, config: Config) -> None: ...

    @classmethod
    def capabilities(cls, config: Config) -> BackendCapabilities: ...

    def encode_prompt(self, messages: tuple[Message, ...]) -> list[int]:
        """``messages`` in the policy's chat format as token ids, ending where the
        assistant's answer begins (only the backend knows the policy's tokenizer)."""
        ...

    def train_step(self, batch: TrainBatch) -> TrainResult:
        """One optimizer step on ``batch``."""
        ...

    def publish(self, kind: PolicyKind, directory: Path) -> PolicyRef:
        """The current policy as a reference of ``kind``; folders are written under
        ``directory`` (atomically), remote references wherever the backend keeps them."""
        ...

    def save_adapter(self, path: Path) -> None:
        """Write the current weights to ``path`` atomically (checkpoints, ``final``)."""
        ...

    def save_state(self, directory: Path) -> None:
        """Write everything needed to resume into ``directory``."""
        ...

    def load_state(self, directory: Path) -> None:
        """Restore what ``save_state`` wrote."""
        ...

    def close(self) -> None:
        """Release the model, connections and threads; called on every exit path."""
        ...


class DataSource(Protocol):
    """The examples of a run, in a deterministic order (the run shuffles them)."""

    def examples(self) -> Sequence[Example]: ...


class Reward(Protocol):
    """Scores every trajectory of a step against its example's reference.

    ``examples`` is one example per trajectory, or one per prompt when the trajectories
    come in prompt-major groups; the result has one finite float64 per trajectory. A
    reward that repairs values (non-finite results scored 0.0 under ``[plugins] strict =
    false``) may say how many of its last call's it repaired as ``last_repaired``; the
    step's ``plugin_repaired_values`` counts them.
    """

    def score(self, texts: list[str], examples: list[Example]) -> np.ndarray: ...


class PlanningDetector(Protocol):
    """Marks planning tokens: bool ``[N, T']`` from each text and its tokens' spans."""

    def detect(self, texts: list[str], token_char_spans: list[list[tuple[int, int]]] | None) -> np.ndarray: ...


class Environment(Protocol):
    """Where prompts come from and how they become scored trajectories.

    ``examples`` lists the environment's prompts (the run shuffles them); ``rollout``
    plays the episodes of a round: ``params.n`` per example, in prompt-major order, with
    the model's turns sampled by ``engine`` from prompts encoded by ``encode`` (the
    backend's chat format) and, in a multi-turn environment, the environment's turns
    between them (False in ``loss_mask_N_T``). Without an ``[environment]`` the run uses
    the single-turn environment made of ``[data]`` and ``[reward]``.
    """

    def __init__(self, config: Config) -> None: ...

    def examples(self) -> Sequence[Example]: ...

    def rollout(self, examples: list[Example], engine: Engine, encode: Encoder, params: SamplingParams) -> Scored: ...

    def close(self) -> None:
        """Release what the environment holds (clients, worker processes, sandboxes);
        called once on every way out of a run."""


class Collector(Protocol):
    """The first stage of a step: prompts in, scored trajectories out."""

    def collect(self, step: int) -> Collected: ...

    def state_dict(self) -> dict[str, int]:
        """Where the prompt order stands, so a resumed run draws the same prompts."""
        ...

    def load_state_dict(self, state: Mapping[str, int]) -> None: ...

    def close(self) -> None: ...


class StepObserver(Protocol):
    """Reads each step's metrics row after the step (before it is logged) and adds its
    own metrics to it; it may steer later steps (backpressure sets the batch size). Its
    state goes into every checkpoint under its ``name``."""

    name: str

    def observe(self, row: Mapping[str, object]) -> dict[str, float | str]: ...

    def state_dict(self) -> dict[str, object]: ...

    def load_state_dict(self, state: Mapping[str, object]) -> None: ...


class Sink(Protocol):
    """A destination for step records (JSONL logs, the console, wandb). A sink class
    may derive from this protocol to inherit a do-nothing default for every call."""

    def log_step(self, row: Mapping[str, object]) -> None:
        """Record one step's metrics row (a flat dict with an integer ``"step"``)."""
        return None

    def log_generations(self, step: int, examples: Sequence[Example], batch: SampleBatch,
                        rewards_N: np.ndarray) -> None:
        """Record the trajectories of one step (``examples``: one per prompt)."""
        return None

    def truncate_after(self, step: int) -> None:
        """Forget everything recorded for steps after ``step`` (used by resume)."""
        return None

    def sync(self) -> None:
        """Make everything recorded so far durable (called before a checkpoint)."""
        return None

    def close(self) -> None:
        """Flush and release resources."""
        return None


class ConfigChecked(Protocol):
    """A component class that reports its own problems with a config (optional)."""

    @classmethod
    def config_issues(cls, config: Config) -> list[ConfigIssue]: ...

