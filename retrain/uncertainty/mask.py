"""Zeroing the tokens that carry no uncertainty: padding and environment tokens."""

from __future__ import annotations

import numpy as np


def zero_off_mask(values_N_T: np.ndarray, mask_N_T: np.ndarray) -> np.ndarray:
    """``values`` with every token off ``mask_N_T`` set to 0, in place (whatever it held,
    even NaN)."""
    np.copyto(values_N_T, np.zeros((), dtype=values_N_T.dtype), where=~np.asarray(mask_N_T, dtype=bool))
    return values_N_T
