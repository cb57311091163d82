"""Each HTTP engine against a loopback server that serves the tiny model and real PEFT
adapters in that engine's wire dialect (``fakes.model_server``): the engine's requests are
recorded (token ids, versioned adapter names, unloads, cache salts, credentials) and the
log-probabilities it returns are the served adapter's own, scored in-process."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_http_engines import engine_config  # noqa: E402

from fakes.model_server import ModelServer, make_adapter  # noqa: E402
from retrain.engines.openai_http import MaxEngine, MLXEngine, OpenAIEngine, SGLangEngine, VLLMEngine  # noqa: E402
from retrain.errors import EngineError  # noqa: E402
from retrain.types import PolicyRef, SampleBatch, SamplingParams  # noqa: E402

PROMPTS = [[7, 76, 8, 84], [9, 76, 5, 84]]  # "3+4=", "5+1="
PARAMS = SamplingParams(n=2, max_tokens=6, temperature=0.8)
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def adapters(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[PolicyRef]:
    """Two published versions: rank-4 adapters with different random weights."""
    root = tmp_path_factory.mktemp("published")
    return [PolicyRef(version=version, kind="lora_adapter",
                      location=str(make_adapter(tiny_model_path, root / f"policy_v{version}", rank=4, seed=version + 1)))
            for version in range(2)]


@pytest.fixture(scope="module")
def gentle_adapters(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> list[PolicyRef]:
    """Two versions close to the base model, which writes plain characters: servers that
    answer with text (MAX) are read by retokenizing it, and the tiny model's special
    tokens (pad, unk, im_start) have no text to retokenize."""
    root = tmp_path_factory.mktemp("gentle")
    return [PolicyRef(version=version, kind="lora_adapter", location=str(
        make_adapter(tiny_model_path, root / f"policy_v{version}", rank=4, seed=version + 1, scale=0.05)))
        for version in range(2)]


def rows(batch: SampleBatch) -> list[tuple[list[int], list[int], list[float]]]:
    """(prompt, sampled ids, sampler log-probabilities) of each row."""
    out = []
    for row in range(batch.token_ids_N_T.shape[0]):
        mask = batch.mask_N_T[row].astype(bool)
        out.append((batch.prompt_token_ids[row // batch.group_size], [int(t) for t in batch.token_ids_N_T[row][mask]],
                    [float(v) for v in batch.logprobs_N_T[row][mask]]))
    return out


def assert_served_logprobs(server: ModelServer, batch: SampleBatch, name: str | None, temperature: float) -> None:
    for prompt, ids, logprobs in rows(batch):
        expected = server.probe_logprobs(name, prompt, ids, temperature)
        assert max(abs(a - b) for a, b in zip(logprobs, expected, strict=True)) < TOLERANCE


def sample_two_versions(engine, server: ModelServer, adapters: list[PolicyRef]) -> list[str]:
    """Load and sample each version, checking the log-probabilities are the served
    version's own; that the two versions score a fixed completion differently; that only
    the newer one is loaded at the end. The names each version was served under."""
    names, probes = [], []
    for ref in adapters:
        engine.load(ref)
        batch = engine.generate(PROMPTS, PARAMS)
        assert batch.policy_version == ref.version and batch.token_ids_N_T.shape[0] == 4
        assert_served_logprobs(server, batch, engine.sampling_name, PARAMS.temperature)
        names.append(engine.sampling_name)
        probes.append(server.probe_logprobs(engine.sampling_name, PROMPTS[0], [30, 31, 32], PARAMS.temperature))
    assert len(set(names)) == 2 and list(server.adapters) == [names[1]]
    assert max(abs(a - b) for a, b in zip(*probes)) > 1e-3
    return names


def test_sglang_engine_sends_input_ids_and_samples_each_adapter_version(tiny_model_path, adapters, tmp_path):
    with ModelServer(tiny_model_path, "sglang", max_lora_rank=8) as server:
        engine = SGLangEngine(engine_config(tiny_model_path, server.url, tmp_path, **{"model.lora_rank": 4}))
        assert engine.max_model_len == 512  # server_info's context_length is null: read from /v1/models
        names = sample_two_versions(engine, server, adapters)
        engine.close()
        assert server.adapters == {}
    generate = [request.body for request in server.requests if request.path == "/generate"]
    assert sorted(body["input_ids"] for body in generate) == sorted(PROMPTS * 2)
    assert [body["lora_path"] for body in generate] == [names[0]] * 2 + [names[1]] * 2
    assert {body["cache_salt"] for body in generate} == {names[0], names[1]}  # salt = the version's name
    assert all(body["sampling_params"]["n"] == 2 and body["return_logprob"] for body in generate)
    assert [entry[:2] for entry in server.load_history] == [
        ("load", names[0]), ("load", names[1]), ("unload", names[0]), ("unload", names[1])]


def test_sglang_full_weights_reload_and_report_the_new_version(tiny_model_path, tmp_path):
    with ModelServer(tiny_model_path, "sglang") as server:
        engine = SGLangEngine(engine_config(tiny_model_path, server.url, tmp_path, **{"model.lora_rank": 0}))
        for version in range(2):
            folder = tmp_path / f"weights_v{version}"
            shutil.copytree(tiny_model_path, folder)
            engine.load(PolicyRef(version=version, kind="full_weights", location=str(folder)))
            assert server.weights_path == str(folder)
            batch = engine.generate(PROMPTS, PARAMS)
            assert batch.policy_version == version
            assert_served_logprobs(server, batch, None, PARAMS.temperature)
        engine.close()
    updates = [request.body for request in server.requests if request.path == "/update_weights_from_disk"]
    assert [body["model_path"] for body in updates] == [str(tmp_path / "weights_v0"), str(tmp_path / "weights_v1")]
    assert len({body["weight_version"] for body in updates}) == 2
    assert server.weight_version == updates[-1]["weight_version"]
    assert any(request.path == "/flush_cache" for request in server.requests)


def test_vllm_engine_on_the_model_server_names_versions_and_salts_the_cache(tiny_model_path, adapters, tmp_path):
    with ModelServer(tiny_model_path, "vllm") as server:
        engine = VLLMEngine(engine_config(tiny_model_path, server.url + "/v1", tmp_path, **{"model.lora_rank": 4}))
        names = sample_two_versions(engine, server, adapters)
        engine.close()
    completions = [request.body for request in server.requests if request.path == "/v1/completions"]
    assert [body["model"] for body in completions] == [names[0]] * 2 + [names[1]] * 2
    assert [body["cache_salt"] for body in completions] == [names[0]] * 2 + [names[1]] * 2
    assert all(body["return_tokens_as_token_ids"] for body in completions)


def test_openai_engine_sends_the_key_and_token_ids_and_never_logs_the_key(tiny_model_path, gentle_adapters, tmp_path,
                                                                          caplog,
                                                                          monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    with ModelServer(tiny_model_path, "openai") as server:
        engine = OpenAIEngine(engine_config(tiny_model_path, server.url + "/v1", tmp_path, engine="openai",
                                            **{"model.lora_rank": 4}))
        names = sample_two_versions(engine, server, gentle_adapters)
        engine.close()
    completions = [request for request in server.requests if request.path == "/v1/completions"]
    assert all(request.headers["Authorization"] == "Bearer sk-test-secret" for request in server.requests)
    assert sorted(request.body["prompt"] for request in completions) == sorted(PROMPTS * 2)
    assert [request.body["model"] for request in completions] == [names[0]] * 2 + [names[1]] * 2
    assert "sk-test-secret" not in caplog.text


def test_max_engine_asks_one_sample_per_request(tiny_model_path, gentle_adapters, tmp_path):
    with ModelServer(tiny_model_path, "max") as server:
        engine = MaxEngine(engine_config(tiny_model_path, server.url + "/v1", tmp_path, engine="max",
                                         **{"model.lora_rank": 4}))
        names = sample_two_versions(engine, server, gentle_adapters)
        engine.close()
    completions = [request.body for request in server.requests if request.path == "/v1/completions"]
    assert len(completions) == 8 and all("n" not in body for body in completions)  # MAX ignores n
    assert [body["model"] for body in completions] == [names[0]] * 4 + [names[1]] * 4
    loads = [request.body["lora_name"] for request in server.requests if request.path == "/v1/load_lora_adapter"]
    assert loads == names


def test_max_without_lora_names_the_flag(tiny_model_path, tmp_path):
    with ModelServer(tiny_model_path, "max", enable_lora=False) as server:
        with pytest.raises(EngineError, match="--enable-lora"):
            MaxEngine(engine_config(tiny_model_path, server.url + "/v1", tmp_path, engine="max"))


def test_mlx_samples_the_base_from_text_prompts_and_is_refused_for_training(tiny_model_path, tmp_path):
    config = engine_config(tiny_model_path, "http://127.0.0.1:1", tmp_path, engine="mlx", **{"model.lora_rank": 4})
    assert any("MLX-format" in issue.problem for issue in MLXEngine.config_issues(config))
    with ModelServer(tiny_model_path, "mlx") as server:
        engine = MLXEngine(engine_config(tiny_model_path, server.url, tmp_path, engine="mlx", **{"model.lora_rank": 0}))
        params = SamplingParams(n=1, max_tokens=4, temperature=1.0)
        batch = engine.generate([[10, 11, 12]], params)
        engine.close()
    assert batch.counts == {"engine_text_prompts": 1.0}
    (request,) = [request.body for request in server.requests if request.path == "/v1/completions"]
    assert isinstance(request["prompt"], str)
    assert_served_logprobs(server, batch, None, 1.0)


def test_a_run_through_the_cli_trains_on_the_servers_samples_with_matching_logprobs(retrain_cache, tiny_model_path,
                                                                                   tmp_path):
    """Through the CLI, the local backend trains on what the SGLang-dialect server sampled;
    after each update the server serves the new adapter, so the trainer's recomputed
    log-probabilities of the served tokens equal the server's at every step."""
    from cli_runs import read_jsonl_strict, run_retrain

    with ModelServer(tiny_model_path, "sglang") as server:
        config = tmp_path / "run.toml"
        config.write_text(f'[backend]\ndevices = "cpu"\nadapter_path = "{{log_dir}}/adapter"\n[model]\n'
                          f'model = "{tiny_model_path}"\nlora_rank = 8\n[training]\nseed = 0\nmax_steps = 3\n'
                          'batch_size = 4\ngroup_size = 4\nmax_tokens = 8\nlr = 0.05\n[data]\nsource = "arithmetic"\n[inference]\n'
                          f'engine = "sglang"\nurl = "{server.url}"\n[logging]\nlog_dir = "logs"\n')
        result = run_retrain(tmp_path, retrain_cache, str(config))
        assert result.returncode == 0, result.stderr
        assert server.adapters == {}  # every version this run loaded is unloaded at the end
    rows = read_jsonl_strict(tmp_path / "logs" / "metrics.jsonl")
    assert [row["engine_text_prompts"] for row in rows] == [0.0] * 3
    trained = [row for row in rows if "sampler_logprob_diff_max" in row]  # a step of ties trains nothing
    assert trained and all(row["sampler_logprob_diff_max"] < 1e-3 for row in trained), rows
    loads = [entry[1] for entry in server.load_history if entry[0] == "load"]
    assert len(loads) >= 3 and all(name.startswith("retrain-") for name in loads) and len(set(loads)) == len(loads)
    served = [request.body["lora_path"] for request in server.requests if request.path == "/generate"]
    assert served and set(served) <= set(loads)


def test_vllm_full_weights_refuses_a_tied_output_embedding_and_reloads_an_untied_one(tiny_model_path, tmp_path):
    untied = tmp_path / "untied"
    shutil.copytree(tiny_model_path, untied)
    config_file = untied / "config.json"
    config_file.write_text(config_file.read_text().replace('"tie_word_embeddings": true', '"tie_word_embeddings": false'))
    with ModelServer(tiny_model_path, "vllm") as server:
        with pytest.raises(EngineError, match="ties its output embedding"):
            VLLMEngine(engine_config(tiny_model_path, server.url + "/v1", tmp_path, **{"model.lora_rank": 0}))
        engine = VLLMEngine(engine_config(untied, server.url + "/v1", tmp_path, **{"model.lora_rank": 0}))
        folder = tmp_path / "weights_v0"
        shutil.copytree(tiny_model_path, folder)
        engine.load(PolicyRef(version=0, kind="full_weights", location=str(folder)))
        engine.close()
    assert server.weights_path == str(folder)
    assert [request.path for request in server.requests][-2:] == ["/collective_rpc", "/reset_prefix_cache"]
