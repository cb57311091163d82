"""Adapters with known spectra, written as PEFT folders, for the LoRA-Squeeze tests."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from safetensors.torch import save_file

PREFIX = "base_model.model."


def orthonormal(rows: int, columns: int, generator: torch.Generator) -> torch.Tensor:
    """``rows x columns`` with orthonormal columns (``columns <= rows``)."""
    q, _ = torch.linalg.qr(torch.randn(rows, columns, generator=generator, dtype=torch.float64))
    return q


def known_factors(m: int, n: int, singular_values: Sequence[float], scale: float,
                  seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``(B, A)`` with ``scale * B @ A = U diag(s) V^T`` for random orthonormal ``U``, ``V``,
    mixed by a random invertible r x r matrix so that neither factor is orthogonal itself."""
    generator = torch.Generator().manual_seed(seed)
    r = len(singular_values)
    u, v = orthonormal(m, r, generator), orthonormal(n, r, generator)
    mixing = torch.randn(r, r, generator=generator, dtype=torch.float64) + 3 * torch.eye(r, dtype=torch.float64)
    s = torch.tensor(list(singular_values), dtype=torch.float64)
    b = (u * s) @ mixing / scale
    a = torch.linalg.solve(mixing, v.T)
    return b, a


def delta(b: torch.Tensor, a: torch.Tensor, scale: float) -> torch.Tensor:
    return scale * b.double() @ a.double()


def write_adapter(folder: Path, factors: Mapping[str, tuple[torch.Tensor, torch.Tensor]], *, r: int,
                  lora_alpha: float, dtype: torch.dtype = torch.float32, extra: Mapping[str, torch.Tensor] = {},
                  **config: object) -> Path:
    """A PEFT LoRA folder: ``factors`` maps a module name (under the base model) to ``(B, A)``."""
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {}
    for module, (b, a) in factors.items():
        tensors[f"{PREFIX}{module}.lora_A.weight"] = a.to(dtype).contiguous()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = b.to(dtype).contiguous()
    tensors.update(extra)
    save_file(tensors, str(folder / "adapter_model.safetensors"), metadata={"format": "pt"})
    settings = {"peft_type": "LORA", "r": r, "lora_alpha": lora_alpha, "target_modules": ["q_proj", "v_proj"],
                "base_model_name_or_path": "retrain/tiny", "use_rslora": False, "rank_pattern": {},
                "alpha_pattern": {}, **config}
    (folder / "adapter_config.json").write_text(json.dumps(settings))
    return folder


def read_factors(folder: Path) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
    from safetensors.torch import load_file

    return json.loads((folder / "adapter_config.json").read_text()), load_file(str(folder / "adapter_model.safetensors"))


def peft_scale(config: Mapping[str, object], rank: int) -> float:
    """The scale PEFT applies for a layer of ``rank`` with no pattern entry."""
    alpha = float(config["lora_alpha"])  # type: ignore[arg-type]
    return alpha / (rank ** 0.5 if config.get("use_rslora") else rank)
