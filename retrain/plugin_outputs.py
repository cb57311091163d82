"""Checking what credit-assignment stages return: real numbers, shape, per-sequence
length, finite values, and nothing off the loss mask.

Per-token outputs live on the loss mask (``SampleBatch.loss_mask_N_T``, the tokens the
policy sampled): whatever a plugin puts on padding or environment tokens is set to 0,
and a per-completion sequence has one value per sampled token, in order.

Values must be real numbers: float or integer arrays (or lists of Python numbers).
Booleans, strings, bytes, dates, ``None`` and other objects are a ``PluginOutputError``
naming the plugin whatever ``strict`` says, since no value could stand in for them; so is
a complex value with a non-zero imaginary part (dropping it would silently change the
advantage). A complex array whose imaginary parts are all 0 is an error under
``strict = true`` and is taken as its real part under ``strict = false``.

Under ``[plugins] strict = true`` a problem raises ``PluginOutputError`` naming the
stage, the sequence and the token; under ``strict = false`` safe repairs are made
(non-finite values become 0, a sequence of the wrong length is padded with 0 or cut) and
counted (``plugin_repaired_values``, ``plugin_repaired_sequences``), and each stage's
repairs of one step are summed up in one warning (``log_repairs``), not one per value.
"""

from __future__ import annotations

import logging
import numbers
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from retrain.registry import PluginOutputError
from retrain.uncertainty import zero_off_mask

logger = logging.getLogger("retrain.credit")  # the pipeline's warnings, under one name

# What a dtype kind that is not a number is called in an error message.
_NOT_NUMBERS = {"b": "boolean", "U": "string", "S": "bytes", "M": "datetime", "m": "timedelta", "V": "structured"}


