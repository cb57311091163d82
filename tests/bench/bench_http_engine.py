"""The vLLM engine's throughput against a loopback server with a fixed latency per request.

    python tests/bench/bench_http_engine.py [--latency-ms 50] [--prompts 8] [--group 16] [--repeats 20]

1. Sampling: ``--prompts`` prompts × ``--group`` samples per step, one request per prompt,
   all in flight at once; the server answers each after ``--latency-ms``. Target: step wall
   time ≤ 1.5 × the latency. Also prints the client's CPU time per completion.
2. Overlap: with ``[training] max_staleness = 1`` (``LookaheadCollector``) and a training
   step that takes as long as sampling, the step time should be ≤ 1.15 × max(sample,
   train), not their sum.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "engines"))
from scripted_server import ScriptedServer  # noqa: E402

from retrain.config.loader import replace_setting  # noqa: E402
from retrain.config.schema import Config  # noqa: E402
from retrain.data.stream import PromptStream  # noqa: E402
from retrain.engines.openai_http import VLLMEngine  # noqa: E402
from retrain.models.tiny import ensure_tiny_model  # noqa: E402
from retrain.sampling import GroupCollector, LookaheadCollector, SamplingSettings  # noqa: E402
from retrain.types import Example, PolicyRef, SamplingParams, Scored  # noqa: E402


class Prompts:
    """Examples whose rollouts are the engine's samples with alternating rewards."""

    def __init__(self, count: int) -> None:
        self.items = [Example(str(i), ({"role": "user", "content": f"{i}"},), "1") for i in range(count)]

    def examples(self) -> list[Example]:
        return self.items

    def rollout(self, examples, engine, encode, params) -> Scored:
        samples = engine.generate([encode(example.messages) for example in examples], params)
        rewards = np.tile([0.0, 1.0], samples.token_ids_N_T.shape[0] // 2)
        return Scored(samples, rewards)

    def close(self) -> None:
        return None


def build_engine(url: str, log_dir: str, concurrency: int) -> VLLMEngine:
    config = Config()
    for dotted, value in {"model.model": str(ensure_tiny_model()), "model.lora_rank": 8, "inference.engine": "vllm",
                          "inference.url": url, "training.max_tokens": 8, "logging.log_dir": log_dir,
                          "inference.max_requests_in_flight": concurrency}.items():
        config = replace_setting(config, dotted, value)
    engine = VLLMEngine(config)
    folder = Path(log_dir) / "policy_v0"
    folder.mkdir(parents=True, exist_ok=True)
    engine.load(PolicyRef(version=0, kind="lora_adapter", location=str(folder)))
    return engine


def bench_sampling(engine: VLLMEngine, prompts: int, group: int, repeats: int, latency_s: float) -> float:
    params = SamplingParams(n=group, max_tokens=8)
    batch = [[1, 2, 3, 4]] * prompts
    engine.generate(batch, params)  # warm: threads, tokenizer caches
    walls, cpus = [], []
    for _ in range(repeats):
        wall, cpu = time.perf_counter(), time.process_time()
        engine.generate(batch, params)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    median = statistics.median(walls)
    print(f"sampling {prompts} prompts x {group}: median step {median * 1e3:.1f} ms (min {min(walls) * 1e3:.1f}, "
          f"max {max(walls) * 1e3:.1f}) = {median / latency_s:.2f} x the {latency_s * 1e3:.0f} ms latency "
          f"(target <= 1.5); client CPU {statistics.median(cpus) / (prompts * group) * 1e6:.0f} us per completion")
    return median


def bench_overlap(engine: VLLMEngine, prompts: int, group: int, steps: int, sample_s: float) -> float:
    """Step time over max(sample, train) with max_staleness = 1 (and, for comparison, 0)."""
    settings = SamplingSettings(prompts, SamplingParams(n=group, max_tokens=8))
    source = Prompts(prompts * steps)
    for staleness in (0, 1):
        collector = GroupCollector(PromptStream(source.examples(), 0), source, engine, lambda messages: [1, 2, 3],
                                   settings)
        ahead = LookaheadCollector(collector, 1, last_step=steps) if staleness else collector
        started = time.perf_counter()
        for step in range(1, steps + 1):
            ahead.collect(step)
            time.sleep(sample_s)  # a training step as long as sampling
        per_step = (time.perf_counter() - started) / steps
        ahead.close()
        print(f"max_staleness = {staleness}: {per_step * 1e3:.1f} ms per step = {per_step / sample_s:.2f} x "
              f"max(sample, train) ({sample_s * 1e3:.0f} ms each){' (target <= 1.15)' if staleness else ''}")
    return per_step / sample_s


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency-ms", type=float, default=50.0)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--concurrency", type=int, default=64)
    args = parser.parse_args()
    latency_s = args.latency_ms / 1000
    with ScriptedServer(latency_s=latency_s) as server, tempfile.TemporaryDirectory() as log_dir:
        engine = build_engine(server.url, log_dir, args.concurrency)
        try:
            sample_s = bench_sampling(engine, args.prompts, args.group, args.repeats, latency_s)
            overlap = bench_overlap(engine, args.prompts, args.group, 10, sample_s)
        finally:
            engine.close()
    missed = sample_s > 1.5 * latency_s or overlap > 1.15
    print("targets met" if not missed else "a target was missed")
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
