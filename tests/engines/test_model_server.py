"""The fake inference server (``fakes.model_server``) speaks each dialect, driven with raw
``urllib`` calls, over the session's tiny model."""

from __future__ import annotations

import http.client
import json
import shutil
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from fakes.model_server import ModelServer, make_adapter

PROMPT = [10, 11, 12, 13]
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def model_dir(tiny_model_path: Path) -> Path:
    return tiny_model_path


@pytest.fixture(scope="module")
def adapters(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A rank-4 adapter and a copy whose config claims rank 32."""
    root = tmp_path_factory.mktemp("adapters")
    small = make_adapter(model_dir, root / "small", rank=4, seed=1)
    big = root / "big"
    shutil.copytree(small, big)
    config = json.loads((big / "adapter_config.json").read_text())
    (big / "adapter_config.json").write_text(json.dumps({**config, "r": 32}))
    return {"small": small, "big": big}


def call(server: ModelServer, path: str, body: object = None, headers: dict[str, str] | None = None) -> tuple[int, object]:
    """(status, parsed JSON or text) of one request; POST when there is a body."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(server.url + path, data=data, method="GET" if data is None else "POST",
                                     headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            status, raw = response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read().decode()
    try:
        return status, json.loads(raw) if raw else None
    except ValueError:
        return status, raw


def assert_close(got: list[float], expected: list[float]) -> None:
    assert len(got) == len(expected)
    assert all(abs(a - b) < TOLERANCE for a, b in zip(got, expected)), (got, expected)


def test_vllm_completions_and_adapters(model_dir: Path, adapters: dict[str, Path]) -> None:
    with ModelServer(model_dir, "vllm", max_lora_rank=16) as server:
        assert call(server, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": str(adapters["small"])}) == (
            200, "Success: LoRA adapter 'a' added successfully.")
        status, reply = call(server, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": str(adapters["small"])})
        assert status == 400 and reply["error"]["type"] == "InvalidUserInput"
        status, reply = call(server, "/v1/load_lora_adapter", {"lora_name": "b", "lora_path": str(adapters["big"])})
        assert status == 500 and "max_lora_rank 16" in reply["error"]["message"]
        assert call(server, "/v1/load_lora_adapter", {"lora_name": "c", "lora_path": "/nowhere"})[0] == 404
        models = call(server, "/v1/models")[1]["data"]
        assert [(card["id"], card["parent"]) for card in models] == [("tiny", None), ("a", "tiny")]
        body = {"model": "a", "prompt": [PROMPT, PROMPT[:2]], "n": 2, "max_tokens": 6, "logprobs": 0, "seed": 7,
                "return_tokens_as_token_ids": True, "cache_salt": "v1", "temperature": 0.7}
        status, reply = call(server, "/v1/completions", body)
        assert status == 200 and [choice["index"] for choice in reply["choices"]] == [0, 1, 2, 3]
        for position, choice in enumerate(reply["choices"]):
            ids = [int(token.removeprefix("token_id:")) for token in choice["logprobs"]["tokens"]]
            prompt = body["prompt"][position // 2]
            assert_close(choice["logprobs"]["token_logprobs"], server.probe_logprobs("a", prompt, ids, 0.7))
            assert choice["finish_reason"] == ("stop" if ids[-1] == 3 else "length") and len(ids) <= 6
        assert call(server, "/v1/completions", body)[1]["choices"][0]["logprobs"] == reply["choices"][0]["logprobs"]
        assert server.requests[-1].body["cache_salt"] == "v1"
        assert call(server, "/v1/unload_lora_adapter", {"lora_name": "a"})[0] == 200
        assert server.load_history == [("load", "a", str(adapters["small"])), ("unload", "a", str(adapters["small"]))]
        status, reply = call(server, "/v1/completions", body)
        assert status == 404 and reply["error"]["message"] == "The model `a` does not exist."


def test_vllm_refusals_generate_and_reload(model_dir: Path, tmp_path: Path) -> None:
    with ModelServer(model_dir, "vllm", runtime_lora=False, max_model_len=32) as server:
        assert call(server, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "x"}) == (404, {"detail": "Not Found"})
        status, reply = call(server, "/v1/completions", {"model": "tiny", "prompt": PROMPT, "max_tokens": 40})
        assert status == 400 and "maximum context length is 32" in reply["error"]["message"]
        assert call(server, "/v1/completions", {"prompt": [5, 100000], "max_tokens": 2})[0] == 400
        status, reply = call(server, "/inference/v1/generate", {"token_ids": PROMPT, "sampling_params": {
            "max_tokens": 4, "n": 2, "logprobs": 0, "temperature": 0}})
        assert status == 200 and len(reply["choices"]) == 2
        choice = reply["choices"][0]
        values = [entry["logprob"] for entry in choice["logprobs"]["content"]]
        assert_close(values, server.probe_logprobs(None, PROMPT, choice["token_ids"], 0))
        assert choice["token_ids"] == reply["choices"][1]["token_ids"]  # greedy
        copy = tmp_path / "weights"
        shutil.copytree(model_dir, copy)
        rpc = {"method": "reload_weights", "kwargs": {"weights_path": str(copy)}}
        assert call(server, "/collective_rpc", rpc) == (200, {"results": [None]})
        assert server.weights_path == str(copy) and server.load_history[-1][0] == "reload_weights"
        assert call(server, "/version") == (200, {"version": "0.34.0"})


def test_sglang_generate_lora_and_weights(model_dir: Path, adapters: dict[str, Path], tmp_path: Path) -> None:
    with ModelServer(model_dir, "sglang") as server:
        load = {"lora_name": "a", "lora_path": str(adapters["small"])}
        assert call(server, "/load_lora_adapter", load) == (200, {
            "success": True, "error_message": None, "loaded_adapters": {"a": str(adapters["small"])}})
        assert call(server, "/load_lora_adapter", load)[1]["success"] is False
        single = {"input_ids": PROMPT, "sampling_params": {"max_new_tokens": 5, "sampling_seed": 3,
                                                           "no_stop_trim": True}, "return_logprob": True,
                  "lora_path": "a"}
        status, reply = call(server, "/generate", single)
        assert status == 200 and isinstance(reply, dict)
        triples = reply["meta_info"]["output_token_logprobs"]
        assert [triple[1] for triple in triples] == reply["output_ids"] and all(t[2] is None for t in triples)
        assert_close([t[0] for t in triples], server.probe_logprobs("a", PROMPT, reply["output_ids"]))
        assert reply["meta_info"]["finish_reason"]["type"] in ("stop", "length")
        batch = {**single, "input_ids": [PROMPT, PROMPT[:3]], "sampling_params": {"max_new_tokens": 3, "n": 2}}
        assert len(call(server, "/generate", batch)[1]) == 4
        status, reply = call(server, "/generate", {"input_ids": PROMPT, "sampling_params": {"seed": 1}})
        assert status == 400 and "seed" in reply["error"]
        copy = tmp_path / "weights"
        shutil.copytree(model_dir, copy)
        update = {"model_path": str(copy), "weight_version": "step-1"}
        assert call(server, "/update_weights_from_disk", update)[1]["success"] is True
        assert call(server, "/update_weights_from_disk", {"model_path": "/nowhere"})[0] == 400
        info = call(server, "/server_info")[1]
        assert info["version"].startswith("0.5") and info["weight_version"] == "step-1" and info["enable_lora"]
        assert call(server, "/model_info")[1]["model_path"] == str(copy) == server.weights_path
        assert call(server, "/generate", single)[1]["meta_info"]["weight_version"] == "step-1"


def test_openai_pieces_chat_and_headers(model_dir: Path) -> None:
    with ModelServer(model_dir, "openai", runtime_lora=False) as server:
        auth = {"Authorization": "Bearer secret"}
        body = {"model": "tiny", "prompt": PROMPT, "max_tokens": 5, "logprobs": 1, "return_tokens_as_token_ids": True}
        status, reply = call(server, "/v1/completions", body, auth)
        choice = reply["choices"][0]
        assert status == 200 and not any(token.startswith("token_id:") for token in choice["logprobs"]["tokens"])
        assert "stop_reason" not in choice and server.requests[-1].headers["Authorization"] == "Bearer secret"
        chat = {"model": "tiny", "messages": [{"role": "user", "content": "2+3"}], "logprobs": True, "max_tokens": 3}
        status, reply = call(server, "/v1/chat/completions", chat)
        content = reply["choices"][0]["logprobs"]["content"]
        assert status == 200 and {"token", "logprob", "bytes", "top_logprobs"} <= set(content[0])
        assert "max_model_len" not in call(server, "/v1/models")[1]["data"][0]
        assert call(server, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "x"})[0] == 404


def test_max_dialect(model_dir: Path, adapters: dict[str, Path]) -> None:
    with ModelServer(model_dir, "max") as server:
        body = {"model": "tiny", "prompt": [PROMPT, PROMPT], "n": 3, "max_tokens": 4, "logprobs": 1}
        status, reply = call(server, "/v1/completions", body)
        assert status == 200 and [choice["index"] for choice in reply["choices"]] == [0, 1]
        assert reply["choices"][0]["logprobs"]["tokens"] is None
        status, reply = call(server, "/v1/completions", {**body, "return_tokens_as_token_ids": True})
        assert status == 422 and reply["error"]["code"] == "422"
        load = {"lora_name": "a", "lora_path": str(adapters["small"])}
        assert call(server, "/v1/load_lora_adapter", load)[1]["status"] == "success"
        assert call(server, "/v1/load_lora_adapter", load)[0] == 200
        assert call(server, "/v1/load_lora_adapter", {**load, "lora_path": str(adapters["big"])})[0] == 409
        assert call(server, "/v1/completions", {**body, "model": "nope"})[0] == 400
    with ModelServer(model_dir, "max", enable_lora=False, max_overlap_scheduler=True) as server:
        assert call(server, "/v1/load_lora_adapter", {"lora_name": "a", "lora_path": "x"})[0] == 501
        assert call(server, "/v1/completions", body)[0] == 400


def test_mlx_dialect(model_dir: Path, adapters: dict[str, Path]) -> None:
    with ModelServer(model_dir, "mlx") as server:
        assert call(server, "/health") == (200, {"status": "ok"})
        body = {"prompt": "1+2=", "max_tokens": 4, "logprobs": True, "temperature": 0, "n": 3}
        status, reply = call(server, "/v1/completions", body)
        assert status == 200 and len(reply["choices"]) == 1
        content = reply["choices"][0]["logprobs"]["content"]
        prompt = server.model.tokenizer("1+2=", add_special_tokens=False)["input_ids"]
        assert_close([entry["logprob"] for entry in content],
                     server.probe_logprobs(None, prompt, [entry["id"] for entry in content], 0))
        assert call(server, "/v1/completions", {**body, "prompt": PROMPT})[0] == 404
        with pytest.raises((http.client.RemoteDisconnected, ConnectionError, urllib.error.URLError)):
            call(server, "/v1/completions", {**body, "logprobs": 1})
        switch = {**body, "model": str(model_dir), "adapters": str(adapters["small"])}
        assert call(server, "/v1/chat/completions", {**switch, "messages": [{"role": "user", "content": "hi"}]})[0] == 200
        assert server.adapters == {str(adapters["small"]): str(adapters["small"])}
        assert call(server, "/v1/completions", body)[0] == 200 and server.adapters == {}


def test_fail_next_mutate_and_concurrency(model_dir: Path) -> None:
    with ModelServer(model_dir, "vllm") as server:
        server.fail_next.append((429, {"error": "slow down"}, {"Retry-After": "0"}))
        assert call(server, "/health") == (429, {"error": "slow down"})
        server.mutate = lambda path, reply: b'{"choices": [' if path == "/v1/completions" else None
        assert call(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 1})[1] == '{"choices": ['
        server.mutate = None
        server.latency_s = 1.0  # four requests at once: about 1 s together, 4 s one after another
        results: list[int] = []

        def one() -> None:
            results.append(call(server, "/v1/completions", {"prompt": PROMPT, "max_tokens": 1})[0])

        started = time.monotonic()
        threads = [threading.Thread(target=one) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert results == [200] * 4 and time.monotonic() - started < 3.5
