"""The ``jsonl`` prompt source: examples from a local JSON Lines file (``[data] path``).

One JSON object per line::

    {"prompt": "What is 2+3? Answer with the number only.", "answer": "5"}
    {"id": "q2", "prompt": [{"role": "system", "content": "..."}, {"role": "user", "content": "..."}],
     "answer": "\\\\frac{1}{2}", "topic": "fractions"}

``prompt`` is the user turn as a string, or a whole chat (a list of ``{"role", "content"}``
messages, roles ``system``/``user``/``assistant``); it is sent as written, so it should
say how to format the answer. ``answer`` (a string, or an integer) is the reference the
reward compares against. ``id`` (string or integer) is optional and must be unique; by
default an example is named ``<file name>:<line>``. Any other field is kept in the
example's metadata. Blank lines are skipped. Every bad line is reported, with its
``file:line``, in one error. So are the examples whose reference the configured reward
cannot use (``retrain.data.references``): an empty ``answer`` for ``match`` or ``math``
(an error when no example is left, a warning naming the first lines otherwise), an
answer math-verify cannot parse for ``math`` (a warning).
"""

from __future__ import annotations

import json
from pathlib import Path

from retrain.config.schema import Config
from retrain.data.references import reference_issues
from retrain.errors import ConfigError, ConfigIssue
from retrain.types import Example, Message

ROLES = ("system", "user", "assistant")
# Past this many bad lines the file is probably not in this format at all.
MAX_REPORTED_PROBLEMS = 20


def _messages(prompt: object) -> tuple[tuple[Message, ...] | None, str]:
    """The prompt as chat messages, or (None, what is wrong)."""
    if isinstance(prompt, str):
        if not prompt.strip():
            return None, "\"prompt\" is empty"
        return ({"role": "user", "content": prompt},), ""
    if not isinstance(prompt, list) or not prompt:
        return None, "\"prompt\" must be a string or a non-empty list of chat messages"
    messages = []
    for index, message in enumerate(prompt):
        if not isinstance(message, dict) or set(message) != {"role", "content"}:
            return None, f"\"prompt\"[{index}] must be an object with exactly \"role\" and \"content\""
        if message["role"] not in ROLES:
            return None, f"\"prompt\"[{index}] has role {message['role']!r}; roles are {', '.join(ROLES)}"
        if not isinstance(message["content"], str):
            return None, f"\"prompt\"[{index}].content must be a string"
        messages.append({"role": message["role"], "content": message["content"]})
    if not any(message["role"] == "user" for message in messages):
        return None, "\"prompt\" has no user message"
    return tuple(messages), ""


def _reference(answer: object) -> tuple[str | None, str]:
    if isinstance(answer, str):
        return answer, ""
    if isinstance(answer, int) and not isinstance(answer, bool):
        return str(answer), ""
    return None, f"\"answer\" must be a string (or an integer), not {type(answer).__name__}"


def parse_line(text: str, default_id: str) -> tuple[Example | None, str]:
    """One line of the file as an ``Example``, or (None, what is wrong)."""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg} at column {exc.colno})"
    if not isinstance(record, dict):
        return None, f"expected a JSON object, got {type(record).__name__}"
    missing = [key for key in ("prompt", "answer") if key not in record]
    if missing:
        return None, f"missing {' and '.join(repr(key) for key in missing)}"
    messages, problem = _messages(record["prompt"])
    if messages is None:
        return None, problem
    reference, problem = _reference(record["answer"])
    if reference is None:
        return None, problem
    example_id = record.get("id", default_id)
    if isinstance(example_id, bool) or not isinstance(example_id, (str, int)) or example_id == "":
        return None, "\"id\" must be a non-empty string or an integer"
    metadata = {key: value for key, value in record.items() if key not in ("prompt", "answer", "id")}
    return Example(str(example_id), messages, reference, metadata), ""


class JsonlSource:
    """Examples read from ``[data] path``, in file order.

    A relative path starts at ``base_dir`` (default: the current directory).
    """

    def __init__(self, config: Config, *, base_dir: Path | None = None) -> None:
        self.config = config
        raw = Path(config.data.path)
        self.path = raw if raw.is_absolute() or base_dir is None else base_dir / raw
        # The line each example was read from, by id.
        self.lines: dict[str, int] = {}

    @classmethod
    def config_issues(cls, config: Config) -> list[ConfigIssue]:
        """Every problem of the file, found by ``retrain explain`` before any model loads
        (the file is read again when the run starts), and what the reward finds in the
        references of the examples the run would use."""
        source = cls(config)
        examples, issues = source._load()
        if issues:
            return issues
        used = source._used(examples)
        return reference_issues(used, config, str(source.path), lambda index: source.line_of(used[index]))

    def examples(self) -> list[Example]:
        examples, issues = self._load()
        if issues:
            raise ConfigError(issues)
        return self._used(examples)

    def _used(self, examples: list[Example]) -> list[Example]:
        limit = self.config.training.max_examples
        return examples[:limit] if limit else examples

    def line_of(self, example: Example) -> str:
        """Where ``example`` is in the file, for a message: ``line 7`` (and its own id)."""
        line = self.lines[example.example_id]
        default = example.example_id == f"{self.path.name}:{line}"
        return f"line {line}" if default else f"line {line} (id {example.example_id!r})"

    def _load(self) -> tuple[list[Example], list[ConfigIssue]]:
        if not self.config.data.path:
            return [], [ConfigIssue("", "data", "path", "source = \"jsonl\" needs the file to read",
                                    "set path, e.g. \"data/train.jsonl\"")]
        if not self.path.is_file():
            return [], [ConfigIssue("", "data", "path", f"{self.path} is not a file",
                                    "fix the path (relative paths start at the current directory)")]
        examples, issues = self._read()
        if issues:
            return [], issues
        if not examples:
            return [], [ConfigIssue(str(self.path), "data", "path", "the file holds no examples",
                                    "add lines like {\"prompt\": \"...\", \"answer\": \"...\"}")]
        return examples, []

    def _read(self) -> tuple[list[Example], list[ConfigIssue]]:
        examples: list[Example] = []
        issues: list[ConfigIssue] = []
        first_line_of = self.lines
        fix = "each line must be {\"prompt\": ..., \"answer\": ...} (see the jsonl source in the docs)"

        def report(line_number: int, problem: str, line_fix: str = fix) -> bool:
            issues.append(ConfigIssue(f"{self.path}:{line_number}", "data", "path", problem, line_fix))
            return len(issues) >= MAX_REPORTED_PROBLEMS

        with self.path.open("r", encoding="utf-8", errors="strict") as stream:
            try:
                lines = list(stream)
            except UnicodeDecodeError as exc:
                raise ConfigError(ConfigIssue(str(self.path), "data", "path", f"is not UTF-8 text ({exc.reason})",
                                              "save the file as UTF-8")) from exc
        for line_number, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            example, problem = parse_line(text, f"{self.path.name}:{line_number}")
            if example is None:
                if report(line_number, problem):
                    break
                continue
            if example.example_id in first_line_of:
                if report(line_number, f"id {example.example_id!r} already used on line "
                                       f"{first_line_of[example.example_id]}", "give every line a distinct \"id\""):
                    break
                continue
            first_line_of[example.example_id] = line_number
            examples.append(example)
        return examples, issues
