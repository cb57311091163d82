"""What each ``[inference]`` key means for the in-process PyTorch engine.

The engine either honours a setting or rejects it when the config is checked, before any
model loads; nothing is silently ignored:

- ``attention_kernel``: ``default`` keeps the model's own attention implementation
  (PyTorch SDPA for current transformers models); ``flash`` selects
  ``flash_attention_2``, which needs the ``flash_attn`` package and a CUDA device;
  ``triton``, ``tk`` and ``cutlass`` name kernels of serving engines and are rejected.
- ``dtype``: ``auto`` samples in the training dtype (bf16 on a GPU, fp32 on the CPU);
  ``bf16`` samples in bf16, which on the CPU needs split mode (the engine's own copy is
  cast; a single device shares the fp32 training weights). ``fp8``/``fp4`` are rejected:
  the engine has no such kernels.
- ``kv_cache_dtype``: the KV cache is kept in the sampling dtype, so ``auto`` always
  works and ``bf16`` works exactly when sampling runs in bf16; ``fp8``/``int8`` are
  rejected.
- ``prefix_caching``: each prompt's KV cache is computed once and shared by its group
  (true) or computed once per completion (false).

This module imports no torch, so ``retrain explain`` can run the same checks.
"""

from __future__ import annotations

import importlib.util

from retrain.config.rules import parse_devices
from retrain.config.schema import Config
from retrain.errors import ConfigIssue

SERVING_ONLY_KERNELS = ("triton", "tk", "cutlass")


def flash_attention_installed() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def attention_implementation(kernel: str) -> str | None:
    """The transformers ``attn_implementation`` for a valid ``attention_kernel``."""
    return "flash_attention_2" if kernel == "flash" else None


def sampling_dtype(config: Config) -> str:
    """``"bfloat16"`` or ``"float32"``: the dtype the engine samples in."""
    devices = parse_devices(config.backend.devices)
    if devices[0].startswith("cuda") or config.inference.dtype == "bf16":
        return "bfloat16"
    return "float32"


def inference_issues(config: Config, flash_installed: bool | None = None) -> list[ConfigIssue]:
    """Every ``[inference]`` value the pytorch engine cannot honour on the configured devices.

    ``[backend] devices`` must already be valid (see ``retrain.config.rules``).
    """
    if config.inference.engine != "pytorch":
        return []
    inference = config.inference
    devices = parse_devices(config.backend.devices)
    engine_device = devices[0]
    split = len(devices) == 2
    on_gpu = engine_device.startswith("cuda")
    if flash_installed is None:
        flash_installed = flash_attention_installed()
    issues = []

    def issue(key: str, problem: str, fix: str) -> None:
        issues.append(ConfigIssue(where="", section="inference", key=key, problem=problem, fix=fix))

    if inference.attention_kernel in SERVING_ONLY_KERNELS:
        issue("attention_kernel",
              f"\"{inference.attention_kernel}\" is a serving-engine kernel; the pytorch engine cannot use it",
              "use attention_kernel = \"default\" (or \"flash\" on a GPU), or serve with vllm/sglang")
    elif inference.attention_kernel == "flash":
        if not on_gpu:
            issue("attention_kernel", f"flash attention needs a CUDA device; the engine runs on {engine_device}",
                  "use attention_kernel = \"default\", or sample on a GPU ([backend] devices = \"gpu:0\")")
        elif not flash_installed:
            issue("attention_kernel", "flash attention needs the flash_attn package, which is not installed",
                  "pip install flash-attn, or use attention_kernel = \"default\"")

    if inference.dtype in ("fp8", "fp4"):
        issue("dtype", f"the pytorch engine has no {inference.dtype} kernels",
              "use dtype = \"auto\" or \"bf16\", or an HTTP engine (vllm) that serves the model in that format")
    elif inference.dtype == "bf16" and not on_gpu and not split:
        issue("dtype",
              "bf16 sampling on the CPU needs the engine's own copy of the model, but a single device shares "
              "the fp32 training weights",
              "use dtype = \"auto\", or split mode ([backend] devices = \"cpu,cpu\")")

    if inference.kv_cache_dtype in ("fp8", "int8"):
        issue("kv_cache_dtype", f"the pytorch engine keeps its KV cache in the sampling dtype; {inference.kv_cache_dtype} "
              "is not available", "use kv_cache_dtype = \"auto\", or an HTTP engine (vllm) with a quantized KV cache")
    elif inference.kv_cache_dtype == "bf16" and inference.dtype not in ("fp8", "fp4") \
            and sampling_dtype(config) != "bfloat16":
        issue("kv_cache_dtype",
              f"the KV cache is kept in the sampling dtype, which is float32 on {engine_device}",
              "use kv_cache_dtype = \"auto\", or set dtype = \"bf16\" (with split mode on the CPU)")
    return issues
