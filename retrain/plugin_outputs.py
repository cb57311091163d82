"""Checking what credit-assignment stages return: shape, per-sequence length, finite
values, and nothing off the loss mask.

Per-token outputs live on the loss mask (``SampleBatch.loss_mask_N_T``, the tokens the
policy sampled): whatever a plugin puts on padding or environment tokens is set to 0,
and a per-completion sequence has one value per sampled token, in order. Under
``[plugins] strict = true`` a problem raises ``PluginOutputError`` naming the stage, the
sequence and the token; under ``strict = false`` safe repairs are made (non-finite
values become 0, a sequence of the wrong length is padded with 0 or cut), logged as
warnings and counted (``plugin_repaired_values``, ``plugin_repaired_sequences``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from retrain.registry import PluginOutputError
from retrain.uncertainty import zero_off_mask

logger = logging.getLogger("retrain.credit")  # the pipeline's warnings, under one name


class OutputValidator:
    """Checks stage outputs; raises (strict) or repairs and counts (non-strict)."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.repaired_values = 0
        self.repaired_sequences = 0

    def reset(self) -> None:
        self.repaired_values = 0
        self.repaired_sequences = 0

    def _fail_or_warn(self, message: str) -> None:
        if self.strict:
            raise PluginOutputError(message + " — fix the plugin, or set [plugins] strict = false to repair and warn")
        logger.warning("%s; repaired (strict = false)", message)

    def episode(self, values: object, shape_P_G: tuple[int, int], who: str) -> np.ndarray:
        """Episode advantages as float64 ``[P, G]`` (a flat ``[N]`` is accepted)."""
        groups, group_size = shape_P_G
        try:
            array = np.asarray(values, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise PluginOutputError(f"{who} returned {type(values).__name__}, not an array of numbers: {exc}") from exc
        if array.shape == (groups * group_size,):
            array = array.reshape(groups, group_size)
        if array.shape != (groups, group_size):
            raise PluginOutputError(
                f"{who} returned an array of shape {array.shape}; expected [P, G] = ({groups}, {group_size}) "
                f"or [N] = ({groups * group_size},)"
            )
        bad = ~np.isfinite(array)
        if bad.any():
            prompt, completion = np.argwhere(bad)[0]
            self._fail_or_warn(
                f"{who} returned {int(bad.sum())} non-finite episode advantage(s); first at sequence "
                f"{prompt * group_size + completion} (prompt {prompt}, completion {completion}): {array[prompt, completion]}"
            )
            self.repaired_values += int(bad.sum())
            array = np.where(bad, 0.0, array)
        return array

    def tokens(self, values: object, loss_mask_N_T: np.ndarray, who: str, group_size: int,
               trusted: bool = False) -> np.ndarray:
        """Per-token values, 0 off the loss mask.

        Accepts a padded 2-D array or a sequence of N 1-D arrays, one per completion with
        one value per sampled token. Plugin output becomes float32 and is zeroed off the
        loss mask; ``trusted`` output (a built-in stage's array, already of the batch's
        shape and 0 off the mask) keeps its dtype, so float64 intermediates keep their
        precision. Finiteness is always checked.
        """
        rows, width = loss_mask_N_T.shape
        if trusted:
            array = np.asarray(values)
        elif isinstance(values, np.ndarray) and values.ndim == 2:
            array = zero_off_mask(np.array(self._padded_width(values, rows, width, who)), loss_mask_N_T)
        elif isinstance(values, (list, tuple)):
            array = self._from_sequences(values, loss_mask_N_T, who)
        else:
            shape = getattr(values, "shape", None)
            raise PluginOutputError(
                f"{who} returned {type(values).__name__}{'' if shape is None else ' of shape ' + str(shape)}; expected "
                f"a padded [N, T] = ({rows}, {width}) array or a list of {rows} per-completion arrays"
            )
        # One reduction tells whether anything is non-finite; the search runs only then.
        if np.isfinite(array.sum()):
            return array
        bad = ~np.isfinite(array)
        sequence, token = np.argwhere(bad)[0]
        self._fail_or_warn(
            f"{who} returned {int(bad.sum())} non-finite value(s); first at sequence {sequence} "
            f"(prompt {sequence // group_size}, completion {sequence % group_size}), token {token}: "
            f"{array[sequence, token]}"
        )
        self.repaired_values += int(bad.sum())
        array = array.copy() if trusted else array
        array[bad] = 0.0
        return array

    def _padded_width(self, values: np.ndarray, rows: int, width: int, who: str) -> np.ndarray:
        if values.shape[0] != rows:
            raise PluginOutputError(f"{who} returned {values.shape[0]} rows for {rows} completions (shape {values.shape})")
        try:
            array = np.asarray(values, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise PluginOutputError(f"{who} returned values that are not numbers: {exc}") from exc
        if array.shape[1] == width:
            return array
        self._fail_or_warn(f"{who} returned {array.shape[1]} token columns; the batch is padded to {width}")
        self.repaired_sequences += rows
        fixed = np.zeros((rows, width), dtype=np.float32)
        keep = min(width, array.shape[1])
        fixed[:, :keep] = array[:, :keep]
        return fixed

    def _from_sequences(self, values: Sequence[object], loss_mask_N_T: np.ndarray, who: str) -> np.ndarray:
        """Scatter one value per sampled token onto the loss mask (environment tokens
        between model turns keep 0)."""
        rows, width = loss_mask_N_T.shape
        if len(values) != rows:
            raise PluginOutputError(f"{who} returned {len(values)} sequences for {rows} completions")
        sampled_N = loss_mask_N_T.sum(axis=1)
        pieces = []
        # One slice copy per completion (N of them); the tokens themselves are never looped over.
        for index, row in enumerate(values):
            try:
                row_array = np.asarray(row, dtype=np.float32).reshape(-1)
            except (TypeError, ValueError) as exc:
                raise PluginOutputError(f"{who} returned a non-numeric sequence {index}: {exc}") from exc
            sampled = int(sampled_N[index])
            if len(row_array) != sampled:
                self._fail_or_warn(
                    f"{who} returned {len(row_array)} values for sequence {index}, which has {sampled} sampled tokens"
                )
                self.repaired_sequences += 1
                fitted = np.zeros(sampled, dtype=np.float32)
                fitted[: min(sampled, len(row_array))] = row_array[:sampled]
                row_array = fitted
            pieces.append(row_array)
        array = np.zeros((rows, width), dtype=np.float32)
        # Boolean indexing walks the mask row by row, so each row's values land in order.
        array[loss_mask_N_T] = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return array
