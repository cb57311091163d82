"""The configuration schema: one frozen dataclass per TOML section.

Every setting is declared exactly once, here, with its type, default, bounds or choices
and a one-line help. The strict loader, the CLI flags, ``retrain explain``, the
generated configuration reference, ``retrain init --template full`` and the
resolved-config snapshot are all derived from these declarations.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import get_type_hints

from retrain import registry_names
from retrain.config.declare import MAX_INT, TomlValue, setting

@dataclass(frozen=True)
class LocalOptions:
    """[backend.options] for backend = "local"."""

    gradient_checkpointing: bool = setting(False, "Recompute activations in the backward pass to save memory")
    micro_batch_size: int = setting(
        0, "Completions per forward/backward chunk; 0 = the whole batch at once", ge=0, le=MAX_INT
    )
    cpu_threads: int = setting(
        0, "Torch threads when training on the CPU; 0 = 1 for models under 10M parameters, else torch's default",
        ge=0, le=4096,
    )


@dataclass(frozen=True)
class TinkerOptions:
    """[backend.options] for backend = "tinker"."""

    api_key: str = setting("", "Tinker API key; empty = read TINKER_API_KEY from the environment", secret=True)
    loss_fn: str = setting(
        "importance_sampling",
        "Tinker loss function used for the policy-gradient step: {choices}",
        choices=("importance_sampling", "ppo"),
    )
    timeout_s: float = setting(600.0, "Seconds to wait for one Tinker request", gt=0, le=86400)


@dataclass(frozen=True)
class PrimeRLOptions:
    """[backend.options] for backend = "prime_rl"."""

    transport: str = setting("filesystem", "How batches reach the PRIME-RL trainer: {choices}",
                             choices=("filesystem", "zmq"))
    zmq_host: str = setting("localhost", "Trainer host when transport = \"zmq\"")
    zmq_port: int = setting(5555, "Trainer port when transport = \"zmq\"", ge=1, le=65535)
    zmq_hwm: int = setting(10, "ZeroMQ high-water mark (queued batches) when transport = \"zmq\"", ge=1, le=100000)
    strict_advantages: bool = setting(
        True, "Must stay true: per-token advantages are sent as-is, never silently aggregated"
    )
    sync_wait_s: float = setting(30.0, "Longest wait for the trainer's broadcast weights after a step", ge=0, le=86400)
    sync_poll_s: float = setting(0.2, "Polling interval while waiting for broadcast weights", gt=0, le=3600)


BACKEND_OPTIONS: dict[str, type] = {"local": LocalOptions, "tinker": TinkerOptions, "prime_rl": PrimeRLOptions}


@dataclass(frozen=True)
class BackendConfig:
    backend: str = setting(
        "local", "Training backend: {choices}; local trains in this process with PyTorch+PEFT",
        plugin_kind="backend",
    )
    devices: str = setting(
        "gpu:0", "Comma-separated devices (cpu, gpu:N, cuda:N); two devices = split mode (sample on first, train on last)"
    )
    adapter_path: str = setting(
        "/tmp/retrain_adapter", "Directory for adapter checkpoints; {log_dir} stands for [logging] log_dir"
    )
    options: dict[str, TomlValue] = setting({}, "Backend-specific options table, validated per backend")

    def __post_init__(self) -> None:
        # A built-in backend's options always hold every key (defaults filled in), so two
        # configs meaning the same thing compare equal however they were written.
        options_type = BACKEND_OPTIONS.get(self.backend)
        if options_type is not None:
            defaults = {spec.toml_key: spec.default for spec in fields_of(options_type, "backend.options")}
            object.__setattr__(self, "options", defaults | dict(self.options))


@dataclass(frozen=True)
class ModelConfig:
    model: str = setting(
        "Qwen/Qwen3-4B-Instruct-2507", "Hugging Face model id, local path, or retrain/tiny (built-in offline model)",
        flag="model",
    )
    base_url: str = setting("", "Tinker service URL (tinker backend only)", component_setting=True)
    lora_rank: int = setting(32, "LoRA rank; 0 = full fine-tuning (local backend only)", ge=0, le=65536)


@dataclass(frozen=True)
class AlgorithmConfig:
    algorithm_mode: str = setting(
        "", "Whole-pipeline algorithm used instead of the two settings below: {choices}; empty = those two",
        plugin_kind="algorithm",
    )
    advantage_mode: str = setting("maxrl", "Episode advantage: {choices}", plugin_kind="advantage")
    transform_mode: str = setting(
        "gtpo_sepa", "Token-level transform: {choices}",
        plugin_kind="transform",
    )
    uncertainty_kind: str = setting(
        "surprisal", "Per-token uncertainty: {choices}",
        plugin_kind="uncertainty",
    )
    surprisal_mask_rho: float = setting(
        0.0, "Keep token advantages only on the top-rho most uncertain tokens of each group; 0 disables",
        ge=0.0, le=1.0, aliases=("entropy_mask_rho",),
    )
    params: dict[str, TomlValue] = setting({}, "Parameters passed to the algorithm_mode plugin")
    advantage_params: dict[str, TomlValue] = setting({}, "Parameters passed to the advantage_mode plugin")
    transform_params: dict[str, TomlValue] = setting({}, "Parameters passed to the transform_mode plugin")


@dataclass(frozen=True)
class PluginsConfig:
    search_paths: list[str] = setting(
        ["plugins"], "Directories or module prefixes searched before a plain dotted import"
    )
    strict: bool = setting(True, "Abort on plugin load or output-shape errors; false repairs safe cases and warns")


@dataclass(frozen=True)
class TrainingConfig:
    seed: int = setting(-1, "RNG seed; -1 = no fixed seed", ge=-1, le=2**32 - 1)
    max_steps: int = setting(500, "Total training steps", ge=1, le=MAX_INT)
    batch_size: int = setting(8, "Prompts per step", ge=1, le=1_000_000)
    group_size: int = setting(16, "Completions sampled per prompt", ge=1, le=100_000)
    max_tokens: int = setting(10240, "Largest number of new tokens per completion", ge=1, le=10_000_000)
    temperature: float = setting(0.7, "Sampling temperature (also applied to the training logprobs)", gt=0.0, le=100.0)
    top_p: float = setting(1.0, "Nucleus sampling: keep the smallest token set with this much probability", gt=0.0, le=1.0)
    lr: float = setting(4e-5, "AdamW learning rate", gt=0.0, le=1.0)
    weight_decay: float = setting(0.0, "AdamW weight decay", ge=0.0, le=1.0)
    max_examples: int = setting(0, "Use at most this many dataset examples; 0 = all", ge=0, le=MAX_INT)
    save_every: int = setting(20, "Checkpoint every N steps (and at the end); 0 = only at the end", ge=0, le=MAX_INT)
    clip_eps: float = setting(0.0, "PPO-style lower clip of the importance ratio (1 - eps); 0 = no clipping", ge=0.0, lt=1.0)
    clip_eps_high: float = setting(
        0.0, "PPO-style upper clip (1 + eps_high); 0 = same as clip_eps", ge=0.0, le=100.0
    )
    dynamic_sampling: bool = setting(
        False, "Refill the batch with extra prompts when groups with identical rewards are dropped"
    )
    dynamic_sampling_max_rounds: int = setting(
        2, "Extra sampling rounds per step allowed for dynamic sampling", ge=1, le=1000
    )
    max_staleness: int = setting(
        0, "Policy versions a step's samples may lag behind: 0 = on-policy; k >= 1 samples up to k steps ahead "
        "while training", ge=0, le=1000,
    )


@dataclass(frozen=True)
class OptimizerConfig:
    beta1: float = setting(0.9, "AdamW beta1", ge=0.0, lt=1.0)
    beta2: float = setting(0.95, "AdamW beta2", ge=0.0, lt=1.0)
    eps: float = setting(1e-8, "AdamW epsilon", gt=0.0, le=1.0)
    grad_clip_norm: float = setting(1.0, "Clip the global gradient norm to this value; 0 = off", ge=0.0, le=1e6)


@dataclass(frozen=True)
class LoraConfig:
    alpha: int = setting(0, "LoRA alpha; 0 = 2 x rank", ge=0, le=1_000_000)
    dropout: float = setting(0.0, "LoRA dropout rate", ge=0.0, lt=1.0)


@dataclass(frozen=True)
class DataConfig:
    source: str = setting(
        "math", "Prompt source: {choices}; math is hendrycks MATH, arithmetic is generated offline",
        plugin_kind="data",
    )
    path: str = setting(
        "", "jsonl: the file to read; math: a local copy of the dataset instead of the hub; empty = none",
        input_path=True,
    )
    split: str = setting("train", "Dataset split to train on")
    shuffle: bool = setting(True, "Shuffle the examples (seeded by [training] seed)")


@dataclass(frozen=True)
class EnvironmentConfig:
    provider: str = setting("", "Environment provider: {choices}; empty = prompts from [data], scored by [reward]",
                            plugin_kind="environment")
    id: str = setting("", "Environment id, e.g. primeintellect/gsm8k")
    args: dict[str, TomlValue] = setting({}, "Environment keyword arguments: a TOML table or a JSON object string")
    max_turns: int = setting(-1, "Cap on turns for multi-turn environments; -1 = the environment's default", ge=-1, le=100_000)
    auto_install: bool = setting(False, "Install a missing Prime Hub environment before loading it")


@dataclass(frozen=True)
class PlanningConfig:
    detector: str = setting("regex", "Planning-token detector: {choices}", plugin_kind="planning")
    model: str = setting("all-MiniLM-L6-v2", "Sentence-transformers model for the semantic detector")
    threshold: float = setting(0.02, "Similarity margin above which a sentence counts as planning (semantic)", ge=-1.0, le=1.0)


@dataclass(frozen=True)
class GTPOConfig:
    beta: float = setting(0.1, "GTPO uncertainty weighting strength; 0 disables the weighting", ge=0.0, le=1000.0)


@dataclass(frozen=True)
class HICRAConfig:
    # a + alpha*|a| keeps the sign of a negative advantage only while alpha < 1.
    alpha: float = setting(0.2, "HICRA planning-token amplification; 0 disables it (must stay below 1)", ge=0.0, lt=1.0)


@dataclass(frozen=True)
class SEPAConfig:
    steps: int = setting(500, "Ramp length of the linear schedule (steps for lambda to go 0 -> 1)", ge=1, le=MAX_INT)
    schedule: str = setting("linear", "Lambda schedule: {choices}; auto also follows the decay of uncertainty variance",
                            choices=("linear", "auto"))
    delay_steps: int = setting(50, "Steps before the ramp begins", ge=0, le=MAX_INT)
    correct_rate_gate: float = setting(
        0.1, "Keep lambda at 0 until a batch's correct rate reaches this; stays open once reached", ge=0.0, le=1.0
    )
    ema_decay: float = setting(0.9, "auto schedule: EMA decay of the execution-token uncertainty variance", ge=0.0, lt=1.0)
    warmup_steps: int = setting(10, "auto schedule: steps observed before the reference variance is fixed", ge=1, le=MAX_INT)
    variance_threshold: float = setting(
        1.0, "auto schedule: lambda = 1 - min(var_ema / var_0 / threshold, 1)", gt=0.0, le=1000.0
    )


@dataclass(frozen=True)
class InferenceConfig:
    engine: str = setting(
        "pytorch", "Inference engine: {choices}; pytorch runs in this process",
        plugin_kind="engine",
    )
    url: str = setting("", "Server URL for an engine that serves over HTTP", component_setting=True)
    attention_kernel: str = setting(
        "default", "Attention implementation: {choices}", choices=("default", "flash", "triton", "tk", "cutlass")
    )
    dtype: str = setting("auto", "Inference dtype: {choices}", choices=("auto", "bf16", "fp8", "fp4"))
    kv_cache_dtype: str = setting("auto", "KV cache dtype: {choices}", choices=("auto", "bf16", "fp8", "int8"))
    prefix_caching: bool = setting(True, "Compute each prompt's KV cache once and share it across its group")
    served_model: str = setting("", "Model name the server serves; \"\" = the one it lists (HTTP engines)",
                                component_setting=True)
    api_key: str = setting("", "Bearer key for the server; \"\" = none (openai: OPENAI_API_KEY)", secret=True,
                           component_setting=True)
    request_timeout_s: float = setting(600.0, "Seconds one server request may take, retries included", gt=0, le=86400,
                               component_setting=True)
    max_requests_in_flight: int = setting(64, "Requests in flight at once to the server", ge=1, le=4096,
                                   component_setting=True)
    allow_stale_weights: bool = setting(False, "Keep sampling from the previous weights when a weight load fails "
                                        "(warned, counted as policy_staleness)", component_setting=True)


@dataclass(frozen=True)
class RewardConfig:
    type: str = setting("match", "Reward: {choices}", plugin_kind="reward")
    judge_model: str = setting("", "Model used by the judge reward, e.g. gpt-4o-mini")
    custom_module: str = setting("", "Module holding the custom reward function (type = \"custom\")")
    custom_function: str = setting("score", "Function name in custom_module")
    timeout_s: float = setting(120.0, "Seconds one reward call may take in all (a judge request with its retries, "
                               "one custom function call) before the run stops with an error naming it", gt=0, le=86400)
    max_concurrency: int = setting(16, "Completions scored at once (judge requests in flight, custom "
                                   "function calls in threads)", ge=1, le=1024)

    @property
    def plugin_name(self) -> str:
        """The registry name of this reward: the built-in ``type``, or for ``type =
        "custom"`` the user's function as the dotted path ``custom_module.custom_function``."""
        return f"{self.custom_module}.{self.custom_function}" if self.type == "custom" else self.type


