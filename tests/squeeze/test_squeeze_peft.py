"""Compressed adapters load with PEFT and behave as the maths says: the full-rank squeeze
of a tiny-model adapter gives the original logits, a lower rank gives each layer the
Eckart–Young truncation of its update, and a LoRA bias keeps its effect.

The base model is the tiny model's architecture and vocabulary (``retrain.models.tiny``'s
``MODEL_SHAPE`` and tokenizer) with seeded random weights: its warm start (about 12 s on
two cores) changes nothing that PEFT or the squeeze look at, and this folder stays fast.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import AutoModelForCausalLM

from retrain.squeeze import analyze, compress

PROJECTIONS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PROMPT_IDS = torch.tensor([[4, 17, 30, 9, 52, 61, 3, 11]])


def trained_looking(model: torch.nn.Module, seed: int) -> None:
    """Random LoRA factors (PEFT starts B at zero, which would make every update vanish)."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(0.2 * torch.randn(parameter.shape, generator=generator))


@pytest.fixture(scope="module")
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from transformers import AutoConfig

    from retrain.models.tiny import MODEL_SHAPE, build_tokenizer

    config = AutoConfig.for_model("qwen3", vocab_size=len(build_tokenizer()), **MODEL_SHAPE)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_config(config)
    folder = tmp_path_factory.mktemp("tiny-qwen3")
    model.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model_path: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    """A rank-8 adapter on every projection of the tiny model (down_proj at rank 4 with its
    own alpha, through the patterns) and its logits on a fixed prompt."""
    base = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    lora = LoraConfig(r=8, lora_alpha=16, target_modules=PROJECTIONS, rank_pattern={"down_proj": 4},
                      alpha_pattern={"down_proj": 12})
    model = get_peft_model(base, lora)
    trained_looking(model, seed=0)
    folder = tmp_path_factory.mktemp("tiny-adapter") / "adapter"
    model.save_pretrained(str(folder))
    with torch.no_grad():
        return folder, model(PROMPT_IDS).logits


def load(tiny_model_path: Path, folder: Path) -> PeftModel:
    return PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model_path), str(folder))


def test_the_full_rank_squeeze_gives_the_original_logits(tiny_adapter: tuple[Path, torch.Tensor],
                                                         tiny_model_path: Path, tmp_path: Path) -> None:
    folder, logits = tiny_adapter
    compress(folder, tmp_path / "full", 8)
    with torch.no_grad():
        squeezed = load(tiny_model_path, tmp_path / "full")(PROMPT_IDS).logits
    assert (squeezed - logits).abs().max() < 1e-4


def test_a_lower_rank_squeeze_is_each_layers_best_truncation(tiny_adapter: tuple[Path, torch.Tensor],
                                                            tiny_model_path: Path, tmp_path: Path) -> None:
    folder, _ = tiny_adapter
    analysis = analyze(folder)
    assert analysis.source_rank == 8 and [row.rank for row in analysis.rows] == [1, 2, 4, 8]
    compress(folder, tmp_path / "small", 2)
    original, squeezed = load(tiny_model_path, folder), load(tiny_model_path, tmp_path / "small")
    squeezed_modules = dict(squeezed.named_modules())
    checked = 0
    for name, module in original.named_modules():
        if not hasattr(module, "get_delta_weight"):
            continue
        u, s, vh = torch.linalg.svd(module.get_delta_weight("default").double(), full_matrices=False)
        best = (u[:, :2] * s[:2]) @ vh[:2]
        got = squeezed_modules[name].get_delta_weight("default").double()
        assert squeezed_modules[name].r["default"] == 2
        assert (got - best).abs().max() < 1e-5, name
        checked += 1
    assert checked == 2 * len(PROJECTIONS)


class BiasedMLP(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.up = torch.nn.Linear(8, 16)
        self.down = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(torch.tanh(self.up(x)))


def biased_base() -> BiasedMLP:
    torch.manual_seed(7)
    return BiasedMLP()


def test_a_lora_bias_adapter_squeezes_to_the_same_outputs(tmp_path: Path) -> None:
    model = get_peft_model(biased_base(), LoraConfig(r=4, lora_alpha=6, target_modules=["up", "down"],
                                                     lora_bias=True, use_rslora=True))
    trained_looking(model, seed=1)
    model.save_pretrained(str(tmp_path / "adapter"))
    inputs = torch.randn(5, 8, generator=torch.Generator().manual_seed(2))
    compress(tmp_path / "adapter", tmp_path / "full", 4)
    squeezed = PeftModel.from_pretrained(biased_base(), str(tmp_path / "full"))
    with torch.no_grad():
        assert (squeezed(inputs) - model(inputs)).abs().max() < 1e-5


class EmbeddingModel(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(20, 8)
        self.head = torch.nn.Linear(8, 5, bias=False)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(ids))


def embedding_base() -> EmbeddingModel:
    torch.manual_seed(8)
    return EmbeddingModel()


def test_an_embedding_lora_squeezes_like_a_linear_one(tmp_path: Path) -> None:
    model = get_peft_model(embedding_base(), LoraConfig(r=4, lora_alpha=8, target_modules=["embed", "head"]))
    trained_looking(model, seed=3)
    model.save_pretrained(str(tmp_path / "adapter"))
    assert [row.rank for row in analyze(tmp_path / "adapter").rows] == [1, 2, 4]
    compress(tmp_path / "adapter", tmp_path / "full", 4)
    squeezed = PeftModel.from_pretrained(embedding_base(), str(tmp_path / "full"))
    ids = torch.tensor([[0, 3, 19, 7]])
    with torch.no_grad():
        assert (squeezed(ids) - model(ids)).abs().max() < 1e-5
