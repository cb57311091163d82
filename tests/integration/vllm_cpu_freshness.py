"""Real vLLM on the CPU: train LoRA steps through a vLLM server and prove weight freshness.

    python tests/integration/vllm_cpu_freshness.py [--steps 5] [--vllm-python PATH]

Creates (or reuses) the vLLM CPU environment with ``tests/integration/vllm_cpu_env.sh``,
builds the tiny model (head size 64, which vLLM's CPU kernels take), starts a vLLM server
on loopback with runtime LoRA loading, and trains ``--steps`` steps with ``engine =
"vllm"``. After every weight load it asks the server for the log-probabilities of a fixed
probe completion (``prompt_logprobs`` under the adapter the engine now samples from) and
checks that they equal the trainer's (base model + the adapter folder just published,
computed here with transformers and PEFT) within ``TOLERANCE`` nats, and differ from the
previous version's by more than that. Prints start, step and sync times. Exits non-zero
on any failure.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
TOLERANCE = 1e-3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


LORA_ENV = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
LORA_FLAGS = ("--enable-lora", "--max-lora-rank", "16")


def vllm_python(given: str) -> str:
    """``given``, or the python of the vLLM CPU environment the repository's script creates."""
    return given or subprocess.run(
        [str(REPO / "tests/integration/vllm_cpu_env.sh"), str(REPO / ".vllm-cpu-venv")], check=True,
        capture_output=True, text=True).stdout.strip().splitlines()[-1]


def start_server(python: str, model: Path, port: int, log: Path, env: dict[str, str] = LORA_ENV,
                 flags: tuple[str, ...] = LORA_FLAGS) -> tuple[subprocess.Popen[bytes], float]:
    """A vLLM server on loopback (fp32, processed log-probabilities) and its start-up time."""
    command = [python, "-m", "vllm.entrypoints.openai.api_server", "--model", str(model), "--host", "127.0.0.1",
               "--port", str(port), "--max-model-len", "512", *flags, "--dtype", "float32",
               "--logprobs-mode", "processed_logprobs"]
    started = time.perf_counter()
    server = subprocess.Popen(command, env={**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1", **env},
                              stdout=log.open("wb"), stderr=subprocess.STDOUT)
    while time.perf_counter() - started < 300:
        if server.poll() is not None:
            raise SystemExit(f"the vLLM server exited with {server.returncode}; see {log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server, time.perf_counter() - started
        except OSError:
            time.sleep(1)
    server.kill()
    raise SystemExit(f"the vLLM server did not come up within 300 s; see {log}")


def server_logprobs(port: int, model: str, prompt: list[int], completion: list[int]) -> np.ndarray:
    body = {"model": model, "prompt": prompt + completion, "max_tokens": 1, "prompt_logprobs": 0, "temperature": 1.0}
    request = urllib.request.Request(f"http://127.0.0.1:{port}/v1/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        reply = json.loads(response.read())
    entries = reply["choices"][0]["prompt_logprobs"][len(prompt):]
    return np.array([entry[str(token)]["logprob"] for entry, token in zip(entries, completion)])


def trainer_logprobs(model_dir: Path, adapter: Path, prompt: list[int], completion: list[int]) -> np.ndarray:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model = PeftModel.from_pretrained(base, adapter).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + completion])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    positions = range(len(prompt) - 1, len(prompt) + len(completion) - 1)
    return np.array([float(logp[position, token]) for position, token in zip(positions, completion)])


def train_and_check(port: int, model_dir: Path, steps: int, work: Path) -> None:
    from retrain.config.loader import resolve_config
    from retrain.plan import plan_run
    from retrain.run import build_run, start
    from retrain.step import rl_step

    config = work / "vllm.toml"
    config.write_text(f"""
[backend]
devices = "cpu"
[model]
model = "retrain/tiny"
lora_rank = 8
[training]
seed = 0
max_steps = {steps}
batch_size = 8
group_size = 8
max_tokens = 4
lr = 1e-2
[data]
source = "arithmetic"
[inference]
engine = "vllm"
url = "http://127.0.0.1:{port}/v1"
[logging]
log_dir = "{work / 'logs'}"
""")
    plan = plan_run(resolve_config(config))
    run = build_run(plan)
    try:
        start(run, None, plan)
        engine = run.engine
        prompt = run.backend.encode_prompt(({"role": "user", "content": "What is 3 + 4?"},))
        completion = engine.tokenizer.encode("7", add_special_tokens=False) + list(engine.stop_token_ids[:1])
        previous = None
        for step in range(1, steps + 1):
            record = rl_step(run, step)
            adapter = Path(run.log_dir) / "engine_weights" / f"policy_v{run.backend.policy_version}"
            served = server_logprobs(port, engine.sampling_name, prompt, completion)
            trained = trainer_logprobs(model_dir, adapter, prompt, completion)
            gap = float(np.abs(served - trained).max())
            moved = float(np.abs(served - previous).max()) if previous is not None else float("inf")
            print(f"step {step}: serves {engine.sampling_name}; |server - trainer| max {gap:.2e}; change from the "
                  f"previous version {moved:.2e}; sample {record.collected.timings.get('sample_time_s', 0):.3f} s, "
                  f"train {record.timings['train_time_s']:.3f} s, sync {record.timings['sync_time_s']:.3f} s")
            if gap > TOLERANCE:
                raise SystemExit(f"step {step}: the server's log-probabilities differ from the trainer's by {gap}")
            if moved <= TOLERANCE:
                raise SystemExit(f"step {step}: the served log-probabilities did not change after the update")
            previous = served
    finally:
        run.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--vllm-python", default="", help="python of an existing vLLM CPU environment")
    args = parser.parse_args()
    python = vllm_python(args.vllm_python)
    from retrain.models.tiny import ensure_tiny_model

    model_dir = ensure_tiny_model()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        port = free_port()
        server, start_s = start_server(python, model_dir, port, work / "vllm.log")
        print(f"vLLM server up in {start_s:.1f} s")
        try:
            begun = time.perf_counter()
            train_and_check(port, model_dir, args.steps, work)
            print(f"{args.steps} steps in {time.perf_counter() - begun:.1f} s (with the probe checks): fresh after "
                  "every load")
        finally:
            server.terminate()
            server.wait(timeout=60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
