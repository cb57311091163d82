"""The ``judge`` reward: an LLM decides whether each completion reaches the reference.

Each completion is sent, with the problem and the reference answer, to an
OpenAI-compatible ``POST {base}/chat/completions`` endpoint (``[reward] judge_model``;
``base`` from ``OPENAI_BASE_URL``, default ``https://api.openai.com/v1``; bearer key from
``OPENAI_API_KEY``). The judge must answer with exactly one word, ``CORRECT`` (reward
1.0) or ``INCORRECT`` (0.0); anything else is a malformed verdict — never guessed at,
since "incorrect" contains "correct".

Requests run concurrently. Transient failures (HTTP 429 and 5xx, connection errors,
timeouts) and malformed verdicts are retried with exponential backoff (honouring
``Retry-After``); other HTTP errors (a bad key, an unknown model) fail at once. When the
retries are spent a malformed verdict raises ``RewardError`` under ``[plugins] strict =
true``, or scores 0.0 with a warning under ``strict = false``.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from retrain.config.schema import Config
from retrain.errors import ConfigError, ConfigIssue
from retrain.rewards.base import RewardError, examples_per_completion
from retrain.types import Example

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_VERDICT = re.compile(r"^\s*(CORRECT|INCORRECT)\s*\.?\s*$", re.IGNORECASE)
_TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

JUDGE_INSTRUCTIONS = (
    "You grade answers to problems. You are given a problem, its reference answer, and a "
    "candidate response. Decide whether the candidate's final answer is equivalent to the "
    "reference answer; the reasoning that leads to it does not matter. Reply with exactly one "
    "word: CORRECT or INCORRECT."
)


def parse_verdict(content: str) -> float | None:
    """1.0 for ``CORRECT``, 0.0 for ``INCORRECT`` (case-insensitive, optional final
    period), None for anything else."""
    match = _VERDICT.match(content)
    if match is None:
        return None
    return 1.0 if match.group(1).upper() == "CORRECT" else 0.0


def judge_messages(problem: str, reference: str, completion: str) -> list[dict[str, str]]:
    """The chat messages sent to the judge for one completion."""
    return [
        {"role": "system", "content": JUDGE_INSTRUCTIONS},
        {
            "role": "user",
            "content": f"Problem:\n{problem}\n\nReference answer:\n{reference}\n\nCandidate response:\n{completion}",
        },
    ]


def problem_text(example: Example) -> str:
    """The last user turn of the prompt: the problem the completion answers."""
    for message in reversed(example.messages):
        if message.get("role") == "user":
            return message.get("content", "")
    return ""


class _Transient(Exception):
    """A failure worth retrying; ``wait_s`` is the server's Retry-After, if any."""

    def __init__(self, reason: str, wait_s: float | None = None) -> None:
        super().__init__(reason)
        self.wait_s = wait_s


@dataclass(frozen=True)
class _Verdict:
    reward: float | None
    reply: str