@dataclass(frozen=True)
class BackpressureConfig:
    enabled: bool = setting(False, "Adapt the batch size with a Universal Scalability Law fit")
    warmup_steps: int = setting(10, "Steps measured before the USL model is fitted", ge=1, le=MAX_INT)
    ema_decay: float = setting(0.9, "EMA decay of the measured throughput", ge=0.0, lt=1.0)
    throttle_margin: float = setting(0.85, "Target this fraction of the optimal concurrency", gt=0.0, le=1.0)
    increase_margin: float = setting(0.5, "Hysteresis gap before the batch size grows", ge=0.0, le=1.0)
    min_batch_size: int = setting(1, "Smallest adaptive batch size", ge=1, le=1_000_000)
    max_batch_size: int = setting(64, "Largest adaptive batch size", ge=1, le=1_000_000)
    peak_gflops: float = setting(0.0, "Hardware peak GFLOP/s for roofline hints; 0 = no hints", ge=0.0, le=1e12)
    peak_bw_gb_s: float = setting(0.0, "Hardware peak memory bandwidth in GB/s for roofline hints", ge=0.0, le=1e9)


@dataclass(frozen=True)
class SqueezeConfig:
    min_variance_retention: float = setting(0.95, "Keep the smallest rank retaining this fraction of variance", gt=0.0, le=1.0)
    adapter_path: str = setting("", "Adapter to analyse (standalone squeeze); filled in by campaigns")
    source_rank: int = setting(0, "Rank of the adapter; 0 = read it from the adapter (another value must match it)",
                               ge=0, le=65536)
    target_ranks: list[int] = setting([], "Ranks to evaluate; [] = powers of two up to and including the source rank")
    output_path: str = setting("", "Write the compressed adapter here; empty = analyse only")
    compress_to: int = setting(0, "Rank to compress to; 0 = the recommended rank", ge=0, le=65536)
    device: str = setting("cpu", "Torch device for the SVDs")


