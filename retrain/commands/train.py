"""``retrain [train] [CONFIG] [--setting value ...]``: train with a config.

The config (default ./retrain.toml) is loaded with every overlay and checked completely,
every plugin is resolved, and only then is a model loaded. A file with a ``[campaign]``
table runs its campaign (``--print-commands`` prints one command per pending run,
``--campaign-run NAME`` runs one); a file whose ``[squeeze]`` names an ``adapter_path``
(and has no ``[campaign]``) analyses that adapter instead of training.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from retrain.config.flags import TABLE_FLAGS, parse_run_args, short_flag
from retrain.config.loader import DEFAULT_CONFIG, Override, resolve_config
from retrain.config.schema import SECTION_FIELDS
from retrain.errors import RetrainError

DESCRIPTION = "train with a config (the default: `retrain config.toml`)"

COMMAND_OPTIONS = {"--help": False, "-h": False, "--print-commands": False, "--campaign-run": True}

def flags_help() -> str:
    """Every setting flag, grouped by section."""
    lines = [
        "usage: retrain [train] [CONFIG] [--setting value ...]",
        "",
        f"Train with CONFIG (default ./{DEFAULT_CONFIG}). Any setting can be given as --flag value or",
        "--flag=value (values are TOML literals: 1e-4, true, \"text\", [1, 2]); --section.key value",
        "works for every setting. Resume a run with --resume LOG_DIR.",
        "",
    ]
    for section, specs in SECTION_FIELDS.items():
        if section == "campaign":
            continue
        lines.append(f"[{section}]")
        for spec in specs:
            if isinstance(spec.default, dict):
                continue
            lines.append(f"  {short_flag(spec):<34} {spec.help}")
        lines.append("")
    lines.append("tables (repeatable):")
    for flag, (section, key) in TABLE_FLAGS.items():
        lines.append(f"  {flag + ' k=v':<34} an entry of [{section}.{key}]")
    return "\n".join(lines)

def default_config(overrides: list[Override]) -> str:
    """``--resume DIR`` without a config file reuses the run's own snapshot."""
    resume = [override.raw for override in overrides if override.path == ("resume", "from")]
    if not resume:
        return DEFAULT_CONFIG
    snapshot = Path(resume[-1]) / "config.toml"
    if not snapshot.is_file():
        raise RetrainError(f"cannot resume: {snapshot} does not exist — give --resume the log_dir of an earlier run "
                           "(it holds config.toml and trainer_state.json)")
    return str(snapshot)


def _number(value: object) -> str:
    """A metric for the summary line: three decimals, or three significant digits when
    that would take more than a line (a reward of 1e300)."""
    if not isinstance(value, (int, float)):
        return "n/a"
    return f"{value:.3f}" if abs(value) < 1e6 else f"{value:.3e}"


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(flags_help())
        return 0
    args = parse_run_args(argv, COMMAND_OPTIONS)
    # retrain draws its own progress line; the hub's per-file bars would interleave with it.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    path = args.config or default_config(args.overrides)
    from retrain.campaign import is_campaign_file

    if is_campaign_file(path):
        return campaign_main(path, args.overrides, args.options)
    if args.options:
        raise RetrainError(f"{' and '.join(args.options)} only apply to a campaign file (one with a [campaign] "
                           f"table); {path} has none")
    resolved = resolve_config(path, args.overrides)
    from retrain.config.schema import SqueezeConfig

    if resolved.config.squeeze != SqueezeConfig() and not resolved.config.squeeze.adapter_path:
        raise RetrainError(f"{path} has a [squeeze] section but no adapter_path: a training run does not squeeze — "
                           "set [squeeze] adapter_path to analyse an adapter, or put [squeeze] in a campaign file "
                           "(it squeezes the first finished run), or remove it")
    if resolved.config.squeeze.adapter_path:
        from retrain.commands.squeeze import run_squeeze

        run_squeeze(resolved.config)
        return 0
    from retrain.run import run_training

    # The config's own warnings and its components' (found while planning) come together,
    # before any model loads.
    summary = run_training(resolved, warn=lambda warning: print(f"retrain: warning: {warning}", file=sys.stderr))
    row = summary.last_row
    metrics = summary.log_dir / "metrics.jsonl"
    if not metrics.exists():
        # Deleted while the run ran: saying where to find it would be a lie.
        raise RetrainError(f"the run ended, but {metrics} no longer exists (deleted while it ran) — run it again")
    if not row:
        # A resumed run whose max_steps it had already reached: nothing was trained.
        print(f"nothing to train: {summary.log_dir} already has {summary.steps} steps — give --max-steps larger "
              f"than {summary.steps} to continue it")
    else:
        print(f"finished {summary.steps} steps: reward_mean {_number(row.get('reward_mean'))}, "
              f"correct_rate {_number(row.get('correct_rate'))}")
    print(f"  adapter:  {summary.final_adapter}")
    print(f"  logs:     {summary.log_dir}")
    print(f"  metrics:  {metrics}")
    return 0


def campaign_main(path: str, overrides: list[Override], options: dict[str, str | bool]) -> int:
    from retrain.campaign import plan_campaign
    from retrain.campaign_runner import print_commands, run_all, run_one

    campaign = plan_campaign(path, overrides)
    if options.get("--print-commands"):
        return print_commands(campaign)
    name = options.get("--campaign-run")
    if isinstance(name, str):
        return run_one(campaign, name)
    return run_all(campaign)
