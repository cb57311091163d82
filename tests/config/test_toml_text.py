"""Key positions from the TOML statement scanner (retrain.config.toml_text)."""

from __future__ import annotations

import tomllib

from retrain.config.toml_text import key_lines, line_of

TEXT = '''\
# comment
[training]
lr = 1e-4  # inline [comment] with brackets
notes = """
fake = "not a key"
[not.a.header]
"""
ranks = [
  1,  # [x]
  2,
]

[campaign]
seeds = [0, 1]

[[campaign.conditions]]
name = "a"

[[campaign.conditions]]
name = "b"
"dotted.quoted".key = 1

[campaign.conditions.overrides]
"training.lr" = 2e-4
site = { a = 1, b = [2, 3] }
after = 'x'
'''


def test_every_key_is_found_on_its_own_line() -> None:
    tomllib.loads(TEXT)  # the scanner is only ever given valid TOML
    lines = key_lines(TEXT)
    assert lines[("training",)] == 2
    assert lines[("training", "lr")] == 3
    assert lines[("training", "notes")] == 4
    assert lines[("training", "ranks")] == 8
    assert ("fake",) not in lines and ("training", "fake") not in lines and ("not", "a", "header") not in lines
    assert lines[("campaign", "seeds")] == 14
    # Elements of an array of tables are numbered; a sub-table belongs to the latest one.
    assert lines[("campaign", "conditions", 0)] == 16
    assert lines[("campaign", "conditions", 0, "name")] == 17
    assert lines[("campaign", "conditions", 1, "name")] == 20
    assert lines[("campaign", "conditions", 1, "dotted.quoted", "key")] == 21
    assert lines[("campaign", "conditions", 1, "overrides", "training.lr")] == 24
    assert lines[("campaign", "conditions", 1, "overrides", "after")] == 26


def test_line_of_falls_back_to_the_enclosing_table() -> None:
    lines = key_lines(TEXT)
    assert line_of(lines, ("campaign", "conditions", 1, "overrides", "site", "a")) == 25
    assert line_of(lines, ("training", "missing")) == 2
    assert line_of(lines, ("nowhere",)) is None


def test_crlf_and_escaped_keys() -> None:
    text = '[a]\r\n"caf\\u00e9" = 1\r\nb = "x # y"\r\n'
    assert key_lines(text) == {("a",): 1, ("a", "café"): 2, ("a", "b"): 3}