class JudgeReward:
    """Binary rewards from an LLM judge behind an OpenAI-compatible chat endpoint.

    ``environ`` (default ``os.environ``) supplies ``OPENAI_BASE_URL``/``OPENAI_API_KEY``;
    ``sleep`` is the wait used between retries.
    """

    @classmethod
    def config_issues(cls, config: Config) -> list[ConfigIssue]:
        """What stops the judge from being called, found before any model loads."""
        return judge_issues(config, os.environ)

    def __init__(
        self,
        config: Config,
        *,
        environ: Mapping[str, str] | None = None,
        max_concurrency: int = 16,
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        timeout_s: float = 60.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        environ = os.environ if environ is None else environ
        issues = judge_issues(config, environ)
        if issues:
            raise ConfigError(issues)
        self.model = config.reward.judge_model
        self.base_url = (environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
        self.api_key = environ.get("OPENAI_API_KEY", "")
        self.url = f"{self.base_url}/chat/completions"
        self.strict = config.plugins.strict
        self.max_concurrency = max_concurrency
        self.max_attempts = max_attempts
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self.timeout_s = timeout_s
        self.sleep = sleep
        # Completions scored 0.0 because the judge never gave a well-formed verdict
        # (only under [plugins] strict = false).
        self.malformed_verdicts = 0

    def score(self, texts: list[str], examples: list[Example]) -> np.ndarray:
        aligned = examples_per_completion(texts, examples)
        if not texts:
            return np.zeros(0, dtype=np.float64)
        jobs = [judge_messages(problem_text(example), example.reference, text) for text, example in zip(texts, aligned)]
        with ThreadPoolExecutor(max_workers=min(self.max_concurrency, len(jobs))) as pool:
            verdicts = list(pool.map(self._judge, jobs))
        rewards_N = np.zeros(len(texts), dtype=np.float64)
        for index, verdict in enumerate(verdicts):
            if verdict.reward is not None:
                rewards_N[index] = verdict.reward
                continue
            message = (f"judge '{self.model}' gave no CORRECT/INCORRECT verdict for completion {index} after "
                       f"{self.max_attempts} attempts; last reply: {verdict.reply[:200]!r}")
            if self.strict:
                raise RewardError(message + " — use a judge model that follows the one-word instruction, or set "
                                  "[plugins] strict = false to score such completions 0.0")
            logger.warning("%s; scoring it 0.0", message)
            self.malformed_verdicts += 1
        return rewards_N

    def _judge(self, messages: list[dict[str, str]]) -> _Verdict:
        last = _Verdict(None, "")
        for attempt in range(self.max_attempts):
            try:
                reply = self._request(messages)
            except _Transient as failure:
                if attempt + 1 == self.max_attempts:
                    raise RewardError(
                        f"judge endpoint {self.url} failed {self.max_attempts} times; last error: {failure} — "
                        "check that the server is up and OPENAI_BASE_URL is right, or retry later"
                    ) from failure
                self.sleep(self._backoff(attempt, failure.wait_s))
                continue
            last = _Verdict(parse_verdict(reply), reply)
            if last.reward is not None:
                return last
            if attempt + 1 < self.max_attempts:
                self.sleep(self._backoff(attempt, None))
        return last

    def _backoff(self, attempt: int, server_wait_s: float | None) -> float:
        wait_s = self.backoff_s * 2**attempt
        if server_wait_s is not None:
            wait_s = max(wait_s, server_wait_s)
        return min(wait_s, self.max_backoff_s)

    def _request(self, messages: list[dict[str, str]]) -> str:
        body = json.dumps({"model": self.model, "messages": messages, "temperature": 0}).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        request = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
        try:
            with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
                payload = response.read()
        except urllib.error.HTTPError as error:
            detail = error.read()[:300].decode("utf-8", "replace")
            if error.code in _TRANSIENT_STATUS:
                raise _Transient(f"HTTP {error.code}: {detail}", _retry_after(error.headers.get("Retry-After"))) from error
            raise RewardError(
                f"judge endpoint {self.url} answered HTTP {error.code}: {detail} — check OPENAI_API_KEY, "
                f"[reward] judge_model = \"{self.model}\" and OPENAI_BASE_URL"
            ) from error
        except (urllib.error.URLError, http.client.HTTPException, ConnectionError, TimeoutError) as error:
            raise _Transient(f"{type(error).__name__}: {error}") from error
        return _reply_content(payload, self.url)


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        # An HTTP date instead of seconds: fall back to our own backoff.
        return None


def _reply_content(payload: bytes, url: str) -> str:
    try:
        content = json.loads(payload)["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as error:
        raise RewardError(
            f"judge endpoint {url} returned something that is not a chat completion: {payload[:200]!r} — "
            "OPENAI_BASE_URL must point at an OpenAI-compatible /v1 API"
        ) from error
    return content if isinstance(content, str) else ""


def judge_issues(config: Config, environ: Mapping[str, str]) -> list[ConfigIssue]:
    """A judge model must be named, and the OpenAI API needs a key (another
    OpenAI-compatible server, through OPENAI_BASE_URL, may not)."""
    if not config.reward.judge_model:
        return [ConfigIssue("", "reward", "judge_model", "type = \"judge\" needs a judge model",
                            "set judge_model, e.g. \"gpt-4o-mini\"")]
    base_url = (environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL).rstrip("/")
    if not environ.get("OPENAI_API_KEY") and base_url == DEFAULT_BASE_URL:
        return [ConfigIssue("env OPENAI_API_KEY", "reward", "type",
                            "the judge reward calls the OpenAI API, and OPENAI_API_KEY is not set",
                            "export OPENAI_API_KEY (or put it in .env), or point OPENAI_BASE_URL at another "
                            "OpenAI-compatible server")]
    return []
