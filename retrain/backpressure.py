"""USL backpressure: choose each step's batch size from a fitted Universal Scalability Law.

A step samples and trains ``p = batch_size * group_size`` completions at once (the
concurrency) and delivers ``X = completions / step_time_s`` completions per second. The
Universal Scalability Law (N. J. Gunther, *Guerrilla Capacity Planning*, Springer 2007)
models the throughput as

    X(p) = lambda * p / (1 + sigma * (p - 1) + kappa * p * (p - 1))

with ``sigma`` the contention (the serial fraction, Amdahl's law) and ``kappa`` the
coherency cost (pairwise crosstalk, which makes throughput fall again past a peak). The law
is linear after dividing ``p`` by ``X``:

    y = p / X = a + b * (p - 1) + c * p * (p - 1),    (a, b, c) = (1/lambda, sigma/lambda, kappa/lambda)

so ``(a, b, c)`` come from a least-squares solve (``fit_usl``) and the throughput peaks at

    p* = sqrt((1 - sigma) / kappa)                    (``optimal_concurrency``).

``USLController`` keeps a debiased EMA of the throughput at every concurrency it measured
in the last ``WINDOW_STEPS`` observed steps and refits the law after every step (keeping
the fit in force once the window holds fewer concurrencies than it was made from). After a
warm-up sweep (``warmup_schedule``) it throttles when ``p > throttle_margin * p*``, grows
when ``p < increase_margin * throttle_margin * p*`` and holds in between; both moves head
for ``floor(throttle_margin * p* / group_size)``, at most halving or doubling the batch
size at a time (docs/backpressure.md).

``roofline`` places a step on the roofline model (S. Williams, A. Waterman, D. Patterson,
"Roofline: an insightful visual performance model for multicore architectures", CACM 52(4),
2009): arithmetic intensity ``I = FLOPs / bytes``, attainable ``min(peak, I * bandwidth)``;
``estimate_step_work`` gives rough FLOP and byte counts from the parameter count.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from retrain.config.schema import BackpressureConfig
from retrain.errors import RetrainError

logger = logging.getLogger(__name__)

# A concurrency not measured in this many observed steps leaves the window the fit is made
# from: long enough to hold a whole warm-up sweep (default 10 steps) and the settling
# after it, short enough that no fit rests on steps from long ago, when completions may
# have been much shorter than now.
WINDOW_STEPS = 64
# Three coefficients need three distinct concurrencies.
MIN_DISTINCT_CONCURRENCIES = 3
# One decision moves the batch size by at most this factor, so a poor early fit cannot
# swing it from one end of the range to the other.
MAX_STEP_FACTOR = 2
# A larger batch must promise at least this much more throughput. Where throughput is
# flat in the batch size (sigma near 1, kappa near 0: a server that runs one completion at
# a time), p* swings between 1 and unbounded with the noise of the fit; without this the
# batch size would swing between its bounds with it.
MIN_INCREASE_GAIN = 0.02


def usl_throughput(p: float, sigma: float, kappa: float, lam: float) -> float:
    """Gunther's USL: ``X(p) = lambda * p / (1 + sigma * (p - 1) + kappa * p * (p - 1))``."""
    return lam * p / (1.0 + sigma * (p - 1.0) + kappa * p * (p - 1.0))


