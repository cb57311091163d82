"""LoRA-Squeeze maths: spectra from QR + core SVD, the retention table, the recommended
rank, Eckart–Young compression, the scale rules and the errors a user can cause."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from squeeze_helpers import PREFIX, delta, known_factors, peft_scale, read_factors, write_adapter

from retrain.errors import ConfigError, RetrainError
from retrain.squeeze import SqueezeError, analyze, compress, default_ranks, lora_scale, retention

# Two layers of rank 4 with hand-picked spectra.
#   q: s = (4, 2, 1, 1), s^2 = (16, 4, 1, 1), total 22 -> V(1) = 16/22, V(2) = 20/22, V(4) = 1
#   v: s = (3, 3, 0, 0), s^2 = (9, 9, 0, 0),  total 18 -> V(1) = 1/2,   V(2) = 1,     V(4) = 1
Q_VALUES = (4.0, 2.0, 1.0, 1.0)
V_VALUES = (3.0, 3.0, 0.0, 0.0)
Q_NAME = "model.layers.0.self_attn.q_proj"
V_NAME = "model.layers.0.self_attn.v_proj"


def known_adapter(folder: Path, dtype: torch.dtype = torch.float32) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    # r = 4, alpha = 8: scale 2 on both layers.
    factors = {Q_NAME: known_factors(24, 16, Q_VALUES, scale=2.0, seed=1),
               V_NAME: known_factors(12, 16, V_VALUES, scale=2.0, seed=2)}
    write_adapter(folder, factors, r=4, lora_alpha=8, dtype=dtype)
    return factors


def test_known_spectra_give_the_expected_table_and_recommendation(tmp_path: Path) -> None:
    known_adapter(tmp_path / "adapter")
    threads = torch.get_num_threads()
    analysis = analyze(tmp_path / "adapter", min_variance_retention=0.95)
    assert torch.get_num_threads() == threads  # the workers' single-thread setting is undone
    spectra = dict(zip(analysis.layers, analysis.singular_values))
    assert spectra[PREFIX + Q_NAME] == pytest.approx(Q_VALUES, abs=1e-5)
    assert spectra[PREFIX + V_NAME] == pytest.approx(V_VALUES, abs=1e-5)
    table = [(row.rank, row.mean, row.min, row.max) for row in analysis.rows]
    # mean V(1) = (16/22 + 1/2) / 2 = 0.61364; mean V(2) = (20/22 + 1) / 2 = 0.95455
    expected = [(1, (16 / 22 + 0.5) / 2, 0.5, 16 / 22), (2, (20 / 22 + 1) / 2, 20 / 22, 1.0), (4, 1.0, 1.0, 1.0)]
    assert [row[0] for row in table] == [row[0] for row in expected]
    for got, want in zip(table, expected):
        assert got[1:] == pytest.approx(want[1:], abs=1e-6)
    assert analysis.source_rank == 4 and analysis.recommended_rank == 2
    assert analysis.recommended.worst_layer == PREFIX + Q_NAME
    assert analysis.recommended.min == pytest.approx(20 / 22, abs=1e-6)
    record = json.loads(json.dumps(analysis.to_dict()))
    assert record["recommended_rank"] == 2 and record["worst_layer"] == PREFIX + Q_NAME
    assert [row["rank"] for row in record["ranks"]] == [1, 2, 4]


def test_the_table_marks_the_recommended_row_and_names_the_worst_layer(tmp_path: Path) -> None:
    known_adapter(tmp_path / "adapter")
    text = analyze(tmp_path / "adapter", min_variance_retention=0.95).table()
    marked = [line for line in text.splitlines() if "<- recommended" in line]
    # rank 2: mean 95.45 %, min 90.91 % (20/22), max 100 %
    assert len(marked) == 1 and marked[0].split()[:4] == ["2", "95.45", "90.91", "100.00"]
    assert f"{PREFIX + Q_NAME} (90.91%)" in text


def test_a_higher_threshold_recommends_a_higher_rank_and_explicit_ranks_keep_the_source_rank(tmp_path: Path) -> None:
    known_adapter(tmp_path / "adapter")
    assert analyze(tmp_path / "adapter", min_variance_retention=0.99).recommended_rank == 4
    assert analyze(tmp_path / "adapter", min_variance_retention=0.6).recommended_rank == 1
    analysis = analyze(tmp_path / "adapter", target_ranks=[3, 1], min_variance_retention=0.99)
    assert [row.rank for row in analysis.rows] == [1, 3, 4]
    # V(3): q keeps 21/22 = 0.9545, v keeps 1 -> mean 0.9773 < 0.99, so the source rank.
    assert analysis.rows[1].mean == pytest.approx((21 / 22 + 1) / 2, abs=1e-6)
    assert analysis.recommended_rank == 4


def test_default_ranks_are_powers_of_two_up_to_and_including_the_source_rank() -> None:
    assert default_ranks(128) == [1, 2, 4, 8, 16, 32, 64, 128]
    assert default_ranks(12) == [1, 2, 4, 8, 12]
    assert default_ranks(1) == [1]


def test_compression_at_full_rank_reproduces_the_update(tmp_path: Path) -> None:
    factors = known_adapter(tmp_path / "adapter")
    compress(tmp_path / "adapter", tmp_path / "full", 4)
    config, tensors = read_factors(tmp_path / "full")
    assert config["r"] == 4 and config["lora_alpha"] == 4 and config["use_rslora"] is False
    for module, (b, a) in factors.items():
        new = delta(tensors[f"{PREFIX}{module}.lora_B.weight"], tensors[f"{PREFIX}{module}.lora_A.weight"],
                    peft_scale(config, 4))
        assert (new - delta(b.float(), a.float(), 2.0)).abs().max() < 1e-5


@pytest.mark.parametrize("rank", [1, 2, 3])
def test_compression_error_is_the_eckart_young_bound(tmp_path: Path, rank: int) -> None:
    factors = known_adapter(tmp_path / "adapter")
    compress(tmp_path / "adapter", tmp_path / "small", rank)
    config, tensors = read_factors(tmp_path / "small")
    assert config["r"] == rank and tensors[f"{PREFIX}{Q_NAME}.lora_A.weight"].shape == (rank, 16)
    for module, values in ((Q_NAME, Q_VALUES), (V_NAME, V_VALUES)):
        b, a = factors[module]
        new = delta(tensors[f"{PREFIX}{module}.lora_B.weight"], tensors[f"{PREFIX}{module}.lora_A.weight"],
                    peft_scale(config, rank))
        # ||dW - dW_k||_F = sqrt(sum_{i>k} s_i^2), e.g. q at k = 1: sqrt(4 + 1 + 1) = 2.449
        bound = math.sqrt(sum(value * value for value in values[rank:]))
        assert float(torch.linalg.norm(delta(b.float(), a.float(), 2.0) - new)) == pytest.approx(bound, abs=1e-5)


def test_compressed_factors_are_balanced_and_keep_the_dtype(tmp_path: Path) -> None:
    known_adapter(tmp_path / "adapter", dtype=torch.bfloat16)
    compress(tmp_path / "adapter", tmp_path / "small", 2)
    _, tensors = read_factors(tmp_path / "small")
    b, a = tensors[f"{PREFIX}{Q_NAME}.lora_B.weight"], tensors[f"{PREFIX}{Q_NAME}.lora_A.weight"]
    assert b.dtype == a.dtype == torch.bfloat16
    # B' = Q_B U_k S^(1/2), A' = S^(1/2) V_k^T Q_A^T: column norms of B' = row norms of A' = sqrt(s_i) = (2, 1.414)
    assert b.float().norm(dim=0).tolist() == pytest.approx([2.0, math.sqrt(2.0)], rel=1e-2)
    assert a.float().norm(dim=1).tolist() == pytest.approx([2.0, math.sqrt(2.0)], rel=1e-2)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.floats(min_value=0.0, max_value=1e3), min_size=1, max_size=32))
def test_retention_rises_with_the_rank_and_ends_at_one(values: list[float]) -> None:
    descending = sorted(values, reverse=True)
    kept = [retention(descending, rank) for rank in range(1, len(descending) + 1)]
    assert all(0.0 <= value <= 1.0 for value in kept)
    assert all(earlier <= later + 1e-12 for earlier, later in zip(kept, kept[1:]))
    assert kept[-1] == 1.0


@settings(max_examples=15, deadline=None)
@given(st.lists(st.floats(min_value=0.01, max_value=100.0), min_size=2, max_size=8), st.integers(0, 2**16))
def test_analysed_spectra_match_the_dense_svd(values: list[float], seed: int) -> None:
    import tempfile

    descending = sorted(values, reverse=True)
    b, a = known_factors(20, 18, descending, scale=0.5, seed=seed)
    with tempfile.TemporaryDirectory() as folder:
        write_adapter(Path(folder), {Q_NAME: (b, a)}, r=len(values), lora_alpha=len(values) / 2, dtype=torch.float64)
        analysis = analyze(folder)
    dense = torch.linalg.svdvals(delta(b, a, 0.5)).tolist()
    assert list(analysis.singular_values[0]) == pytest.approx(dense[: len(values)], rel=1e-9, abs=1e-9)
    kept = [row.mean for row in analysis.rows]
    assert kept == sorted(kept) and kept[-1] == 1.0


def test_scale_follows_rslora_and_the_patterns() -> None:
    config = {"r": 16, "lora_alpha": 32, "rank_pattern": {"v_proj": 4}, "alpha_pattern": {r"layers\.1\.self_attn\.q_proj": 3}}
    assert lora_scale(config, PREFIX + "model.layers.0.self_attn.q_proj") == (16, 2.0)  # 32 / 16
    assert lora_scale(config, PREFIX + "model.layers.0.self_attn.v_proj") == (4, 8.0)  # 32 / 4
    assert lora_scale(config, PREFIX + "model.layers.1.self_attn.q_proj") == (16, 3 / 16)
    assert lora_scale(config, PREFIX + "model.layers.11.self_attn.q_proj") == (16, 2.0)
    assert lora_scale({"r": 16, "lora_alpha": 8, "use_rslora": True}, PREFIX + "x.q_proj") == (16, 2.0)  # 8 / sqrt(16)


def test_rslora_and_rank_patterns_compress_with_the_scale_kept(tmp_path: Path) -> None:
    # q: rank 4 with rsLoRA scale 6 / sqrt(4) = 3; v: rank 2 from rank_pattern, scale 6 / sqrt(2).
    q = known_factors(10, 8, (5.0, 3.0, 2.0, 1.0), scale=3.0, seed=3)
    v = known_factors(10, 8, (2.0, 1.0), scale=6 / math.sqrt(2), seed=4)
    write_adapter(tmp_path / "adapter", {Q_NAME: q, V_NAME: v}, r=4, lora_alpha=6, use_rslora=True,
                  rank_pattern={"v_proj": 2})
    analysis = analyze(tmp_path / "adapter")
    assert analysis.singular_values[0] == pytest.approx((5.0, 3.0, 2.0, 1.0), abs=1e-5)
    assert analysis.singular_values[1] == pytest.approx((2.0, 1.0), abs=1e-5)
    compress(tmp_path / "adapter", tmp_path / "out", 3)
    config, tensors = read_factors(tmp_path / "out")
    # v keeps its rank 2 (below 3), named exactly, with alpha = r so that its scale is 1.
    escaped = r"model\.layers\.0\.self_attn\.v_proj"
    assert config["rank_pattern"] == {escaped: 2} and config["alpha_pattern"] == {escaped: 2}
    assert tensors[f"{PREFIX}{V_NAME}.lora_A.weight"].shape == (2, 8)
    new_v = delta(tensors[f"{PREFIX}{V_NAME}.lora_B.weight"], tensors[f"{PREFIX}{V_NAME}.lora_A.weight"], 1.0)
    assert (new_v - delta(*v, 6 / math.sqrt(2))).abs().max() < 1e-5
    assert lora_scale(config, PREFIX + V_NAME) == (2, 1.0) and lora_scale(config, PREFIX + Q_NAME) == (3, 1.0)


def test_a_lora_bias_takes_the_old_scale_and_other_tensors_and_files_are_kept(tmp_path: Path) -> None:
    b, a = known_factors(6, 5, (2.0, 1.0), scale=1.5, seed=5)
    bias = torch.arange(6, dtype=torch.float32)
    head = torch.ones(3, 4)
    write_adapter(tmp_path / "adapter", {Q_NAME: (b, a)}, r=2, lora_alpha=3, lora_bias=True,
                  extra={f"{PREFIX}{Q_NAME}.lora_B.bias": bias, f"{PREFIX}lm_head.modules_to_save.weight": head})
    (tmp_path / "adapter" / "tokenizer.json").write_text("{}")
    compress(tmp_path / "adapter", tmp_path / "out", 1)
    config, tensors = read_factors(tmp_path / "out")
    # PEFT adds scale * lora_B(lora_A(x)), bias included; the new scale is 1, so the bias is 1.5 x.
    assert tensors[f"{PREFIX}{Q_NAME}.lora_B.bias"].tolist() == pytest.approx((1.5 * bias).tolist())
    assert torch.equal(tensors[f"{PREFIX}lm_head.modules_to_save.weight"], head)
    assert config["lora_bias"] is True and config["target_modules"] == ["q_proj", "v_proj"]
    assert config["base_model_name_or_path"] == "retrain/tiny"
    assert (tmp_path / "out" / "tokenizer.json").read_text() == "{}"


def test_a_zero_update_keeps_everything_at_every_rank(tmp_path: Path) -> None:
    # A freshly initialised LoRA layer has B = 0.
    write_adapter(tmp_path / "adapter", {Q_NAME: (torch.zeros(6, 4), torch.randn(4, 5))}, r=4, lora_alpha=8)
    analysis = analyze(tmp_path / "adapter")
    assert [row.mean for row in analysis.rows] == [1.0, 1.0, 1.0] and analysis.recommended_rank == 1
    compress(tmp_path / "adapter", tmp_path / "out", 1)
    _, tensors = read_factors(tmp_path / "out")
    assert torch.count_nonzero(tensors[f"{PREFIX}{Q_NAME}.lora_B.weight"]) == 0


def test_compression_replaces_an_older_adapter_and_leaves_no_temporary_folder(tmp_path: Path) -> None:
    known_adapter(tmp_path / "adapter")
    compress(tmp_path / "adapter", tmp_path / "out", 1)
    compress(tmp_path / "adapter", tmp_path / "out", 2)
    assert read_factors(tmp_path / "out")[0]["r"] == 2
    assert sorted(item.name for item in tmp_path.iterdir()) == ["adapter", "out"]


def test_a_missing_folder_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SqueezeError, match="does not exist"):
        analyze(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(SqueezeError, match="no adapter_config.json"):
        analyze(tmp_path / "empty")
    (tmp_path / "empty" / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    with pytest.raises(SqueezeError, match="no adapter_model.safetensors"):
        analyze(tmp_path / "empty")


def test_an_adapter_without_lora_keys_is_a_clear_error(tmp_path: Path) -> None:
    write_adapter(tmp_path / "adapter", {}, r=4, lora_alpha=8, extra={"base_model.model.score.weight": torch.ones(2, 2)})
    with pytest.raises(SqueezeError, match="holds no LoRA weights"):
        analyze(tmp_path / "adapter")


def test_a_source_rank_that_disagrees_with_the_adapter_is_a_config_error(tmp_path: Path) -> None:
    known_adapter(tmp_path / "adapter")
    with pytest.raises(ConfigError, match=r"\[squeeze\]\.source_rank: is 8 but the adapter .* has rank 4"):
        analyze(tmp_path / "adapter", source_rank=8)
    assert analyze(tmp_path / "adapter", source_rank=4).source_rank == 4


def test_ranks_above_the_source_rank_are_config_errors(tmp_path: Path) -> None:
    known_adapter(tmp_path / "adapter")
    with pytest.raises(ConfigError, match=r"\[squeeze\]\.compress_to: is 8 but the adapter .* has rank 4"):
        compress(tmp_path / "adapter", tmp_path / "out", 8)
    with pytest.raises(ConfigError, match=r"\[squeeze\]\.target_ranks: \[16\] outside 1\.\.4"):
        analyze(tmp_path / "adapter", target_ranks=[2, 16])
    assert not (tmp_path / "out").exists()


def test_a_config_that_does_not_match_the_weights_is_an_error(tmp_path: Path) -> None:
    write_adapter(tmp_path / "adapter", {Q_NAME: known_factors(6, 5, (2.0, 1.0), 1.0)}, r=4, lora_alpha=8)
    with pytest.raises(SqueezeError, match="rank 4 but its weights have rank 2"):
        analyze(tmp_path / "adapter")


def test_output_paths_that_would_destroy_something_are_refused(tmp_path: Path) -> None:
    known_adapter(tmp_path / "adapter")
    with pytest.raises(SqueezeError, match="is the adapter folder itself"):
        compress(tmp_path / "adapter", tmp_path / "adapter", 2)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("keep me")
    with pytest.raises(SqueezeError, match="is not an adapter folder"):
        compress(tmp_path / "adapter", tmp_path / "busy", 2)
    assert (tmp_path / "busy" / "notes.txt").read_text() == "keep me"


def test_errors_are_retrain_errors_and_tinker_paths_must_be_fetched_first(tmp_path: Path) -> None:
    assert issubclass(SqueezeError, RetrainError)
    with pytest.raises(SqueezeError, match="fetch it first"):
        analyze("tinker://run/external_weights/final")
    with pytest.raises(ConfigError, match=r"\[squeeze\]\.device"):
        analyze(tmp_path, device="not-a-device")
