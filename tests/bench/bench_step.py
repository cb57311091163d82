"""Step time of retrain against TRL's GRPOTrainer on the same model and settings.

Both sides run 8 prompts x 16 completions of the arithmetic task, temperature 1.0,
group-relative advantages, no KL term, full fine-tuning with AdamW, on the CPU, with the
same torch thread count. retrain runs its real step (``retrain.step.rl_step``) with the
metrics row and log sinks of a run. Reported per setting: the median wall time of a step
after warm-up, the mean completion length (both sides generate the same amount), and for
retrain the share of the step spent outside sampling and the update (reward, credit
assignment, batch assembly, weight sync, metrics and logging).

Two models: ``warm`` is ``retrain/tiny`` as users get it, scored by exact match (it
answers in about two tokens, so 4 and 32 new tokens cost about the same); ``random`` is
the same architecture with untrained weights, which rarely emits end-of-turn and so
really generates up to ``max_tokens``. It almost never answers correctly, so both sides
score it with the parity of the completion length, a reward with variance, to make both
of them train every step.

    python tests/bench/bench_step.py                     # both models, 4 and 32 tokens
    python tests/bench/bench_step.py --models warm --max-tokens 4 --steps 30
    python tests/bench/bench_step.py --skip-trl --json   # retrain only, machine-readable

TRL comes from the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

PROMPTS = 8
GROUP = 16
LEARNING_RATE = 4e-4
WARMUP_STEPS = 3


def build_models(cache: Path) -> dict[str, Path]:
    """The warm-started tiny model and an untrained model of the same shape."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    from retrain.models.tiny import ensure_tiny_model

    warm = ensure_tiny_model(cache)
    random_dir = cache / "tiny-untrained"
    if not random_dir.exists():
        config = AutoConfig.from_pretrained(warm)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            model = AutoModelForCausalLM.from_config(config)
        model.save_pretrained(random_dir)
        AutoTokenizer.from_pretrained(warm).save_pretrained(random_dir)
    return {"warm": warm, "random": random_dir}


def length_parity_reward(completion: str, reference: str) -> float:
    """The reward for the untrained model, which almost never answers correctly: exact match
    would give every group identical rewards (nothing to train on), so both sides use this
    reward with plenty of variance instead."""
    return float(len(completion) % 2)


def reward_lines(model_name: str) -> str:
    if model_name == "warm":
        return "[reward]\ntype = \"match\"\n"
    here = Path(__file__).resolve().parent
    return (f"[reward]\ntype = \"custom\"\ncustom_module = \"{Path(__file__).stem}\"\n"
            f"custom_function = \"length_parity_reward\"\n[plugins]\nsearch_paths = [\"{here}\"]\n")


def bench_retrain(model_dir: Path, model_name: str, max_tokens: int, steps: int) -> dict[str, float]:
    """retrain's own step (retrain.step.rl_step) with its metrics row and log sinks, as a run
    executes it; "outside" is everything but sampling and the update: reward, credit
    assignment, batch assembly, weight sync, metrics and logging."""
    from retrain.config.loader import resolve_config
    from retrain.metrics import metrics_row
    from retrain.plan import plan_run
    from retrain.run import build_run, start
    from retrain.step import rl_step

    with tempfile.TemporaryDirectory() as folder:
        config_path = Path(folder) / "bench.toml"
        config_path.write_text(
            "[backend]\ndevices = \"cpu\"\n"
            f"[model]\nmodel = \"{model_dir}\"\nlora_rank = 0\n"
            "[algorithm]\nadvantage_mode = \"grpo\"\ntransform_mode = \"none\"\n"
            f"[training]\nseed = 0\nbatch_size = {PROMPTS}\ngroup_size = {GROUP}\nmax_tokens = {max_tokens}\n"
            f"temperature = 1.0\nlr = {LEARNING_RATE}\nmax_steps = {WARMUP_STEPS + steps}\n"
            "[data]\nsource = \"arithmetic\"\n"
            + reward_lines(model_name) +
            f"[logging]\nlog_dir = \"{Path(folder) / 'logs'}\"\n"
        )
        plan = plan_run(resolve_config(config_path, environ={}))
        run = build_run(plan)
        totals, sampling, training, lengths = [], [], [], []
        try:
            start(run, None, plan)
            for step in range(1, WARMUP_STEPS + steps + 1):
                begin = time.perf_counter()
                record = rl_step(run, step)
                row = metrics_row(record, time.perf_counter() - begin, 0)
                run.sinks.log_step(row)
                run.sinks.log_generations(step, record.collected.examples, record.collected.samples,
                                          record.collected.rewards_P_G.reshape(-1))
                end = time.perf_counter()
                if step > WARMUP_STEPS:
                    totals.append(end - begin)
                    sampling.append(record.collected.timings["sample_time_s"])
                    training.append(record.timings["train_time_s"])
                    lengths.append(float(record.collected.samples.lengths_N.mean()))
        finally:
            run.close()
    outside = [(t - s - u) / t for t, s, u in zip(totals, sampling, training)]
    return {
        "step_s": statistics.median(totals),
        "sample_s": statistics.median(sampling),
        "train_s": statistics.median(training),
        "outside_share": statistics.median(outside),
        "mean_length": statistics.mean(lengths),
    }


