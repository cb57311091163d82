"""The standalone LoRA-Squeeze: ``retrain squeeze.toml`` with ``[squeeze] adapter_path`` set.

Analyses the adapter (``retrain.squeeze.analyze``), prints the retention table, writes the
compressed adapter when ``output_path`` is set (``retrain.squeeze.compress``, at
``compress_to`` or else the recommended rank) and records everything in ``squeeze.json``:
next to the compressed adapter (in the parent folder of ``output_path``) when compressing,
otherwise in the parent folder of the adapter analysed. A ``tinker://`` adapter is first
fetched into the cache (``local_adapter_folder``); its ``squeeze.json`` then lies next to
that local copy.

Importing this module loads no torch, safetensors, peft or tinker; they load when a
squeeze runs.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path
from types import ModuleType
from typing import Protocol, TextIO

from retrain.atomic import write_atomic
from retrain.config.schema import Config, TinkerOptions
from retrain.errors import ConfigError, ConfigIssue
from retrain.squeeze import ADAPTER_CONFIG, TINKER_PREFIX, SqueezeError, analyze, compress

REPORT_NAME = "squeeze.json"
ARCHIVES = (".tar", ".tar.gz", ".tgz")


class WeightsUrls(Protocol):
    urls: dict[str, str]


class WeightsUrlsFuture(Protocol):
    def result(self, timeout: float | None = None) -> WeightsUrls: ...


class WeightsClient(Protocol):
    """The part of ``tinker.RestClient`` a fetch uses; a test passes a fake."""

    def get_external_weights_urls(self, tinker_path: str) -> WeightsUrlsFuture: ...


def run_squeeze(config: Config, out: TextIO = sys.stdout) -> dict[str, object]:
    """Analyse ``[squeeze] adapter_path``, print the table to ``out``, compress when
    ``output_path`` is set and write ``squeeze.json`` atomically.

    Returns the summary, JSON-able: ``SqueezeAnalysis.to_dict(spectra=False)`` (the table,
    the recommended rank, its worst layer) with ``adapter_path`` as given,
    ``compressed_path`` / ``compressed_rank`` (None when only analysing) and
    ``report_path``; ``squeeze.json`` holds the same plus each layer's singular values.
    """
    settings = config.squeeze
    if not settings.adapter_path:
        raise ConfigError(ConfigIssue("", "squeeze", "adapter_path", "is empty, so there is no adapter to squeeze",
                                      "set it to a PEFT adapter folder or a tinker://<run>/external_weights/<name> "
                                      "path"))
    if settings.compress_to and not settings.output_path:
        raise ConfigError(ConfigIssue("", "squeeze", "compress_to", "a compression rank is set but there is nowhere "
                                      "to write the result", "set output_path"))
    options = config.backend_options() if config.backend.backend == "tinker" else None
    api_key = options.api_key if isinstance(options, TinkerOptions) else ""
    folder = local_adapter_folder(settings.adapter_path, api_key=api_key)
    analysis = analyze(folder, target_ranks=settings.target_ranks, source_rank=settings.source_rank,
                       min_variance_retention=settings.min_variance_retention, device=settings.device)
    out.write(analysis.table())
    summary: dict[str, object] = {**analysis.to_dict(spectra=False), "adapter_path": settings.adapter_path,
                                  "compressed_path": None, "compressed_rank": None}
    if settings.output_path:
        rank = settings.compress_to or analysis.recommended_rank
        written = compress(folder, settings.output_path, rank, device=settings.device)
        summary.update(compressed_path=str(written), compressed_rank=rank)
        out.write(f"wrote the rank-{rank} adapter to {written}\n")
        report_path = written.absolute().parent / REPORT_NAME
    else:
        report_path = folder.absolute().parent / REPORT_NAME
    summary["report_path"] = str(report_path)
    write_atomic(report_path, json.dumps({**analysis.to_dict(), **summary}, indent=2) + "\n")
    out.write(f"wrote {report_path}\n")
    return summary


def local_adapter_folder(adapter_path: str | Path, *, api_key: str = "", cache_dir: Path | None = None,
                         timeout_s: float = 60.0) -> Path:
    """The local folder of an adapter: the path itself, or a ``tinker://`` checkpoint's copy
    under the cache (fetched once, see ``fetch_tinker_adapter``)."""
    text = str(adapter_path)
    if text.startswith(TINKER_PREFIX):
        return fetch_tinker_adapter(text, api_key=api_key, cache_dir=cache_dir, timeout_s=timeout_s)
    return Path(text).expanduser()


def _tinker_target(tinker_path: str, cache_dir: Path | None) -> tuple[ModuleType, Path]:
    from retrain.models.tiny import cache_root
    from retrain.optional import require_module
    tinker = require_module("tinker", "tinker", "squeeze", "adapter_path", "a tinker:// adapter path")
    try:
        parsed = tinker.ParsedCheckpointTinkerPath.from_tinker_path(tinker_path)
    except ValueError as exc:
        raise SqueezeError(f"[squeeze] adapter_path {tinker_path!r} is not a Tinker checkpoint path — use "
                           "tinker://<run id>/external_weights/<name>") from exc
    if parsed.checkpoint_type != "external":
        raise SqueezeError(
            f"{tinker_path} is a Tinker {parsed.checkpoint_type} checkpoint, which Tinker hands out only through an "
            f"export in a new training session — export it first (`tinker checkpoint download {tinker_path}`, or "
            "TrainingClient.save_weights_external) and set [squeeze] adapter_path to the downloaded folder or to "
            "the tinker://<run id>/external_weights/<name> path")
    name = f"{parsed.training_run_id}_{parsed.checkpoint_id}".replace("/", "_")
    return tinker, Path(cache_dir if cache_dir is not None else cache_root()) / "tinker" / name / "adapter"


def fetch_tinker_adapter(tinker_path: str, *, api_key: str = "", cache_dir: Path | None = None,
                         timeout_s: float = 60.0, client: WeightsClient | None = None) -> Path:
    """Download a Tinker external-weights checkpoint (``tinker://<run>/external_weights/<name>``)
    through the tinker SDK's signed per-file URLs (``RestClient.get_external_weights_urls``)
    into ``<cache>/tinker/<run>_external_weights_<name>/adapter`` and return that folder; a
    copy already there is reused, since a checkpoint never changes.

    Needs ``api_key`` or ``TINKER_API_KEY`` (unless a ``client`` is given); every request
    waits at most ``timeout_s``. A tar archive among the files is unpacked
    (``unpack_downloads``). The files land in a temporary folder renamed into place, so an
    interrupted fetch leaves nothing behind.
    """
    tinker, target = _tinker_target(tinker_path, cache_dir)
    if (target / ADAPTER_CONFIG).is_file():
        return target
    if client is None:
        key = api_key or os.environ.get("TINKER_API_KEY", "")
        if not key:
            raise SqueezeError(f"fetching {tinker_path} needs a Tinker API key — set TINKER_API_KEY (or "
                               "[backend.options] api_key with backend = \"tinker\"), or download the adapter "
                               "and give its folder")
        client = tinker.RestClient(api_key=key)
    try:
        urls = client.get_external_weights_urls(tinker_path).result(timeout=timeout_s).urls
    except (TimeoutError, tinker.TinkerError) as exc:
        raise SqueezeError(f"Tinker gave no download links for {tinker_path}: {exc} — check the path, "
                           "TINKER_API_KEY and the network, then run again") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".download.", dir=target.parent))
    try:
        for name, url in sorted(urls.items()):
            _download(url, _inside(staging, name), timeout_s)
        try:
            os.rename(unpack_downloads(staging), target)
        except OSError:
            if not (target / ADAPTER_CONFIG).is_file():  # else another process fetched it first
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def _inside(folder: Path, name: str) -> Path:
    path = (folder / name).resolve()
    if not path.is_relative_to(folder.resolve()):
        raise SqueezeError(f"a file of the Tinker checkpoint would land outside its folder ({name!r}) — the "
                           "checkpoint is not usable as it is; download it by hand and check it")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def _download(url: str, path: Path, timeout_s: float) -> None:
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response, path.open("wb") as handle:
            shutil.copyfileobj(response, handle, 1 << 20)
    except OSError as exc:  # URLError and socket timeouts are OSErrors
        raise SqueezeError(f"downloading {path.name} of a Tinker checkpoint failed: {exc} — check the network "
                           "and run again") from exc


def extract_adapter_archive(archive: Path, destination: Path) -> None:
    """Unpack a tar archive (``.tar``, ``.tar.gz``, ``.tgz``) into ``destination``; tarfile's
    ``data`` filter refuses members outside it, links out of it and device files."""
    try:
        with tarfile.open(archive) as bundle:
            bundle.extractall(destination, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise SqueezeError(f"cannot unpack the adapter archive {archive.name}: {exc} — download it again") from exc


def unpack_downloads(folder: Path) -> Path:
    """Unpack the archives under ``folder`` and return the shallowest folder beneath it that
    holds an ``adapter_config.json``."""
    for archive in [item for item in folder.rglob("*") if item.is_file() and item.name.endswith(ARCHIVES)]:
        extract_adapter_archive(archive, archive.parent)
        archive.unlink()
    configs = sorted(folder.rglob(ADAPTER_CONFIG), key=lambda path: len(path.parts))
    if configs:
        return configs[0].parent
    files = sorted(str(item.relative_to(folder)) for item in folder.rglob("*") if item.is_file())
    hint = ("the files are age-encrypted: decrypt them with `age -d` and set adapter_path to that folder"
            if any(name.endswith(".age") for name in files) else "the checkpoint is not a PEFT LoRA adapter")
    raise SqueezeError(f"the downloaded checkpoint has no {ADAPTER_CONFIG} (files: {', '.join(files) or 'none'}) "
                       f"— {hint}")
