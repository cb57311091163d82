"""The built-in ``transform_mode`` names that chain several stages.

A composition applies its stages in order, each a transform ``f(ctx, params) ->
TransformOutput`` like a plugin's, starting from ``a_t = A`` on every sampled token and
the raw uncertainty; each stage sees the previous one's token advantages and uncertainty
in its ``TransformContext``. ``gtpo`` and ``hicra`` alone are their stage functions
(``retrain.transforms.gtpo:gtpo``, ``retrain.transforms.hicra:hicra``).

Precision of every composition, for the float32 uncertainty the uncertainty stage returns
and float64 episode advantages ``A``: each token advantage equals the exact value of the
formulas to within a relative ``5 * 2^-24`` (about 3e-7: float32 roundings of ``A``, of the
GTPO weight, of ``A w_t``, of HICRA's factor and of its product) plus an absolute
``2^-50 |A| (1 + beta (1 + u_t / ubar))`` (at most about 1e-11 |A| for ``beta = 1000`` and
``u_t / ubar <= 10^4``) from the float64 GTPO weighting, at every accepted ``beta``
(``[gtpo] beta`` in [0, 1000]), ``alpha`` ([0, 1)) and ``lambda``. The tests check the
pipeline against a per-token float64 reference at 1e-6 relative with that absolute term.
"""

from __future__ import annotations

from collections.abc import Callable

from retrain.transforms.context import TransformContext, TransformOutput
from retrain.transforms.gtpo import gtpo
from retrain.transforms.hicra import hicra
from retrain.transforms.sepa import sepa

StageFunction = Callable[[TransformContext, object], TransformOutput]


class Composition:
    """Stages applied in order, starting from ``a_t = A`` on every sampled token."""

    stages: tuple[StageFunction, ...] = ()


class NoTransform(Composition):
    """Every sampled token gets the episode advantage."""

    stages = ()


class GTPOHICRATransform(Composition):
    """GTPO weighting, then HICRA amplification."""

    stages = (gtpo, hicra)


class GTPOSEPATransform(Composition):
    """SEPA pooling, then GTPO weighting."""

    stages = (sepa, gtpo)


class GTPOSEPAHICRATransform(Composition):
    """SEPA pooling, GTPO weighting, then HICRA amplification."""

    stages = (sepa, gtpo, hicra)