@dataclass(frozen=True)
class ResumeConfig:
    from_: str = setting("", "Log directory (with trainer_state.json) to resume from", toml_key="from", flag="resume")


@dataclass(frozen=True)
class LoggingConfig:
    log_dir: str = setting("logs/train", "Directory for the config snapshot, JSONL logs and trainer state")
    wandb_project: str = setting("", "wandb project; setting it enables wandb")
    wandb_run_name: str = setting("", "wandb run name; empty = {advantage_mode}+{transform_mode}")
    wandb_entity: str = setting("", "wandb entity (team)")
    wandb_group: str = setting("", "wandb group")
    wandb_tags: str = setting("", "Comma-separated wandb tags")
    strategic_grams: str = setting("", "Planning grams for the regex detector: JSON array or comma list; empty = built-in")
    generations_per_step: int = setting(
        4, "Completions per step written to generations.jsonl; 0 = none", ge=0, le=MAX_INT
    )


@dataclass(frozen=True)
class CampaignCondition:
    name: str = setting("", "Condition name; empty = {advantage_mode}+{transform_mode}")
    algorithm_mode: str = setting("", "algorithm_mode for this condition; empty = the base config's")
    advantage_mode: str = setting("", "advantage_mode for this condition; empty = the base config's")
    transform_mode: str = setting("", "transform_mode for this condition; empty = the base config's")
    uncertainty_kind: str = setting("", "uncertainty_kind for this condition; empty = the base config's")
    overrides: dict[str, TomlValue] = setting({}, "Any other settings, as \"section.key\" = value (bare flag "
                                              "names such as lr = 1e-4 also work as keys of the condition)")


