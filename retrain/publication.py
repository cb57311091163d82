"""Weight publication: the backend publishes a policy version, the engine loads it.

After every update the backend publishes its policy as a ``PolicyRef`` of the kind the
run plan chose (the first kind the engine loads that the backend publishes: the live
model in this process, an adapter or model folder, a remote reference) and the engine
loads it. The run only moves the reference between them and checks freshness: after a
load the engine must serve exactly the version just published, or the run stops with an
``EngineError`` (sampling from stale weights would be silent off-policy training). Only
with ``[inference] allow_stale_weights`` does a failed load (after the first) leave the
engine on its previous version, with a loud warning; the samples then carry their older
version, so each step's ``policy_staleness`` shows the lag.

Folder publications go to ``<log_dir>/engine_weights/policy_v<N>`` (absolute paths: an
engine in another process resolves them from its own directory); once the engine has
loaded version N the older folders are removed, so one version is kept on disk.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from retrain.atomic import raise_if_disk_full
from retrain.errors import EngineError
from retrain.types import Backend, Engine, PolicyKind, PolicyRef

logger = logging.getLogger(__name__)

FOLDER_KINDS: tuple[PolicyKind, ...] = ("lora_adapter", "full_weights")


class Publisher:
    """Brings the engine up to date with the backend's latest policy version."""

    def __init__(self, backend: Backend, engine: Engine, kind: PolicyKind, directory: Path,
                 allow_stale: bool = False) -> None:
        self.backend = backend
        self.allow_stale = allow_stale
        self.engine = engine
        self.kind = kind
        self.directory = Path(directory).resolve()
        self.published_version: int | None = None

    def publish(self) -> int:
        """Publish the backend's policy if it changed since the last publication; the
        version the engine now serves."""
        version = self.backend.policy_version
        if version != self.published_version:
            self.publish_now()
        return version

    def publish_now(self) -> PolicyRef:
        """Publish the backend's current policy and have the engine load it (at start, and
        after a resume restored the backend)."""
        try:
            ref = self.backend.publish(self.kind, self.directory)
        except (OSError, RuntimeError) as exc:  # torch reports a failed write as a RuntimeError
            raise_if_disk_full(exc, self.directory, what=f"cannot publish policy version {self.backend.policy_version}",
                               needed="it needs room for one copy of the weights (the older copy is removed once "
                               "the engine loads the new one)",
                               then="continue from the last checkpoint with `retrain --resume <log_dir>`")
            raise
        if ref.kind != self.kind or ref.version != self.backend.policy_version:
            raise EngineError(f"the backend published a {ref.kind} reference for version {ref.version}; the run asked "
                              f"for {self.kind} at version {self.backend.policy_version} — the backend breaks "
                              "its publish() contract")
        try:
            self.engine.load(ref)
        except EngineError as error:
            if not self.allow_stale or self.engine.policy_version < 0:
                raise
            logger.warning("STALE WEIGHTS: loading policy version %d failed (%s); the engine keeps sampling from "
                           "version %d ([inference] allow_stale_weights = true) — policy_staleness in metrics.jsonl "
                           "counts the versions it lags", ref.version, error, self.engine.policy_version)
            return ref
        served = self.engine.policy_version
        if served != ref.version:
            raise EngineError(f"the engine serves policy version {served} after loading version {ref.version}: its "
                              "weights are stale — check the inference server's logs (a failed adapter load?)")
        if self.kind in FOLDER_KINDS:
            self._remove_older(Path(ref.location))
        self.published_version = ref.version
        return ref

    def _remove_older(self, current: Path) -> None:
        if not self.directory.is_dir():
            return
        for old in self.directory.glob("policy_v*"):
            if old.resolve() != current.resolve():
                shutil.rmtree(old, ignore_errors=True)
