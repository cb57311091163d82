"""The ``judge`` reward: an LLM decides whether each completion reaches the reference.

Each completion is sent, with the problem and the reference answer, to an
OpenAI-compatible ``POST {base}/chat/completions`` endpoint (``[reward] judge_model``;
``base`` from ``OPENAI_BASE_URL``, default ``https://api.openai.com/v1``; bearer key from
``OPENAI_API_KEY``). The judge must answer with exactly one word, ``CORRECT`` (reward
1.0) or ``INCORRECT`` (0.0); anything else is a malformed verdict — never guessed at,
since "incorrect" contains "correct".

Requests run concurrently, at most ``[reward] max_concurrency`` at once, through the
project's HTTP client (retrain/http.py): transient failures (HTTP 429 and 5xx, resets,
truncated replies) and malformed verdicts are retried with exponential backoff
(honouring ``Retry-After``); other HTTP errors (a bad key, an unknown model) fail at once.
Everything for one completion — every attempt and every wait — ends within ``[reward]
timeout_s``, or the run stops with an error saying so. Credentials written into
``OPENAI_BASE_URL`` (``https://user:password@host/v1``) are sent as basic auth and never
printed. When the retries are spent a malformed verdict raises ``RewardError`` under
``[plugins] strict = true``, or scores 0.0 with a warning under ``strict = false``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np

from retrain.concurrency import map_with_deadlines
from retrain.config.schema import Config
from retrain.errors import ConfigError, ConfigIssue
from retrain.http import DeadlineExceeded, HttpClient, HttpError, HttpStatusError, RequestCancelled, parse_endpoint
from retrain.rewards.base import RewardError, examples_per_completion
from retrain.types import Example

logger = logging.getLogger(__name__)

DEFAULT_BASE_URL = "https://api.openai.com/v1"
_VERDICT = re.compile(r"^\s*(CORRECT|INCORRECT)\s*\.?\s*$", re.IGNORECASE)

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


@dataclass(frozen=True)
class _Verdict:
    reward: float | None
    reply: str


class JudgeReward:
    """Binary rewards from an LLM judge behind an OpenAI-compatible chat endpoint.

    ``environ`` (default ``os.environ``) supplies ``OPENAI_BASE_URL``/``OPENAI_API_KEY``;
    ``wait`` replaces the backoff wait between retries (it returns True to cancel).
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
        max_attempts: int = 5,
        backoff_s: float = 1.0,
        max_backoff_s: float = 30.0,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        environ = os.environ if environ is None else environ
        issues = judge_issues(config, environ)
        if issues:
            raise ConfigError(issues)
        self.model = config.reward.judge_model
        endpoint = parse_endpoint(environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL, "OPENAI_BASE_URL")
        api_key = environ.get("OPENAI_API_KEY", "")
        self.client = HttpClient(endpoint, deadline_s=config.reward.timeout_s, backoff_s=backoff_s,
                                 max_backoff_s=max_backoff_s, max_attempts=max_attempts, wait=wait,
                                 headers={"Authorization": f"Bearer {api_key}"} if api_key else {})
        self.url = f"{endpoint.shown}/chat/completions"
        self.strict = config.plugins.strict
        self.max_concurrency = config.reward.max_concurrency
        self.max_attempts = max_attempts
        # Completions scored 0.0 because the judge never gave a well-formed verdict
        # (only under [plugins] strict = false).
        self.malformed_verdicts = 0

    def score(self, texts: list[str], examples: list[Example]) -> np.ndarray:
        aligned = examples_per_completion(texts, examples)
        if not texts:
            return np.zeros(0, dtype=np.float64)
        jobs = [judge_messages(problem_text(example), example.reference, text) for text, example in zip(texts, aligned)]
        # The client ends each call by its deadline; the margin only catches a worker stuck
        # where no socket timeout reaches (a hung name lookup), on threads that never hold
        # the process at exit.
        verdicts = map_with_deadlines(lambda index: self._judge(jobs[index]), len(jobs),
                                      max_workers=self.max_concurrency, timeout_s=self.client.deadline_s + 5.0,
                                      overdue=self._overdue, name="judge")
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

    def close(self) -> None:
        """Close the connections kept open to the judge (the environment closes its reward
        when the run ends)."""
        self.client.close()

    def _overdue(self, index: int) -> RewardError:
        return RewardError(f"judge call for completion {index} to {self.url} did not end within [reward] timeout_s "
                           f"= {self.client.deadline_s:g} s — check the server and OPENAI_BASE_URL")

    def _judge(self, messages: list[dict[str, str]]) -> _Verdict:
        """Ask until a well-formed verdict comes back, all within one deadline."""
        deadline = self.client.new_deadline()
        last = _Verdict(None, "")
        for attempt in range(self.max_attempts):
            reply = self._ask(messages, deadline)
            last = _Verdict(parse_verdict(reply), reply)
            if last.reward is not None or attempt + 1 == self.max_attempts:
                return last
            wait_s = self.client.backoff_s * 2**attempt
            if self.client.clock() + wait_s >= deadline:
                return last
            if (self.client.wait or self.client.in_flight.wait)(wait_s):
                raise RequestCancelled(f"judge request to {self.url} was cancelled: the run is stopping")
        return last

    def _ask(self, messages: list[dict[str, str]], deadline: float) -> str:
        payload = {"model": self.model, "messages": messages, "temperature": 0}
        try:
            response = self.client.post_json("chat/completions", payload, "the judge endpoint", deadline)
        except RequestCancelled:
            raise  # the run is stopping: not the judge's fault
        except DeadlineExceeded as error:
            raise RewardError(f"{error} — a slow judge: raise [reward] timeout_s (now "
                              f"{self.client.deadline_s:g}), lower [reward] max_concurrency, or check the "
                              "server") from error
        except HttpStatusError as error:
            raise RewardError(f"{error} — check OPENAI_API_KEY, [reward] judge_model = \"{self.model}\" and "
                              "OPENAI_BASE_URL") from error
        except HttpError as error:
            raise RewardError(f"{error} — check that the server is up and OPENAI_BASE_URL is right, or retry "
                              "later") from error
        return _reply_content(response.body, self.url)


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
    try:
        endpoint = parse_endpoint(environ.get("OPENAI_BASE_URL") or DEFAULT_BASE_URL, "OPENAI_BASE_URL")
    except HttpError as error:
        return [ConfigIssue("env OPENAI_BASE_URL", "reward", "type", str(error))]
    if endpoint.has_credentials and environ.get("OPENAI_API_KEY"):
        return [ConfigIssue("env OPENAI_BASE_URL", "reward", "type",
                            f"{endpoint.shown} carries a user and password, and OPENAI_API_KEY is set too: both "
                            "would be the request's Authorization", "keep only one of them")]
    base_url = endpoint.url
    if not environ.get("OPENAI_API_KEY") and base_url == DEFAULT_BASE_URL:
        return [ConfigIssue("env OPENAI_API_KEY", "reward", "type",
                            "the judge reward calls the OpenAI API, and OPENAI_API_KEY is not set",
                            "export OPENAI_API_KEY (or put it in .env), or point OPENAI_BASE_URL at another "
                            "OpenAI-compatible server")]
    return []
