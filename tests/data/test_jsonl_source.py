"""The jsonl prompt source (retrain.data.jsonl)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from retrain.config.loader import load_config
from retrain.config.schema import Config, DataConfig, TrainingConfig
from retrain.data.jsonl import JsonlSource
from retrain.errors import ConfigError


def _config(path: Path | str, max_examples: int = 0, split: str = "train") -> Config:
    return Config(data=DataConfig(source="jsonl", path=str(path), split=split),
                  training=TrainingConfig(max_examples=max_examples))


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((line if isinstance(line, str) else json.dumps(line)) + "\n" for line in lines))
    return path


def test_reads_prompts_answers_ids_and_metadata(tmp_path):
    chat = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "3*3?"}]
    path = _write(tmp_path / "train.jsonl", [
        {"prompt": "2+3?", "answer": "5"},
        "",
        {"id": "q-sq", "prompt": chat, "answer": 9, "topic": "squares", "level": 2},
    ])
    examples = JsonlSource(_config(path)).examples()
    assert [example.example_id for example in examples] == ["train.jsonl:1", "q-sq"]
    assert examples[0].messages == ({"role": "user", "content": "2+3?"},)
    assert examples[0].reference == "5" and examples[0].metadata == {}
    assert examples[1].messages == tuple(chat)
    assert examples[1].reference == "9"  # an integer answer is read as its decimal text
    assert examples[1].metadata == {"topic": "squares", "level": 2}


def test_max_examples_keeps_the_first_lines(tmp_path):
    path = _write(tmp_path / "d.jsonl", [{"prompt": f"p{i}", "answer": str(i)} for i in range(5)])
    examples = JsonlSource(_config(path, max_examples=2)).examples()
    assert [example.reference for example in examples] == ["0", "1"]


def test_relative_path_starts_at_base_dir(tmp_path):
    _write(tmp_path / "d.jsonl", [{"prompt": "p", "answer": "a"}])
    assert len(JsonlSource(_config("d.jsonl"), base_dir=tmp_path).examples()) == 1


def test_every_bad_line_is_reported_with_file_and_line(tmp_path):
    path = _write(tmp_path / "bad.jsonl", [
        {"prompt": "fine", "answer": "1"},
        "{not json",
        ["a", "list"],
        {"prompt": "no answer"},
        {"prompt": "", "answer": "1"},
        {"prompt": [{"role": "robot", "content": "hi"}], "answer": "1"},
        {"prompt": [{"role": "system", "content": "only system"}], "answer": "1"},
        {"prompt": "p", "answer": 1.5},
        {"prompt": "p", "answer": "1", "id": True},
    ])
    with pytest.raises(ConfigError) as caught:
        JsonlSource(_config(path)).examples()
    issues = caught.value.issues
    assert [issue.where for issue in issues] == [f"{path}:{line}" for line in range(2, 10)]
    problems = [issue.problem for issue in issues]
    assert "not valid JSON" in problems[0]
    assert "expected a JSON object, got list" in problems[1]
    assert "missing 'answer'" in problems[2]
    assert "\"prompt\" is empty" in problems[3]
    assert "role 'robot'" in problems[4]
    assert "no user message" in problems[5]
    assert "must be a string (or an integer), not float" in problems[6]
    assert "\"id\"" in problems[7]
    assert all(issue.section == "data" and issue.key == "path" for issue in issues)


def test_duplicate_ids(tmp_path):
    path = _write(tmp_path / "dup.jsonl", [{"id": 1, "prompt": "a", "answer": "1"},
                                           {"id": "1", "prompt": "b", "answer": "2"}])
    with pytest.raises(ConfigError, match=r"dup.jsonl:2 .*id '1' already used on line 1"):
        JsonlSource(_config(path)).examples()


def test_file_problems(tmp_path):
    with pytest.raises(ConfigError, match="is not a file"):
        JsonlSource(_config(tmp_path / "missing.jsonl")).examples()
    empty = _write(tmp_path / "empty.jsonl", ["", "  "])
    with pytest.raises(ConfigError, match="holds no examples"):
        JsonlSource(_config(empty)).examples()
    (tmp_path / "latin1.jsonl").write_bytes(b'{"prompt": "caf\xe9", "answer": "1"}\n')
    with pytest.raises(ConfigError, match="not UTF-8"):
        JsonlSource(_config(tmp_path / "latin1.jsonl")).examples()
    good = _write(tmp_path / "good.jsonl", [{"prompt": "p", "answer": "a"}])
    config = tmp_path / "c.toml"
    config.write_text(f'[data]\nsource = "jsonl"\npath = "{good}"\nsplit = "test"\n')
    with pytest.raises(ConfigError, match=r"c.toml:4 \[data\].split: a JSONL file has no splits"):
        load_config(config, environ={})


def _reward_config(path: Path, reward: str = "match", max_examples: int = 0) -> Config:
    from retrain.config.schema import RewardConfig

    return Config(data=DataConfig(source="jsonl", path=str(path)), reward=RewardConfig(type=reward),
                  training=TrainingConfig(max_examples=max_examples))


def test_empty_references_are_a_warning_naming_their_lines(tmp_path):
    lines = [{"prompt": f"p{i}", "answer": str(i)} for i in range(10)]
    for index in (1, 3, 4, 6, 7, 8, 9):
        lines[index]["answer"] = " " if index % 2 else ""
    lines[3]["id"] = "q3"
    path = _write(tmp_path / "refs.jsonl", lines)
    issues = JsonlSource.config_issues(_reward_config(path))
    assert [issue.warning for issue in issues] == [True]
    assert str(issues[0]) == (
        f"{path} [data].path: 7 of 10 examples have an empty reference, which the match reward never scores as "
        "correct: line 2, line 4 (id 'q3'), line 5, line 7, line 8 and 2 more — give each example its answer, or "
        "remove those examples")
    # The examples themselves still load: a warning does not stop the run.
    assert len(JsonlSource(_reward_config(path)).examples()) == 10


def test_a_file_whose_every_reference_is_empty_is_an_error(tmp_path):
    path = _write(tmp_path / "blank.jsonl", [{"prompt": "a", "answer": ""}, {"prompt": "b", "answer": "$ $"}])
    issues = JsonlSource.config_issues(_reward_config(path, "math"))
    assert [issue.warning for issue in issues] == [False]
    assert "all 2 examples have an empty reference, which the math reward never scores as correct, so nothing " \
           "could be learned" in str(issues[0])


def test_only_the_examples_the_run_uses_are_checked(tmp_path):
    path = _write(tmp_path / "tail.jsonl", [{"prompt": "a", "answer": "1"}, {"prompt": "b", "answer": ""}])
    assert JsonlSource.config_issues(_reward_config(path, max_examples=1)) == []


@pytest.mark.parametrize("reward", ["judge", "custom"])
def test_rewards_that_read_references_their_own_way_are_not_checked(tmp_path, reward):
    path = _write(tmp_path / "open.jsonl", [{"prompt": "write a poem", "answer": ""}])
    assert JsonlSource.config_issues(_reward_config(path, reward)) == []
