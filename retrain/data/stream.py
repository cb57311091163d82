"""The order in which a run visits its examples, with a cursor that resumes exactly.

Each epoch is a fresh permutation drawn from ``seed + epoch`` (or the natural order when
shuffling is off); the cursor is (epoch, position). A batch that runs past the end of an
epoch continues into the next one, so every batch has exactly the size asked for.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from retrain.errors import RetrainError
from retrain.types import Example


class PromptStream:
    """Hands out batches of examples in a seeded, resumable order."""

    def __init__(self, examples: Sequence[Example], seed: int, shuffle: bool = True) -> None:
        if not examples:
            raise RetrainError("the data source returned no examples — check [data] source/path and [training] max_examples")
        self.examples = list(examples)
        self.seed = seed
        self.shuffle = shuffle
        self.epoch = 0
        self.position = 0
        self._order = self._epoch_order(0)

    def _epoch_order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(len(self.examples))
        return np.random.default_rng([self.seed, epoch]).permutation(len(self.examples))

    def next_batch(self, size: int) -> list[Example]:
        batch: list[Example] = []
        while len(batch) < size:
            if self.position == len(self._order):
                self.epoch += 1
                self.position = 0
                self._order = self._epoch_order(self.epoch)
            take = min(size - len(batch), len(self._order) - self.position)
            batch.extend(self.examples[index] for index in self._order[self.position : self.position + take])
            self.position += take
        return batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position, "num_examples": len(self.examples)}

    def load_state_dict(self, state: Mapping[str, int]) -> None:
        if state["num_examples"] != len(self.examples):
            raise RetrainError(
                f"the data changed since the checkpoint: it had {state['num_examples']} examples, now "
                f"{len(self.examples)} — resume with the same [data] and [training] max_examples settings"
            )
        self.epoch = state["epoch"]
        self.position = state["position"]
        self._order = self._epoch_order(self.epoch)
