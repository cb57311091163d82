"""The in-process PyTorch engine: samples from the policy of a backend in this process.

It loads ``in_process`` publications (``PolicyRef.in_process``: the live model, its
tokenizer and weights lock). With one device in ``[backend] devices`` it samples from the
training model's own weights, taking turns with training under the shared lock; with two
(split mode) it keeps its own copy on the first device and refreshes it from the trained
weights at every load, so sampling and training can run at once on different devices
(``[training] max_staleness`` decides whether they do). The batched sampler itself is
``retrain.engines.sampler``.

What each ``[inference]`` key means here; a value the engine cannot honour is a
configuration error, reported before any model loads:

- ``attention_kernel``: ``default`` keeps the model's own attention (PyTorch SDPA for
  current transformers models); ``flash`` selects ``flash_attention_2``, which needs the
  ``flash_attn`` package and a CUDA device; ``triton``, ``tk`` and ``cutlass`` name
  kernels of serving engines and are refused.
- ``dtype``: ``auto`` samples in the training dtype (bf16 on a GPU, fp32 on the CPU);
  ``bf16`` samples in bf16, which on the CPU needs split mode (the engine's own copy is
  cast; a single device shares the fp32 training weights). ``fp8``/``fp4`` are refused.
- ``kv_cache_dtype``: the KV cache is kept in the sampling dtype, so ``auto`` always
  works and ``bf16`` works exactly when sampling runs in bf16; ``fp8``/``int8`` are
  refused.
- ``prefix_caching``: each prompt's KV cache is computed once and shared by its group
  (true) or computed once per completion (false).

This module imports torch only when the engine is built, so ``retrain explain`` reads
its capabilities and checks without it.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import TYPE_CHECKING

from retrain.config.schema import Config
from retrain.devices import device_issues, parse_devices
from retrain.errors import ConfigIssue, EngineError
from retrain.types import EngineCapabilities, PolicyRef, SampleBatch, SamplingParams

if TYPE_CHECKING:
    from retrain.engines.sampler import Sampler

SERVING_ONLY_KERNELS = ("triton", "tk", "cutlass")
STATE_FILE = "pytorch_engine_state.pt"


def attention_implementation(kernel: str) -> str | None:
    """The transformers ``attn_implementation`` for a valid ``attention_kernel``."""
    return "flash_attention_2" if kernel == "flash" else None


def sampling_dtype(config: Config) -> str:
    """``"bfloat16"`` or ``"float32"``: the dtype the engine samples in."""
    devices = parse_devices(config.backend.devices)
    if devices[0].startswith("cuda") or config.inference.dtype == "bf16":
        return "bfloat16"
    return "float32"


class PyTorchEngine:
    """Samples in this process from an ``in_process`` publication; see the module docstring."""

    @classmethod
    def capabilities(cls, config: Config) -> EngineCapabilities:
        return EngineCapabilities(loads=("in_process",), entropies=True, exact_resume=True)

    @classmethod
    def config_issues(cls, config: Config) -> list[ConfigIssue]:
        issues = device_issues(config.backend.devices)
        return issues or inference_issues(config, importlib.util.find_spec("flash_attn") is not None)

    def __init__(self, config: Config) -> None:
        devices = parse_devices(config.backend.devices)
        self.device = devices[0]
        self.own_copy = len(devices) == 2
        self.dtype = sampling_dtype(config)
        self.prefix_caching = config.inference.prefix_caching
        self.seed = config.training.seed
        self.policy_version = 0
        self.sampler: Sampler | None = None

    def load(self, ref: PolicyRef) -> None:
        if ref.kind != "in_process" or ref.in_process is None:
            raise EngineError(f"the pytorch engine samples from a policy in this process; it was given a {ref.kind} "
                              "reference — pair it with a backend that publishes in_process (backend = \"local\")")
        from retrain.engines import sampler

        if self.sampler is None:
            self.sampler = sampler.attach(ref.in_process, self.device, self.dtype, self.own_copy,
                                          self.prefix_caching, self.seed)
        elif self.own_copy:
            sampler.refresh_copy(self.sampler, ref.in_process)
        # The sampler labels each sample with the version of the weights it really used
        # (read under the weights lock); this is the version last handed to the engine.
        self.policy_version = ref.version

    def generate(self, prompt_token_ids: list[list[int]], params: SamplingParams) -> SampleBatch:
        return self._attached().generate(prompt_token_ids, params)

    def save_state(self, directory: Path) -> None:
        from retrain.engines import sampler

        sampler.save_rng(self._attached(), Path(directory) / STATE_FILE)

    def load_state(self, directory: Path) -> None:
        from retrain.engines import sampler

        sampler.load_rng(self._attached(), Path(directory) / STATE_FILE)

    def close(self) -> None:
        self.sampler = None

    def _attached(self) -> Sampler:
        if self.sampler is None:
            raise EngineError("the pytorch engine has no policy yet: load a published policy before sampling")
        return self.sampler


def inference_issues(config: Config, flash_installed: bool) -> list[ConfigIssue]:
    """Every ``[inference]`` value the pytorch engine cannot honour on the configured
    devices (``[backend] devices`` must be valid)."""
    inference = config.inference
    devices = parse_devices(config.backend.devices)
    engine_device = devices[0]
    split = len(devices) == 2
    on_gpu = engine_device.startswith("cuda")
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
