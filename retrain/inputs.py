"""The files a run reads its examples from, pinned so that a resumed run reads the same.

Settings declared with ``input_path=True`` (``[data] path``) name such a file or folder.
When a run starts, a relative one is made absolute (from the working directory), so the
snapshot names the same file wherever the run is resumed from; and the run records a
SHA-256 fingerprint of its content with every checkpoint (``inputs`` in
trainer_state.json; a folder's fingerprint covers the names and bytes of every file in
it). A resumed run checks the file against it: a file that changed, or is gone, is an
error rather than training on other data; a file that moved is named on resume
(``retrain --resume DIR --path NEW``) and accepted when its content is the same.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from pathlib import Path

from retrain.config.loader import replace_setting
from retrain.config.schema import ALL_FIELDS, Config, FieldSpec
from retrain.errors import RetrainError

_BLOCK = 1024 * 1024


def input_settings() -> list[FieldSpec]:
    return [spec for spec in ALL_FIELDS if spec.input_path]


def _value(config: Config, spec: FieldSpec) -> str:
    return str(getattr(getattr(config, spec.section), spec.name))


def absolute_input_paths(config: Config) -> Config:
    """``config`` with every relative input path that exists made absolute from the working
    directory (a value that is no local path — a hub id, a URI for a plugin source — stays)."""
    for spec in input_settings():
        value = _value(config, spec)
        if value and not Path(value).is_absolute() and Path(value).exists():
            config = replace_setting(config, spec.dotted, os.path.abspath(value))
    return config


def fingerprint(path: Path) -> str:
    """``sha256:<hex>`` of a file's bytes, or of a folder's files (relative names and bytes,
    in sorted order)."""
    digest = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if path.is_dir():
            digest.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as stream:
            while block := stream.read(_BLOCK):
                digest.update(block)
    return f"sha256:{digest.hexdigest()}"


def input_fingerprints(config: Config) -> dict[str, str]:
    """``{"data.path": "sha256:..."}`` for every input path that is set and exists."""
    prints = {}
    for spec in input_settings():
        value = _value(config, spec)
        if value and Path(value).exists():
            prints[spec.dotted] = fingerprint(Path(value))
    return prints


def check_inputs(config: Config, recorded: Mapping[str, object], log_dir: Path) -> None:
    """Raise unless every input the run recorded is where ``config`` says, with the same
    content (``recorded``: the checkpoint's fingerprints)."""
    problems = []
    for spec in input_settings():
        expected = recorded.get(spec.dotted)
        value = _value(config, spec)
        if not isinstance(expected, str) or not value:
            continue
        flag = "--" + spec.name.replace("_", "-")
        if not Path(value).exists():
            problems.append(f"[{spec.section}] {spec.name} = {value!r} no longer exists — if it moved, name it: "
                            f"`retrain --resume {log_dir} {flag} NEW_PATH` (its content must be the same)")
        elif fingerprint(Path(value)) != expected:
            problems.append(f"[{spec.section}] {spec.name} = {value!r} is not the content this run trained on "
                            f"({expected[:19]}...): resuming would train on other data — restore the file the run "
                            "started with, or start a new run with a new --log-dir")
    if problems:
        raise RetrainError(f"cannot resume {log_dir}: " + "; ".join(problems))
