"""LoRA-Squeeze: how much of a LoRA adapter's update each lower rank keeps, and the best
adapter at a chosen lower rank.

One LoRA layer adds ``dW = s * B @ A`` to its weight, with ``B`` (m x r), ``A`` (r x n)
and the scale ``s = lora_alpha / r`` (``lora_alpha / sqrt(r)`` with rsLoRA; per layer
from ``rank_pattern`` / ``alpha_pattern``). The m x n product is never formed: with the
thin QR factorisations ``B = Q_B R_B`` and ``A^T = Q_A R_A``,

    dW = Q_B (s R_B R_A^T) Q_A^T,   and the r x r core  s R_B R_A^T = U S V^T,

so the singular values ``sigma_i`` of ``dW`` are those of the core (``Q_B``, ``Q_A`` have
orthonormal columns). The variance retained at rank ``k`` is

    V(k) = sum_{i<=k} sigma_i^2 / sum_i sigma_i^2,

and the recommended rank is the smallest evaluated ``k`` whose mean ``V(k)`` over the
layers reaches ``min_variance_retention``.

Compression to rank ``k`` keeps the ``k`` leading singular triplets, the best rank-k
approximation in the Frobenius norm (Eckart & Young, "The approximation of one matrix by
another of lower rank", Psychometrika 1936), with error
``||dW - dW_k||_F = sqrt(sum_{i>k} sigma_i^2)``. It is written as a balanced LoRA pair
with the scale folded in, ``B' = Q_B U_k S_k^(1/2)``, ``A' = S_k^(1/2) V_k^T Q_A^T``, and
``lora_alpha = r = k``, so PEFT's scale is exactly 1 whatever the source alpha was.

After Vulić, Grycner, de Laroussilhe & Pfeiffer, "LoRA-Squeeze: Simple and Effective
Post-Tuning and In-Tuning Compression of LoRA Modules" (arXiv:2602.10993, 2026), which
compresses with a randomised SVD; here the SVD is exact and costs O((m + n) r^2) a layer.
Layers of one shape are stacked and factorised together on ``device``.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from retrain.errors import ConfigError, ConfigIssue, RetrainError

if TYPE_CHECKING:
    import torch

logger = logging.getLogger(__name__)
T = TypeVar("T")

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
TINKER_PREFIX = "tinker://"
# PEFT saves module paths under the PeftModel; its patterns match names under the base model.
PEFT_PREFIX = "base_model.model."
LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<embedding>embedding_)?(?P<side>[AB])(?P<suffix>\.weight)?$")
# Weights and archives of the source folder that must not be copied into the compressed one.
NOT_COPIED = (".safetensors", ".bin", ".pt", ".pth", ".age", ".tar", ".tar.gz", ".tgz")
# Layers stacked into one batched factorisation: bounds the stacks to ~1 GB of fp32 at once.
BATCH_ELEMENTS = 1 << 28
# A mean that meets the threshold exactly (0.95 of the variance kept) must not miss it by
# the rounding of the sums.
RETENTION_TOLERANCE = 1e-12


class SqueezeError(RetrainError):
    """An adapter that cannot be read, fetched or compressed."""


@dataclass(frozen=True)
class LoraLayer:
    """One LoRA pair of an adapter: ``dW = scale * B @ A``, ``B`` (m x rank), ``A`` (rank x n)."""

    module: str
    key_A: str
    key_B: str
    rank: int
    scale: float


@dataclass(frozen=True)
class RankRow:
    """Retention ``V(k)`` at one rank over the layers, and the layer that keeps least."""

    rank: int
    mean: float
    min: float
    max: float
    worst_layer: str


@dataclass(frozen=True)
class SqueezeAnalysis:
    """The spectra of an adapter's layers and the retention table (see the module docstring)."""

    adapter_path: str
    source_rank: int
    min_variance_retention: float
    layers: tuple[str, ...]
    singular_values: tuple[tuple[float, ...], ...]
    rows: tuple[RankRow, ...]
    recommended_rank: int

    @property
    def recommended(self) -> RankRow:
        return next(row for row in self.rows if row.rank == self.recommended_rank)

    def table(self) -> str:
        """The retention table as text, the recommended row marked, then its worst layer."""
        lines = [f"LoRA-Squeeze of {self.adapter_path}: {len(self.layers)} layers, source rank "
                 f"{self.source_rank}, target >= {100 * self.min_variance_retention:.2f}% mean retained variance",
                 f"{'rank':>6} {'mean %':>9} {'min %':>9} {'max %':>9}"]
        for row in self.rows:
            mark = "  <- recommended" if row.rank == self.recommended_rank else ""
            lines.append(f"{row.rank:>6} {100 * row.mean:>9.2f} {100 * row.min:>9.2f} {100 * row.max:>9.2f}{mark}")
        best = self.recommended
        lines.append(f"recommended rank {best.rank}; worst layer there: {best.worst_layer} ({100 * best.min:.2f}%)")
        return "\n".join(lines) + "\n"

    def to_dict(self, spectra: bool = True) -> dict[str, object]:
        """A JSON-able record: the table, the recommendation and (``spectra``) each layer's
        singular values."""
        best = self.recommended
        record: dict[str, object] = {
            "adapter_path": self.adapter_path,
            "source_rank": self.source_rank,
            "min_variance_retention": self.min_variance_retention,
            "recommended_rank": self.recommended_rank,
            "worst_layer": best.worst_layer,
            "worst_layer_retention": best.min,
            "ranks": [{"rank": row.rank, "mean": row.mean, "min": row.min, "max": row.max,
                       "worst_layer": row.worst_layer} for row in self.rows],
            "layer_count": len(self.layers),
        }
        if spectra:
            record["layers"] = [{"name": name, "singular_values": list(values)}
                                for name, values in zip(self.layers, self.singular_values)]
        return record


