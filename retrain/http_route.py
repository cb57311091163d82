"""Where an HTTP call of retrain/http.py connects: straight to the server, or through the
HTTP proxy the environment names (a ``CONNECT`` tunnel for https). A ``Route`` is also
what the client's pool of idle connections is keyed by."""

from __future__ import annotations

import base64
import urllib.parse
import urllib.request
from dataclasses import dataclass


def basic_auth(user: str | None, password: str | None) -> str:
    """The ``Authorization`` value of HTTP basic auth (RFC 7617) for URL-encoded parts."""
    pair = f"{urllib.parse.unquote(user or '')}:{urllib.parse.unquote(password or '')}"
    return "Basic " + base64.b64encode(pair.encode()).decode("ascii")


@dataclass(frozen=True)
class Route:
    """How to reach a server: directly, or through the HTTP proxy the environment names
    (``HTTPS_PROXY``/``HTTP_PROXY``, unless ``NO_PROXY`` covers the host), tunnelled
    (``CONNECT``) for https."""

    host: str
    port: int
    https: bool
    connect_host: str
    connect_port: int
    via_proxy: bool = False
    proxy_authorization: str = ""

    @property
    def tunnel(self) -> bool:
        return self.via_proxy and self.https

    @property
    def host_port(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def authority(self) -> str:
        """The Host header: the port only when it is not the scheme's default."""
        return self.host_port if self.port != (443 if self.https else 80) else self.host_port.rpartition(":")[0]

    @classmethod
    def to(cls, parts: urllib.parse.SplitResult) -> Route:
        https = parts.scheme == "https"
        host, port = parts.hostname or "", parts.port or (443 if https else 80)
        proxy = urllib.request.getproxies().get(parts.scheme, "")
        if not proxy or urllib.request.proxy_bypass(host):
            return cls(host, port, https, host, port)
        proxy_parts = urllib.parse.urlsplit(proxy if "://" in proxy else f"http://{proxy}")
        authorization = ""
        if proxy_parts.username is not None:
            authorization = basic_auth(proxy_parts.username, proxy_parts.password)
        return cls(host, port, https, proxy_parts.hostname or "", proxy_parts.port or 80, True, authorization)
