"""The torch side of the local backend (``retrain.backends.local``): loading, updating,
saving and publishing a causal LM in this process.

The model is any ``AutoModelForCausalLM`` whose tokenizer has a chat template. It is
trained with LoRA on the attention and MLP projections (``[model] lora_rank``, ``[lora]
alpha`` (0 = 2 x rank), ``[lora] dropout``) or, with ``lora_rank = 0``, by full
fine-tuning of every weight. Weights are bf16 on a GPU and fp32 on the CPU (LoRA weights
stay fp32 in both). The optimizer is AdamW (``[training] lr``, ``weight_decay``;
``[optimizer] beta1``, ``beta2``, ``eps``) with global gradient-norm clipping
(``[optimizer] grad_clip_norm``, 0 = off).

One update minimizes the token-level policy-gradient loss of ``retrain.backends.loss``
over the batch's sampled tokens (its loss mask), in micro-batches of ``[backend.options]
micro_batch_size`` trajectories (0 = all at once), optionally recomputing activations in
the backward pass (``gradient_checkpointing``). If the loss or the gradient is not finite
the update is skipped, the weights stay untouched and the skip is counted.

``weights_lock`` is held while the weights change or are read for saving; an in-process
engine that shares the weights takes it too, so sampling and training take turns.
"""

from __future__ import annotations

import logging
import os
import pickle
import resource
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from retrain.backends.loss import LossStats, policy_gradient_loss, sequence_logprobs
from retrain.backends.model_loading import load_causal_lm, load_tokenizer
from retrain.backends.weights import save_weights
from retrain.config.schema import Config, LocalOptions
from retrain.devices import parse_devices
from retrain.engines.pytorch import attention_implementation
from retrain.engines.sampler import eos_token_ids, left_pad
from retrain.errors import BackendError, ConfigError, ConfigIssue
from retrain.models.tiny import resolve_model_path
from retrain.types import InProcessPolicy, Message, PolicyKind, PolicyRef, TrainBatch, TrainResult

logger = logging.getLogger(__name__)

STATE_FILE = "local_backend_state.pt"
STATE_FORMAT = 2
# PEFT's name for "every linear layer except the output head": the attention and MLP projections.
LORA_TARGETS = "all-linear"
SMALL_MODEL_PARAMETERS = 10_000_000


