"""The ``math`` prompt source: competition problems from hendrycks MATH.

MATH (Hendrycks et al., 2021, "Measuring Mathematical Problem Solving With the MATH
Dataset") is read from its ``EleutherAI/hendrycks_math`` mirror with the ``datasets``
library, five subjects: intermediate_algebra, precalculus, number_theory,
counting_and_probability and geometry (about 7,500 training problems). Each problem
becomes one user turn asking for the answer in ``\\boxed{}``; the reference is the
content of the last ``\\boxed{...}`` of the official solution (nested braces kept). The
rare solution without a box is skipped (logged).

Offline use: ``[data] path`` names a local copy laid out like the hub repository, one
folder per subject holding that split's files::

    <path>/geometry/train-00000-of-00001.parquet     (or train.jsonl / train.json / train.parquet)
    <path>/precalculus/train-00000-of-00001.parquet
    ...

with at least the columns ``problem`` and ``solution`` (``level`` and ``type`` are kept
as metadata when present). Examples come subject by subject in round-robin order
(one from each subject in turn), so ``[training] max_examples`` keeps every subject
represented; the run loop does the (seeded) shuffling. When the examples load, their
references are checked against the configured reward (``retrain.data.references``): a
warning names those it cannot use, and an error stops the run when none is usable.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from pathlib import Path

from retrain.config.schema import Config
from retrain.data.references import reference_issues
from retrain.errors import ConfigError, ConfigIssue
from retrain.optional import require_module
from retrain.rewards.answers import last_boxed, normalize_answer
from retrain.types import Example

logger = logging.getLogger(__name__)

HUB_DATASET = "EleutherAI/hendrycks_math"
SUBJECTS = ("intermediate_algebra", "precalculus", "number_theory", "counting_and_probability", "geometry")
REQUIRED_COLUMNS = ("problem", "solution")
METADATA_COLUMNS = ("level", "type")
FILE_SUFFIXES = (".parquet", ".jsonl", ".json")
ANSWER_INSTRUCTION = "Reason step by step, then give the final answer in \\boxed{}."

Row = dict[str, object]


def math_prompt(problem: str) -> str:
    """The user turn for one MATH problem."""
    return f"{problem.strip()}\n\n{ANSWER_INSTRUCTION}"


def _issue(key: str, problem: str, fix: str, where: str = "") -> ConfigError:
    return ConfigError(ConfigIssue(where, "data", key, problem, fix))


def _split_files(folder: Path, split: str) -> list[Path]:
    return sorted(
        path for path in folder.iterdir()
        if path.is_file() and path.suffix in FILE_SUFFIXES
        and (path.name == f"{split}{path.suffix}" or path.name.startswith(f"{split}-"))
    )


def _read_rows(path: Path) -> list[Row]:
    if path.suffix == ".parquet":
        parquet = require_module("pyarrow.parquet", "local", "data", "path", "reading parquet files")
        return parquet.read_table(path).to_pylist()
    rows: list[Row] = []
    with path.open("r", encoding="utf-8") as stream:
        for line_number, line in enumerate(stream, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise _issue("path", f"line is not valid JSON ({exc.msg})", "fix or remove the line",
                             f"{path}:{line_number}") from exc
            if not isinstance(row, dict):
                raise _issue("path", "line is not a JSON object", "write one object per line", f"{path}:{line_number}")
            rows.append(row)
    return rows


def _check_columns(rows: list[Row], where: str) -> None:
    for index, row in enumerate(rows):
        missing = [column for column in REQUIRED_COLUMNS if not isinstance(row.get(column), str)]
        if missing:
            raise _issue("path", f"row {index} has no text column {', '.join(repr(c) for c in missing)} "
                                 f"(columns: {', '.join(sorted(row))})",
                         "a MATH copy needs string columns 'problem' and 'solution'", where)


def load_local(root: Path, split: str) -> dict[str, list[Row]]:
    """Rows per subject from a local copy of the dataset (layout in the module docstring)."""
    if not root.is_dir():
        raise _issue("path", f"{root} is not a directory",
                     "point path at a folder with one subfolder per MATH subject (see the data docs)")
    missing = [subject for subject in SUBJECTS if not (root / subject).is_dir()]
    if missing:
        raise _issue("path", f"{root} has no folder for {', '.join(missing)}",
                     f"put each subject's files in <path>/<subject>/{split}-*.parquet (or {split}.jsonl)")
    rows: dict[str, list[Row]] = {}
    for subject in SUBJECTS:
        files = _split_files(root / subject, split)
        if not files:
            raise _issue("split", f"{root / subject} has no files for split \"{split}\"",
                         f"add {split}.jsonl or {split}-*.parquet there, or set split to one that exists")
        subject_rows = [row for path in files for row in _read_rows(path)]
        _check_columns(subject_rows, str(root / subject))
        rows[subject] = subject_rows
    return rows


def load_hub(split: str, repo: str = HUB_DATASET, cache_dir: str | None = None) -> dict[str, list[Row]]:
    """Rows per subject from the hub mirror ``repo`` (through the ``datasets`` cache,
    ``cache_dir`` or the library's default)."""
    datasets = require_module("datasets", "local", "data", "source", "source = \"math\"")
    rows: dict[str, list[Row]] = {}
    for subject in SUBJECTS:
        try:
            dataset = datasets.load_dataset(repo, subject, split=split, cache_dir=cache_dir)
        except ConnectionError as exc:
            raise _issue("source", f"cannot download {repo} ({subject}) and it is not in the datasets cache: {exc}",
                         "connect once to cache it, or set [data] path to a local copy "
                         "(one folder per subject with train-*.parquet or train.jsonl)") from exc
        except FileNotFoundError as exc:
            raise _issue("source", f"{repo} ({subject}) is not on the hub or lacks this subject: {exc}",
                         "set [data] path to a local copy (one folder per subject with train-*.parquet or "
                         "train.jsonl)") from exc
        except ValueError as exc:
            # datasets reports an unknown split as a ValueError naming the ones that exist.
            raise _issue("split", f"{repo} ({subject}): {exc}", "use split = \"train\" or \"test\"") from exc
        missing = [column for column in REQUIRED_COLUMNS if column not in dataset.column_names]
        if missing:
            raise _issue("source", f"{repo} ({subject}) has no column {', '.join(missing)} "
                                   f"(columns: {', '.join(dataset.column_names)})",
                         "set [data] path to a copy with 'problem' and 'solution' columns")
        rows[subject] = dataset.to_list()
    return rows


def _round_robin(per_subject: dict[str, list[Example]]) -> Iterable[Example]:
    longest = max((len(items) for items in per_subject.values()), default=0)
    for index in range(longest):
        for subject in SUBJECTS:
            items = per_subject.get(subject, [])
            if index < len(items):
                yield items[index]


def rows_to_examples(rows: dict[str, list[Row]], split: str) -> list[Example]:
    """Examples in round-robin subject order; rows whose solution has no box, or an
    empty one (``\\boxed{ }``, ``\\boxed{.}``), are skipped."""
    per_subject: dict[str, list[Example]] = {}
    skipped = 0
    for subject in SUBJECTS:
        items = []
        for index, row in enumerate(rows.get(subject, [])):
            reference = last_boxed(str(row["solution"]))
            if reference is None or not normalize_answer(reference):
                skipped += 1
                continue
            metadata: dict[str, object] = {"subject": subject}
            metadata.update({column: row[column] for column in METADATA_COLUMNS if column in row})
            items.append(Example(
                example_id=f"{subject}/{split}/{index}",
                messages=({"role": "user", "content": math_prompt(str(row["problem"]))},),
                reference=reference.strip(),
                metadata=metadata,
            ))
        per_subject[subject] = items
    if skipped:
        logger.warning("MATH: skipped %d problem(s) whose solution has no \\boxed{} answer", skipped)
    return list(_round_robin(per_subject))


class MathSource:
    """hendrycks MATH, five subjects, from the hub mirror or ``[data] path``.

    A relative ``[data] path`` starts at ``base_dir`` (default: the current directory).
    """

    def __init__(self, config: Config, *, base_dir: Path | None = None) -> None:
        self.config = config
        raw = Path(config.data.path) if config.data.path else None
        self.path = raw if raw is None or raw.is_absolute() or base_dir is None else base_dir / raw

    def examples(self) -> list[Example]:
        split = self.config.data.split
        rows = load_local(self.path, split) if self.path is not None else load_hub(split)
        examples = rows_to_examples(rows, split)
        if not examples:
            where = str(self.path) if self.path is not None else HUB_DATASET
            raise _issue("split", f"{where} has no usable problems in split \"{split}\"",
                         "check the split name and that solutions contain \\boxed{...} answers", where)
        limit = self.config.training.max_examples
        used = examples[:limit] if limit else examples
        issues = reference_issues(used, self.config, str(self.path) if self.path is not None else HUB_DATASET)
        errors = [issue for issue in issues if not issue.warning]
        if errors:
            raise ConfigError(errors)
        for issue in issues:
            logger.warning("%s", issue)
        return used
