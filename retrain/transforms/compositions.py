"""The built-in ``transform_mode`` names that chain several stages.

A composition applies its stages in order, each a transform ``f(ctx, params) ->
TransformOutput`` like a plugin's, starting from ``a_t = A`` on every sampled token and
the raw uncertainty; each stage sees the previous one's token advantages and uncertainty
in its ``TransformContext``. ``gtpo`` and ``hicra`` alone are their stage functions
(``retrain.transforms.gtpo:gtpo``, ``retrain.transforms.hicra:hicra``).

Precision of every composition, for the float32 uncertainty the uncertainty stage returns
and the float64 episode advantages ``A``, at every accepted ``beta`` ([gtpo] beta in
[0, 1000]), ``alpha`` ([hicra] alpha in [0, 1)) and ``lambda``: each token advantage
``a_t`` is within

    3e-7 |a*_t| + 2e-14 |A| (1 + beta (1 + u_t / ubar))

of the exact value ``a*_t`` of the formulas. The relative part is five float32 roundings
(of ``A``, of the GTPO weight, of ``A w_t``, of HICRA's factor and of its product:
``5 * 2^-24``). The absolute part bounds the float64 rounding of the means, of SEPA's
pooled values and of the GTPO weight (``(24 + log2 n) 2^-53`` for ``n`` tokens, doubled
for HICRA's factor); it matters only where the floor ``max(0, .)`` leaves a weight near 0,
whose exact value is then a near-cancellation of terms of size ``beta u_t / ubar``.
Results below float32's smallest normal (1.2e-38) hold only to that absolute size, and a
completion whose mean uncertainty is within rounding of GTPO's 1e-7 cut may take either
branch. ``tests/credit/test_credit_numerics.py`` checks the bound against an exact
rational reference.
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

