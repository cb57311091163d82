"""Checking what credit-assignment plugins return: shape, per-sequence length, finite
values. Under ``[plugins] strict = true`` a problem raises ``PluginOutputError`` naming the
stage, the sequence and the token; under ``strict = false`` safe repairs are made
(non-finite values become 0, a sequence of the wrong length is padded with 0 or cut),
logged as warnings and counted (``plugin_repaired_values``, ``plugin_repaired_sequences``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np

from retrain.registry import PluginOutputError
from retrain.uncertainty import zero_padding

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

    def tokens(self, values: object, mask_N_T: np.ndarray, who: str, group_size: int,
               trusted: bool = False) -> np.ndarray:
        """Per-token values as float32 ``[N, T]``, 0 on padding.

        Accepts a padded 2-D array or a sequence of N 1-D arrays, one per completion with
        that completion's length. ``trusted`` (built-in stages, which already zero the
        padding) skips the re-masking; finiteness is always checked.
        """
        rows, width = mask_N_T.shape
        if isinstance(values, np.ndarray) and values.ndim == 2:
            array = self._padded_width(values, rows, width, who)
            if not trusted:
                array = zero_padding(np.array(array, dtype=np.float32), mask_N_T)
        elif isinstance(values, (list, tuple)):
            array = self._from_sequences(values, mask_N_T, who)
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
        if bad.any():
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

    def _from_sequences(self, values: Sequence[object], mask_N_T: np.ndarray, who: str) -> np.ndarray:
        rows, width = mask_N_T.shape
        if len(values) != rows:
            raise PluginOutputError(f"{who} returned {len(values)} sequences for {rows} completions")
        lengths = mask_N_T.sum(axis=1)
        array = np.zeros((rows, width), dtype=np.float32)
        # One slice copy per completion (N of them); the tokens themselves are never looped over.
        for index, row in enumerate(values):
            try:
                row_array = np.asarray(row, dtype=np.float32).reshape(-1)
            except (TypeError, ValueError) as exc:
                raise PluginOutputError(f"{who} returned a non-numeric sequence {index}: {exc}") from exc
            length = int(lengths[index])
            if len(row_array) != length:
                self._fail_or_warn(
                    f"{who} returned {len(row_array)} values for sequence {index}, which has {length} tokens"
                )
                self.repaired_sequences += 1
                row_array = row_array[:length]
            array[index, : len(row_array)] = row_array
        return array