@dataclass(frozen=True)
class CampaignConfig:
    name: str = setting("", "Campaign name; empty = the TOML file's stem")
    seeds: list[int] = setting([], "Seeds to run every condition with; [] = [training] seed (42 when it is -1)")
    max_steps: int = setting(0, "Steps per run; 0 = [training] max_steps", ge=0, le=MAX_INT)
    parallel: bool = setting(False, "Run several runs at once, each in its own process")
    max_workers: int = setting(2, "Runs at once when parallel = true", ge=1, le=1024)
    stagger_seconds: float = setting(0.0, "Seconds between starting two parallel runs", ge=0.0, le=86400.0)
    reward_threshold: float = setting(0.9, "The summary's steps-to-threshold: first step whose 20-step mean "
                                      "reward reaches this", ge=-1e9, le=1e9)
    conditions: list[CampaignCondition] = setting([], "The conditions: one [[campaign.conditions]] table each; "
                                                  "[] = the five-condition ablation")


@dataclass(frozen=True)
class Config:
    """A whole retrain configuration."""

    backend: BackendConfig = field(default_factory=BackendConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    plugins: PluginsConfig = field(default_factory=PluginsConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    lora: LoraConfig = field(default_factory=LoraConfig)
    data: DataConfig = field(default_factory=DataConfig)
    environment: EnvironmentConfig = field(default_factory=EnvironmentConfig)
    planning: PlanningConfig = field(default_factory=PlanningConfig)
    gtpo: GTPOConfig = field(default_factory=GTPOConfig)
    hicra: HICRAConfig = field(default_factory=HICRAConfig)
    sepa: SEPAConfig = field(default_factory=SEPAConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    backpressure: BackpressureConfig = field(default_factory=BackpressureConfig)
    squeeze: SqueezeConfig = field(default_factory=SqueezeConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    campaign: CampaignConfig = field(default_factory=CampaignConfig)

    def backend_options(self) -> object:
        """The typed ``[backend.options]`` (``LocalOptions``, ``TinkerOptions``,
        ``PrimeRLOptions``) for a built-in backend; for a plugin backend, the raw table."""
        options_type = BACKEND_OPTIONS.get(self.backend.backend)
        if options_type is None:
            return dict(self.backend.options)
        return options_type(**self.backend.options)

    @property
    def lora_alpha(self) -> int:
        """Effective LoRA alpha: ``[lora] alpha``, or 2 x rank when it is 0."""
        return self.lora.alpha or 2 * self.model.lora_rank


# Fields whose TOML value is a free-form table (their keys are not checked here; the
# plugin or backend that receives them checks them).
FREE_TABLE_TYPES = (dict,)


@dataclass(frozen=True)
class FieldSpec:
    """Everything the loader, CLI and docs need to know about one setting."""

    section: str
    name: str
    toml_key: str
    type: object
    default: object
    help: str
    choices: tuple[str, ...] | None
    plugin_kind: str | None
    ge: float | None
    gt: float | None
    le: float | None
    lt: float | None
    secret: bool
    flag: str | None
    aliases: tuple[str, ...]
    component_setting: bool
    input_path: bool

    @property
    def dotted(self) -> str:
        return f"{self.section}.{self.toml_key}" if self.section else self.toml_key

    def allowed_names(self) -> tuple[str, ...]:
        """Built-in names for a registry-backed setting, or its fixed choices."""
        if self.plugin_kind is not None:
            names = tuple(registry_names.BUILTINS[self.plugin_kind])
            return ("",) + names if self.default == "" else names
        return self.choices or ()

    @property
    def accepts_dotted_path(self) -> bool:
        return self.plugin_kind in registry_names.DOTTED_PATH_KINDS

    def listed_choices(self) -> str:
        """The valid values as help texts and errors list them (``a, b or c``), in the
        order of their table; an empty value is described, never listed."""
        names = [name for name in self.allowed_names() if name]
        if self.accepts_dotted_path:
            names.append("a dotted plugin path")
        return ", ".join(names[:-1]) + " or " + names[-1] if len(names) > 1 else "".join(names)


def fields_of(cls: type, section: str) -> list[FieldSpec]:
    """The declared settings of one section dataclass, in declaration order."""
    hints = get_type_hints(cls)
    specs = []
    for f in dataclasses.fields(cls):
        meta = dict(f.metadata)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[operator]
        meta["toml_key"] = meta["toml_key"] or f.name
        spec = FieldSpec(section=section, name=f.name, type=hints[f.name], default=default, **meta)
        # A help text lists the valid values through {choices}, so it always shows the table's names.
        specs.append(dataclasses.replace(spec, help=spec.help.replace("{choices}", spec.listed_choices())))
    return specs


def section_types() -> dict[str, type]:
    """Section name -> dataclass, in the order sections appear in the reference."""
    hints = get_type_hints(Config)
    return {f.name: hints[f.name] for f in dataclasses.fields(Config)}


SECTIONS: dict[str, type] = section_types()
SECTION_FIELDS: dict[str, list[FieldSpec]] = {name: fields_of(cls, name) for name, cls in SECTIONS.items()}
ALL_FIELDS: list[FieldSpec] = [spec for specs in SECTION_FIELDS.values() for spec in specs]

# Legacy [backend] keys that `retrain migrate-config` moves into [backend.options].
LEGACY_BACKEND_PREFIX = "prime_rl_"
LEGACY_BACKEND_KEYS: dict[str, str] = {
    f"{LEGACY_BACKEND_PREFIX}{spec.name}": spec.name for spec in fields_of(PrimeRLOptions, "backend.options")
}