def fit_usl(ps: Sequence[float], xs: Sequence[float],
            weights: Sequence[float] | None = None) -> tuple[float, float, float] | None:
    """Least-squares ``(sigma, kappa, lambda)`` from throughputs ``xs`` measured at concurrencies ``ps``.

    Solves ``p / X = a + b * (p - 1) + c * p * (p - 1)`` for ``(a, b, c) = (1, sigma, kappa) / lambda``
    with ``numpy.linalg.lstsq``. Each row is divided by its ``p / X``: step-time noise is
    multiplicative (a step is some percent slower), so the residuals that matter are relative
    ones, and without this the largest concurrencies would drown the small ones that pin
    down ``sigma``. Optional ``weights`` (say, how many steps a point averages) scale rows by
    their square root.

    ``sigma, kappa >= 0`` is enforced exactly: the constrained optimum is the best of the
    unconstrained solutions over the four subsets of ``{b, c}`` whose coefficients come out
    non-negative. Returns None when the data cannot fix the law: fewer than three distinct
    concurrencies, a non-positive or non-finite point, or no fit with ``lambda > 0``.
    """
    p = np.asarray(ps, dtype=float)
    x = np.asarray(xs, dtype=float)
    w = np.ones_like(p) if weights is None else np.asarray(weights, dtype=float)
    if p.shape != x.shape or p.shape != w.shape or len(np.unique(p)) < MIN_DISTINCT_CONCURRENCIES:
        return None
    if not (np.all(np.isfinite(p) & np.isfinite(x) & np.isfinite(w)) and np.all(p > 0) and np.all(x > 0)
            and np.all(w > 0)):
        return None
    # Dividing by the largest p / X leaves sigma and kappa unchanged and keeps the columns
    # from overflowing when throughputs are enormous; what still overflows is refused.
    with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
        y = p / x
        unit = float(np.max(y))
        y = y / unit
        scale = np.sqrt(w) / y
        columns = np.stack([np.ones_like(p), p - 1.0, p * (p - 1.0)], axis=1) * scale[:, None]
        target = y * scale
    if not (math.isfinite(unit) and unit > 0.0 and np.all(np.isfinite(columns)) and np.all(np.isfinite(target))):
        return None
    best: tuple[float, np.ndarray] | None = None
    for keep in ((0, 1, 2), (0, 1), (0, 2), (0,)):
        solution, *_ = np.linalg.lstsq(columns[:, keep], target, rcond=None)
        coefficients = np.zeros(3)
        coefficients[list(keep)] = solution
        if coefficients[0] <= 0.0 or np.any(coefficients[1:] < 0.0):
            continue
        residual = float(np.sum((columns @ coefficients - target) ** 2))
        if best is None or residual < best[0]:
            best = (residual, coefficients)
    if best is None:
        return None
    a, b, c = best[1]
    with np.errstate(over="ignore", divide="ignore", under="ignore"):
        fitted = (float(b / a), float(c / a), float(1.0 / (a * unit)))
    return fitted if all(math.isfinite(value) for value in fitted) else None


def optimal_concurrency(sigma: float, kappa: float) -> float:
    """The concurrency of peak throughput, ``p* = sqrt((1 - sigma) / kappa)``, at least 1.

    ``kappa = 0`` (no coherency cost) means throughput rises for ever: ``inf``. With
    ``sigma >= 1``, or a ``p*`` below 1, throughput already falls from ``p = 1`` on, and 1
    is the best concurrency there is.
    """
    if sigma >= 1.0:
        return 1.0
    if kappa <= 0.0:
        return math.inf
    return max(1.0, math.sqrt((1.0 - sigma) / kappa))


@dataclass(frozen=True)
class Roofline:
    """One step on the roofline: intensity in FLOP/byte, rates in GFLOP/s."""

    arithmetic_intensity: float
    ridge_point: float
    regime: str  # "memory", "compute" or "unknown"
    attainable_gflops: float
    attained_gflops: float
    utilization: float


UNKNOWN_ROOFLINE = Roofline(math.nan, math.nan, "unknown", math.nan, math.nan, math.nan)


def roofline(flops: float | None, bytes_moved: float | None, step_time_s: float,
             peak_gflops: float, peak_bw_gb_s: float) -> Roofline:
    """Williams et al. (2009): where a step sits against the hardware's two ceilings.

    ``I = flops / bytes_moved``; ridge point ``peak_gflops / peak_bw_gb_s`` (FLOP/byte);
    ``"memory"`` bound if ``I`` is below the ridge, else ``"compute"``; attainable GFLOP/s
    ``min(peak_gflops, I * peak_bw_gb_s)``; attained ``flops / step_time_s / 1e9``;
    utilization ``attained / attainable``. Without both peaks, or without positive work
    figures and step time, the regime is ``"unknown"`` and every number NaN.
    """
    if flops is None or bytes_moved is None or peak_gflops <= 0.0 or peak_bw_gb_s <= 0.0:
        return UNKNOWN_ROOFLINE
    if not (flops > 0.0 and bytes_moved > 0.0 and step_time_s > 0.0
            and math.isfinite(flops) and math.isfinite(bytes_moved) and math.isfinite(step_time_s)):
        return UNKNOWN_ROOFLINE
    intensity = flops / bytes_moved
    ridge = peak_gflops / peak_bw_gb_s
    attainable = min(peak_gflops, intensity * peak_bw_gb_s)
    attained = flops / step_time_s / 1e9
    return Roofline(intensity, ridge, "memory" if intensity < ridge else "compute", attainable, attained,
                    attained / attainable)


@dataclass(frozen=True)
class StepWork:
    """Estimated work of one step: floating-point operations and bytes read from memory."""

    flops: float
    bytes_moved: float


