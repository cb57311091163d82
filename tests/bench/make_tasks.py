"""Write the tiny single-digit tasks used by bench_recipes.py, and check where the model starts.

Each task is 100 prompts, one per operand pair (a, b) with a and b in 0..9, in the order
(0, 0), (0, 1), ..., (9, 9), answered by one digit that the ``match`` reward checks:

- ``subtraction``:    ``"7-9 mod 10="`` -> ``"8"``  ((a - b) mod 10; every digit 10 times)
- ``multiplication``: ``"7*9 mod 10="`` -> ``"3"``  ((a * b) mod 10; "0" is the answer 27 times)
- ``maximum``:        ``"max(7,9)="``   -> ``"9"``  (max(a, b); "9" is the answer 19 times)

The shipped task (``"a+b mod 10="``, the ``arithmetic`` source and
configs/data/arithmetic.jsonl) is not rewritten here. The tiny model (``retrain/tiny``)
was warm-started only on the answer format of the addition prompts, so these tasks test
whether a recipe learns an operation, or a prompt shape, that the model has not seen.
The files are fully determined by this script (no randomness).

``--check`` also loads the untrained tiny model (building it into $RETRAIN_CACHE_DIR if
needed) and prints, for every task, the expected ``match`` reward of one sampled
completion at temperature 1 (the probability of "<right digit><|im_end|>", exactly,
summed over the prompts) and the probability of answering with a single digit at all.
Each task should start near chance, about 0.1, with the format intact.

Run: python tests/bench/make_tasks.py [--out configs/data] [--check]
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DIGITS = range(10)

# name -> (id prefix, prompt for (a, b), answer for (a, b))
TASKS: dict[str, tuple[str, Callable[[int, int], str], Callable[[int, int], int]]] = {
    "subtraction": ("sub", lambda a, b: f"{a}-{b} mod 10=", lambda a, b: (a - b) % 10),
    "multiplication": ("mul", lambda a, b: f"{a}*{b} mod 10=", lambda a, b: (a * b) % 10),
    "maximum": ("max", lambda a, b: f"max({a},{b})=", lambda a, b: max(a, b)),
}


def task_rows(name: str) -> list[dict[str, str]]:
    """The lines of one task file, in order."""
    prefix, prompt, answer = TASKS[name]
    return [{"id": f"{prefix}-{a}-{b}", "prompt": prompt(a, b), "answer": str(answer(a, b))}
            for a in DIGITS for b in DIGITS]


def write_tasks(out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name in TASKS:
        path = out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row) + "\n" for row in task_rows(name)))
        paths.append(path)
    return paths


def starting_rewards(rows_by_task: dict[str, list[dict[str, str]]]) -> dict[str, tuple[float, float]]:
    """(expected match reward, probability of a one-digit answer) of the untrained tiny model."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from retrain.models.tiny import ensure_tiny_model

    path = ensure_tiny_model()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).eval()
    digit_ids = tokenizer.convert_tokens_to_ids([str(d) for d in DIGITS])
    eos_id = tokenizer.eos_token_id
    results = {}
    with torch.no_grad():
        for name, rows in rows_by_task.items():
            reward = formatted = 0.0
            for row in rows:
                text = tokenizer.apply_chat_template([{"role": "user", "content": row["prompt"]}], tokenize=False,
                                                     add_generation_prompt=True)
                prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                first = model(torch.tensor([prompt_ids])).logits[0, -1].softmax(-1)
                # Every digit after the prompt, one batch: P(<|im_end|> | prompt + digit).
                batch = torch.tensor([prompt_ids + [digit] for digit in digit_ids])
                ends = model(batch).logits[:, -1].softmax(-1)[:, eos_id]
                per_digit = first[digit_ids] * ends
                formatted += float(per_digit.sum())
                reward += float(per_digit[int(row["answer"])])
            results[name] = (reward / len(rows), formatted / len(rows))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "configs" / "data", help="folder for <task>.jsonl")
    parser.add_argument("--check", action="store_true", help="print the untrained model's expected reward per task")
    args = parser.parse_args(argv)
    for path in write_tasks(args.out):
        print(f"wrote {path}")
    if args.check:
        rows = {"arithmetic (a+b mod 10=)": [{"prompt": f"{a}+{b} mod 10=", "answer": str((a + b) % 10)}
                                             for a in DIGITS for b in DIGITS]}
        rows.update({name: task_rows(name) for name in TASKS})
        print(f"{'task':<26} {'start reward':>12} {'one-digit answers':>18}")
        for name, (reward, formatted) in starting_rewards(rows).items():
            print(f"{name:<26} {reward:>12.3f} {formatted:>18.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