class LocalTrainer:
    """Trains a causal LM in this process; see the module docstring."""

    def __init__(self, config: Config) -> None:
        self.config = config
        options = config.backend_options()
        self.options = options if isinstance(options, LocalOptions) else LocalOptions()
        devices = check_devices(config)
        self.train_device = torch.device(devices[-1])
        self.cpu_involved = "cpu" in devices
        self.train_dtype = torch.bfloat16 if self.train_device.type == "cuda" else torch.float32
        self.full_finetune = config.model.lora_rank == 0
        self.policy_version = 0
        self.skipped_updates = 0
        self.seed = config.training.seed

        self.weights_lock = threading.Lock()
        self.tokenizer, self.model = self._load_model()
        # Any id works for padding (it is masked out); the tokenizer's pad token, else an
        # end-of-sequence token.
        pad = self.tokenizer.pad_token_id
        fallback = eos_token_ids(self.model, self.tokenizer) or [0]
        self.pad_id = int(pad) if pad is not None else fallback[0]
        self._set_cpu_threads()
        self.trainable = [(name, param) for name, param in self.model.named_parameters() if param.requires_grad]
        self.parameter_count = sum(param.numel() for param in self.model.parameters())
        self.optimizer = torch.optim.AdamW(
            [param for _, param in self.trainable],
            lr=config.training.lr,
            betas=(config.optimizer.beta1, config.optimizer.beta2),
            eps=config.optimizer.eps,
            weight_decay=config.training.weight_decay,
            # One kernel for all parameters instead of a dozen small ops per tensor.
            fused=True,
        )

    # -------------------------------------------------------------------- construction

    def _set_cpu_threads(self) -> None:
        """Small models gain nothing from intra-op threads, and on a busy machine the
        threads' spin-waiting made steps of the tiny model ~20x slower; so ``auto`` uses one
        thread below ``SMALL_MODEL_PARAMETERS``."""
        if not self.cpu_involved:
            return
        threads = self.options.cpu_threads
        if threads == 0 and sum(p.numel() for p in self.model.parameters()) < SMALL_MODEL_PARAMETERS:
            threads = 1
        if threads:
            torch.set_num_threads(threads)

    def _load_model(self):  # -> (tokenizer, model)
        name = self.config.model.model
        path = resolve_model_path(name)
        tokenizer = load_tokenizer(name, path)
        model = load_causal_lm(name, path, self._model_kwargs())
        model.to(self.train_device)
        if self.full_finetune:
            model.requires_grad_(True)
        else:
            model = self._add_lora(model)
        if self.options.gradient_checkpointing:
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:  # transformers before 5.x
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
        model.train()
        return tokenizer, model

    def _model_kwargs(self) -> dict[str, object]:
        kwargs: dict[str, object] = {"dtype": self.train_dtype}
        attn = attention_implementation(self.config.inference.attention_kernel)
        if attn is not None:
            kwargs["attn_implementation"] = attn
        return kwargs

    def _add_lora(self, model: torch.nn.Module) -> torch.nn.Module:
        from peft import LoraConfig, get_peft_model

        lora = LoraConfig(
            r=self.config.model.lora_rank,
            lora_alpha=self.config.lora_alpha,
            lora_dropout=self.config.lora.dropout,
            target_modules=LORA_TARGETS,
            task_type="CAUSAL_LM",
        )
        # LoRA's A matrices are drawn at random: seed them so a run is reproducible.
        with torch.random.fork_rng(devices=[self.train_device] if self.train_device.type == "cuda" else []), \
                warnings.catch_warnings():
            # PEFT reads a property that transformers 5 renamed; the warning is not ours to act on.
            warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
            torch.manual_seed(max(self.seed, 0))
            return get_peft_model(model, lora)

    # ------------------------------------------------------------------------ protocol

    def encode_prompt(self, messages: tuple[Message, ...]) -> list[int]:
        text = self.tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=True)
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def publish(self, kind: PolicyKind, directory: Path) -> PolicyRef:
        """The current weights as ``kind``: the live model (``in_process``), or a PEFT
        adapter / full model folder ``directory/policy_v<version>`` written atomically."""
        version = self.policy_version
        if kind == "in_process":
            return PolicyRef(version, kind, in_process=InProcessPolicy(self.model, self.tokenizer, self.weights_lock,
                                                                       lambda: self.policy_version))
        wanted = "full_weights" if self.full_finetune else "lora_adapter"
        if kind != wanted:
            raise BackendError(f"the local backend cannot publish {kind} with [model] lora_rank = "
                               f"{self.config.model.lora_rank}; it publishes {wanted} and in_process")
        path = Path(directory) / f"policy_v{version}"
        self.save_adapter(path)
        return PolicyRef(version, kind, location=str(path.resolve()))

    def train_step(self, batch: TrainBatch) -> TrainResult:
        start = time.perf_counter()
        if self.train_device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.train_device)
        num_tokens = float(np.asarray(batch.loss_mask_N_T).sum())
        if num_tokens == 0:
            return self._skip(start, LossStats(), float("nan"), float("nan"), nonfinite=False)
        with self.weights_lock:
            self.model.train()
            self.optimizer.zero_grad(set_to_none=True)
            loss, stats, finite = self._accumulate_gradients(batch, num_tokens)
            if not finite:
                self.optimizer.zero_grad(set_to_none=True)
                return self._skip(start, stats, loss, float("nan"), nonfinite=True)
            max_norm = self.config.optimizer.grad_clip_norm or float("inf")
            grad_norm = float(torch.nn.utils.clip_grad_norm_([p for _, p in self.trainable], max_norm))
            if not np.isfinite(grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                return self._skip(start, stats, loss, grad_norm, nonfinite=True)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.policy_version += 1
        return TrainResult(loss=loss, metrics=self._metrics(start, stats, loss, grad_norm, skipped=False))

    def _accumulate_gradients(self, batch: TrainBatch, num_tokens: float) -> tuple[float, LossStats, bool]:
        """Forward and backward every micro-batch; returns (loss, stats, all finite)."""
        device = self.train_device
        prompt_index = torch.as_tensor(np.asarray(batch.prompt_index_N), dtype=torch.long)
        if len(batch.prompt_token_ids) == 0 or prompt_index.min() < 0 or prompt_index.max() >= len(batch.prompt_token_ids):
            raise BackendError(
                f"TrainBatch.prompt_index_N must index its {len(batch.prompt_token_ids)} prompts; "
                f"got values in [{int(prompt_index.min())}, {int(prompt_index.max())}]"
            )
        prompt_ids, prompt_mask = left_pad(batch.prompt_token_ids, self.pad_id, torch.device("cpu"))
        tokens = torch.as_tensor(np.asarray(batch.token_ids_N_T), dtype=torch.long)
        mask = torch.as_tensor(np.asarray(batch.mask_N_T), dtype=torch.bool)
        loss_mask = torch.as_tensor(np.asarray(batch.loss_mask_N_T), dtype=torch.bool)
        tokens = torch.where(mask, tokens, torch.full_like(tokens, self.pad_id))
        sampler_logp = torch.as_tensor(np.asarray(batch.sampler_logprobs_N_T), dtype=torch.float32)
        advantages = torch.as_tensor(np.asarray(batch.token_advantages_N_T), dtype=torch.float32)
        rows = tokens.shape[0]
        chunk = self.options.micro_batch_size or rows
        training = self.config.training
        total_loss = 0.0
        stats = LossStats()
        for begin in range(0, rows, chunk):
            part = slice(begin, min(begin + chunk, rows))
            logp = sequence_logprobs(
                self.model,
                prompt_ids.to(device),
                prompt_mask.to(device),
                prompt_index[part].to(device),
                tokens[part].to(device),
                mask[part].to(device),
                batch.temperature,
                share_prompts=not self.options.gradient_checkpointing,
            )
            loss, part_stats = policy_gradient_loss(
                logp,
                sampler_logp[part].to(device),
                advantages[part].to(device),
                loss_mask[part].to(device),
                num_tokens,
                training.clip_eps,
                training.clip_eps_high,
            )
            stats.add(part_stats)
            stats.passes += 1
            loss_value = float(loss.detach())
            total_loss += loss_value
            if not np.isfinite(loss_value):
                return total_loss, stats, False
            loss.backward()
        return total_loss, stats, True

    def _skip(self, start: float, stats: LossStats, loss: float, grad_norm: float, *, nonfinite: bool) -> TrainResult:
        if nonfinite:
            logger.warning("update skipped: non-finite loss (%s) or gradient norm (%s); weights unchanged", loss, grad_norm)
        self.skipped_updates += 1
        metrics = self._metrics(start, stats, loss, grad_norm, skipped=True)
        return TrainResult(loss=loss, metrics=metrics, skipped=True)

    def _metrics(self, start: float, stats: LossStats, loss: float, grad_norm: float, *, skipped: bool) -> dict[str, float]:
        tokens = stats.tokens
        return {
            "loss": loss,
            "grad_norm": grad_norm,
            "ratio_mean": stats.ratio_sum / tokens if tokens else float("nan"),
            "ratio_max": stats.ratio_max if tokens else float("nan"),
            "sampler_logprob_diff_mean": stats.logprob_diff_sum / tokens if tokens else float("nan"),
            "sampler_logprob_diff_max": stats.logprob_diff_max if tokens else float("nan"),
            "clip_fraction": stats.clipped_tokens / tokens if tokens else 0.0,
            "trained_tokens": tokens,
            "train_passes": float(stats.passes),
            "model_parameters": float(self.parameter_count),
            "train_time_s": time.perf_counter() - start,
            "peak_memory_mb": self._peak_memory_mb(),
            "skipped_updates": float(self.skipped_updates),
        }

    def _peak_memory_mb(self) -> float:
        if self.train_device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.train_device) / 2**20
        # Linux reports ru_maxrss in KiB: the process's peak resident memory.
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    # ----------------------------------------------------------------------- saving

    def save_adapter(self, path: Path) -> None:
        with self.weights_lock:
            save_weights(self.model, self.tokenizer, Path(path))

    def save_state(self, directory: Path) -> None:
        state = {
            "format": STATE_FORMAT,
            "model": self.config.model.model,
            "lora_rank": self.config.model.lora_rank,
            "trainable": {name: param.detach().cpu().clone() for name, param in self.trainable},
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "policy_version": self.policy_version,
            "skipped_updates": self.skipped_updates,
        }
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        # Written beside its final name and renamed, so a crash leaves the old state or the new.
        handle, temp_name = tempfile.mkstemp(prefix=f".{STATE_FILE}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(handle, "wb") as stream:
                torch.save(state, stream)
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temp_name, directory / STATE_FILE)
        finally:
            Path(temp_name).unlink(missing_ok=True)

    def load_state(self, directory: Path) -> None:
        file = Path(directory) / STATE_FILE
        if not file.is_file():
            raise BackendError(f"no local backend state in {directory} (expected {STATE_FILE}); resume from a run's log_dir")
        state = read_state(file)
        if state.get("format") != STATE_FORMAT:
            raise BackendError(f"{file} has state format {state.get('format')}; this retrain reads format {STATE_FORMAT}")
        if state["model"] != self.config.model.model or state["lora_rank"] != self.config.model.lora_rank:
            raise BackendError(
                f"{file} was saved for model {state['model']!r} with lora_rank {state['lora_rank']}, but the config has "
                f"{self.config.model.model!r} with lora_rank {self.config.model.lora_rank}; resume with the same [model]"
            )
        saved = state["trainable"]
        names = [name for name, _ in self.trainable]
        if sorted(saved) != sorted(names):
            raise BackendError(f"{file} holds different trainable weights than this model; resume with the same config")
        with self.weights_lock, torch.no_grad():
            for name, param in self.trainable:
                param.copy_(saved[name])
        self.optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        self.policy_version = int(state["policy_version"])
        self.skipped_updates = int(state["skipped_updates"])