def estimate_step_work(param_count: float, sampled_tokens: int, decode_passes: int, trained_tokens: int = 0,
                       train_passes: int = 0, bytes_per_param: float = 2.0) -> StepWork:
    """An estimate, not a measurement, of a step's FLOPs and bytes for a dense transformer of ``N`` parameters.

    - FLOPs: ``2 * N`` per token through a forward pass (one multiply-add per weight) for every
      sampled token, and ``6 * N`` per trained token (forward plus a backward pass twice as
      costly): ``2 * N * sampled_tokens + 6 * N * trained_tokens``.
    - Bytes: every pass through the model reads all weights once. Batched decoding makes one
      forward pass per generated position (``decode_passes``, about the longest completion's
      length when all completions of the step decode together); a training pass
      (``train_passes``, one per micro-batch) reads them three times (forward, and the
      activation and weight gradients of the backward pass):
      ``bytes_per_param * N * (decode_passes + 3 * train_passes)``.

    Attention FLOPs, the KV cache, activations and optimizer state are left out, so long
    contexts do more work and move more bytes than this says.
    """
    n = float(param_count)
    flops = 2.0 * n * sampled_tokens + 6.0 * n * trained_tokens
    bytes_moved = bytes_per_param * n * (decode_passes + 3 * train_passes)
    return StepWork(flops, bytes_moved)


