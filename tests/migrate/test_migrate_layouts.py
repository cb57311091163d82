"""``migrate_text`` on every layout a [backend] section can take, with hand-written expected
text, and a property test: for any arrangement of legacy keys, comments, blank lines and
options tables the result parses, holds the same values, keeps every other line in order
and is left alone by a second run."""

from __future__ import annotations

import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from retrain.config.migrate import migrate_text
from retrain.config.schema import LEGACY_BACKEND_KEYS
from retrain.errors import ConfigError


def migrated(text: str) -> str:
    result = migrate_text(text, "run.toml")
    assert migrate_text(result.migrated, "run.toml").changed is False  # a second run has nothing to do
    return result.migrated


def test_no_backend_or_no_legacy_keys_is_unchanged() -> None:
    for text in ("", "[model]\nmodel = \"x\"\n", "[backend]\nbackend = \"local\"\n", "backend = \"oops\"\n"):
        result = migrate_text(text, "run.toml")
        assert result.changed is False and result.migrated == text and result.diff() == ""


def test_new_options_table_goes_after_the_backend_entries_not_before_the_next_sections_comment() -> None:
    assert migrated("""\
[backend]
backend = "prime_rl"
prime_rl_transport = "zmq"
# ---- training ----
[training]
lr = 1.0
""") == """\
[backend]
backend = "prime_rl"
[backend.options]
transport = "zmq"
# ---- training ----
[training]
lr = 1.0
"""


def test_section_with_only_legacy_keys_keeps_its_header() -> None:
    assert migrated("[backend]\n\nprime_rl_transport = \"zmq\"\n\n[model]\nmodel = \"x\"\n") == (
        "[backend]\n\n[backend.options]\ntransport = \"zmq\"\n\n[model]\nmodel = \"x\"\n"
    )


def test_existing_options_table_later_in_the_file_receives_the_keys() -> None:
    assert migrated("""\
[backend]
backend = "prime_rl"
prime_rl_transport = "zmq"

[model]
model = "x"

[backend.options]
zmq_host = "h"
""") == """\
[backend]
backend = "prime_rl"

[model]
model = "x"

[backend.options]
zmq_host = "h"
transport = "zmq"
"""


def test_inline_options_receive_entries_and_the_comments_go_above() -> None:
    assert migrated("""\
[backend]
backend = "prime_rl"
options = { zmq_host = "h" }
# the wire
prime_rl_transport = "zmq"  # or filesystem
""") == """\
[backend]
backend = "prime_rl"
# the wire
# or filesystem
options = { zmq_host = "h", transport = "zmq" }
"""


def test_dotted_options_are_extended_in_place() -> None:
    assert migrated("""\
[backend]
options.zmq_host = "h"
prime_rl_zmq_port = 0x15b4  # hex stays hex
""") == """\
[backend]
options.zmq_host = "h"
options.zmq_port = 0x15b4  # hex stays hex
"""


def test_root_dotted_backend_keys_are_renamed_in_place() -> None:
    assert migrated('backend.backend = "prime_rl"\nbackend."prime_rl_transport" = "zmq"  # t\n') == (
        'backend.backend = "prime_rl"\nbackend.options.transport = "zmq"  # t\n'
    )


def test_root_dotted_backend_keys_move_into_an_options_table() -> None:
    assert migrated('backend.prime_rl_transport = "zmq"\n\n[backend.options]\nzmq_host = "h"\n') == (
        '[backend.options]\nzmq_host = "h"\ntransport = "zmq"\n'
    )


def test_inline_backend_gets_an_inline_options_entry() -> None:
    assert migrated('backend = { backend = "prime_rl", prime_rl_transport = "zmq", prime_rl_zmq_hwm = 4 }  # c\n') == (
        'backend = { backend = "prime_rl", options = { transport = "zmq", zmq_hwm = 4 } }  # c\n'
    )
    assert migrated('backend = {prime_rl_transport = "zmq", options = {zmq_host = "h"}}\n') == (
        'backend = { options = {zmq_host = "h", transport = "zmq"} }\n'
    )


def test_multi_line_values_move_whole() -> None:
    assert migrated('[backend]\nprime_rl_zmq_host = """\ntrainer"""\nprime_rl_zmq_hwm = [\n  1, # c\n] # d\n') == (
        '[backend]\n\n[backend.options]\nzmq_host = """\ntrainer"""\nzmq_hwm = [\n  1, # c\n] # d\n'
    )


def test_line_endings_quoted_keys_and_a_missing_final_newline_are_kept() -> None:
    assert migrated('[ backend ]  # trainer\r\n"prime_rl_zmq_host" = "a#b"  # c # d\r\nbackend = "prime_rl"') == (
        '[ backend ]  # trainer\r\nbackend = "prime_rl"\r\n\r\n[backend.options]\r\nzmq_host = "a#b"  # c # d'
    )


def test_conflict_keeps_the_existing_option_and_reports_the_dropped_one() -> None:
    result = migrate_text("[backend]\noptions.transport = \"zmq\"\n\nprime_rl_transport = \"filesystem\"\n\nx = 1\n", "r")
    assert result.migrated == "[backend]\noptions.transport = \"zmq\"\n\nx = 1\n"
    (dropped,) = result.dropped
    assert (dropped.legacy_value, dropped.kept_value, dropped.old_line, dropped.kept_line) == ("filesystem", "zmq", 4, 2)
    assert result.moved == ()


