"""The hendrycks MATH prompt source (retrain.data.math), on copies the tests write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from retrain.config.schema import Config, DataConfig, TrainingConfig
from retrain.data.math import (
    ANSWER_INSTRUCTION,
    SUBJECTS,
    MathSource,
    load_hub,
    rows_to_examples,
)
from retrain.errors import ConfigError

# Per subject: (problem, solution) rows; the reference is the last box, nested braces kept.
ROWS = {
    "intermediate_algebra": [("Solve x^2=4, x>0.", r"So $x = \boxed{2}$."),
                             ("Find f(1).", r"We get \boxed{3} first, then fix it: \boxed{\frac{1}{2}}")],
    "precalculus": [("Compute cos 0.", r"$\cos 0 = \boxed{1}$")],
    "number_theory": [("gcd(4, 6)?", r"The gcd is $\boxed{2}$."),
                      ("Units digit of 7^2?", r"It is \boxed{9}."),
                      ("No box here.", "The solution forgot its box: 5.")],
    "counting_and_probability": [("Pick 2 of 4.", r"$\binom{4}{2} = \boxed{6}$")],
    "geometry": [("Set of vertices?", r"\boxed{\{A, B\}}")],
}


def _rows(subject: str) -> list[dict[str, str]]:
    return [{"problem": problem, "solution": solution, "level": "Level 2", "type": subject.title()}
            for problem, solution in ROWS[subject]]


def _write_jsonl_copy(root: Path, split: str = "train") -> Path:
    for subject in SUBJECTS:
        (root / subject).mkdir(parents=True)
        (root / subject / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in _rows(subject)))
    return root


def _write_parquet_copy(root: Path, split: str = "train") -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for subject in SUBJECTS:
        (root / subject).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(_rows(subject)), root / subject / f"{split}-00000-of-00001.parquet")
    return root


def _config(path: Path | str, split: str = "train", max_examples: int = 0) -> Config:
    return Config(data=DataConfig(source="math", path=str(path), split=split),
                  training=TrainingConfig(max_examples=max_examples))


def test_local_jsonl_copy_round_robin_order_and_references(tmp_path):
    examples = MathSource(_config(_write_jsonl_copy(tmp_path / "math"))).examples()
    # Round robin over SUBJECTS: the first problem of each subject, then the second of
    # those that have one; number_theory's third row has no box and is skipped.
    assert [example.example_id for example in examples] == [
        "intermediate_algebra/train/0", "precalculus/train/0", "number_theory/train/0",
        "counting_and_probability/train/0", "geometry/train/0",
        "intermediate_algebra/train/1", "number_theory/train/1",
    ]
    assert [example.reference for example in examples] == ["2", "1", "2", "6", r"\{A, B\}", r"\frac{1}{2}", "9"]
    first = examples[0]
    assert first.messages == ({"role": "user", "content": "Solve x^2=4, x>0.\n\n" + ANSWER_INSTRUCTION},)
    assert first.metadata == {"subject": "intermediate_algebra", "level": "Level 2", "type": "Intermediate_Algebra"}


def test_local_parquet_copy_matches_jsonl_copy(tmp_path):
    from_parquet = MathSource(_config(_write_parquet_copy(tmp_path / "pq"))).examples()
    from_jsonl = MathSource(_config(_write_jsonl_copy(tmp_path / "js"))).examples()
    assert from_parquet == from_jsonl


def test_max_examples_keeps_every_subject(tmp_path):
    examples = MathSource(_config(_write_jsonl_copy(tmp_path / "math"), max_examples=5)).examples()
    assert [example.metadata["subject"] for example in examples] == list(SUBJECTS)


def test_split_and_relative_path(tmp_path):
    _write_jsonl_copy(tmp_path / "math", split="test")
    examples = MathSource(_config("math", split="test"), base_dir=tmp_path).examples()
    assert examples[0].example_id == "intermediate_algebra/test/0"
    with pytest.raises(ConfigError, match="no files for split \"train\""):
        MathSource(_config("math"), base_dir=tmp_path).examples()


def test_layout_and_column_errors(tmp_path):
    with pytest.raises(ConfigError, match="is not a directory"):
        MathSource(_config(tmp_path / "nowhere")).examples()
    partial = tmp_path / "partial"
    (partial / "geometry").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no folder for intermediate_algebra, precalculus"):
        MathSource(_config(partial)).examples()
    root = _write_jsonl_copy(tmp_path / "cols")
    (root / "geometry" / "train.jsonl").write_text(json.dumps({"question": "q", "solution": r"\boxed{1}"}) + "\n")
    with pytest.raises(ConfigError) as caught:
        MathSource(_config(root)).examples()
    assert "no text column 'problem'" in str(caught.value) and "[data].path" in str(caught.value)


def test_no_usable_problems_is_an_error(tmp_path):
    root = tmp_path / "nobox"
    for subject in SUBJECTS:
        (root / subject).mkdir(parents=True)
        (root / subject / "train.jsonl").write_text(json.dumps({"problem": "p", "solution": "no box"}) + "\n")
    with pytest.raises(ConfigError, match="no usable problems"):
        MathSource(_config(root)).examples()


def test_rows_to_examples_skips_empty_boxes():
    rows = {"geometry": [{"problem": "p", "solution": r"\boxed{ }"}, {"problem": "q", "solution": r"\boxed{3}"},
                         {"problem": "r", "solution": r"\boxed{ . }"}, {"problem": "s", "solution": r"\boxed{$ $}"}]}
    assert [example.example_id for example in rows_to_examples(rows, "train")] == ["geometry/train/1"]


def test_references_the_math_reward_cannot_parse_are_a_warning_when_the_data_loads(tmp_path, caplog):
    pytest.importorskip("math_verify")
    from retrain.config.schema import RewardConfig

    root = _write_jsonl_copy(tmp_path / "copy")
    # math-verify reads every other box of the copy, but not a lone dollar sign.
    (root / "geometry" / "train.jsonl").write_text(json.dumps({"problem": "p", "solution": r"\boxed{$}"}) + "\n")
    config = Config(data=DataConfig(source="math", path=str(root)), reward=RewardConfig(type="math"))
    with caplog.at_level("WARNING", logger="retrain.data.math"):
        examples = MathSource(config).examples()
    assert len(examples) == 7  # still used: the reward compares it as text
    assert (f"{root} [data].path: 1 of 7 examples has a reference math-verify cannot parse, which the math reward "
            "compares as text, as the match reward would: 'geometry/train/0'") in caplog.text


def _write_hub_repo(root: Path) -> Path:
    """A dataset repository laid out like the hub mirror: parquet per subject and a
    README whose YAML header declares one config per subject."""
    _write_parquet_copy(root)
    header = ["---", "configs:"]
    for subject in SUBJECTS:
        header += [f"- config_name: {subject}", "  data_files:", "  - split: train", f"    path: {subject}/train-*"]
    (root / "README.md").write_text("\n".join(header + ["---", ""]))
    return root


def test_hub_loader_reads_a_dataset_repository(tmp_path):
    repo = _write_hub_repo(tmp_path / "repo")
    rows = load_hub("train", repo=str(repo), cache_dir=str(tmp_path / "cache"))
    assert rows_to_examples(rows, "train") == MathSource(_config(repo)).examples()
    with pytest.raises(ConfigError, match="Unknown split"):
        load_hub("test", repo=str(repo), cache_dir=str(tmp_path / "cache"))
    with pytest.raises(ConfigError, match="is not on the hub or lacks this subject"):
        load_hub("train", repo=str(tmp_path / "no-such-repo"), cache_dir=str(tmp_path / "cache"))


def test_hub_without_network_or_cache_says_how_to_fix(tmp_path):
    # A fresh process with an empty Hugging Face cache and the hub offline: the real
    # loader must fail with the ConfigError that points at [data] path.
    script = (
        "from retrain.config.schema import Config\n"
        "from retrain.data.math import MathSource\n"
        "from retrain.errors import ConfigError\n"
        "try:\n"
        "    MathSource(Config()).examples()\n"
        "except ConfigError as exc:\n"
        "    print(exc)\n"
    )
    environ = dict(os.environ, HF_HOME=str(tmp_path / "hf"), HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=environ,
                            cwd=Path(__file__).resolve().parents[2], timeout=120, check=False)
    assert "[data].source" in result.stdout, result.stdout + result.stderr
    assert "EleutherAI/hendrycks_math" in result.stdout
    assert "set [data] path to a local copy" in result.stdout
