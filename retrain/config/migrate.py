"""Rewrite legacy config keys in TOML text, keeping comments and layout.

PRIME-RL options were once written directly under ``[backend]`` as ``prime_rl_<name>``
keys; they now live in ``[backend.options]`` as ``<name>``. ``migrate_text`` moves each
legacy key (its value as written, its trailing comment and the comment lines directly
above it) into the options table:

- an existing ``[backend.options]`` table receives the keys after its last entry;
- an inline ``options = { ... }`` receives them as entries (their comments go on the
  lines above it, since an inline table cannot hold comments);
- dotted ``options.x = ...`` keys (or a whole config written with dotted
  ``backend.x = ...`` keys) get the key renamed in place to the same dotted style;
- ``backend = { ... }`` written inline gets an inline ``options`` entry;
- otherwise a ``[backend.options]`` table is created right after ``[backend]``'s entries.

When the options table already sets a key, the existing value wins and the legacy line
is dropped (``Migration.dropped`` says so). Everything else in the text is left byte for
byte as it was.

The rewrite works on lines located by a small statement scanner rather than on a
re-serialised document, so nothing outside the moved lines can change. Every result is
then checked: it must parse with ``tomllib`` and hold exactly the original data with the
keys moved. A layout this module cannot rewrite safely raises ``ConfigError`` and never
produces a wrong file.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass

from retrain.config.loader import parse_toml_text
from retrain.config.schema import LEGACY_BACKEND_KEYS, TomlValue
from retrain.config.toml_inline import indent_of, inline_text, inline_with_entries, same_values, split_inline
from retrain.config.toml_text import (
    KEY_RE,
    Statement,
    UnsafeLayout,
    key_parts,
    scan,
    split_lines,
)
from retrain.errors import ConfigError, ConfigIssue

OPTIONS_HEADER = "[backend.options]"


@dataclass(frozen=True)
class MovedKey:
    """A legacy key now written in ``[backend.options]``."""

    old: str  # e.g. "backend.prime_rl_transport"
    new: str  # e.g. "backend.options.transport"
    value: TomlValue
    old_line: int  # 1-based line in the original text
    new_line: int  # 1-based line in the migrated text


@dataclass(frozen=True)
class DroppedKey:
    """A legacy key removed because ``[backend.options]`` already sets the same option."""

    old: str
    new: str
    legacy_value: TomlValue
    kept_value: TomlValue
    old_line: int  # 1-based line of the dropped legacy key in the original text
    kept_line: int  # 1-based line of the kept option in the migrated text


@dataclass(frozen=True)
class Migration:
    """The outcome of migrating one config text."""

    label: str
    original: str
    migrated: str
    moved: tuple[MovedKey, ...] = ()
    dropped: tuple[DroppedKey, ...] = ()

    @property
    def changed(self) -> bool:
        return self.migrated != self.original

    def diff(self) -> str:
        """A unified diff from the original text to the migrated one ("" when unchanged)."""
        return unified_diff(self.original, self.migrated, self.label)


def unified_diff(original: str, migrated: str, label: str) -> str:
    """``diff -u`` style text; a last line without a newline is marked like diff does."""
    import difflib

    lines = difflib.unified_diff(
        split_lines(original),
        split_lines(migrated),
        fromfile=label,
        tofile=f"{label} (migrated)",
    )
    out = []
    for line in lines:
        out.append(line)
        if not line.endswith("\n"):
            out.append("\n\\ No newline at end of file\n")
    return "".join(out)


# ---------------------------------------------------------------------------------------
# The migration


@dataclass(frozen=True)
class _Legacy:
    """One legacy key found in the text, with the comment lines that travel with it."""

    old: str  # the legacy key name, e.g. "prime_rl_transport"
    new: str  # its name in [backend.options], e.g. "transport"
    value: TomlValue
    statement: Statement
    first: int  # first line of the group (comments directly above included)
    blank_before: bool  # a blank line separated the group from what came before


def migrate_text(text: str, label: str = "<config>") -> Migration:
    """Move legacy ``[backend] prime_rl_*`` keys of ``text`` into ``[backend.options]``.

    ``label`` names the text in error messages and in the diff (usually the file path).
    Raises ``ConfigError`` for invalid TOML (with ``label:line:column``) and for a layout
    that cannot be rewritten safely; text without legacy keys comes back unchanged.
    """
    data = parse_toml_text(text, label)
    backend = data.get("backend")
    if not isinstance(backend, dict):
        return Migration(label, text, text)
    legacy_values = {key: value for key, value in backend.items() if key in LEGACY_BACKEND_KEYS}
    if not legacy_values:
        return Migration(label, text, text)
    options = backend.get("options", {})
    if not isinstance(options, dict):
        raise ConfigError(
            ConfigIssue(label, "backend", "options", "is not a table, so the legacy prime_rl_* keys cannot be merged into it",
                        "write options as a [backend.options] table, then run migrate-config again")
        )
    try:
        rewriter = _Rewriter(text, legacy_values, options)
        migrated = rewriter.rewrite()
        _verify(data, migrated)
    except UnsafeLayout as exc:
        raise ConfigError(
            ConfigIssue(label, "backend", ", ".join(legacy_values),
                        f"migrate-config cannot rewrite this layout safely ({exc})",
                        "move the keys by hand: " + _manual_fix(legacy_values, options))
        ) from None
    return _report(label, text, migrated, rewriter.legacy_lines, legacy_values, options)


def _manual_fix(legacy_values: dict[str, TomlValue], options: dict[str, TomlValue]) -> str:
    import tomli_w

    moved = {LEGACY_BACKEND_KEYS[key]: value for key, value in legacy_values.items()
             if LEGACY_BACKEND_KEYS[key] not in options}
    block = tomli_w.dumps({"backend": {"options": moved}}).strip() if moved else ""
    return f"delete them from [backend] and add to [backend.options]:\n{block}" if block else "delete them from [backend]"


class _Rewriter:
    """Line edits that move the legacy keys of one text; ``rewrite`` applies them."""

    def __init__(self, text: str, legacy_values: dict[str, TomlValue], options: dict[str, TomlValue]) -> None:
        self.text = text
        self.lines = split_lines(text)
        self.newline = "\r\n" if "\r\n" in text else "\n"
        self.statements, self.line_starts = scan(text)
        self.legacy_values = legacy_values
        self.options = options
        self.deleted: set[int] = set()
        self.replaced: dict[int, str] = {}
        self.before: dict[int, list[str]] = {}
        self.after: dict[int, list[str]] = {}
        # legacy key -> its 1-based line in the original text
        self.legacy_lines: dict[str, int] = {}

    # -- finding things ---------------------------------------------------------------

    def _keyvals(self, table: tuple[str, ...], key: tuple[str, ...]) -> list[Statement]:
        return [s for s in self.statements if s.kind == "keyval" and s.table == table and s.key == key]

    def _region(self, header: Statement) -> list[Statement]:
        """The statements under a table header, up to the next header."""
        index = self.statements.index(header)
        region = []
        for statement in self.statements[index + 1 :]:
            if statement.kind in ("table", "array"):
                break
            region.append(statement)
        return region

    def _header(self, path: tuple[str, ...]) -> Statement | None:
        return next((s for s in self.statements if s.kind == "table" and s.table == path), None)

    def _legacy(self) -> list[_Legacy]:
        found = []
        for old, value in self.legacy_values.items():
            matches = self._keyvals(("backend",), (old,)) + self._keyvals((), ("backend", old))
            if len(matches) != 1:
                raise UnsafeLayout(f"'{old}' is written in a form it does not recognise")
            statement = matches[0]
            first = statement.first
            index = self.statements.index(statement)
            while index > 0 and self.statements[index - 1].kind == "comment" and self.statements[index - 1].table == statement.table:
                index -= 1
                first = self.statements[index].first
            blank_before = index > 0 and self.statements[index - 1].kind == "blank"
            found.append(_Legacy(old, LEGACY_BACKEND_KEYS[old], value, statement, first, blank_before))
            self.legacy_lines[old] = statement.first + 1
        return sorted(found, key=lambda item: item.first)

    # -- the rewrite ------------------------------------------------------------------

    def rewrite(self) -> str:
        inline_backend = self._keyvals((), ("backend",))
        if inline_backend:
            return self._rewrite_inline_backend(inline_backend[0])
        legacy = self._legacy()
        in_table = legacy[0].statement.table == ("backend",)
        # Inside [backend] keys are relative to it; at the root they start with "backend".
        table, key_prefix = (("backend",), ()) if in_table else ((), ("backend",))
        options_key = key_prefix + ("options",)
        options_header = self._header(("backend", "options"))
        options_inline = self._keyvals(table, options_key)
        options_dotted = any(
            s.kind == "keyval" and s.table == table and len(s.key) > len(options_key) and s.key[: len(options_key)] == options_key
            for s in self.statements
        )
        rename_in_place = options_header is None and not options_inline and (options_dotted or not in_table)
        for item in legacy:
            if item.new in self.options or not rename_in_place:
                self.deleted.update(range(item.first, item.statement.last + 1))
        self._drop_doubled_blank_lines()
        kept = [item for item in legacy if item.new not in self.options]
        if options_header is not None:
            self._append_to_table(options_header, kept, created=False)
        elif options_inline:
            self._merge_into_inline(options_inline[0], kept)
        elif rename_in_place:
            for item in kept:
                self.replaced[item.statement.first] = self._renamed(item.statement, ".".join(options_key + (item.new,)))
        else:
            backend_header = self._header(("backend",))
            if backend_header is None:
                raise UnsafeLayout("no [backend] header was found")
            self._append_to_table(backend_header, kept, created=True)
        return self._render()

    def _renamed(self, statement: Statement, new_key: str) -> str:
        """The first line of ``statement`` with its key replaced by ``new_key``."""
        start = self.line_starts[statement.first]
        line = self.lines[statement.first]
        key_start, key_end = statement.key_span
        return line[: key_start - start] + new_key + line[key_end - start :]

    def _group_lines(self, item: _Legacy) -> list[str]:
        lines = [self.lines[i] for i in range(item.first, item.statement.last + 1)]
        lines[item.statement.first - item.first] = self._renamed(item.statement, item.new)
        if not lines[-1].endswith("\n"):
            lines[-1] += self.newline
        return lines

    def _append_to_table(self, header: Statement, items: list[_Legacy], created: bool) -> None:
        """Write the items after the last entry of ``header``'s table (or a new options table there)."""
        if not items:
            return
        region = [s for s in self._region(header) if s.first not in self.deleted]
        anchor = self._last_entry_line(header, region)
        following = next((i for i in range(anchor + 1, len(self.lines)) if i not in self.deleted), None)
        following_blank = following is None or not self.lines[following].strip()
        out: list[str] = []
        if created:
            indent = indent_of(self.lines[header.first])
            if following_blank:
                out.append(self.newline)
            out.append(f"{indent}{OPTIONS_HEADER}{self.newline}")
        for index, item in enumerate(items):
            if item.blank_before and (index > 0 or not created):
                out.append(self.newline)
            out.extend(self._group_lines(item))
        if not self.lines[anchor].endswith("\n"):
            self.replaced[anchor] = self.replaced.get(anchor, self.lines[anchor]) + self.newline
        self.after.setdefault(anchor, []).extend(out)

    def _last_entry_line(self, header: Statement, region: list[Statement]) -> int:
        """The line after which new entries go: the table's last content, leaving a comment
        block that sits directly on the next header with that header."""
        ends_at_header = self.statements.index(header) + 1 + len(self._region(header)) < len(self.statements)
        index = len(region)
        while index > 0 and region[index - 1].kind == "blank":
            index -= 1
        if ends_at_header and index == len(region):
            while index > 0 and region[index - 1].kind == "comment":
                index -= 1
            while index > 0 and region[index - 1].kind == "blank":
                index -= 1
        if index == 0:
            return header.last
        return region[index - 1].last

    def _drop_doubled_blank_lines(self) -> None:
        """Tidy the blank lines that separated removed groups.

        Blank lines with removed lines on both sides only separated removed groups; where
        a gap has a blank line on each side, one of them is enough.
        """
        for line in range(1, len(self.lines) - 1):
            if line in self.deleted or self.lines[line].strip() or line - 1 not in self.deleted:
                continue
            end = line
            while end + 1 < len(self.lines) and end + 1 not in self.deleted and not self.lines[end + 1].strip():
                end += 1
            if end + 1 in self.deleted:
                self.deleted.update(range(line, end + 1))
        for line in sorted(self.deleted):
            if line - 1 in self.deleted:
                continue
            end = line
            while end + 1 in self.deleted:
                end += 1
            after = end + 1
            after_blank = after >= len(self.lines) or not self.lines[after].strip()
            if line == 0 and after < len(self.lines) and after_blank:
                self.deleted.add(after)  # the text would otherwise start with a blank line
            elif line > 0 and not self.lines[line - 1].strip() and after_blank:
                self.deleted.add(line - 1)

    def _merge_into_inline(self, statement: Statement, items: list[_Legacy]) -> None:
        """Add the items as entries of an inline ``options = { ... }``; their comments go above it."""
        if statement.first != statement.last:
            raise UnsafeLayout("the inline options table spans several lines")
        value = self.text[statement.value_span[0] : statement.value_span[1]]
        entries = [(item.new, self._inline_value(item)) for item in items]
        self._replace_value(statement, inline_with_entries(value, entries))
        indent = indent_of(self.lines[statement.first])
        comments: list[str] = []
        for item in items:
            comments.extend(self.lines[i] for i in range(item.first, item.statement.first))
            if item.statement.comment_span is not None:
                start, end = item.statement.comment_span
                comments.append(f"{indent}{self.text[start:end]}{self.newline}")
        if comments:
            self.before.setdefault(statement.first, []).extend(comments)

    def _inline_value(self, item: _Legacy) -> str:
        start, end = item.statement.value_span
        raw = self.text[start:end]
        if "\n" not in raw:
            return raw
        # A multi-line value cannot sit inside an inline table: write it on one line.
        import tomli_w

        one_line = tomli_w.dumps({"v": item.value}).split("=", 1)[1].strip()
        if "\n" in one_line:
            raise UnsafeLayout(f"'{item.old}' has a value that cannot be written inside an inline table")
        return one_line

    def _replace_value(self, statement: Statement, new_value: str) -> None:
        start = self.line_starts[statement.first]
        line = self.lines[statement.first]
        value_start, value_end = statement.value_span
        self.replaced[statement.first] = line[: value_start - start] + new_value + line[value_end - start :]

    def _rewrite_inline_backend(self, statement: Statement) -> str:
        """``backend = { ... }``: drop the legacy entries and add an inline ``options`` entry."""
        if statement.first != statement.last:
            raise UnsafeLayout("the inline [backend] table spans several lines")
        self.legacy_lines = {old: statement.first + 1 for old in self.legacy_values}
        value = self.text[statement.value_span[0] : statement.value_span[1]]
        entries = split_inline(value)
        kept_entries: list[str] = []
        moved: list[tuple[str, str]] = []
        options_entry: int | None = None
        dotted_options = False
        for entry in entries:
            key_match = KEY_RE.match(entry)
            if key_match is None:
                raise UnsafeLayout("an entry of the inline [backend] table could not be read")
            parts = key_parts(key_match.group(1))
            raw_value = entry[key_match.end() :].strip()
            if len(parts) == 1 and parts[0] in self.legacy_values:
                if "\n" in raw_value:
                    raise UnsafeLayout("a multi-line value inside an inline table")
                new = LEGACY_BACKEND_KEYS[parts[0]]
                if new not in self.options:
                    moved.append((new, raw_value))
                continue
            if parts == ("options",):
                options_entry = len(kept_entries)
            elif parts[:1] == ("options",):
                dotted_options = True
            kept_entries.append(entry.strip())
        if options_entry is not None:
            key_match = KEY_RE.match(kept_entries[options_entry])
            assert key_match is not None
            head = kept_entries[options_entry][: key_match.end()]
            kept_entries[options_entry] = head + inline_with_entries(kept_entries[options_entry][key_match.end() :].strip(), moved)
        elif dotted_options:
            kept_entries.extend(f"options.{key} = {raw}" for key, raw in moved)
        elif moved:
            kept_entries.append("options = " + inline_text([f"{key} = {raw}" for key, raw in moved]))
        self._replace_value(statement, inline_text(kept_entries))
        return self._render()

    def _render(self) -> str:
        out: list[str] = []
        for index, line in enumerate(self.lines):
            out.extend(self.before.get(index, ()))
            if index not in self.deleted:
                out.append(self.replaced.get(index, line))
            out.extend(self.after.get(index, ()))
        text = "".join(out)
        if not self.text.endswith("\n") and text.endswith("\n"):
            # Keep a file that ended without a newline that way.
            text = text.removesuffix("\n").removesuffix("\r")
        return text