def warmup_schedule(batch_size: int, min_batch_size: int, max_batch_size: int, steps: int) -> list[int]:
    """The batch sizes of the warm-up steps: a geometric sweep out from the starting size.

    The ladder is ``b, b/2, 2b, b/4, 4b, ...`` (halvings rounded down), keeping only sizes in
    ``[min_batch_size, max_batch_size]`` not already on it; it spans the range by factors of
    two, so the fit sees concurrencies far enough apart to tell contention from coherency.
    The warm-up walks the ladder from the start and begins again at its top when
    ``steps`` is longer than it.
    """
    start = min(max(batch_size, min_batch_size), max_batch_size)
    ladder = [start]
    factor = 2
    while start // factor >= min_batch_size or start * factor <= max_batch_size:
        for size in (start // factor, start * factor):
            if min_batch_size <= size <= max_batch_size and size not in ladder:
                ladder.append(size)
        factor *= 2
    return [ladder[i % len(ladder)] for i in range(steps)]


@dataclass
class Measured:
    """The throughput measured at one concurrency: an EMA accumulator (not yet debiased),
    how many steps fed it, and the index of the latest of them."""

    accumulator: float
    count: int
    last_seen: int


def ema_effective_count(decay: float, count: int) -> float:
    """How many steps' worth of noise a debiased EMA of ``count`` steps averages away.

    Its weights are ``w_k = decay**k`` (``k = 0`` the latest step), and the effective count
    is ``(sum w)**2 / sum w**2``: 1 for ``decay = 0`` (only the latest step counts), close to
    ``count`` while ``decay**count`` is near 1, and ``(1 + decay) / (1 - decay)`` (19 for
    0.9) in the long run.
    """
    if decay == 0.0:
        return 1.0
    total = (1.0 - decay ** count) / (1.0 - decay)
    squares = (1.0 - decay ** (2 * count)) / (1.0 - decay * decay)
    return total * total / squares


@dataclass(frozen=True)
class Decision:
    """What the controller makes of one step: the batch size for the next step, and why."""

    batch_size: int
    action: str  # "warmup", "throttle", "increase" or "hold"
    regime: str
    p_star: float
    sigma: float
    kappa: float
    utilization: float
    throughput: float
    tokens_per_s: float

    def metrics(self) -> dict[str, float | str]:
        return {
            "bp_action": self.action,
            "bp_regime": self.regime,
            "bp_p_star": self.p_star,
            "bp_sigma": self.sigma,
            "bp_kappa": self.kappa,
            "bp_utilization": self.utilization,
            "bp_throughput": self.throughput,
            "bp_tokens_per_s": self.tokens_per_s,
            "bp_batch_size": self.batch_size,
        }


class USLController:
    """Adapts the batch size to the USL optimum measured on the running system.

    Use ``batch_size`` for the first step, then the ``Decision.batch_size`` that ``observe``
    returns for each next one.
    """

    def __init__(self, settings: BackpressureConfig, batch_size: int, group_size: int) -> None:
        if settings.min_batch_size > settings.max_batch_size:
            raise RetrainError(f"[backpressure] min_batch_size ({settings.min_batch_size}) is larger than "
                               f"max_batch_size ({settings.max_batch_size}); make min_batch_size <= max_batch_size")
        self.settings = settings
        self.group_size = group_size
        self.schedule = warmup_schedule(batch_size, settings.min_batch_size, settings.max_batch_size,
                                        settings.warmup_steps)
        # The latest request: the batch size for the next step, and the size the next
        # observation measured unless the run says otherwise.
        self.batch_size = self.schedule[0]
        # Usable steps observed so far; the window and the warm-up count these.
        self.observations = 0
        self.by_concurrency: dict[int, Measured] = {}
        self.fit: tuple[float, float, float] | None = None
        # How many distinct concurrencies the fit in force was made from.
        self.fit_concurrencies = 0

    def observe(self, step: int, step_time_s: float, completions: int, tokens: int = 0,
                flops: float | None = None, bytes_moved: float | None = None,
                batch_size: int | None = None) -> Decision:
        """Record one step and decide the next step's batch size.

        The step ran at ``batch_size``, by default the size this controller asked for last
        (``self.batch_size``); a run that samples steps ahead fixes a step's size before the
        latest decision and passes the size it used. That size only places the measurement:
        decisions move the controller's own last request, so requests made while older sizes
        are still in flight are not undone. ``tokens`` (0 = not counted) only feeds the
        tokens-per-second metric. A step without a positive, finite time or without
        completions tells nothing about throughput: it is not recorded and the batch size
        stays as it is (a warm-up step is measured again).
        """
        measured_size = self.batch_size if batch_size is None else batch_size
        usable = math.isfinite(step_time_s) and step_time_s > 0.0 and completions > 0 and measured_size >= 1
        throughput = completions / step_time_s if usable else math.nan
        tokens_per_s = tokens / step_time_s if usable and tokens > 0 else math.nan
        usable = usable and math.isfinite(throughput)
        if not usable:
            action, next_size = "hold", self.batch_size
        else:
            self._record(self.group_size * measured_size, throughput)
            self._refit()
            if self.observations < len(self.schedule):
                action, next_size = "warmup", self.schedule[self.observations]
            else:
                action, next_size = self._decide()
        if action in ("throttle", "increase"):
            logger.info("step %d: backpressure %s, batch size %d -> %d (p* = %.1f)", step, action, self.batch_size,
                        next_size, self.p_star)
        self.batch_size = next_size
        hints = roofline(flops, bytes_moved, step_time_s, self.settings.peak_gflops, self.settings.peak_bw_gb_s)
        sigma, kappa = (self.fit[0], self.fit[1]) if self.fit is not None else (math.nan, math.nan)
        return Decision(next_size, action, hints.regime, self.p_star, sigma, kappa, hints.utilization,
                        throughput, tokens_per_s)

    @property
    def p_star(self) -> float:
        """The optimal concurrency of the fit in force; NaN before the first fit."""
        return math.nan if self.fit is None else optimal_concurrency(self.fit[0], self.fit[1])

    def _record(self, concurrency: int, throughput: float) -> None:
        decay = self.settings.ema_decay
        measured = self.by_concurrency.setdefault(concurrency, Measured(0.0, 0, 0))
        measured.accumulator = decay * measured.accumulator + (1.0 - decay) * throughput
        measured.count += 1
        measured.last_seen = self.observations
        self.observations += 1
        oldest = self.observations - WINDOW_STEPS
        for stale in [p for p, seen in self.by_concurrency.items() if seen.last_seen < oldest]:
            del self.by_concurrency[stale]

    def smoothed_throughput(self) -> dict[int, tuple[float, float]]:
        """Concurrency -> (EMA throughput, effective step count), over the window, by concurrency
        (a fixed order, so a resumed controller sums the least squares in the same order).

        The EMA is debiased as in Adam (Kingma & Ba, 2015): dividing by ``1 - decay**n``
        makes the first few steps at a concurrency their weighted average instead of letting
        the zero start drag them down.
        """
        decay = self.settings.ema_decay
        return {p: (seen.accumulator / (1.0 - decay ** seen.count), ema_effective_count(decay, seen.count))
                for p, seen in sorted(self.by_concurrency.items())}

    def _refit(self) -> None:
        # Once the batch size has settled, the warm-up's measurements leave the window one
        # by one. A fit on what is left would rest on less evidence than the fit in force
        # (three noisy neighbouring points can put p* anywhere), so a refit needs a window
        # with at least as many concurrencies as that fit had; otherwise the fit in force stays.
        smoothed = self.smoothed_throughput()
        if len(smoothed) < max(MIN_DISTINCT_CONCURRENCIES, self.fit_concurrencies):
            return
        fitted = fit_usl(list(smoothed), [x for x, _ in smoothed.values()], [n for _, n in smoothed.values()])
        if fitted is not None:
            self.fit = fitted
            self.fit_concurrencies = len(smoothed)

    def _decide(self) -> tuple[str, int]:
        """Throttle above ``m * p*``, grow below ``increase_margin * m * p*``, hold between.

        Both moves head for ``target = floor(m * p* / group_size)``, the largest batch size
        whose concurrency is at most ``m * p*``, so a move lands inside the band and the next
        decision holds; the hysteresis gap keeps small changes of the fit from undoing it.
        A move at most halves or doubles the batch size (``MAX_STEP_FACTOR``), and an
        increase must promise ``MIN_INCREASE_GAIN`` more throughput.
        """
        if self.fit is None:
            return "hold", self.batch_size
        low, high = self.settings.min_batch_size, self.settings.max_batch_size
        limit = self.settings.throttle_margin * self.p_star
        target = high if math.isinf(limit) else min(max(math.floor(limit / self.group_size), low), high)
        concurrency = self.group_size * self.batch_size
        if concurrency > limit:
            action, size = "throttle", max(target, math.ceil(self.batch_size / MAX_STEP_FACTOR))
        elif concurrency < self.settings.increase_margin * limit:
            action, size = "increase", min(target, self.batch_size * MAX_STEP_FACTOR)
        else:
            return "hold", self.batch_size
        size = min(max(size, low), high)
        if action == "increase" and self._predicted_gain(self.fit, size) < MIN_INCREASE_GAIN:
            return "hold", self.batch_size
        return (action, size) if size != self.batch_size else ("hold", self.batch_size)

    def _predicted_gain(self, fit: tuple[float, float, float], size: int) -> float:
        """The relative throughput gain ``fit`` promises from moving to batch size ``size``
        (a ratio, so ``lambda`` drops out)."""
        sigma, kappa, _ = fit
        before = usl_throughput(self.group_size * self.batch_size, sigma, kappa, 1.0)
        return usl_throughput(self.group_size * size, sigma, kappa, 1.0) / before - 1.0

    def state_dict(self) -> dict[str, object]:
        """Everything the next decisions depend on, as plain JSON."""
        return {
            "schedule": list(self.schedule),
            "batch_size": self.batch_size,
            "observations": self.observations,
            "by_concurrency": [[p, seen.accumulator, seen.count, seen.last_seen]
                               for p, seen in sorted(self.by_concurrency.items())],
            "fit": None if self.fit is None else list(self.fit),
            "fit_concurrencies": self.fit_concurrencies,
        }

    def load_state_dict(self, state: Mapping[str, object]) -> None:
        expected = set(self.state_dict())
        if set(state) != expected:
            raise RetrainError(
                f"the saved backpressure state does not match this version (missing {sorted(expected - set(state))}, "
                f"unexpected {sorted(set(state) - expected)}); resume from a checkpoint written by the same "
                "retrain version"
            )
        self.schedule = [int(_number(size, "schedule")) for size in _saved_list(state["schedule"], "schedule", None)]
        self.batch_size = int(_number(state["batch_size"], "batch_size"))
        self.observations = int(_number(state["observations"], "observations"))
        self.by_concurrency = {}
        for row in _saved_list(state["by_concurrency"], "by_concurrency", None):
            p, accumulator, count, last_seen = (_number(value, "by_concurrency")
                                                for value in _saved_list(row, "by_concurrency", 4))
            self.by_concurrency[int(p)] = Measured(accumulator, int(count), int(last_seen))
        fit = state["fit"]
        if fit is None:
            self.fit = None
        else:
            sigma, kappa, lam = (_number(value, "fit") for value in _saved_list(fit, "fit", 3))
            self.fit = (sigma, kappa, lam)
        self.fit_concurrencies = int(_number(state["fit_concurrencies"], "fit_concurrencies"))


def _saved_list(value: object, key: str, length: int | None) -> list[object]:
    """``value`` as a list (of ``length`` items, when given), refusing anything else (a damaged checkpoint)."""
    if not isinstance(value, list) or (length is not None and len(value) != length):
        raise RetrainError(f"the saved backpressure state has {key} = {value!r}, not a list"
                           f"{'' if length is None else f' of {length}'}; the checkpoint is damaged — "
                           "resume from an earlier checkpoint")
    return value


def _number(value: object, key: str) -> float:
    """``value`` as a float, refusing anything that is not a number (a damaged checkpoint)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RetrainError(f"the saved backpressure state has {key} = {value!r}, not a number; the checkpoint is "
                           "damaged — resume from an earlier checkpoint")
    return float(value)
