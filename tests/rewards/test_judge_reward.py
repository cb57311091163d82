"""The judge reward (retrain.rewards.judge) against a real HTTP server on 127.0.0.1.

The server speaks the OpenAI chat-completions dialect: it answers CORRECT when the
candidate response contains the reference answer, and can be told to fail the first
requests (429/503), to answer with a malformed verdict, or to reject the key (401).
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from retrain.config.schema import Config, PluginsConfig, RewardConfig
from retrain.errors import ConfigError
from retrain.rewards.base import RewardError
from retrain.rewards.judge import JudgeReward, judge_messages, parse_verdict
from retrain.types import Example

EXAMPLES = [
    Example("a", ({"role": "user", "content": "What is 2+2?"},), "4"),
    Example("b", ({"role": "user", "content": "What is 3+3?"},), "6"),
]


def test_parse_verdict_is_strict():
    assert parse_verdict("CORRECT") == 1.0
    assert parse_verdict(" incorrect.\n") == 0.0
    assert parse_verdict("Correct") == 1.0
    # Anything but the single word is malformed: "incorrect" contains "correct", so no
    # substring search, and no guessing from longer replies.
    assert parse_verdict("The answer is CORRECT") is None
    assert parse_verdict("CORRECT, because 2+2=4") is None
    assert parse_verdict("") is None


def test_judge_messages_carry_problem_reference_and_completion():
    messages = judge_messages("What is 2+2?", "4", "It is 4.")
    assert messages[0]["role"] == "system" and "CORRECT or INCORRECT" in messages[0]["content"]
    assert "What is 2+2?" in messages[1]["content"]
    assert "Reference answer:\n4" in messages[1]["content"]
    assert "It is 4." in messages[1]["content"]


def _config(strict: bool = True, max_concurrency: int = 16) -> Config:
    return Config(reward=RewardConfig(type="judge", judge_model="grader-1", max_concurrency=max_concurrency),
                  plugins=PluginsConfig(strict=strict))


def recorder(waits: list[float]) -> Callable[[float], bool]:
    """A backoff wait that records how long it was asked to wait, and never cancels."""
    def wait(seconds: float) -> bool:
        waits.append(seconds)
        return False
    return wait


def test_openai_without_a_key_is_a_config_error():
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        JudgeReward(_config(), environ={})


@dataclass
class JudgeServer:
    url: str = ""
    # Status codes to answer the first requests with, in order (then normal service).
    failures: list[int] = field(default_factory=list)
    retry_after: str | None = None
    verdict_override: str | None = None
    reject_key: bool = False
    delay_s: float = 0.0
    requests: list[dict] = field(default_factory=list)
    auth_headers: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_in_flight: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


def _handler(state: JudgeServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            pass

        def _send(self, status: int, payload: dict, headers: dict[str, str] | None = None) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_POST(self) -> None:
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            with state.lock:
                state.requests.append(body)
                state.auth_headers.append(self.headers.get("Authorization", ""))
                failure = state.failures.pop(0) if state.failures else None
                state.in_flight += 1
                state.max_in_flight = max(state.max_in_flight, state.in_flight)
            try:
                time.sleep(state.delay_s)
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": "not found"})
                elif state.reject_key:
                    self._send(401, {"error": {"message": "invalid api key"}})
                elif failure is not None:
                    headers = {"Retry-After": state.retry_after} if state.retry_after else None
                    self._send(failure, {"error": {"message": "busy"}}, headers)
                else:
                    prompt = body["messages"][1]["content"]
                    reference = prompt.split("Reference answer:\n")[1].split("\n")[0]
                    candidate = prompt.split("Candidate response:\n")[1]
                    verdict = state.verdict_override or ("CORRECT" if reference in candidate else "INCORRECT")
                    self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": verdict}}]})
            finally:
                with state.lock:
                    state.in_flight -= 1

    return Handler


@pytest.fixture
def judge_server() -> Iterator[JudgeServer]:
    state = JudgeServer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield state
    server.shutdown()
    server.server_close()
    thread.join()


def _reward(server: JudgeServer, sleeps: list[float], strict: bool = True, max_concurrency: int = 16,
            **options: float) -> JudgeReward:
    environ = {"OPENAI_BASE_URL": server.url, "OPENAI_API_KEY": "sk-test"}
    return JudgeReward(_config(strict, max_concurrency), environ=environ, wait=recorder(sleeps),
                       max_attempts=int(options.pop("max_attempts", 5)), **options)


@pytest.mark.integration
def test_scores_a_batch_concurrently(judge_server):
    judge_server.delay_s = 0.05
    sleeps: list[float] = []
    reward = _reward(judge_server, sleeps, max_concurrency=8)
    texts = ["It is 4.", "5", "I get 4", "It is 6", "7", "6!", "0", "4"]
    rewards = reward.score(texts, EXAMPLES)
    # Rows 0-3 are judged against "4", rows 4-7 against "6".
    assert rewards.tolist() == [1.0, 0.0, 1.0, 0.0, 0.0, 1.0, 0.0, 0.0]
    assert len(judge_server.requests) == 8
    assert judge_server.max_in_flight > 1
    assert all(request["model"] == "grader-1" and request["temperature"] == 0 for request in judge_server.requests)
    assert set(judge_server.auth_headers) == {"Bearer sk-test"}
    assert sleeps == []


@pytest.mark.integration
def test_transient_failures_are_retried_with_backoff(judge_server):
    judge_server.failures = [503, 429, 502]
    sleeps: list[float] = []
    reward = _reward(judge_server, sleeps, max_concurrency=1, backoff_s=0.5)
    assert reward.score(["4"], EXAMPLES[:1]).tolist() == [1.0]
    # Three failures, then success: waits of 0.5 * 2**attempt for attempts 0, 1, 2.
    assert sleeps == [0.5, 1.0, 2.0]
    assert len(judge_server.requests) == 4


@pytest.mark.integration
def test_retry_after_is_honoured_and_capped(judge_server):
    judge_server.failures = [429]
    judge_server.retry_after = "7"
    sleeps: list[float] = []
    reward = _reward(judge_server, sleeps, backoff_s=0.5, max_backoff_s=5.0)
    assert reward.score(["6"], EXAMPLES[1:]).tolist() == [1.0]
    # max(0.5, 7) = 7, capped at max_backoff_s = 5.
    assert sleeps == [5.0]


@pytest.mark.integration
def test_persistent_failure_raises_after_the_last_attempt(judge_server):
    judge_server.failures = [500] * 10
    sleeps: list[float] = []
    reward = _reward(judge_server, sleeps, max_attempts=3, backoff_s=0.1)
    with pytest.raises(RewardError, match="failed 3 times.*HTTP 500"):
        reward.score(["4"], EXAMPLES[:1])
    assert len(judge_server.requests) == 3
    assert sleeps == [0.1, 0.2]


@pytest.mark.integration
def test_client_errors_are_not_retried(judge_server):
    judge_server.reject_key = True
    sleeps: list[float] = []
    with pytest.raises(RewardError, match="HTTP 401.*OPENAI_API_KEY"):
        _reward(judge_server, sleeps).score(["4"], EXAMPLES[:1])
    assert len(judge_server.requests) == 1 and sleeps == []


@pytest.mark.integration
def test_malformed_verdicts(judge_server):
    judge_server.verdict_override = "Probably correct"
    sleeps: list[float] = []
    with pytest.raises(RewardError, match="no CORRECT/INCORRECT verdict for completion 0"):
        _reward(judge_server, sleeps, max_attempts=2).score(["4"], EXAMPLES[:1])
    assert len(judge_server.requests) == 2
    lenient = _reward(judge_server, sleeps, strict=False, max_attempts=2)
    assert lenient.score(["4", "4"], EXAMPLES[:1]).tolist() == [0.0, 0.0]
    assert lenient.malformed_verdicts == 2


@pytest.mark.integration
def test_unreachable_server_is_a_reward_error():
    # Bind a port, then close it: connecting there is refused.
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    port = server.server_address[1]
    server.server_close()
    sleeps: list[float] = []
    environ = {"OPENAI_BASE_URL": f"http://127.0.0.1:{port}/v1"}
    reward = JudgeReward(_config(), environ=environ, wait=recorder(sleeps), max_attempts=2, backoff_s=0.01)
    with pytest.raises(RewardError, match="failed 2 times"):
        reward.score(["4"], EXAMPLES[:1])
    assert sleeps == [0.01]
