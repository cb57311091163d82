"""A key or table that a file defines twice is reported with its name and both lines."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from retrain.cli import main
from retrain.config.loader import load_config
from retrain.config.toml_text import first_redefinition
from retrain.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]

CASES = [
    ("key-twice", "[training]\nlr = 1\nlr = 2\n",
     ":3 [training].lr: duplicate key: also set on line 2 — keep one of them"),
    ("quoted-key-twice", '[training]\nlr = 1\n"lr" = 2\n',
     ":3 [training].lr: duplicate key: also set on line 2 — keep one of them"),
    ("table-twice", "[training]\nlr = 1\n\n[training]\nseed = 1\n",
     ":4 [training]: duplicate table: also declared on line 1 — merge them into one [training] section"),
    ("dotted-then-table", "training.lr = 1\n[training]\nseed = 2\nlr = 2\n",
     ":4 [training].lr: duplicate key: also set on line 1 — keep one of them"),
    ("dotted-then-subtable", '[backend]\noptions.cpu_threads = 2\n[backend.options]\ncpu_threads = 3\n',
     ":4 [backend.options].cpu_threads: duplicate key: also set on line 2 — keep one of them"),
    ("table-then-dotted", '[backend.options]\ncpu_threads = 2\n[backend]\noptions.cpu_threads = 3\n',
     ":4 [backend.options].cpu_threads: duplicate key: also set on line 2 — keep one of them"),
    ("dotted-table-other-keys", "training.seed = 1\n[training]\nlr = 2\n",
     ":2 [training]: duplicate table: also set by the dotted key on line 1 — write the keys of [training] in "
     "one place: under its header or as dotted keys"),
    ("inline-then-table", '[backend]\noptions = { cpu_threads = 1 }\n[backend.options]\ncpu_threads = 2\n',
     ":3 [backend.options]: duplicate table: also set on line 2 — keep one of them"),
    ("array-then-key", '[[campaign.conditions]]\nname = "a"\n[campaign]\nconditions = []\n',
     ":4 [campaign].conditions: duplicate key: also declared as an array of tables on line 1 — keep one of them"),
    ("key-twice-in-an-array-element", '[[campaign.conditions]]\nname = "a"\n[[campaign.conditions]]\nname = "b"\n'
     'name = "c"\n', ":5 [campaign.conditions[1]].name: duplicate key: also set on line 4 — keep one of them"),
]


@pytest.mark.parametrize(("text", "expected"), [case[1:] for case in CASES], ids=[case[0] for case in CASES])
def test_a_duplicate_names_the_key_and_both_lines(tmp_path: Path, text: str, expected: str) -> None:
    with pytest.raises(tomllib.TOMLDecodeError):
        tomllib.loads(text)  # each case is one that TOML itself refuses
    path = tmp_path / "c.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert [str(issue) for issue in caught.value.issues] == [f"{path}{expected}"]


def test_the_duplicate_is_reported_by_the_cli_too(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "c.toml"
    path.write_text("[training]\nlr = 1e-4\nlr = 2e-4\n")
    assert main(["explain", str(path)]) == 2
    assert f"{path}:3 [training].lr: duplicate key: also set on line 2" in capsys.readouterr().err
    assert main(["migrate-config", str(path)]) == 2
    assert f"{path}:3 [training].lr: duplicate key: also set on line 2" in capsys.readouterr().err


VALID = [
    "[[c]]\nname = 'a'\n[c.o]\nx = 1\n[[c]]\nname = 'b'\n[c.o]\nx = 1\n",  # each element has its own tables
    "fruit.apple.color = 1\n[fruit.apple.texture]\nsmooth = true\n",  # a sub-table of a dotted-key table
    "[a.b]\nx = 1\n[a]\ny = 1\n",  # a super-table declared after its sub-table
    "[a]\nb.c = 1\nb.d = 2\n",  # one dotted-key table filled by two keys
]


@pytest.mark.parametrize("text", VALID)
def test_valid_layouts_are_not_redefinitions(text: str) -> None:
    tomllib.loads(text)
    assert first_redefinition(text) is None


def test_no_shipped_config_has_a_redefinition() -> None:
    paths = [*REPO.glob("*.toml"), *REPO.glob("configs/*.toml"), *REPO.glob("campaigns/*.toml"),
             *REPO.glob("retrain/templates/*.toml"), *REPO.glob("tests/config/data/*.toml")]
    assert paths
    assert [path for path in paths if first_redefinition(path.read_text())] == []
