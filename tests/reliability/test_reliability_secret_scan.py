"""The secrets scan: plant secret-like values in every place a config can hold one (a
plugin's parameters under credential-like names, a URL with a password, the
environment and .env), run explain, train, fail a resume, resume, and then search every
file the runs wrote and everything they printed: no planted value may appear."""

from __future__ import annotations

import os
from pathlib import Path

from cli_runs import cli_environment, describe, retrain_command, workdir_with_default_config

import subprocess

# One distinct value per place, so a leak names its source.
SECRETS = {
    "toml api_key": "S3cr3tTomlApiKey",
    "toml passwd": "S3cr3tTomlPasswd",
    "toml authorization": "S3cr3tTomlAuthorization",
    "toml url password": "S3cr3tTomlUrlPassword",
    "toml OPENAI_API_KEY": "S3cr3tTomlUpperCase",
    "toml nested password": "S3cr3tTomlNested",
    "dotenv access_token": "S3cr3tDotenvToken",
    "env OPENAI_API_KEY": "S3cr3tEnvOpenai",
    "env OPENAI_BASE_URL password": "S3cr3tEnvBaseUrl",
}

PLUGIN = '''
from dataclasses import dataclass

import numpy as np

from retrain.plugin_api import register, setting


@dataclass(frozen=True)
class LeakyParams:
    api_key: str = setting("", "a credential")
    passwd: str = setting("", "a credential")
    authorization: str = setting("", "a credential")
    access_token: str = setting("", "a credential")
    endpoint: str = setting("", "a URL with a password")
    OPENAI_API_KEY: str = setting("", "a credential, in upper case")
    auth: dict[str, str] = setting({}, "credentials, nested")


@register("advantage", params=LeakyParams)
def leaky(rewards_P_G, params):
    # The run must hand the plugin its real secrets, on a resume too (not blanks).
    assert params.api_key == "{api_key}" and params.access_token == "{token}", params
    assert params.endpoint.startswith("https://alice:"), params.endpoint
    assert params.OPENAI_API_KEY == "{upper}" and params.auth == {"user": "bob", "password": "{nested}"}, params
    rewards = np.asarray(rewards_P_G, dtype=np.float64)
    return rewards - rewards.mean(axis=1, keepdims=True)
'''


def planted_workdir(tmp_path: Path) -> Path:
    workdir = workdir_with_default_config(tmp_path / "work")
    (workdir / "plugins").mkdir()
    source = PLUGIN
    for marker, name in (("{api_key}", "toml api_key"), ("{token}", "dotenv access_token"),
                         ("{upper}", "toml OPENAI_API_KEY"), ("{nested}", "toml nested password")):
        source = source.replace(marker, SECRETS[name])
    (workdir / "plugins" / "leaky.py").write_text(source)
    config = (workdir / "retrain.toml").read_text().replace('advantage_mode = "maxrl"',
                                                            'advantage_mode = "leaky.leaky"')
    config += f'''
[algorithm.advantage_params]
api_key = "{SECRETS['toml api_key']}"
passwd = "{SECRETS['toml passwd']}"
authorization = "{SECRETS['toml authorization']}"
endpoint = "https://alice:{SECRETS['toml url password']}@example.org/v1"
OPENAI_API_KEY = "{SECRETS['toml OPENAI_API_KEY']}"
auth = {{ user = "bob", password = "{SECRETS['toml nested password']}" }}

[plugins]
search_paths = ["plugins"]
'''
    (workdir / "retrain.toml").write_text(config)
    (workdir / ".env").write_text(f"RETRAIN_ALGORITHM__ADVANTAGE_PARAMS__ACCESS_TOKEN={SECRETS['dotenv access_token']}\n")
    return workdir


def run(workdir: Path, cache: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    environ = {**cli_environment(cache), "OPENAI_API_KEY": SECRETS["env OPENAI_API_KEY"],
               "OPENAI_BASE_URL": f"https://bob:{SECRETS['env OPENAI_BASE_URL password']}@judge.example/v1",
               **(env or {})}
    return subprocess.run(retrain_command(*args), cwd=workdir, env=environ, capture_output=True, text=True,
                          timeout=300, check=False)


def leaks(text: str) -> list[str]:
    return [name for name, secret in SECRETS.items() if secret in text]


def test_no_planted_secret_reaches_any_output(tmp_path: Path, retrain_cache: Path) -> None:
    workdir = planted_workdir(tmp_path)
    printed = []
    for args in (("explain",), ("explain", "--json"), ("--max-steps", "2", "--save-every", "1")):
        result = run(workdir, retrain_cache, *args)
        assert result.returncode == 0, describe(result)
        printed.append(result.stdout + result.stderr)

    # The snapshot keeps no secret, so a resume must be given the TOML's again.
    refused = run(workdir, retrain_cache, "--resume", "logs/default", "--max-steps", "3")
    assert refused.returncode == 2, describe(refused)
    for name in ("API_KEY", "OPENAI_API_KEY", "AUTH__PASSWORD"):
        assert f"RETRAIN_ALGORITHM__ADVANTAGE_PARAMS__{name}" in refused.stderr, refused.stderr
    printed.append(refused.stdout + refused.stderr)
    again = {"RETRAIN_ALGORITHM__ADVANTAGE_PARAMS__API_KEY": SECRETS["toml api_key"],
             "RETRAIN_ALGORITHM__ADVANTAGE_PARAMS__PASSWD": SECRETS["toml passwd"],
             "RETRAIN_ALGORITHM__ADVANTAGE_PARAMS__AUTHORIZATION": SECRETS["toml authorization"],
             "RETRAIN_ALGORITHM__ADVANTAGE_PARAMS__ENDPOINT":
                 f"https://alice:{SECRETS['toml url password']}@example.org/v1",
             # named as the refusal names them: upper case and nested keys too
             "RETRAIN_ALGORITHM__ADVANTAGE_PARAMS__OPENAI_API_KEY": SECRETS["toml OPENAI_API_KEY"],
             "RETRAIN_ALGORITHM__ADVANTAGE_PARAMS__AUTH__PASSWORD": SECRETS["toml nested password"],
             "RETRAIN_ALGORITHM__ADVANTAGE_PARAMS__AUTH__USER": "bob"}  # everything under a secret name is one
    resumed = run(workdir, retrain_cache, "--resume", "logs/default", "--max-steps", "3", env=again)
    assert resumed.returncode == 0, describe(resumed)
    printed.append(resumed.stdout + resumed.stderr)

    for output in printed:
        assert not leaks(output), (leaks(output), output[-3000:])
    inputs = {workdir / "retrain.toml", workdir / ".env", workdir / "plugins" / "leaky.py"}
    written = [path for path in workdir.rglob("*") if path.is_file() and path not in inputs]
    assert any(path.name == "config.toml" for path in written) and any(p.name == "metrics.jsonl" for p in written)
    for path in written:
        found = leaks(path.read_bytes().decode("latin-1"))
        assert not found, f"{path.relative_to(workdir)} holds {found}"
    assert os.environ.get("RETRAIN_ALGORITHM__ADVANTAGE_PARAMS__API_KEY") is None
