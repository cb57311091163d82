"""A corpus of malformed configs and flag lines: each must fail with a ConfigError or usage
error naming what is wrong, exit code 2 from the CLI, and no traceback.

Most cases are generated from the schema (a typo, a wrong type and an out-of-range or
bad-choice value for every setting); the hand-written ones cover syntax and structure.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from retrain.cli import main
from retrain.config.schema import ALL_FIELDS, SECTIONS, FieldSpec

BASE = '[backend]\ndevices = "cpu"\n'


@dataclass(frozen=True)
class Case:
    name: str
    toml: str | bytes | None  # None: no file (flags only, against a valid base file)
    flags: tuple[str, ...]
    expect: str  # must appear in the error output


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return repr(value)


def _typo(key: str) -> str:
    return key[:-1] if len(key) > 3 else key + "x"


def _wrong_type_literal(spec: FieldSpec) -> str:
    if spec.type is bool:
        return '"false"'  # a string is never a bool
    if spec.type is int:
        return "2.5"  # no float -> int truncation
    if spec.type is float:
        return '"0.5"'  # quoted numbers are strings
    if spec.type is str:
        return "12"
    if getattr(spec.type, "__origin__", None) is list:
        return '"not-a-list"'
    return "42"  # tables


def _bad_range_literal(spec: FieldSpec) -> str | None:
    if spec.type not in (int, float):
        return None
    if spec.ge is not None:
        value = spec.ge - 1
    elif spec.gt is not None:
        value = spec.gt - (1 if spec.type is int else 0.0)
    elif spec.le is not None:
        value = spec.le + 1
    elif spec.lt is not None:
        value = spec.lt
    else:
        return None
    return repr(int(value)) if spec.type is int else repr(float(value))


def _section_header(spec: FieldSpec) -> str:
    return f"[{spec.section}]\n"


def generated_cases() -> list[Case]:
    cases: list[Case] = []
    plain = [spec for spec in ALL_FIELDS if spec.section != "campaign" and not isinstance(spec.default, dict)]
    for spec in plain:
        key = spec.toml_key
        cases.append(Case(f"typo-key-{spec.dotted}", _section_header(spec) + f"{_typo(key)} = {_literal(spec.default)}\n",
                          (), _typo(key)))
        cases.append(Case(f"wrong-type-{spec.dotted}", _section_header(spec) + f"{key} = {_wrong_type_literal(spec)}\n",
                          (), key))
        bad = _bad_range_literal(spec)
        if bad is not None:
            cases.append(Case(f"out-of-range-{spec.dotted}", _section_header(spec) + f"{key} = {bad}\n", (), key))
        if spec.allowed_names():
            cases.append(Case(f"bad-choice-{spec.dotted}", _section_header(spec) + f'{key} = "no_such_choice"\n', (), key))
    for section in SECTIONS:
        cases.append(Case(f"typo-section-{section}", f"[{_typo(section)}]\nx = 1\n", (), _typo(section)))
    return cases


HAND_WRITTEN = [
    # TOML syntax
    Case("syntax-missing-value", "[training]\nlr =\n", (), ":2:"),
    Case("syntax-unclosed-string", '[model]\nmodel = "Qwen\n', (), ":2:"),
    Case("syntax-unclosed-table", "[training\nlr = 1\n", (), ":1:"),
    Case("syntax-duplicate-key", "[training]\nlr = 1e-4\nlr = 2e-4\n", (),
         ":3 [training].lr: duplicate key: also set on line 2 — keep one of them"),
    Case("syntax-duplicate-section", "[training]\nlr = 1e-4\n[training]\nseed = 1\n", (),
         ":3 [training]: duplicate table: also declared on line 1"),
    Case("syntax-bare-word", "[training]\nlr = fast\n", (), ":2:"),
    Case("syntax-trailing-garbage", "[training]\nlr = 1e-4 oops\n", (), ":2:"),
    Case("syntax-bad-escape", '[model]\nmodel = "a\\qb"\n', (), ":2:"),
    Case("syntax-array-unclosed", "[plugins]\nsearch_paths = [\"a\"\n", (), ":"),
    Case("syntax-key-without-equals", "[training]\nlr\n", (), ":2:"),
    Case("syntax-inline-table-newline", "[environment]\nargs = { a = 1,\n b = 2 }\n", (), ":2:"),
    # whole-file problems
    Case("empty-file", "", (), "empty"),
    Case("only-comments", "# nothing here\n\n", (), "empty"),
    Case("binary-garbage", bytes(range(256)) * 4, (), "UTF-8"),
    Case("nul-bytes", "[training]\x00\nlr = 1\n", (), "NUL"),
    Case("latin1-text", "[model]\nmodel = \"caf\xe9\"\n".encode("latin-1"), (), "UTF-8"),
    # structure
    Case("top-level-key", "lr = 1e-4\n", (), "lr"),
    Case("top-level-unknown", "frobnicate = 1\n", (), "frobnicate"),
    Case("section-as-value", 'training = "fast"\n', (), "training"),
    Case("key-in-wrong-section", "[optimizer]\nlr = 1e-4\n", (), "lr"),
    Case("unknown-subtable", "[training.extra]\nx = 1\n", (), "extra"),
    Case("options-not-table", '[backend]\noptions = "zmq"\n', (), "options"),
    Case("params-not-table", "[algorithm]\nparams = 3\n", (), "params"),
    Case("condition-not-table", "[campaign]\nconditions = [1, 2]\n", (), "conditions"),
    Case("condition-unknown-key", "[[campaign.conditions]]\nadvantage = \"grpo\"\n", (), "advantage"),
    Case("condition-bad-override", "[[campaign.conditions]]\noverrides = { \"training.lrr\" = 1 }\n", (), "training.lrr"),
    Case("condition-override-type", "[[campaign.conditions]]\noverrides = { \"training.seed\" = \"x\" }\n", (), "training.seed"),
    Case("duplicate-condition", "[[campaign.conditions]]\nname = \"a\"\n[[campaign.conditions]]\nname = \"a\"\n", (), "name"),
    Case("duplicate-seed", "[campaign]\nseeds = [1, 1]\n", (), "seeds"),
    Case("seeds-wrong-type", "[campaign]\nseeds = [1, \"2\"]\n", (), "seeds"),
    # values
    Case("string-false-bool", '[plugins]\nstrict = "false"\n', (), "strict"),
    Case("int-as-bool", "[inference]\nprefix_caching = 1\n", (), "prefix_caching"),
    Case("bool-as-int", "[training]\nbatch_size = true\n", (), "batch_size"),
    Case("float-batch", "[training]\nbatch_size = 4.0\n", (), "batch_size"),
    Case("huge-int", "[training]\nmax_steps = 100000000000000000000000000\n", (), "max_steps"),
    Case("huge-float", "[training]\nlr = 1e308\n", (), "lr"),
    Case("inf-float", "[training]\nlr = inf\n", (), "lr"),
    Case("nan-float", "[training]\ntemperature = nan\n", (), "temperature"),
    Case("negative-zero-temperature", "[training]\ntemperature = -0.0\n", (), "temperature"),
    Case("zero-lr", "[training]\nlr = 0\n", (), "lr"),
    Case("search-paths-not-strings", "[plugins]\nsearch_paths = [1, 2]\n", (), "search_paths"),
    Case("target-ranks-floats", "[squeeze]\ntarget_ranks = [1.5]\n", (), "target_ranks"),
    Case("env-args-bad-json", "[environment]\nprovider = \"verifiers\"\nid = \"x\"\nargs = \"{oops\"\n", (), "args"),
    Case("env-args-json-list", "[environment]\nprovider = \"verifiers\"\nid = \"x\"\nargs = \"[1]\"\n", (), "args"),
    Case("both-rho-names", "[algorithm]\nsurprisal_mask_rho = 0.1\nentropy_mask_rho = 0.2\n", (), "entropy_mask_rho"),
    Case("plugin-path-malformed", '[algorithm]\nadvantage_mode = "my..mod"\n', (), "advantage_mode"),
    Case("reward-dotted-path", '[reward]\ntype = "my.reward"\n', (), "type"),
    Case("devices-bad", '[backend]\ndevices = "tpu:0"\n', (), "devices"),
    Case("devices-three", '[backend]\ndevices = "gpu:0,gpu:1,gpu:2"\n', (), "devices"),
    Case("devices-empty-item", '[backend]\ndevices = "gpu:0,"\n', (), "devices"),
    # legacy keys
    Case("legacy-transport", '[backend]\nbackend = "prime_rl"\nprime_rl_transport = "zmq"\n', (), "prime_rl_transport"),
    Case("legacy-port", "[backend]\nprime_rl_zmq_port = 5555\n", (), "migrate-config"),
    Case("legacy-strict", "[backend]\nprime_rl_strict_advantages = true\n", (), "prime_rl_strict_advantages"),
    # backend options
    Case("prime-options-typo", '[backend]\nbackend = "prime_rl"\n[backend.options]\ntransprt = "zmq"\n', (), "transprt"),
    Case("prime-options-bad-transport", '[backend]\nbackend = "prime_rl"\n[backend.options]\ntransport = "http"\n', (), "transport"),
    Case("prime-options-port-range", '[backend]\nbackend = "prime_rl"\n[backend.options]\nzmq_port = 70000\n', (), "zmq_port"),
    Case("prime-not-shipped", '[backend]\nbackend = "prime_rl"\n[backend.options]\nstrict_advantages = false\n', (),
         "the backend 'prime_rl' is not part of this version"),
    Case("local-options-unknown", "[backend.options]\nturbo = true\n", (), "turbo"),
    # cross-field rules
    Case("engine-without-entropies", '[algorithm]\nuncertainty_kind = "shannon_entropy"\n[inference]\nengine = "vllm"\n'
         'url = "http://x"\n', (), "engine 'vllm' cannot return"),
    Case("server-engine-without-url", '[inference]\nengine = "sglang"\n', (), "no url is set"),
    Case("tinker-not-shipped", '[algorithm]\nuncertainty_kind = "shannon_entropy"\n[backend]\nbackend = "tinker"\n',
         (), "the backend 'tinker' is not part of this version"),
    Case("provider-needs-id", '[environment]\nprovider = "verifiers"\n', (), "id"),
    Case("id-without-provider", '[environment]\nid = "primeintellect/gsm8k"\n', (), "id"),
    Case("bad-provider", '[environment]\nprovider = "gym"\n', (), "provider"),
    Case("backpressure-min-max", "[backpressure]\nmin_batch_size = 10\nmax_batch_size = 2\n", (), "min_batch_size"),
    Case("custom-reward-no-module", '[reward]\ntype = "custom"\n', (), "custom_module"),
    Case("judge-no-model", '[reward]\ntype = "judge"\n', (), "judge_model"),
    Case("judge-model-unused", '[reward]\njudge_model = "gpt-4o-mini"\n', (), "judge_model"),
    Case("pytorch-with-url", '[inference]\nurl = "http://localhost:8000"\n', (), "url"),
    Case("base-url-not-tinker", '[model]\nbase_url = "https://tinker"\n', (), "base_url"),
    Case("jsonl-no-path", '[data]\nsource = "jsonl"\n', (), "path"),
    Case("arithmetic-with-path", '[data]\nsource = "arithmetic"\npath = "x.jsonl"\n', (), "path"),
    Case("clip-high-without-low", "[training]\nclip_eps_high = 0.3\n", (), "clip_eps_high"),
    Case("algorithm-and-advantage", '[algorithm]\nalgorithm_mode = "maxrl_gtpo"\nadvantage_mode = "grpo"\n', (), "advantage_mode"),
    Case("params-without-algorithm", "[algorithm.params]\nalpha = 0.1\n", (), "params"),
    Case("compress-without-output", "[squeeze]\ncompress_to = 8\n", (), "compress_to"),
    # flag lines (against a valid base file)
    Case("flag-unknown", None, ("--learning-rate", "1e-4"), "--learning-rate"),
    Case("flag-typo", None, ("--batchsize", "4"), "--batch-size"),
    Case("flag-missing-value-end", None, ("--lr",), "--lr"),
    Case("flag-missing-value-before-flag", None, ("--lr", "--seed", "1"), "--lr"),
    Case("flag-wrong-type", None, ("--batch-size", "four"), "batch_size"),
    Case("flag-float-for-int", None, ("--batch-size", "4.5"), "batch_size"),
    Case("flag-out-of-range", None, ("--group-size", "0"), "group_size"),
    Case("flag-bad-choice", None, ("--advantage-mode", "ppo"), "advantage_mode"),
    Case("flag-inline-bad", None, ("--lr=abc",), "lr"),
    Case("flag-bool-string", None, ("--strict", "maybe"), "maybe"),
    Case("flag-table-no-equals", None, ("--advantage-param", "scale"), "--advantage-param"),
    Case("flag-table-empty-key", None, ("--backend-opt", "=1"), "--backend-opt"),
    Case("flag-backend-opt-unknown", None, ("--backend-opt", "turbo=1"), "turbo"),
    Case("flag-dotted-unknown-section", None, ("--trainin.lr", "1"), "--trainin.lr"),
    Case("flag-dotted-unknown-key", None, ("--training.lrr", "1"), "--training.lrr"),
    Case("flag-second-positional", None, ("other.toml",), "other.toml"),
    Case("flag-single-dash", None, ("-lr", "1"), "-lr"),
    Case("flag-huge", None, ("--max-steps", "9" * 40), "max_steps"),
    Case("flag-nan", None, ("--lr", "nan"), "lr"),
    Case("flag-resume-missing", None, ("--resume",), "--resume"),
    Case("flag-devices-bad", None, ("--devices", "gpu"), "devices"),
    Case("flag-legacy-option", None, ("--backend.prime_rl_transport", "zmq"), "prime_rl_transport"),
]


ALL_CASES = generated_cases() + HAND_WRITTEN


def test_the_corpus_is_large() -> None:
    assert len(ALL_CASES) >= 150


def _run_case(case: Case, tmp_path: Path) -> list[str]:
    config = tmp_path / "bad.toml"
    if case.toml is None:
        config.write_text(BASE)
    elif isinstance(case.toml, bytes):
        config.write_bytes(case.toml)
    else:
        config.write_text(case.toml)
    return ["explain", str(config), *case.flags]


@pytest.mark.parametrize("case", ALL_CASES, ids=[case.name for case in ALL_CASES])
def test_malformed_input_is_a_clean_error(case: Case, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = _run_case(case, tmp_path)
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert case.expect in captured.err, captured.err
    assert "Traceback" not in captured.err


SUBPROCESS_SAMPLE = ["syntax-duplicate-key", "binary-garbage", "flag-typo", "legacy-transport", "wrong-type-training.lr",
                     "flag-missing-value-end", "empty-file", "engine-without-entropies"]


@pytest.mark.parametrize("name", SUBPROCESS_SAMPLE)
def test_real_cli_exits_2_without_traceback(name: str, tmp_path: Path) -> None:
    case = next(case for case in ALL_CASES if case.name == name)
    argv = _run_case(case, tmp_path)
    result = subprocess.run([sys.executable, "-m", "retrain", *argv], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2
    assert case.expect in result.stderr
    assert "Traceback" not in result.stderr


def test_debug_variable_shows_the_traceback(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[training]\nlr = 'x'\n")
    result = subprocess.run([sys.executable, "-m", "retrain", "explain", str(config)], capture_output=True, text=True,
                            env={"RETRAIN_DEBUG": "1", "PATH": "/usr/bin:/bin"}, cwd=tmp_path)
    assert result.returncode != 0
    assert "Traceback" in result.stderr and "ConfigError" in result.stderr