def retention(singular_values: Sequence[float], rank: int) -> float:
    """``V(k) = sum_{i<=k} sigma_i^2 / sum_i sigma_i^2`` for descending ``sigma``; a zero
    update (a freshly initialised LoRA has ``B = 0``) loses nothing at any rank: 1."""
    total = math.fsum(value * value for value in singular_values)
    if rank >= len(singular_values) or total == 0.0:
        return 1.0
    return min(1.0, math.fsum(value * value for value in singular_values[:rank]) / total)


def _pattern_value(patterns: object, name: str, default: float) -> float:
    # PEFT's rule: a pattern is a regex for a dotted suffix of the module name; first match wins.
    for key, value in (patterns or {}).items() if isinstance(patterns, Mapping) else ():
        if re.match(rf"(.*\.)?({key})$", name):
            return float(value)
    return default


def _number(value: object, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def lora_scale(config: Mapping[str, object], module: str) -> tuple[int, float]:
    """The ``(rank, scale)`` PEFT gives ``module`` under ``config``: ``alpha / r``, or
    ``alpha / sqrt(r)`` with ``use_rslora``, with ``rank_pattern`` / ``alpha_pattern``."""
    name = module.removeprefix(PEFT_PREFIX)
    # PEFT's defaults for a config that leaves r or lora_alpha out.
    rank = int(_pattern_value(config.get("rank_pattern"), name, _number(config.get("r"), 8)))
    alpha = _pattern_value(config.get("alpha_pattern"), name, _number(config.get("lora_alpha"), 8))
    return rank, alpha / (math.sqrt(rank) if config.get("use_rslora") else rank)


def adapter_folder(adapter_path: str | Path) -> Path:
    """``adapter_path`` as a local folder; a ``tinker://`` path must be fetched first."""
    if str(adapter_path).startswith(TINKER_PREFIX):
        raise SqueezeError(f"{adapter_path} is a Tinker path, not a folder — fetch it first with "
                           "retrain.commands.squeeze.local_adapter_folder (run_squeeze does)")
    return Path(adapter_path).expanduser()


def read_adapter(folder: Path) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
    """``adapter_config.json`` and the tensors of a PEFT LoRA adapter folder."""
    from safetensors.torch import load_file

    fix = "point [squeeze] adapter_path at a PEFT adapter folder (adapter_config.json + adapter_model.safetensors)"
    if not folder.is_dir():
        raise SqueezeError(f"adapter folder {folder} does not exist — {fix}")
    if not (folder / ADAPTER_CONFIG).is_file():
        raise SqueezeError(f"{folder} has no {ADAPTER_CONFIG}, so it is not a PEFT adapter — {fix}")
    if not (folder / ADAPTER_WEIGHTS).is_file():
        found = ", ".join(sorted(item.name for item in folder.iterdir())) or "nothing"
        raise SqueezeError(f"{folder} has no {ADAPTER_WEIGHTS} (found: {found}) — save the adapter with "
                           "save_pretrained(..., safe_serialization=True), or " + fix)
    try:
        config = json.loads((folder / ADAPTER_CONFIG).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SqueezeError(f"cannot read {folder / ADAPTER_CONFIG}: {exc} — {fix}") from exc
    if not isinstance(config, dict) or str(config.get("peft_type", "LORA")).upper() != "LORA":
        raise SqueezeError(f"{folder / ADAPTER_CONFIG} is not a LoRA adapter config — {fix}")
    if config.get("use_dora"):
        raise SqueezeError(f"{folder} is a DoRA adapter; its magnitude vectors depend on the base weights, so a "
                           "rank change is not a plain SVD truncation — squeeze a plain LoRA adapter")
    return config, load_file(str(folder / ADAPTER_WEIGHTS))


def lora_layers(config: Mapping[str, object], tensors: Mapping[str, torch.Tensor], where: Path) -> list[LoraLayer]:
    """The LoRA pairs in ``tensors``, checked against each other and against ``config``."""
    pairs: dict[str, dict[str, str]] = {}
    for key in tensors:
        match = LORA_KEY.match(key)
        if match:
            pairs.setdefault(match["module"], {})[match["side"]] = key
    if not pairs:
        raise SqueezeError(f"{where / ADAPTER_WEIGHTS} holds no LoRA weights (no '.lora_A.weight' / '.lora_B.weight' "
                           "keys) — point [squeeze] adapter_path at a LoRA adapter")
    layers = []
    for module, sides in sorted(pairs.items()):
        if set(sides) != {"A", "B"}:
            raise SqueezeError(f"{where}: layer {module} has lora_{''.join(sides)} without its partner — "
                               "the adapter file is incomplete; save it again")
        a, b = tensors[sides["A"]], tensors[sides["B"]]
        if a.dim() != 2 or b.dim() != 2 or a.shape[0] != b.shape[1]:
            raise SqueezeError(f"{where}: layer {module} has lora_A {tuple(a.shape)} and lora_B {tuple(b.shape)}; "
                               "squeeze needs 2-D factors (r, n) and (m, r) — convolution LoRA is not supported")
        rank, scale = lora_scale(config, module)
        if rank != a.shape[0]:
            raise SqueezeError(f"{where}: {ADAPTER_CONFIG} gives layer {module} rank {rank} but its weights have "
                               f"rank {a.shape[0]} — the config does not belong to these weights")
        layers.append(LoraLayer(module, sides["A"], sides["B"], rank, scale))
    return layers


def _compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    import torch

    # fp16/bf16 factors are upcast: CPU QR and SVD need fp32, and fp32 keeps the spectrum accurate.
    return torch.float64 if tensor.dtype == torch.float64 else torch.float32


def _batches(layers: list[LoraLayer], tensors: Mapping[str, torch.Tensor], workers: int) -> Iterator[list[LoraLayer]]:
    """Layers grouped by factor shape, each group cut into at least ``workers`` stacks of at
    most ``BATCH_ELEMENTS / workers`` elements."""
    groups: dict[tuple[int, int, int, str], list[LoraLayer]] = {}
    for layer in layers:
        b, a = tensors[layer.key_B], tensors[layer.key_A]
        shape_key = (b.shape[0], a.shape[1], layer.rank, str(_compute_dtype(a)))
        groups.setdefault(shape_key, []).append(layer)
    for (m, n, r, _), group in groups.items():
        size = max(1, min(BATCH_ELEMENTS // workers // ((m + n) * r), -(-len(group) // workers)))
        for start in range(0, len(group), size):
            yield group[start:start + size]


def map_batches(function: Callable[[list[LoraLayer]], T], layers: list[LoraLayer],
                tensors: Mapping[str, torch.Tensor], device: str) -> list[T]:
    """``function`` over the stacks of same-shaped layers, in order. On the CPU the stacks
    run in one worker thread per torch thread, each worker's kernels on a single thread:
    LAPACK's own threads split one 128-column QR finely and stall whenever another process
    takes a core (5x slower on a busy 2-core machine), whole stacks per thread do not. The
    torch thread count is restored afterwards."""
    import torch

    if torch.device(device).type != "cpu":
        return [function(batch) for batch in _batches(layers, tensors, 1)]
    workers = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(workers) as pool:
            return list(pool.map(function, _batches(layers, tensors, workers)))
    finally:
        torch.set_num_threads(workers)


def factorize(batch: list[LoraLayer], tensors: Mapping[str, torch.Tensor],
              device: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(H_B, tau_B, core, H_A, tau_A)`` for a stack of same-shaped layers: Householder QR
    ``B = Q_B R_B`` and ``A^T = Q_A R_A`` (LAPACK's ``geqrf`` form: ``R`` in the upper
    triangle of ``H``, ``Q`` as reflectors, applied later by ``ormqr`` without being formed)
    and ``core = s R_B R_A^T``."""
    import torch

    dtype = _compute_dtype(tensors[batch[0].key_A])
    b_L = torch.stack([tensors[layer.key_B] for layer in batch]).to(device=device, dtype=dtype)
    h_b, tau_b = torch.geqrf(b_L)
    del b_L  # the stacks are the largest tensors here; free each once factorised
    # A (r x n) row-major is A^T (n x r) column-major, the layout LAPACK works in.
    a_t_L = torch.stack([tensors[layer.key_A] for layer in batch]).to(device=device, dtype=dtype).mT
    h_a, tau_a = torch.geqrf(a_t_L)
    del a_t_L
    r_b = h_b[:, : tau_b.shape[-1], :].triu()
    r_a = h_a[:, : tau_a.shape[-1], :].triu()
    scale_L = torch.tensor([layer.scale for layer in batch], device=device, dtype=dtype)
    return h_b, tau_b, scale_L[:, None, None] * (r_b @ r_a.mT), h_a, tau_a


def layer_spectra(layers: list[LoraLayer], tensors: Mapping[str, torch.Tensor],
                  device: str = "cpu") -> dict[str, tuple[float, ...]]:
    """Module -> the singular values of its ``dW``, descending."""
    import torch

    def spectra(batch: list[LoraLayer]) -> list[tuple[LoraLayer, tuple[float, ...]]]:
        values = torch.linalg.svdvals(factorize(batch, tensors, device)[2]).double().cpu()
        return [(layer, tuple(row)) for layer, row in zip(batch, values.tolist())]

    return {layer.module: values for batch in map_batches(spectra, layers, tensors, device)
            for layer, values in batch}


def default_ranks(source_rank: int) -> list[int]:
    """Powers of two up to the source rank, and the source rank itself."""
    return sorted({1 << power for power in range(source_rank.bit_length()) if 1 << power <= source_rank}
                  | {source_rank})


def rank_rows(spectra: Mapping[str, Sequence[float]], ranks: Sequence[int]) -> list[RankRow]:
    rows = []
    for rank in ranks:
        kept = {name: retention(values, rank) for name, values in spectra.items()}
        worst = min(kept, key=lambda name: kept[name])
        rows.append(RankRow(rank, math.fsum(kept.values()) / len(kept), kept[worst], max(kept.values()), worst))
    return rows


def _check_device(device: str) -> None:
    import torch

    try:
        kind = torch.device(device).type
    except RuntimeError as exc:
        raise ConfigError(ConfigIssue("", "squeeze", "device", f"'{device}' is not a torch device ({exc})",
                                      "use \"cpu\" or \"cuda\"")) from exc
    if kind == "cuda" and not torch.cuda.is_available():
        raise ConfigError(ConfigIssue("", "squeeze", "device", f"'{device}' is set but torch sees no CUDA device",
                                      "use device = \"cpu\", or install a CUDA build of torch"))


def _checked_ranks(target_ranks: Sequence[int], source_rank: int) -> list[int]:
    bad = [rank for rank in target_ranks if not 1 <= rank <= source_rank]
    if bad:
        raise ConfigError(ConfigIssue("", "squeeze", "target_ranks",
                                      f"{bad} outside 1..{source_rank}, the adapter's source rank",
                                      f"list ranks between 1 and {source_rank}, or [] for powers of two"))
    # The source rank always keeps everything, so some evaluated rank always qualifies.
    return sorted(set(target_ranks) | {source_rank}) if target_ranks else default_ranks(source_rank)


def _source_rank(layers: list[LoraLayer], source_rank: int, where: Path) -> int:
    detected = max(layer.rank for layer in layers)
    if source_rank and source_rank != detected:
        raise ConfigError(ConfigIssue("", "squeeze", "source_rank",
                                      f"is {source_rank} but the adapter at {where} has rank {detected}",
                                      f"set source_rank = {detected}, or 0 to take it from the adapter"))
    return detected


def analyze(adapter_path: str | Path, *, target_ranks: Sequence[int] = (), min_variance_retention: float = 0.95,
            source_rank: int = 0, device: str = "cpu") -> SqueezeAnalysis:
    """The retention table of the PEFT LoRA adapter in folder ``adapter_path``.

    ``target_ranks`` (default: powers of two up to the source rank) are evaluated, plus
    the source rank; the recommended rank is the smallest whose mean ``V(k)`` over the
    layers is at least ``min_variance_retention``. ``source_rank`` 0 takes the adapter's
    (largest layer) rank; any other value must match it.
    """
    _check_device(device)
    folder = adapter_folder(adapter_path)
    config, tensors = read_adapter(folder)
    layers = lora_layers(config, tensors, folder)
    rank = _source_rank(layers, source_rank, folder)
    ranks = _checked_ranks(target_ranks, rank)
    spectra = layer_spectra(layers, tensors, device)
    rows = rank_rows(spectra, ranks)
    recommended = next(row.rank for row in rows if row.mean >= min_variance_retention - RETENTION_TOLERANCE)
    return SqueezeAnalysis(str(adapter_path), rank, min_variance_retention, tuple(spectra),
                           tuple(spectra.values()), tuple(rows), recommended)


def truncated_factors(batch: list[LoraLayer], tensors: Mapping[str, torch.Tensor], rank: int,
                      device: str) -> list[tuple[LoraLayer, torch.Tensor, torch.Tensor]]:
    """``(layer, B', A')`` with ``B' A'`` the best rank-``min(rank, layer rank)`` approximation
    of ``dW`` and the scale folded in, zero-padded where ``dW`` has fewer singular values; on
    the CPU in the layer's dtype."""
    import torch

    h_b, tau_b, core, h_a, tau_a = factorize(batch, tensors, device)
    u, s, vh = torch.linalg.svd(core, full_matrices=False)
    kept = min(rank, s.shape[-1])
    root = s[:, :kept].sqrt()
    # Q @ [X; 0] is the thin Q_B X: ormqr applies the reflectors, 4 m r k flops against the
    # 2 m r^2 of forming Q_B first.
    top_b = torch.nn.functional.pad(u[:, :, :kept] * root[:, None, :], (0, 0, 0, h_b.shape[1] - u.shape[1]))
    b_L = torch.ormqr(h_b, tau_b, top_b)
    top_a = torch.nn.functional.pad((root[:, :, None] * vh[:, :kept, :]).mT, (0, 0, 0, h_a.shape[1] - vh.shape[2]))
    a_L = torch.ormqr(h_a, tau_a, top_a).mT
    new_rank = min(rank, batch[0].rank)
    if new_rank > kept:
        b_L = torch.nn.functional.pad(b_L, (0, new_rank - kept))
        a_L = torch.nn.functional.pad(a_L, (0, 0, 0, new_rank - kept))
    return [(layer, b_L[index].to(device="cpu", dtype=tensors[layer.key_B].dtype).contiguous(),
             a_L[index].to(device="cpu", dtype=tensors[layer.key_A].dtype).contiguous())
            for index, layer in enumerate(batch)]


def compressed_tensors(layers: list[LoraLayer], tensors: Mapping[str, torch.Tensor], rank: int,
                       device: str) -> dict[str, torch.Tensor]:
    """Every tensor of the adapter with each LoRA pair replaced by its rank-``rank`` pair;
    a ``lora_B.bias`` is multiplied by the old scale (PEFT scales the bias with ``B``)."""
    result = dict(tensors)
    batches = map_batches(lambda batch: truncated_factors(batch, tensors, rank, device), layers, tensors, device)
    for layer, b, a in (item for batch in batches for item in batch):
        result[layer.key_B], result[layer.key_A] = b, a
        bias_key = f"{layer.module}.lora_B.bias"
        if bias_key in tensors:
            result[bias_key] = (tensors[bias_key].double() * layer.scale).to(tensors[bias_key].dtype)
    return result


def compressed_config(config: Mapping[str, object], layers: list[LoraLayer], rank: int) -> dict[str, object]:
    """``config`` at rank ``rank`` with scale 1 everywhere (``lora_alpha = r``, no rsLoRA);
    a layer whose own rank is below ``rank`` keeps it, named exactly in the patterns."""
    smaller = {re.escape(layer.module.removeprefix(PEFT_PREFIX)): layer.rank for layer in layers if layer.rank < rank}
    return {**config, "r": rank, "lora_alpha": rank, "use_rslora": False,
            "rank_pattern": smaller, "alpha_pattern": dict(smaller)}


def _check_output(output: Path, source: Path) -> None:
    if output.resolve() == source.resolve():
        raise SqueezeError(f"[squeeze] output_path {output} is the adapter folder itself — write the compressed "
                           "adapter to a new folder")
    if output.exists() and (not output.is_dir() or (any(output.iterdir()) and not (output / ADAPTER_CONFIG).exists())):
        raise SqueezeError(f"[squeeze] output_path {output} exists and is not an adapter folder; it is not "
                           "replaced — choose a new or empty folder, or remove it")


def compress(adapter_path: str | Path, output_path: str | Path, rank: int, *, device: str = "cpu") -> Path:
    """Write the best rank-``rank`` version of a PEFT LoRA adapter to ``output_path`` as a
    PEFT adapter folder (see the module docstring) and return its path.

    The folder is written beside its final place and renamed into it, so ``output_path``
    holds either its previous content or the complete new adapter; tokenizer and other
    small files of the source folder are copied along.
    """
    from safetensors.torch import save_file

    from retrain.backends.weights import replace_directory

    _check_device(device)
    folder = adapter_folder(adapter_path)
    config, tensors = read_adapter(folder)
    layers = lora_layers(config, tensors, folder)
    source_rank = max(layer.rank for layer in layers)
    if not 1 <= rank <= source_rank:
        raise ConfigError(ConfigIssue("", "squeeze", "compress_to", f"is {rank} but the adapter at {folder} has "
                                      f"rank {source_rank}", f"compress to a rank between 1 and {source_rank}"))
    output = Path(output_path).expanduser()
    _check_output(output, folder)
    new_tensors = compressed_tensors(layers, tensors, rank, device)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=output.parent))
    try:
        for item in folder.iterdir():
            if item.is_file() and item.name != ADAPTER_CONFIG and not item.name.endswith(NOT_COPIED):
                shutil.copy2(item, staging / item.name)
        save_file(new_tensors, str(staging / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        (staging / ADAPTER_CONFIG).write_text(json.dumps(compressed_config(config, layers, rank), indent=2) + "\n")
        replace_directory(staging, output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    logger.info("wrote the rank-%d adapter %s", rank, output)
    return output
