"""Token-level credit transforms: spread each completion's episode advantage over its
sampled tokens, one module per stage.

Per completion with episode advantage ``A``, uncertainty ``u_t`` and planning mask
``m_t`` on its sampled tokens:

- ``sepa`` (``retrain.transforms.sepa``), before GTPO: execution tokens' uncertainty is
  pulled toward their mean, ``u_t <- lambda mean_exec(u) + (1 - lambda) u_t`` where
  ``m_t = 0``; ``lambda`` comes from the schedule in ``retrain.transforms.sepa_schedule``.
- ``gtpo`` (``retrain.transforms.gtpo``): ``a_t = A max(0, 1 + beta (u_t / (ubar + 1e-8) - 1))``,
  or ``A`` when ``beta = 0`` or ``ubar < 1e-7``.
- ``hicra`` (``retrain.transforms.hicra``), after GTPO: ``a_t <- a_t + alpha |a_t|`` where
  ``m_t = 1``.
- top-rho masking (``retrain.transforms.top_rho``), after the transform: only the
  ``ceil(rho n)`` most uncertain tokens of each group keep their advantage.

``transform_mode`` names are compositions of these stages, applied in order
(``retrain.transforms.compositions``): ``none`` = (), ``gtpo`` = (gtpo), ``hicra`` =
(hicra), ``gtpo_hicra`` = (gtpo, hicra), ``gtpo_sepa`` = (sepa, gtpo),
``gtpo_sepa_hicra`` = (sepa, gtpo, hicra).

The stage functions themselves (``gtpo``, ``hicra``, ``sepa``) are reached through their
modules, which share their names. Everything works on whole padded ``[N, T]`` arrays; tokens off the loss mask (padding,
environment turns) carry 0.
"""

from retrain.transforms.compositions import (
    Composition,
    GTPOHICRATransform,
    GTPOSEPAHICRATransform,
    GTPOSEPATransform,
    NoTransform,
)
from retrain.transforms.context import TransformContext, TransformOutput, broadcast_advantages
from retrain.transforms.gtpo import GTPO_EPS, GTPO_MEAN_FLOOR, gtpo_weights
from retrain.transforms.hicra import hicra_amplify
from retrain.transforms.sepa import sepa_pool
from retrain.transforms.sepa_schedule import SEPAController
from retrain.transforms.top_rho import RhoMask, top_rho_mask

__all__ = [
    "GTPO_EPS",
    "GTPO_MEAN_FLOOR",
    "Composition",
    "GTPOHICRATransform",
    "GTPOSEPAHICRATransform",
    "GTPOSEPATransform",
    "NoTransform",
    "RhoMask",
    "SEPAController",
    "TransformContext",
    "TransformOutput",
    "broadcast_advantages",
    "gtpo_weights",
    "hicra_amplify",
    "sepa_pool",
    "top_rho_mask",
]
