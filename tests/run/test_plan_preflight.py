"""``retrain explain`` finds what a run would otherwise only find after loading its model:
missing data files, optional packages, a custom reward module, malformed planning grams —
each as a ``file:line [section].key`` error (exit 2), with no model loaded."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def explain(config: Path, *flags: str, cwd: Path, blocked_module: str = "") -> subprocess.CompletedProcess[str]:
    # A module set to None in sys.modules cannot be imported: as if it were not installed.
    code = (f"import sys\nif {blocked_module!r}: sys.modules[{blocked_module!r}] = None\n"
            "from retrain.cli import main\nsys.exit(main(sys.argv[1:]))")
    return subprocess.run([sys.executable, "-c", code, "explain", str(config), *flags], cwd=cwd,
                          capture_output=True, text=True, check=False)


@pytest.mark.parametrize(("text", "blocked", "expected"), [
    ('[data]\nsource = "jsonl"\npath = "nope.jsonl"\n', "", ":3 [data].path: nope.jsonl is not a file"),
    ('[logging]\nwandb_project = "p"\n', "wandb", ":2 [logging].wandb_project: wandb logging needs the Python "
                                                   "package 'wandb'"),
    ('[reward]\ntype = "math"\n', "math_verify", ":2 [reward].type: type = \"math\" needs the Python package"),
    ('[algorithm]\ntransform_mode = "gtpo_hicra"\n[planning]\ndetector = "semantic"\n', "sentence_transformers",
     ":4 [planning].detector: detector = \"semantic\" needs"),
    ('[algorithm]\ntransform_mode = "gtpo_sepa"\n[logging]\nstrategic_grams = "[\\"wait\\""\n', "",
     ":4 [logging].strategic_grams: not a valid JSON array"),
    ('[reward]\ntype = "custom"\ncustom_module = "no_such_rewards"\n', "", "no_such_rewards"),
])
def test_explain_reports_what_the_run_would_fail_on(tmp_path: Path, text: str, blocked: str, expected: str) -> None:
    config = tmp_path / "c.toml"
    config.write_text(text)
    result = explain(config, cwd=tmp_path, blocked_module=blocked)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert expected in result.stderr, result.stderr


def test_the_custom_reward_module_is_found_next_to_the_config(tmp_path: Path) -> None:
    project = tmp_path / "project"
    (project / "plugs").mkdir(parents=True)
    (project / "plugs" / "my_rewards.py").write_text(
        "def score(completion, reference):\n    return float(completion.strip() == reference)\n")
    config = project / "c.toml"
    config.write_text('[plugins]\nsearch_paths = ["plugs"]\n[reward]\ntype = "custom"\ncustom_module = "my_rewards"\n'
                      '[algorithm]\nadvantage_mode = "grpo"\ntransform_mode = "none"\n')
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    result = explain(config, "--json", cwd=elsewhere)
    assert result.returncode == 0, result.stderr
    assert str(project / "plugs" / "my_rewards.py") in result.stdout
    wrong = explain(config, "--reward.custom_function", "nope", cwd=elsewhere)
    assert wrong.returncode == 2 and "has no attribute 'nope'" in wrong.stderr, wrong.stderr


def test_components_report_their_own_settings_without_effect(tmp_path: Path) -> None:
    from retrain.config.loader import resolve_config
    from retrain.plan import plan_run

    config = tmp_path / "c.toml"
    config.write_text('[backend]\ndevices = "gpu:0"\n[backend.options]\ncpu_threads = 2\n[data]\nsource = "arithmetic"\n')
    resolved = resolve_config(config, environ={})
    assert resolved.warnings == []
    plan_run(resolved)
    assert [(w.section, w.key, w.where) for w in resolved.warnings] == [("backend.options", "cpu_threads", f"{config}:4")]


RUNNABLE = sorted([REPO / "retrain.toml", *REPO.glob("configs/*.toml"),
                   *(p for p in REPO.glob("retrain/templates/*.toml") if p.stem != "campaign")])


@pytest.mark.parametrize("path", RUNNABLE, ids=[str(p.relative_to(REPO)) for p in RUNNABLE])
def test_every_shipped_run_config_plans_without_warnings(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from retrain.config.loader import resolve_config
    from retrain.plan import plan_run

    monkeypatch.chdir(REPO)  # data paths in configs/ are relative to the repository
    resolved = resolve_config(path, environ={})
    assert resolved.warnings == []
    plan_run(resolved)


def test_every_run_of_the_shipped_campaigns_plans() -> None:
    from retrain.campaign import plan_campaign
    from retrain.plan import plan_run

    for path in [*REPO.glob("campaigns/*.toml"), REPO / "retrain/templates/campaign.toml"]:
        for run in plan_campaign(path).runs:
            assert plan_run(run.resolved).config.campaign.conditions == []


ENGINELESS_BACKEND = """
from retrain.types import BackendCapabilities


class EnginelessBackend:
    @classmethod
    def capabilities(cls, config):
        return BackendCapabilities(publishes=("remote",), reports_loss=True, preserves_token_advantages=True,
                                   exact_resume=True)

    def __init__(self, config): ...
    def encode_prompt(self, messages): ...
    def train_step(self, batch): ...
    def publish(self, kind, directory): ...
    def save_adapter(self, path): ...
    def save_state(self, directory): ...
    def load_state(self, directory): ...
    def close(self): ...
"""


def test_a_plugin_backend_is_held_to_its_capabilities_before_any_model_loads(tmp_path: Path) -> None:
    (tmp_path / "plugs").mkdir()
    (tmp_path / "plugs" / "engineless.py").write_text(ENGINELESS_BACKEND)
    config = tmp_path / "c.toml"
    config.write_text('[plugins]\nsearch_paths = ["plugs"]\n[backend]\nbackend = "engineless.EnginelessBackend"\n'
                      '[model]\nlora_rank = 0\n')
    result = explain(config, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "engine 'pytorch' loads in_process but backend 'engineless.EnginelessBackend' publishes remote" \
        in result.stderr
    assert "0 (full fine-tuning) is not supported by backend 'engineless.EnginelessBackend'" in result.stderr


def test_the_judge_reward_s_missing_api_key_is_found_by_explain(tmp_path: Path) -> None:
    import os

    config = tmp_path / "c.toml"
    config.write_text('[reward]\ntype = "judge"\njudge_model = "gpt-4o-mini"\n')
    env = {name: value for name, value in os.environ.items() if not name.startswith("OPENAI_")}
    result = subprocess.run([sys.executable, "-m", "retrain", "explain", str(config)], cwd=tmp_path, env=env,
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "env OPENAI_API_KEY [reward].type: the judge reward calls the OpenAI API" in result.stderr
    env["OPENAI_BASE_URL"] = "http://127.0.0.1:9/v1"  # another OpenAI-compatible server needs no key
    assert subprocess.run([sys.executable, "-m", "retrain", "explain", str(config)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=False).returncode == 0


def test_explain_reads_a_jsonl_file_through_and_names_its_bad_lines(tmp_path: Path) -> None:
    (tmp_path / "train.jsonl").write_text('{"prompt": "1+1=", "answer": "2"}\n{"prompt": "2+2="}\nnot json\n')
    config = tmp_path / "c.toml"
    config.write_text('[data]\nsource = "jsonl"\npath = "train.jsonl"\n')
    result = explain(config, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert "train.jsonl:2 [data].path" in result.stderr and "train.jsonl:3 [data].path" in result.stderr
