"""The JSON-over-HTTP calls the fake backend and engine make, each with a deadline."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from retrain.errors import BackendError

TIMEOUT_S = 10.0


def post_json(base_url: str, path: str, body: dict) -> dict:
    """POST ``body`` to ``base_url + path``; the JSON reply, or a ``BackendError``."""
    request = urllib.request.Request(base_url + path, data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as exc:
        raise BackendError(f"{base_url}{path} answered {exc.code}: {exc.read().decode(errors='replace')}") from exc
    except (urllib.error.URLError, TimeoutError) as exc:
        raise BackendError(f"{base_url}{path} is unreachable: {exc}") from exc