# ---------------------------------------------------------------------------------------
# Checking and describing the result


def _verify(original: dict[str, TomlValue], migrated: str) -> None:
    """The migrated text must hold the original data with the legacy keys moved."""
    try:
        result = tomllib.loads(migrated)
    except tomllib.TOMLDecodeError as exc:
        raise UnsafeLayout(f"the rewritten text would not parse: {exc}") from None
    expected = dict(original)
    backend = dict(original["backend"])
    options = dict(backend.get("options", {}))
    for old in [key for key in backend if key in LEGACY_BACKEND_KEYS]:
        value = backend.pop(old)
        options.setdefault(LEGACY_BACKEND_KEYS[old], value)
    backend["options"] = options
    expected["backend"] = backend
    if not same_values(result, expected):
        raise UnsafeLayout("the rewritten text would not hold the same values")


def _report(
    label: str, text: str, migrated: str, legacy_lines: dict[str, int],
    legacy_values: dict[str, TomlValue], options: dict[str, TomlValue],
) -> Migration:
    new_lines = _option_lines(migrated)
    moved: list[MovedKey] = []
    dropped: list[DroppedKey] = []
    for old, value in legacy_values.items():
        new = LEGACY_BACKEND_KEYS[old]
        old_line = legacy_lines[old]
        new_line = new_lines.get(new, 0)
        if new in options:
            dropped.append(DroppedKey(f"backend.{old}", f"backend.options.{new}", value, options[new], old_line, new_line))
        else:
            moved.append(MovedKey(f"backend.{old}", f"backend.options.{new}", value, old_line, new_line))
    moved.sort(key=lambda item: item.old_line)
    dropped.sort(key=lambda item: item.old_line)
    return Migration(label, text, migrated, tuple(moved), tuple(dropped))


def _option_lines(text: str) -> dict[str, int]:
    """1-based line of each [backend.options] entry; an inline table counts as its own line."""
    lines: dict[str, int] = {}
    fallback = 0
    for statement in scan(text)[0]:
        if statement.kind != "keyval":
            continue
        path = statement.table + statement.key
        if len(path) == 3 and path[:2] == ("backend", "options"):
            lines.setdefault(path[2], statement.first + 1)
        elif path in (("backend",), ("backend", "options")):
            fallback = statement.first + 1
    if fallback:
        for name in LEGACY_BACKEND_KEYS.values():
            lines.setdefault(name, fallback)
    return lines
