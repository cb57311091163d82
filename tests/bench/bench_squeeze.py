"""Benchmark of LoRA-Squeeze on a 7B-shaped adapter.

Workload: 32 layers x 7 projections at rank 128, random fp32 factors (a Llama-7B shape):
q, k, v, o (4096 x 4096), gate and up (11008 x 4096), down (4096 x 11008), 224 LoRA pairs,
written as a PEFT folder in a temporary directory (not timed). Timed: ``analyze`` (read
the file, QR of every B and A^T, SVD of the 128 x 128 cores, the table) and ``compress``
to rank 32 (the same, the rank-32 factors through the QR reflectors, the new folder).
Targets on a 2-core CPU: analysis <= 10 s, compression <= 20 s.

Run: ``python tests/bench/bench_squeeze.py [--rank 128] [--compress-to 32] [--device cpu]``.
Prints the times and the arithmetic behind them; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

from retrain.squeeze import analyze, compress

LAYERS = 32
HIDDEN, INTERMEDIATE = 4096, 11008
# projection -> (m, n): dW is m x n, B is m x r, A is r x n.
PROJECTIONS = {
    "self_attn.q_proj": (HIDDEN, HIDDEN), "self_attn.k_proj": (HIDDEN, HIDDEN),
    "self_attn.v_proj": (HIDDEN, HIDDEN), "self_attn.o_proj": (HIDDEN, HIDDEN),
    "mlp.gate_proj": (INTERMEDIATE, HIDDEN), "mlp.up_proj": (INTERMEDIATE, HIDDEN),
    "mlp.down_proj": (HIDDEN, INTERMEDIATE),
}
ANALYSIS_TARGET_S = 10.0
COMPRESSION_TARGET_S = 20.0


def shapes() -> list[tuple[int, int]]:
    return [shape for _ in range(LAYERS) for shape in PROJECTIONS.values()]


def write_adapter(folder: Path, rank: int) -> int:
    """The 7B-shaped adapter in ``folder``; returns the bytes of its factors."""
    generator = torch.Generator().manual_seed(0)
    tensors = {}
    for layer in range(LAYERS):
        for projection, (m, n) in PROJECTIONS.items():
            module = f"base_model.model.model.layers.{layer}.{projection}"
            tensors[f"{module}.lora_A.weight"] = torch.randn(rank, n, generator=generator) / n ** 0.5
            tensors[f"{module}.lora_B.weight"] = torch.randn(m, rank, generator=generator) / rank ** 0.5
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    config = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "base_model_name_or_path": "llama-7b",
              "target_modules": [name.split(".")[-1] for name in PROJECTIONS]}
    (folder / "adapter_config.json").write_text(json.dumps(config))
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors.values())


def arithmetic(rank: int, target: int) -> dict[str, float]:
    """Floating-point operations, Householder counts (Golub & Van Loan): the QR of an
    m x r matrix, R only, 2 m r^2 - 2 r^3 / 3; the core R_B R_A^T, 2 r^3 (dense); applying
    the r reflectors of Q_B (or Q_A) to the m x k factor, 4 m r k - 2 r^2 k. The r x r SVDs
    (O(r^3) each, about 0.5 GFLOP in all) are left out."""
    qr = sum(2 * (m + n) * rank ** 2 - 4 * rank ** 3 / 3 for m, n in shapes())
    core = len(shapes()) * 2 * rank ** 3
    reflectors = sum(4 * (m + n) * rank * target - 4 * rank ** 2 * target for m, n in shapes())
    return {"analysis": qr + core, "compression": qr + core + reflectors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=128)
    parser.add_argument("--compress-to", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as temp:
        folder = Path(temp) / "adapter"
        folder.mkdir()
        factor_bytes = write_adapter(folder, args.rank)
        start = time.perf_counter()
        analysis = analyze(folder, device=args.device)
        analysis_s = time.perf_counter() - start
        start = time.perf_counter()
        compress(folder, Path(temp) / "squeezed", args.compress_to, device=args.device)
        compression_s = time.perf_counter() - start
    flops = arithmetic(args.rank, args.compress_to)
    print(f"adapter: {LAYERS} layers x {len(PROJECTIONS)} projections = {len(shapes())} LoRA pairs, rank {args.rank}, "
          f"fp32, {factor_bytes / 1e9:.2f} GB of factors ({factor_bytes / 2**30:.2f} GiB); torch threads "
          f"{torch.get_num_threads()}, device {args.device}")
    print(f"analysis:    {analysis_s:6.2f} s (target <= {ANALYSIS_TARGET_S:.0f} s)  "
          f"{flops['analysis'] / 1e9:6.1f} GFLOP  {flops['analysis'] / 1e9 / analysis_s:5.1f} GFLOP/s  "
          f"recommended rank {analysis.recommended_rank} (mean {100 * analysis.recommended.mean:.2f}%)")
    print(f"compression: {compression_s:6.2f} s (target <= {COMPRESSION_TARGET_S:.0f} s)  "
          f"{flops['compression'] / 1e9:6.1f} GFLOP  {flops['compression'] / 1e9 / compression_s:5.1f} GFLOP/s  "
          f"to rank {args.compress_to}")
    missed = analysis_s > ANALYSIS_TARGET_S or compression_s > COMPRESSION_TARGET_S
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
