"""Episode advantages: one number per completion, from the rewards of its group.

Every estimator is a function ``f(rewards_P_G, params) -> [P, G]`` on the whole batch at
once (P prompts, G completions each), one module per estimator:

- ``grpo``  (``retrain.advantages.grpo``):  ``A_i = r_i - mean(r)``
- ``maxrl`` (``retrain.advantages.maxrl``): ``A_i = (r_i - mu) / (mu + 1e-6)``, 0 when ``mu <= 1e-6``

``retrain.advantages.groups`` finds the groups whose rewards all tie (they carry no
signal) and the batch's correct rate.

Adding an estimator takes one new module here, whose function is registered with
``@register("advantage")`` (its docstring's first line is its description), and one line
in ``ADVANTAGES`` in ``retrain.registry_names``; see docs/advantages.md.
"""

from retrain.advantages.groups import CORRECT_REWARD, GroupStats, correct_rate, group_stats
from retrain.advantages.grpo import grpo_advantages
from retrain.advantages.maxrl import MAXRL_EPS, MAXRL_MEAN_FLOOR, maxrl_advantages

__all__ = [
    "CORRECT_REWARD",
    "MAXRL_EPS",
    "MAXRL_MEAN_FLOOR",
    "GroupStats",
    "correct_rate",
    "group_stats",
    "grpo_advantages",
    "maxrl_advantages",
]
