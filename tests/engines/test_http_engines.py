"""The HTTP engines against loopback servers: what they send, how they read each reply
format, weight sync with versioned names, the start-up probe, faults and malformed replies."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent))
from scripted_server import ScriptedServer  # noqa: E402

from retrain.config.loader import replace_setting  # noqa: E402
from retrain.config.schema import Config  # noqa: E402
from retrain.engines.dialects import MalformedReply, SampleRequest, SGLangGenerate  # noqa: E402
from retrain.engines.openai_http import SGLangEngine, VLLMEngine, server_root  # noqa: E402
from retrain.errors import EngineError  # noqa: E402
from retrain.http import IN_FLIGHT, RequestCancelled  # noqa: E402
from retrain.publication import Publisher  # noqa: E402
from retrain.types import PolicyRef, SamplingParams  # noqa: E402

PARAMS = SamplingParams(n=4, max_tokens=8)


def engine_config(tiny_model_path: Path, url: str, tmp_path: Path, engine: str = "vllm", **settings: object) -> Config:
    config = Config()
    for dotted, value in {"model.model": str(tiny_model_path), "model.lora_rank": 8, "inference.engine": engine,
                          "inference.url": url, "inference.request_timeout_s": 10.0, "training.max_tokens": 8, "logging.log_dir": str(tmp_path),
                          **settings}.items():
        config = replace_setting(config, dotted, value)
    return config


def adapter(tmp_path: Path, version: int) -> PolicyRef:
    folder = tmp_path / f"policy_v{version}"
    folder.mkdir(exist_ok=True)
    return PolicyRef(version=version, kind="lora_adapter", location=str(folder))


def test_server_root_strips_the_openai_base():
    assert server_root("http://h:8000/v1/") == "http://h:8000"
    assert server_root("https://h/api/v1") == "https://h/api"
    assert server_root("http://h:30000") == "http://h:30000"


def test_vllm_sends_token_ids_and_reads_token_id_replies(tiny_model_path, tmp_path):
    with ScriptedServer() as server:
        engine = VLLMEngine(engine_config(tiny_model_path, server.url + "/v1", tmp_path))
        engine.load(adapter(tmp_path, 0))
        batch = engine.generate([[1, 2, 3], [4, 5]], PARAMS)
        engine.close()
    bodies = server.bodies("/v1/completions")
    assert sorted(body["prompt"] for body in bodies) == [[1, 2, 3], [4, 5]]  # sent concurrently: any order
    assert all(body["n"] == 4 and body["return_tokens_as_token_ids"] and body["logprobs"] == 0 for body in bodies)
    assert all(body["model"].endswith("-v0") and body["cache_salt"].endswith("-v0") for body in bodies)
    assert all(body["stop_token_ids"] == list(engine.stop_token_ids) for body in bodies)
    assert batch.token_ids_N_T.shape == (8, 3) and batch.group_size == 4 and batch.policy_version == 0
    assert np.all(batch.token_ids_N_T == [5, 6, 7]) and np.allclose(batch.logprobs_N_T, -0.5)
    assert batch.finish_reasons == ["stop"] * 8 and batch.counts == {"engine_text_prompts": 0.0}


def test_each_version_loads_under_a_new_name_and_the_old_one_is_unloaded(tiny_model_path, tmp_path):
    with ScriptedServer() as server:
        engine = VLLMEngine(engine_config(tiny_model_path, server.url, tmp_path))
        for version in range(3):
            engine.load(adapter(tmp_path, version))
            engine.generate([[1]], PARAMS)
        assert list(server.adapters) == [engine.sampling_name] and engine.sampling_name.endswith("-v2")
        engine.close()
        assert server.adapters == {}
    loads = [body["lora_name"] for body in server.bodies("/v1/load_lora_adapter")]
    unloads = [body["lora_name"] for body in server.bodies("/v1/unload_lora_adapter")][1:]  # [0] is the probe
    assert [name[-3:] for name in loads] == ["-v0", "-v1", "-v2"] and len(set(loads)) == 3
    assert unloads == loads  # each older version as the next one came in, the last at close
    assert [body["model"][-3:] for body in server.bodies("/v1/completions")] == ["-v0", "-v1", "-v2"]


def test_an_adapter_in_use_is_unloaded_only_after_its_requests(tiny_model_path, tmp_path):
    with ScriptedServer() as server:
        engine = VLLMEngine(engine_config(tiny_model_path, server.url, tmp_path))
        engine.load(adapter(tmp_path, 0))
        server.mutate = lambda path, reply: (time.sleep(1.0 if path == "/v1/completions" else 0), reply)[1]
        sampling = threading.Thread(target=engine.generate, args=([[1]], PARAMS))
        sampling.start()
        time.sleep(0.2)
        engine.load(adapter(tmp_path, 1))  # while v0 is still sampling
        assert any(name.endswith("-v0") for name in server.adapters)
        sampling.join(5)
        assert [name[-3:] for name in server.adapters] == ["-v1"]
        engine.close()


def test_sglang_sends_input_ids_and_the_adapter_name(tiny_model_path, tmp_path):
    with ScriptedServer(dialect="sglang") as server:
        engine = SGLangEngine(engine_config(tiny_model_path, server.url, tmp_path, "sglang"))
        engine.load(adapter(tmp_path, 3))
        batch = engine.generate([[9, 8]], PARAMS)
        engine.close()
    body = server.bodies("/generate")[0]
    assert body["input_ids"] == [9, 8] and body["return_logprob"] is True
    assert body["sampling_params"]["n"] == 4 and body["lora_path"].endswith("-v3")
    assert body["cache_salt"].endswith("-v3")
    assert batch.token_ids_N_T.shape == (4, 3) and batch.policy_version == 3


def test_sglang_replies_are_read_from_logprob_triples():
    request = SampleRequest([1], "", 2, PARAMS, "m", 0, (7,), "", "")
    output = {"output_ids": [3, 7], "meta_info": {"finish_reason": {"type": "length", "length": 2},
                                                  "output_token_logprobs": [[-0.1, 3, "a"], [-0.2, 7, None]]}}
    completions = SGLangGenerate().parse([output, output], request, lambda text: [])
    assert [c.token_ids for c in completions] == [[3, 7], [3, 7]] and completions[0].logprobs == [-0.1, -0.2]
    assert completions[0].finish_reason == "length"
    with pytest.raises(MalformedReply, match="disagree"):
        SGLangGenerate().parse([{**output, "output_ids": [3, 8]}] * 2, request, lambda text: [])


@pytest.mark.parametrize(("mutation", "message"), [
    (lambda reply: {**reply, "choices": reply["choices"][:-1]}, "choices for"),
    (lambda reply: {**reply, "choices": [{**c, "logprobs": None} for c in reply["choices"]]}, "no logprobs"),
    (lambda reply: {**reply, "choices": [{**c, "logprobs": {**c["logprobs"], "tokens": ["token_id:99999"] * 3}}
                                         for c in reply["choices"]]}, "outside the vocabulary"),
    (lambda reply: {**reply, "choices": [{**c, "logprobs": {**c["logprobs"], "token_logprobs": [0.5, -1, -1]}}
                                         for c in reply["choices"]]}, "positive"),
    (lambda reply: b'{"choices": [{"index": 0, "te', "not JSON"),
    (lambda reply: {**reply, "choices": [{**c, "logprobs": {**c["logprobs"], "tokens": ["a", "b", "c"]}}
                                         for c in reply["choices"]]}, "token_id"),
])
def test_malformed_replies_are_errors_never_zero_filled(tiny_model_path, tmp_path, mutation, message):
    with ScriptedServer() as server:
        engine = VLLMEngine(engine_config(tiny_model_path, server.url, tmp_path))
        engine.load(adapter(tmp_path, 0))
        server.mutate = lambda path, reply: mutation(reply) if path == "/v1/completions" else reply
        with pytest.raises(EngineError, match=message):
            engine.generate([[1, 2]], PARAMS)
        engine.close()


@pytest.mark.parametrize("fault", [(503, "busy", {}), (429, {"error": "slow down"}, {"Retry-After": "0"}),
                                   (500, "oops", {})])
def test_transient_statuses_are_retried(tiny_model_path, tmp_path, fault):
    with ScriptedServer() as server:
        engine = VLLMEngine(engine_config(tiny_model_path, server.url, tmp_path))
        engine.load(adapter(tmp_path, 0))
        engine.client.backoff_s = 0.01
        server.fail_next = [fault, fault]
        batch = engine.generate([[1]], PARAMS)
        engine.close()
    assert batch.token_ids_N_T.shape[0] == 4 and len(server.bodies("/v1/completions")) == 3


def test_a_status_that_persists_names_the_url_and_the_status(tiny_model_path, tmp_path):
    with ScriptedServer() as server:
        engine = VLLMEngine(engine_config(tiny_model_path, server.url, tmp_path))
        engine.load(adapter(tmp_path, 0))
        engine.client.backoff_s = 0.01
        server.fail_next = [(503, "overloaded", {})] * 10
        with pytest.raises(EngineError, match=r"127\.0\.0\.1.*v1/completions.*503: overloaded"):
            engine.generate([[1]], PARAMS)
        engine.close()


def test_probe_names_the_flags_a_server_lacks(tiny_model_path, tmp_path):
    with ScriptedServer(runtime_lora=False, max_model_len=4) as server:
        with pytest.raises(EngineError) as raised:
            VLLMEngine(engine_config(tiny_model_path, server.url, tmp_path))
    assert "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1" in str(raised.value) and "--max-model-len" in str(raised.value)


def test_probe_compares_server_side_settings(tiny_model_path, tmp_path):
    with ScriptedServer(dialect="sglang", server_info={"dtype": "float16", "max_lora_rank": 4}) as server:
        with pytest.raises(EngineError) as raised:
            SGLangEngine(engine_config(tiny_model_path, server.url, tmp_path, "sglang", **{"inference.dtype": "bf16"}))
    assert "--dtype" in str(raised.value) and "--max-lora-rank 8" in str(raised.value)


def test_an_unreachable_server_is_a_clear_error(tiny_model_path, tmp_path):
    with ScriptedServer() as server:
        url = server.url
    config = engine_config(tiny_model_path, url, tmp_path, **{"inference.request_timeout_s": 2.0})
    with pytest.raises(EngineError, match="cannot reach the vLLM server"):
        VLLMEngine(config)


def test_a_failed_load_stops_the_run_unless_stale_weights_are_allowed(tiny_model_path, tmp_path):
    class Backend:
        policy_version = 1

        def publish(self, kind, directory):
            return adapter(tmp_path, self.policy_version)

    with ScriptedServer() as server:
        engine = VLLMEngine(engine_config(tiny_model_path, server.url, tmp_path))
        engine.load(adapter(tmp_path, 0))
        engine.control.backoff_s = 0.01
        server.fail_next = [(500, "load failed", {})] * 3
        with pytest.raises(EngineError, match="load failed"):
            Publisher(Backend(), engine, "lora_adapter", tmp_path).publish()
        server.fail_next = [(500, "load failed", {})] * 3
        assert Publisher(Backend(), engine, "lora_adapter", tmp_path, allow_stale=True).publish() == 1
        assert engine.policy_version == 0 and engine.generate([[1]], PARAMS).policy_version == 0
        engine.close()


def test_cancelling_a_hung_request_ends_it_at_once(tiny_model_path, tmp_path):
    with ScriptedServer() as server:
        engine = VLLMEngine(engine_config(tiny_model_path, server.url, tmp_path, **{"inference.request_timeout_s": 60.0}))
        engine.load(adapter(tmp_path, 0))
        release = threading.Event()
        server.mutate = lambda path, reply: (release.wait(30), reply)[1]
        outcome: list[BaseException] = []

        def sample() -> None:
            try:
                engine.generate([[1], [2]], PARAMS)
            except BaseException as error:  # noqa: BLE001 — handed to the test thread
                outcome.append(error)

        worker = threading.Thread(target=sample)
        worker.start()
        time.sleep(0.3)
        started = time.perf_counter()
        IN_FLIGHT.cancel_now()
        try:
            worker.join(5)
            elapsed = time.perf_counter() - started
        finally:
            IN_FLIGHT.reset()
            release.set()
        engine.close()
    assert not worker.is_alive() and elapsed < 2.0
    assert outcome and isinstance(outcome[0], RequestCancelled)


def test_explain_shows_the_server_side_settings_with_their_flags(tmp_path):
    config = tmp_path / "c.toml"
    config.write_text('[model]\nlora_rank = 8\n[inference]\nengine = "sglang"\nurl = "http://127.0.0.1:30000"\n'
                      'dtype = "bf16"\n')
    result = subprocess.run([sys.executable, "-m", "retrain", "explain", str(config)], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert '[inference] dtype = "bf16": set on the server (--dtype)' in result.stdout
    assert "(--disable-radix-cache)" in result.stdout


def test_openai_dialect_recovers_ids_from_text_and_refuses_what_it_cannot():
    from retrain.engines.dialects import OpenAICompletions

    request = SampleRequest([1, 2], "the prompt", 1, PARAMS, "m", 0, (7,), "", "")
    dialect = OpenAICompletions(token_id_prompts=False, samples_per_request=False)
    assert dialect.body(request)["prompt"] == "the prompt" and "n" not in dialect.body(request)
    reply = {"choices": [{"index": 0, "text": "ab", "finish_reason": "stop",
                          "logprobs": {"tokens": ["a", "b", ""], "token_logprobs": [-1.0, -2.0, -0.1]}}]}
    (completion,) = dialect.parse(reply, request, lambda text: [ord(char) for char in text])
    assert completion.token_ids == [97, 98, 7] and completion.logprobs == [-1.0, -2.0, -0.1]
    with pytest.raises(MalformedReply, match="cannot be recovered exactly"):
        dialect.parse(reply, request, lambda text: [1])
