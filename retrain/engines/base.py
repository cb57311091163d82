"""The inference-engine contract: sample G completions for each prompt of a step.

An engine receives prompts as token ids (the chat template is applied by the caller) and
returns a ``SampleBatch``: the sampled token ids, the sampler's log-probability of each
sampled token under the temperature-scaled distribution, finish reasons, decoded texts
with per-token character spans, and, when asked and supported, the Shannon entropy of the
full next-token distribution at each position. ``load_adapter`` points the engine at new
policy weights saved as an adapter folder, tagged with the policy version.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

from retrain.types import SampleBatch


@runtime_checkable
class Engine(Protocol):
    """What the RL step needs from an inference engine."""

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        n: int,
        max_tokens: int,
        temperature: float,
        top_p: float,
        want_entropies: bool = False,
    ) -> SampleBatch:
        """``n`` completions per prompt, prompt-major (row ``p * n + g``)."""
        ...

    def load_adapter(self, path: Path, version: int) -> None:
        """Sample from the weights saved in ``path`` from now on, as policy ``version``."""
        ...
