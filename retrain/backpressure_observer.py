"""USL backpressure in a run: after each step, the controller of ``retrain/backpressure.py``
reads the step's time and completions from its metrics row, and its decision becomes the
batch size of the steps not sampled yet (``retrain/sampling.BatchSizes``). Its metrics
(``bp_*``) join the row; its state, and the sizes already fixed for steps sampled ahead,
go into every checkpoint, so a resumed run samples the same prompts for the same steps
and the controller continues where it stood.

With ``peak_gflops`` and ``peak_bw_gb_s`` set, each step's work is estimated from the
backend's reported ``model_parameters``, the sampled tokens, the longest completion
(decode passes), the trained tokens and ``train_passes`` (``estimate_step_work``); a
backend that does not report its parameter count gets the regime "unknown".
"""

from __future__ import annotations

from collections.abc import Mapping

from retrain.backpressure import USLController, estimate_step_work
from retrain.config.schema import Config
from retrain.sampling import BatchSizes


def _number(row: Mapping[str, object], key: str) -> float:
    value = row.get(key)
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0.0


class Backpressure:
    """The step observer that adapts the batch size (``[backpressure] enabled``)."""

    name = "backpressure"

    def __init__(self, config: Config, sizes: BatchSizes) -> None:
        self.settings = config.backpressure
        self.controller = USLController(config.backpressure, config.training.batch_size, config.training.group_size)
        self.sizes = sizes
        sizes.change(self.controller.batch_size, after_step=0)  # the start, within [min, max]

    def observe(self, row: Mapping[str, object]) -> dict[str, float | str]:
        step = int(_number(row, "step"))
        flops = bytes_moved = None
        parameters = _number(row, "model_parameters")
        if parameters and self.settings.peak_gflops and self.settings.peak_bw_gb_s:
            work = estimate_step_work(parameters, int(_number(row, "sampled_tokens")),
                                      int(_number(row, "completion_len_max")), int(_number(row, "trained_tokens")),
                                      int(_number(row, "train_passes")))
            flops, bytes_moved = work.flops, work.bytes_moved
        decision = self.controller.observe(step, _number(row, "step_time_s"), int(_number(row, "completions")),
                                           int(_number(row, "sampled_tokens")), flops, bytes_moved,
                                           batch_size=self.sizes.for_step(step))
        self.sizes.change(decision.batch_size, after_step=step)
        return decision.metrics()

    def state_dict(self) -> dict[str, object]:
        return {"controller": self.controller.state_dict(), "sizes": self.sizes.state_dict()}

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        controller, sizes = state["controller"], state["sizes"]
        if not isinstance(controller, dict) or not isinstance(sizes, dict):
            raise TypeError("backpressure state: controller and sizes must be tables")
        self.controller.load_state_dict(controller)
        self.sizes.load_state_dict(sizes)
