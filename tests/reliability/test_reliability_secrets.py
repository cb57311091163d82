"""Secrets never reach a written or printed config: names that look like credentials, at
any depth and in any case, lists under them, and credentials inside URLs."""

from __future__ import annotations

import dataclasses

import pytest

from retrain.config.schema import BackendConfig, Config, InferenceConfig
from retrain.config.snapshot import config_to_dict, config_to_toml, redact_text

PLANTED = ["S3cr3tA", "S3cr3tB", "S3cr3tC", "S3cr3tD", "S3cr3tE", "S3cr3tF", "S3cr3tG", "S3cr3tH", "S3cr3tI"]


def planted_config() -> Config:
    options = {
        "access_key": PLANTED[0], "AUTHORIZATION": PLANTED[1], "passwd": PLANTED[2],
        "nested": {"private_key": PLANTED[3], "more": {"Api-Key": PLANTED[4]}},
        "http_auth": [PLANTED[5]], "endpoint": f"https://alice:{PLANTED[6]}@example.org/v1",
        "author": "kept", "timeout_s": 3,
    }
    return dataclasses.replace(Config(), backend=BackendConfig(options=options),
                               inference=InferenceConfig(url=f"http://bob:{PLANTED[7]}@127.0.0.1:8000/v1"))


@pytest.mark.parametrize("render", [lambda config: repr(config_to_dict(config)), config_to_toml])
def test_no_planted_secret_survives_rendering(render) -> None:
    text = render(planted_config())
    assert not [secret for secret in PLANTED if secret in text], text
    assert "kept" in text and "example.org/v1" in text and "127.0.0.1:8000/v1" in text


@pytest.mark.parametrize(("text", "expected"), [
    ("http://alice:PW@host/v1", "http://host/v1"),
    ("postgres://u@db:5432/x and https://a:b@c.d", "postgres://db:5432/x and https://c.d"),
    ("https://host/v1?user=x@y", "https://host/v1?user=x@y"),  # an @ after the host is not a credential
])
def test_url_credentials_are_removed_and_nothing_else(text: str, expected: str) -> None:
    assert redact_text(text) == expected