@dataclass
class StageRepairs:
    """What ``strict = false`` repaired in one stage's outputs during one step."""

    values: int = 0
    values_checked: int = 0
    kinds: Counter[str] = field(default_factory=Counter)  # "NaN", "+inf", "-inf"
    first_value: str = ""
    sequences: int = 0
    sequences_checked: int = 0
    first_sequence: str = ""
    notes: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line, e.g. ``repaired 37 of 128 values (30 NaN, 7 +inf → 0.0; first at ...)``."""
        parts = []
        if self.values:
            kinds = ", ".join(f"{count} {kind}" for kind, count in self.kinds.items())
            parts.append(f"repaired {self.values} of {self.values_checked} values ({kinds} → 0.0; first at "
                         f"{self.first_value})")
        if self.sequences:
            parts.append(f"fitted {self.sequences} of {self.sequences_checked} sequences to their number of sampled "
                         f"tokens (padded with 0 or cut; first: {self.first_sequence})")
        parts.extend(self.notes)
        return "; ".join(parts)


class OutputValidator:
    """Checks stage outputs; raises (strict) or repairs and counts (non-strict)."""

    def __init__(self, strict: bool) -> None:
        self.strict = strict
        self.repaired_values = 0
        self.repaired_sequences = 0
        self.repairs: dict[str, StageRepairs] = {}

    def reset(self) -> None:
        """Forget the last step's repairs (called at the start of each step)."""
        self.repaired_values = 0
        self.repaired_sequences = 0
        self.repairs = {}

    def log_repairs(self) -> None:
        """One warning per stage that needed repairs this step (called at its end)."""
        for who, repairs in self.repairs.items():
            logger.warning("%s: %s — [plugins] strict = false; fix the plugin to need no repairs", who,
                           repairs.summary())

    def _strict_error(self, message: str) -> None:
        if self.strict:
            raise PluginOutputError(message + " — fix the plugin, or set [plugins] strict = false to repair and warn")

    def _stage(self, who: str) -> StageRepairs:
        return self.repairs.setdefault(who, StageRepairs())

    def _non_finite(self, array: np.ndarray, who: str, checked: int, where: str, message: str) -> None:
        """Count the non-finite values of ``array`` (the caller sets them to 0)."""
        self._strict_error(message)
        repairs = self._stage(who)
        counts = {"NaN": int(np.isnan(array).sum()), "+inf": int(np.isposinf(array).sum()),
                  "-inf": int(np.isneginf(array).sum())}
        repairs.kinds.update({kind: count for kind, count in counts.items() if count})
        count = sum(counts.values())
        repairs.values += count
        repairs.values_checked += checked
        repairs.first_value = repairs.first_value or where
        self.repaired_values += count

    def _numbers(self, values: object, dtype: type[np.floating], who: str, what: str = "") -> np.ndarray:
        """``values`` as a real array of ``dtype``; anything that is not real numbers is a
        ``PluginOutputError`` naming ``who`` (and ``what``, the part it returned)."""
        of = f" ({what})" if what else ""
        try:
            array = np.asarray(values)
        except (TypeError, ValueError) as exc:  # a ragged nest of lists, say
            raise PluginOutputError(f"{who} returned {type(values).__name__}{of}, not an array of numbers: "
                                    f"{exc}") from exc
        if array.dtype.kind == "O":
            array = _object_numbers(array, who, of)
        kind = array.dtype.kind
        if kind == "c":
            array = self._real_part(array, who, of)
        elif kind not in "fiu":
            name = _NOT_NUMBERS.get(kind, str(array.dtype))
            raise PluginOutputError(f"{who} returned {name} values{of} (dtype {array.dtype}); it must return real "
                                    "numbers (float or int) — fix the plugin")
        return array.astype(dtype, copy=False)

    def _real_part(self, array: np.ndarray, who: str, of: str) -> np.ndarray:
        """The real part of a complex array whose imaginary parts are all 0 (only under
        ``strict = false``); any other imaginary part has no sensible repair."""
        imaginary = np.flatnonzero(array.imag != 0)
        if imaginary.size:
            index = np.unravel_index(int(imaginary[0]), array.shape)
            raise PluginOutputError(
                f"{who} returned complex values{of}: {imaginary.size} of {array.size} have a non-zero imaginary part, "
                f"the first {array[index]} at index {list(map(int, index))}; advantages and uncertainties are real "
                "numbers — fix the plugin (whatever [plugins] strict says)")
        self._strict_error(f"{who} returned complex values{of} (dtype {array.dtype}), all with a zero imaginary part")
        self._stage(who).notes.append(f"took the real part of {array.size} complex values{of} (all imaginary parts 0)")
        return np.ascontiguousarray(array.real)

    def episode(self, values: object, shape_P_G: tuple[int, int], who: str) -> np.ndarray:
        """Episode advantages as float64 ``[P, G]`` (a flat ``[N]`` is accepted)."""
        groups, group_size = shape_P_G
        array = self._numbers(values, np.float64, who)
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
            where = f"sequence {prompt * group_size + completion} (prompt {prompt}, completion {completion})"
            self._non_finite(array, who, array.size, where,
                             f"{who} returned {int(bad.sum())} non-finite episode advantage(s); first at {where}: "
                             f"{array[prompt, completion]}")
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
        # One reduction tells whether anything is non-finite; the search runs only then (a
        # sum of large finite values can overflow, and inf - inf is NaN: not a warning here).
        with np.errstate(over="ignore", invalid="ignore"):
            if np.isfinite(array.sum()):
                return array
        bad = ~np.isfinite(array)
        if not bad.any():
            return array
        sequence, token = np.argwhere(bad)[0]
        where = f"sequence {sequence} (prompt {sequence // group_size}, completion {sequence % group_size}), token {token}"
        self._non_finite(array[bad], who, int(np.count_nonzero(loss_mask_N_T)), where,
                         f"{who} returned {int(bad.sum())} non-finite value(s); first at {where}: "
                         f"{array[sequence, token]}")
        array = array.copy() if trusted else array
        array[bad] = 0.0
        return array

    def _padded_width(self, values: np.ndarray, rows: int, width: int, who: str) -> np.ndarray:
        if values.shape[0] != rows:
            raise PluginOutputError(f"{who} returned {values.shape[0]} rows for {rows} completions (shape {values.shape})")
        array = self._numbers(values, np.float32, who)
        if array.shape[1] == width:
            return array
        self._strict_error(f"{who} returned {array.shape[1]} token columns; the batch is padded to {width}")
        self._stage(who).notes.append(f"{'cut' if array.shape[1] > width else 'padded'} {array.shape[1]} token "
                                      f"columns to the batch's {width}")
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
            row_array = self._numbers(row, np.float32, who, f"sequence {index}").reshape(-1)
            sampled = int(sampled_N[index])
            if len(row_array) != sampled:
                self._wrong_length(who, index, len(row_array), sampled, rows)
                fitted = np.zeros(sampled, dtype=np.float32)
                fitted[: min(sampled, len(row_array))] = row_array[:sampled]
                row_array = fitted
            pieces.append(row_array)
        array = np.zeros((rows, width), dtype=np.float32)
        # Boolean indexing walks the mask row by row, so each row's values land in order.
        array[loss_mask_N_T] = np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.float32)
        return array

    def _wrong_length(self, who: str, index: int, length: int, sampled: int, rows: int) -> None:
        self._strict_error(f"{who} returned {length} values for sequence {index}, which has {sampled} sampled tokens")
        repairs = self._stage(who)
        if not repairs.sequences:
            repairs.sequences_checked += rows
            repairs.first_sequence = f"sequence {index}, {length} values for {sampled} sampled tokens"
        repairs.sequences += 1
        self.repaired_sequences += 1


def _object_numbers(array: np.ndarray, who: str, of: str) -> np.ndarray:
    """An object array (mixed or unusual Python values) as float64, or complex128 when it
    holds complex numbers; an element that is not a number is an error naming it."""
    flat = array.reshape(-1)
    has_complex = False
    for index, item in enumerate(flat):
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, numbers.Number):
            position = list(map(int, np.unravel_index(index, array.shape))) if array.ndim else []
            at = f" at index {position}" if position else ""
            raise PluginOutputError(f"{who} returned {type(item).__name__} {item!r:.60}{at}{of}; it must return real "
                                    "numbers (float or int) — fix the plugin")
        has_complex = has_complex or not isinstance(item, numbers.Real)
    return array.astype(np.complex128 if has_complex else np.float64)