def release_memory() -> None:
    """Give cached GPU memory back once a trainer's model is no longer referenced."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def read_state(file: Path) -> dict:
    """The dict ``save_state`` wrote to ``file``; an unreadable file is a ``BackendError``."""
    fix = "resume from another checkpoint, or start the run afresh without resuming"
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError) as exc:
        # Garbage bytes fail to unpickle, a truncated file fails in torch's zip reader, an
        # empty one ends at once.
        raise BackendError(f"{file} is corrupt or truncated and cannot be read ({type(exc).__name__}: {exc}); {fix}") from exc
    if not isinstance(state, dict):
        raise BackendError(f"{file} holds a {type(state).__name__}, not local backend state; {fix}")
    return state


def check_devices(config: Config) -> list[str]:
    """The parsed ``[backend] devices``; a GPU this machine does not have is a
    ``ConfigError`` (the devices' syntax was checked with the config)."""
    devices = parse_devices(config.backend.devices)
    for device in devices:
        if not device.startswith("cuda"):
            continue
        if not torch.cuda.is_available():
            raise ConfigError(ConfigIssue(
                "", "backend", "devices",
                f"{config.backend.devices!r} asks for a GPU, but this PyTorch sees no CUDA device "
                f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'no'})",
                "set devices = \"cpu\", or install a CUDA build of PyTorch on a machine with a GPU",
            ))
        index = int(device.split(":")[1])
        if index >= torch.cuda.device_count():
            raise ConfigError(ConfigIssue(
                "", "backend", "devices", f"{device} does not exist: {torch.cuda.device_count()} CUDA device(s) visible",
                f"use an index below {torch.cuda.device_count()}",
            ))
    return devices