def test_unicode_line_separators_inside_strings_do_not_shift_lines() -> None:
    result = migrate_text('[backend]\nbackend = "a\u2028b"\nprime_rl_transport = "zmq"\n', "r")
    # new text: [backend], backend = ..., blank, [backend.options], transport -> line 5
    assert result.moved[0].old_line == 3 and result.moved[0].new_line == 5


def test_options_that_are_not_a_table_are_refused() -> None:
    with pytest.raises(ConfigError, match="options"):
        migrate_text("[backend]\noptions = 3\nprime_rl_transport = \"zmq\"\n", "run.toml")


def test_invalid_toml_reports_line_and_column() -> None:
    with pytest.raises(ConfigError, match=r"run\.toml:2:\d+: invalid TOML"):
        migrate_text("[backend]\nprime_rl_transport = = 1\n", "run.toml")


# -- property: any arrangement ------------------------------------------------------------

VALUES = st.sampled_from(['"zmq"', "'lit'", "5_556", "7", "true", "false", "1.5", "-2e3", "[1, 2]",
                          '"""\nmulti"""', '{ a = 1 }'])
PLAIN_KEYS = st.sampled_from(["backend", "devices", "adapter_path"])
COMMENTS = st.sampled_from(["# about this", "#", "# = [x] 'q' \"r\""])


@st.composite
def configs(draw: st.DrawFn) -> tuple[str, set[str], dict[str, str]]:
    """A config text, the legacy keys in it, and the options it already sets (name -> raw value)."""
    legacy = draw(st.lists(st.sampled_from(sorted(LEGACY_BACKEND_KEYS)), min_size=1, unique=True))
    plain = draw(st.lists(PLAIN_KEYS, unique=True))
    entries = [f"{key} = {draw(VALUES)}" + draw(st.sampled_from(["", "  # trailing"])) for key in legacy]
    entries += [f"{key} = \"v\"" for key in plain]
    entries = draw(st.permutations(entries))
    body: list[str] = []
    for entry in entries:
        body.extend(draw(st.lists(st.sampled_from(["", *["COMMENT"] * 2]), max_size=2)))
        body.append(entry)
    body = [draw(COMMENTS) if line == "COMMENT" else line for line in body]
    option_names = draw(st.lists(st.sampled_from(sorted(LEGACY_BACKEND_KEYS.values())), unique=True))
    options = {name: draw(VALUES.filter(lambda raw: "\n" not in raw)) for name in option_names}
    form = draw(st.sampled_from(["none", "table_after", "table_before", "table_last", "inline", "dotted"]))
    if form == "none":
        options = {}
    backend = ["[backend]", *body]
    options_lines = [f"{name} = {raw}" for name, raw in options.items()]
    if form == "inline" and options:
        backend.insert(draw(st.integers(1, len(backend))), "options = { " + ", ".join(options_lines) + " }")
    elif form == "dotted" and options:
        for line in options_lines:
            backend.insert(draw(st.integers(1, len(backend))), f"options.{line}")
    sections = [backend, ["[model]", 'model = "x"']]
    table = ["[backend.options]", *options_lines]
    if form == "table_after":
        sections.insert(1, table)
    elif form == "table_before":
        sections.insert(0, table)
    elif form in ("table_last", "inline", "dotted") and not options:
        sections.append(table)
    elif form == "table_last":
        sections.append(table)
    separator = draw(st.sampled_from(["\n", "\n\n"]))
    text = separator.join("\n".join(section) for section in sections) + draw(st.sampled_from(["", "\n"]))
    return text, set(legacy), options


@settings(max_examples=300, deadline=None)
@given(configs())
def test_any_arrangement_migrates_to_the_same_values(case: tuple[str, set[str], dict[str, str]]) -> None:
    text, legacy, options = case
    original = tomllib.loads(text)
    result = migrate_text(text, "run.toml")
    data = tomllib.loads(result.migrated)

    expected_backend = {key: value for key, value in original["backend"].items() if key not in legacy}
    expected_options = dict(original["backend"].get("options", {}))
    for key in legacy:
        expected_options.setdefault(LEGACY_BACKEND_KEYS[key], original["backend"][key])
    expected_backend["options"] = expected_options
    assert data == {**original, "backend": expected_backend}

    assert {item.new.removeprefix("backend.options.") for item in result.dropped} == {
        LEGACY_BACKEND_KEYS[key] for key in legacy if LEGACY_BACKEND_KEYS[key] in options
    }
    assert len(result.moved) + len(result.dropped) == len(legacy)
    assert migrate_text(result.migrated, "run.toml").changed is False

    # Every line that is neither a legacy key, a comment riding with one, a blank line nor
    # the inline options table comes through unchanged and in the same order.
    lines = text.split("\n")
    riding = set()
    for index, line in enumerate(lines):
        if line.split(" = ")[0] in legacy:
            riding.add(index)
            above = index - 1
            while above >= 0 and lines[above].startswith("#"):
                riding.add(above)
                above -= 1
    kept = [line for index, line in enumerate(lines)
            if index not in riding and line.strip() and not line.startswith("options = {")
            and not line.startswith('multi"""')]
    out = iter(result.migrated.split("\n"))
    assert all(any(line == candidate for candidate in out) for line in kept)