def bench_trl(model_dir: Path, model_name: str, max_tokens: int, steps: int) -> dict[str, float]:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig, GRPOTrainer

    from retrain.config.schema import Config
    from retrain.data.arithmetic import ArithmeticSource

    examples = ArithmeticSource(Config()).examples()
    dataset = Dataset.from_list([{"prompt": list(e.messages), "answer": e.reference} for e in examples])

    def exact_match(completions, answer, **_):
        return [float(c[0]["content"].strip() == a) for c, a in zip(completions, answer)]

    def length_parity(completions, answer, **_):
        return [length_parity_reward(c[0]["content"], a) for c, a in zip(completions, answer)]

    class StepTimer(TrainerCallback):
        def __init__(self) -> None:
            self.times: list[float] = []
            self.begin = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            self.begin = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            self.times.append(time.perf_counter() - self.begin)

    timer = StepTimer()
    lengths: list[float] = []

    class LengthLog(TrainerCallback):
        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    with tempfile.TemporaryDirectory() as output_dir:
        args = GRPOConfig(
            output_dir=output_dir,
            per_device_train_batch_size=PROMPTS * GROUP,
            num_generations=GROUP,
            max_completion_length=max_tokens,
            beta=0.0,
            learning_rate=LEARNING_RATE,
            temperature=1.0,
            use_cpu=True,
            bf16=False,
            report_to="none",
            max_steps=WARMUP_STEPS + steps,
            save_strategy="no",
            logging_steps=1,
            disable_tqdm=True,
            seed=0,
        )
        trainer = GRPOTrainer(
            model=AutoModelForCausalLM.from_pretrained(model_dir),
            reward_funcs=exact_match if model_name == "warm" else length_parity,
            args=args,
            train_dataset=dataset,
            processing_class=AutoTokenizer.from_pretrained(model_dir),
            callbacks=[timer, LengthLog()],
        )
        # Logging every step is how the lengths are read; printing each row is not needed.
        trainer.remove_callback(PrinterCallback)
        trainer.train()
    return {
        "step_s": statistics.median(timer.times[WARMUP_STEPS:]),
        "mean_length": statistics.mean(lengths[WARMUP_STEPS:]) if len(lengths) > WARMUP_STEPS else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="warm,random", help="comma list of warm, random")
    parser.add_argument("--max-tokens", default="4,32", help="comma list of max new tokens")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per run (after warm-up)")
    parser.add_argument("--skip-trl", action="store_true", help="time retrain only")
    parser.add_argument("--cache", type=Path, default=None, help="model cache folder (default: a temporary one)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per setting")
    args = parser.parse_args(argv)

    import logging

    import torch

    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as scratch:
        models = build_models(args.cache or Path(scratch))
        rows = []
        for model_name in args.models.split(","):
            for max_tokens in (int(value) for value in args.max_tokens.split(",")):
                ours = bench_retrain(models[model_name], model_name, max_tokens, args.steps)
                theirs = None if args.skip_trl else bench_trl(models[model_name], model_name, max_tokens, args.steps)
                row = {"model": model_name, "max_tokens": max_tokens, "threads": torch.get_num_threads(),
                       "retrain": ours, "trl": theirs}
                if theirs:
                    row["ratio"] = ours["step_s"] / theirs["step_s"]
                rows.append(row)
                if args.json:
                    print(json.dumps(row), flush=True)
    if not args.json:
        print(f"{'model':7} {'tokens':>6} {'retrain s/step':>15} {'TRL s/step':>11} {'ratio':>6} "
              f"{'outside':>8} {'len ours':>9} {'len TRL':>8}")
        for row in rows:
            ours, theirs = row["retrain"], row["trl"]
            print(f"{row['model']:7} {row['max_tokens']:>6} {ours['step_s']:>15.4f} "
                  f"{theirs['step_s'] if theirs else float('nan'):>11.4f} {row.get('ratio', float('nan')):>6.2f} "
                  f"{ours['outside_share']:>8.1%} {ours['mean_length']:>9.2f} "
                  f"{theirs['mean_length'] if theirs else float('nan'):>8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
