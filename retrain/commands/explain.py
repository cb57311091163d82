"""``retrain explain [CONFIG] [--setting value ...] [--json] [--changed]``.

Validates a config exactly as a run would (file, environment, flags, cross-field rules,
plugin resolution) without loading any model, then prints every resolved setting grouped
by section, marking what differs from the defaults and where it was set.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

from retrain.config.flags import parse_run_args
from retrain.config.loader import DEFAULT_CONFIG, Override, ResolvedConfig, resolve_config
from retrain.config.reference import toml_literal
from retrain.config.schema import SECTION_FIELDS, Config
from retrain.config.snapshot import config_to_dict

if TYPE_CHECKING:
    from retrain.credit.stages import Stage
    from retrain.plan import RunPlan

DESCRIPTION = "validate a config and show what it resolves to, loading no model"

HELP = """usage: retrain explain [CONFIG] [--setting value ...] [--json] [--changed]

Validate CONFIG (default ./retrain.toml) with any overrides, exactly as a run
would, without loading a model, and print the resolved settings by section.
Settings that differ from the defaults are marked with '*' and say where they
were set (file:line, env VAR or CLI flag).

options:
  --json      print one JSON object instead of text
  --changed   show only settings that differ from the defaults
"""

COMMAND_OPTIONS = {"--json": False, "--changed": False, "--help": False, "-h": False}


def main(argv: list[str]) -> int:
    if "-h" in argv or "--help" in argv:
        print(HELP)
        return 0
    args = parse_run_args(argv, COMMAND_OPTIONS)
    resolved = resolve_config(args.config or DEFAULT_CONFIG, args.overrides)
    from retrain.plan import plan_run

    run_plan = plan_run(resolved)
    plan = run_plan.describe()
    campaign = campaign_runs(resolved, args.overrides)
    if args.options.get("--json"):
        extra = {"campaign": campaign} if campaign is not None else {}
        json.dump({**explain_json(resolved), "run": plan, **extra}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        sys.stdout.write(explain_text(resolved, only_changed=bool(args.options.get("--changed")),
                                      color=sys.stdout.isatty()))
        sys.stdout.write(run_graph_text(run_plan))
        if campaign is not None:
            runs = campaign["runs"]
            assert isinstance(runs, list)
            sys.stdout.write(f"\ncampaign {campaign['name']}: {len(runs)} runs, each valid and planned, in "
                             f"{campaign['directory']}: {', '.join(runs)}\n")
    return 0


def campaign_runs(resolved: ResolvedConfig, overrides: list[Override]) -> dict[str, object] | None:
    """For a campaign file, every run resolved and planned as ``retrain`` would (a
    ``ConfigError`` names each run's problems); None for a plain config."""
    from retrain.campaign import is_campaign_file, plan_campaign
    from retrain.plan import plan_run

    if resolved.path is None or not is_campaign_file(resolved.path):
        return None
    campaign = plan_campaign(resolved.path, overrides)
    for run in campaign.runs:
        plan_run(run.resolved)
    return {"name": campaign.name, "directory": str(campaign.directory), "runs": [run.name for run in campaign.runs]}


def run_graph_text(plan: RunPlan) -> str:
    """The resolved components and credit pipeline, one line per stage, in step order."""
    from retrain.credit.cores import AlgorithmCore
    from retrain.credit.stages import params_view

    lines = ["", "run graph (one step, in order):"]

    def component(kind: str, label: str) -> None:
        if kind in plan.origins:
            origin = plan.origins[kind]
            lines.append(f"  {label:<12} {origin.name}  ({origin.origin})")

    component("data", "prompts")
    component("engine", "engine")
    component("reward", "reward")
    component("planning", "planning")
    credit = plan.credit
    lines.append(_stage_line("uncertainty", credit.uncertainty, show_params=False))
    if isinstance(credit.core, AlgorithmCore):
        lines.append(_stage_line("algorithm", credit.core.algorithm, show_params=True))
    else:
        core = credit.core
        lines.append(_stage_line("advantage", core.advantage, show_params=True))
        chain = " -> ".join(f"{stage.resolved.name}{_params(params_view(stage.params))}" for stage in core.stages)
        transform = core.transform.resolved
        lines.append(f"  {'transforms':<12} {chain or 'none'}  ({transform.name}, {transform.origin})"
                     f"{_described(core.transform)}")
    if credit.rho:
        lines.append(f"  {'masking':<12} keep the top {credit.rho} most uncertain tokens per group")
    component("backend", "backend")
    lines.append(f"  {'publish':<12} {plan.publication}: the backend publishes each update, the engine loads it")
    for dotted, flag in plan.engine_capabilities.server_settings:
        section, _, key = dotted.partition(".")
        value = getattr(getattr(plan.config, section), key)
        lines.append(f"  {'server-side':<12} [{section}] {key} = {json.dumps(value)}: set on the server ({flag}); "
                     "checked against what it reports when the run starts")
    lines.append("  probe        a synthetic batch went through the credit pipeline: ok")
    return "\n".join(lines) + "\n"


def _stage_line(label: str, stage: Stage, show_params: bool) -> str:
    from retrain.credit.stages import params_view

    params = params_view(stage.params) if show_params else None
    return (f"  {label:<12} {stage.resolved.name}  ({stage.resolved.origin})"
            + (f" params {params}" if params else "") + _described(stage))


def _described(stage: Stage) -> str:
    """The stage's one-line description (its docstring's first line), when it has one."""
    from retrain.credit.stages import description_of

    description = description_of(stage.resolved)
    return f" — {description}" if description else ""


def _params(params: object) -> str:
    if not isinstance(params, dict) or not params:
        return ""
    return "(" + ", ".join(f"{key}={value}" for key, value in params.items()) + ")"


def _rows(resolved: ResolvedConfig) -> dict[str, list[tuple[str, object, object, str]]]:
    """section -> [(key, value, default, source)] with secrets redacted."""
    values = config_to_dict(resolved.config)
    defaults = config_to_dict(Config())
    rows: dict[str, list[tuple[str, object, object, str]]] = {}
    for section, table in values.items():
        rows[section] = []
        for spec in SECTION_FIELDS[section]:
            value = table[spec.toml_key]
            default = defaults.get(section, {}).get(spec.toml_key, spec.default)
            rows[section].append((spec.toml_key, value, default, resolved.sources.get((section, spec.toml_key), "")))
    return rows


def explain_json(resolved: ResolvedConfig) -> dict[str, object]:
    settings = {
        section: {
            key: {"value": value, "default": default, "changed": value != default, "source": source or "default"}
            for key, value, default, source in rows
        }
        for section, rows in _rows(resolved).items()
    }
    return {
        "config": str(resolved.path) if resolved.path else None,
        "valid": True,
        "warnings": [str(warning) for warning in resolved.warnings],
        "settings": settings,
    }


def explain_text(resolved: ResolvedConfig, only_changed: bool = False, color: bool = False) -> str:
    bold, reset = ("\033[1;33m", "\033[0m") if color else ("", "")
    lines = [f"{resolved.path or '(no file)'}: valid", ""]
    changed_count = 0
    for section, rows in _rows(resolved).items():
        shown = [row for row in rows if not only_changed or row[1] != row[2]]
        if not shown:
            continue
        lines.append(f"[{section}]")
        width = max(len(key) for key, *_ in shown)
        for key, value, default, source in shown:
            changed = value != default
            changed_count += changed
            text = f"{key.ljust(width)} = {toml_literal(value)}"
            if changed:
                where = f"  # {source}" if source else ""
                lines.append(f"* {bold}{text}{reset}{where}")
            else:
                lines.append(f"  {text}")
        lines.append("")
    lines.append(f"{changed_count} setting(s) differ from the defaults (marked *).")
    lines.extend(f"warning: {warning}" for warning in resolved.warnings)
    return "\n".join(lines) + "\n"

