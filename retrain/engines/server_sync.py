"""Weight sync with an inference server: after every update the server must sample from
exactly the weights just published, and nothing it cached under older weights may serve.

- **LoRA** (``VersionedAdapters``): each published adapter folder is loaded under a new
  name, ``<prefix>-v<version>`` (vLLM ``POST /v1/load_lora_adapter``, SGLang ``POST
  /load_lora_adapter``, body ``{lora_name, lora_path}``); requests name it, and the
  previous version is unloaded once the new one is in. A new name is a new adapter id in
  the server, so no prefix-cache block or adapter slot of an older version can be hit.
  The prefix holds a hash of the run's log folder, so runs sharing a server never unload
  each other's adapters.
- **Full weights** (``DiskReload``): the server reloads the published model folder in
  place — SGLang ``POST /update_weights_from_disk`` (tagged with the version, which the
  server then reports), vLLM ``POST /collective_rpc`` calling the workers'
  ``reload_weights`` followed by ``POST /reset_prefix_cache`` (both exist only when the
  server runs with ``VLLM_SERVER_DEV_MODE=1``).

Freshness: after a load the server is asked what it serves (the adapters it lists with
their folders, or the weight version it reports) and the run stops with an
``EngineError`` unless that is the version just published.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field

from retrain.errors import EngineError
from retrain.http import HttpClient, HttpError, HttpStatusError, RequestCancelled
from retrain.types import PolicyRef

logger = logging.getLogger(__name__)

# Substrings of a server's error text, and the server flag or setting that fixes each.
LOAD_HINTS: tuple[tuple[str, str], ...] = (
    (r"max_lora_rank|max lora rank|lora rank .* (greater|larger|exceed)",
     "the adapter's rank ([model] lora_rank) is above the server's maximum: restart it with --max-lora-rank R, "
     "R >= lora_rank"),
    (r"lora is not enabled|enable[-_]lora|lora.*not (enabled|supported)",
     "the server was started without LoRA support: restart it with --enable-lora"),
    (r"target.?modules|not supported for lora|unsupported.*module",
     "the server cannot apply an adapter on these modules: restart it with matching --lora-target-modules, or "
     "train fewer modules"),
)


def adapter_prefix(log_dir: str) -> str:
    """``retrain-<8 hex>``: one run's adapter names on a shared server."""
    return "retrain-" + hashlib.sha256(log_dir.encode("utf-8")).hexdigest()[:8]


def explain_load_failure(error: HttpError, what: str) -> EngineError:
    """An ``EngineError`` for a failed weight load, with the server flag that fixes it
    when the server's message names the cause."""
    text = str(error)
    for pattern, fix in LOAD_HINTS:
        if re.search(pattern, text, re.IGNORECASE):
            return EngineError(f"{what} failed: {text} — {fix}")
    if isinstance(error, HttpStatusError) and error.status in (404, 405) and "not found" in error.detail.lower() \
            and "adapter" not in error.detail.lower():
        return EngineError(f"{what} failed: {text} — the server has no such endpoint; for vLLM start it with "
                           "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1 (LoRA) or VLLM_SERVER_DEV_MODE=1 (full weights)")
    return EngineError(f"{what} failed: {text} — check the server's log")


def _post(client: HttpClient, path: str, payload: dict[str, object], what: str) -> object:
    try:
        response = client.post_json(path, payload, what)
    except RequestCancelled:
        raise
    except HttpError as error:
        raise explain_load_failure(error, what) from error
    try:
        return json.loads(response.body) if response.body.strip() else None
    except ValueError:
        return response.body.decode("utf-8", "replace")  # vLLM answers a load with a line of text


def _refused(reply: object) -> str:
    """The error of an ``{"success": false, ...}`` reply (SGLang), or ""."""
    if isinstance(reply, dict) and reply.get("success") is False:
        return str(reply.get("error_message") or reply.get("message") or reply)
    return ""


@dataclass
class VersionedAdapters:
    """LoRA adapters loaded under versioned names; see the module docstring.

    ``served`` lists the adapters the server serves now as ``{name: folder}`` (None when
    the server cannot say; freshness then rests on the load's acknowledgement).
    """

    client: HttpClient
    load_path: str
    unload_path: str
    prefix: str
    served: Callable[[], dict[str, str] | None]
    current: str = ""
    loaded: list[str] = field(default_factory=list)

    def load(self, ref: PolicyRef) -> str:
        name = f"{self.prefix}-v{ref.version}"
        what = f"loading adapter {name} ({ref.location})"
        if name != self.current:
            reply = _post(self.client, self.load_path, {"lora_name": name, "lora_path": ref.location}, what)
            if _refused(reply):
                raise explain_load_failure(HttpError(_refused(reply)), what)
            self.loaded.append(name)
        served = self.served()
        if served is not None and (name not in served or served[name].rstrip("/") not in ("", ref.location.rstrip("/"))):
            raise EngineError(f"after {what} the server lists {sorted(served)} — it does not serve {name} from "
                              f"{ref.location}, so sampling would use stale weights")
        # The previous version is unloaded by the engine once no request samples from it.
        self.current = name
        return name

    def unload(self, name: str) -> None:
        reply = _post(self.client, self.unload_path, {"lora_name": name}, f"unloading adapter {name}")
        if _refused(reply):
            raise EngineError(f"unloading adapter {name} failed: {_refused(reply)}")
        if name in self.loaded:
            self.loaded.remove(name)

    def close(self) -> None:
        """Unload what this run loaded; a server that is gone by now is only warned about."""
        for name in list(self.loaded):
            try:
                self.unload(name)
            except (EngineError, HttpError) as error:
                logger.warning("could not unload adapter %s at the end of the run: %s", name, error)
                break


@dataclass
class DiskReload:
    """Full weights reloaded from the published folder; see the module docstring.

    ``reload`` sends the request(s) for one folder and version; ``reported`` returns the
    weight version the server reports serving (None when it reports none).
    """

    client: HttpClient
    reload: Callable[[HttpClient, PolicyRef], None]
    reported: Callable[[], str | None]
    served_model: str
    current: str = ""

    def load(self, ref: PolicyRef) -> str:
        self.reload(self.client, ref)
        version = self.reported()
        if version is not None and version != str(ref.version):
            raise EngineError(f"after reloading {ref.location} the server reports weight version {version!r}, not "
                              f"{ref.version}, so sampling would use stale weights")
        self.current = self.served_model
        return self.served_model

    def close(self) -> None:
        return None


def sglang_reload(client: HttpClient, ref: PolicyRef) -> None:
    what = f"reloading weights from {ref.location}"
    reply = _post(client, "update_weights_from_disk",
                  {"model_path": ref.location, "weight_version": str(ref.version), "abort_all_requests": False}, what)
    if _refused(reply):
        raise EngineError(f"{what} failed: {_refused(reply)}")
    _post(client, "flush_cache", {}, "flushing the server's prefix cache")


def vllm_reload(client: HttpClient, ref: PolicyRef) -> None:
    what = f"reloading weights from {ref.location}"
    _post(client, "collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": ref.location}}, what)
    _post(client, "reset_prefix_cache", {}, "resetting the server's prefix cache")


WeightSync = VersionedAdapters | DiskReload
