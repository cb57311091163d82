"""Real vLLM on the CPU: what its in-place weight reload does to a tied output embedding.

    python tests/integration/vllm_cpu_tied_reload.py [--vllm-python PATH]

Starts a vLLM server in development mode on the tiny model (which ties its output
embedding to its input embedding), writes a perturbed copy of the model, reloads the
server's weights from it (``/collective_rpc reload_weights`` + ``/reset_prefix_cache``, as
the vllm engine does for full fine-tuning) and compares the server's log-probabilities of a
fixed completion with three references computed here with transformers: the old model,
the new model, and the new model with the OLD output layer. The finding that made the vllm
engine refuse full fine-tuning of tied models: on vLLM 0.32 the server matches the third.
Exits non-zero when the server matches the new model (the refusal would then be stale).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from vllm_cpu_freshness import free_port, server_logprobs, start_server, vllm_python  # noqa: E402

PROMPT, COMPLETION = [7, 76, 8, 84], [11, 3]  # "3+4=" then "7" and end of turn


def perturbed_copy(model_dir: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn(parameter.shape, generator=generator) * 0.05)
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json"):
        if (model_dir / name).exists():
            shutil.copy(model_dir / name, out / name)


def reference_logprobs(model_dir: Path, lm_head_from: Path | None = None) -> np.ndarray:
    """Log-probabilities of COMPLETION after PROMPT under ``model_dir`` (with the output
    layer of ``lm_head_from`` when given)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    if lm_head_from is not None:
        donor = AutoModelForCausalLM.from_pretrained(lm_head_from, dtype=torch.float32)
        model.config.tie_word_embeddings = False
        model.lm_head.weight = torch.nn.Parameter(donor.lm_head.weight.detach().clone())
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([PROMPT + COMPLETION])).logits[0], dim=-1)
    return np.array([float(logp[len(PROMPT) - 1 + i, token]) for i, token in enumerate(COMPLETION)])


def post(port: int, path: str, body: dict) -> None:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/{path}", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as response:
        response.read()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vllm-python", default="", help="python of an existing vLLM CPU environment")
    args = parser.parse_args()
    python = vllm_python(args.vllm_python)
    from retrain.models.tiny import ensure_tiny_model

    model_dir = ensure_tiny_model()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        new = work / "new"
        perturbed_copy(model_dir, new)
        port = free_port()
        # Development mode: /collective_rpc and /reset_prefix_cache, as full fine-tuning needs.
        server, _ = start_server(python, model_dir, port, work / "vllm.log", env={"VLLM_SERVER_DEV_MODE": "1"},
                                 flags=())
        try:
            post(port, "collective_rpc", {"method": "reload_weights", "kwargs": {"weights_path": str(new)}})
            post(port, "reset_prefix_cache", {})
            served = server_logprobs(port, str(model_dir), PROMPT, COMPLETION)
        finally:
            server.terminate()
            server.wait(timeout=60)
        gaps = {name: float(np.abs(served - reference).max()) for name, reference in (
            ("old model", reference_logprobs(model_dir)), ("new model", reference_logprobs(new)),
            ("new model, old output layer", reference_logprobs(new, lm_head_from=model_dir)))}
    for name, gap in gaps.items():
        print(f"|server after reload - {name}| max {gap:.2e} nats")
    if gaps["new model"] < 1e-3:
        print("the server serves the new weights: vLLM's reload now updates a tied output embedding")
        return 1
    print("the server kept the old output layer: full fine-tuning of a tied model cannot sync through vLLM")
    return 0


if __name__ == "__main__":
    sys.exit(main())
