"""The token-level policy-gradient loss: hand-computed values, on-policy ratio, reference check."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from retrain.backends.loss import policy_gradient_loss, token_logprobs


def reference_loss(logp, sampler_logp, advantages, mask, clip_eps, clip_eps_high):
    """Token by token, straight from the formula."""
    total, tokens, clipped = 0.0, 0, 0
    upper = clip_eps_high if clip_eps_high > 0 else clip_eps
    for i in range(len(mask)):
        for t in range(len(mask[i])):
            if not mask[i][t]:
                continue
            ratio = math.exp(logp[i][t] - sampler_logp[i][t])
            objective = ratio * advantages[i][t]
            if clip_eps > 0:
                clipped_objective = min(max(ratio, 1 - clip_eps), 1 + upper) * advantages[i][t]
                if clipped_objective < objective:
                    clipped += 1
                objective = min(objective, clipped_objective)
            total += objective
            tokens += 1
    return -total / tokens, clipped / tokens


def tensors(logp, sampler, advantages, mask):
    return (torch.tensor(logp, dtype=torch.float64), torch.tensor(sampler, dtype=torch.float64),
            torch.tensor(advantages, dtype=torch.float64), torch.tensor(mask))


def test_hand_computed_clipped_loss() -> None:
    # Ratios 1.5, 0.5, 1.1 with advantages +1, -1, +2; the fourth token is padding.
    logp, sampler, adv, mask = tensors(
        [[math.log(1.5), math.log(0.5), math.log(1.1), -1e4]], [[0.0, 0.0, 0.0, 0.0]],
        [[1.0, -1.0, 2.0, 5.0]], [[True, True, True, False]],
    )
    loss, stats = policy_gradient_loss(logp, sampler, adv, mask, num_tokens=3, clip_eps=0.2)
    # min(1.5*1, 1.2*1) = 1.2; min(0.5*-1, 0.8*-1) = -0.8; min(2.2, 2.2) = 2.2
    # loss = -(1.2 - 0.8 + 2.2) / 3 = -2.6 / 3
    assert loss.item() == pytest.approx(-2.6 / 3)
    assert stats.clipped_tokens == 2
    assert stats.ratio_sum / stats.tokens == pytest.approx((1.5 + 0.5 + 1.1) / 3)
    assert stats.ratio_max == pytest.approx(1.5)

    loss, stats = policy_gradient_loss(logp, sampler, adv, mask, num_tokens=3, clip_eps=0.2, clip_eps_high=0.6)
    # Upper bound 1.6: token 0 keeps 1.5; token 1 still clips to -0.8: -(1.5 - 0.8 + 2.2) / 3
    assert loss.item() == pytest.approx(-2.9 / 3)
    assert stats.clipped_tokens == 1

    loss, stats = policy_gradient_loss(logp, sampler, adv, mask, num_tokens=3)
    # No clipping: -(1.5 - 0.5 + 2.2) / 3
    assert loss.item() == pytest.approx(-3.2 / 3)
    assert stats.clipped_tokens == 0


def test_on_policy_ratio_is_one_and_gradient_is_reinforce() -> None:
    logp = torch.tensor([[-0.3, -2.0, -1.1], [-0.7, -0.2, 0.0]], requires_grad=True)
    sampler = logp.detach().clone()
    adv = torch.tensor([[1.0, 1.0, 0.0], [-0.5, -0.5, 9.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    loss, stats = policy_gradient_loss(logp, sampler, adv, mask, num_tokens=4)
    assert stats.ratio_sum == 4.0 and stats.ratio_max == 1.0
    # -(1 + 1 - 0.5 - 0.5) / 4 = -0.25
    assert loss.item() == pytest.approx(-0.25)
    loss.backward()
    # d loss / d logp = -A / M on real tokens, 0 on padding.
    expected = torch.tensor([[-0.25, -0.25, 0.0], [0.125, 0.125, 0.0]])
    assert torch.allclose(logp.grad, expected)


def test_padding_values_cannot_poison_the_loss() -> None:
    logp = torch.tensor([[-1.0, 80.0]])
    sampler = torch.tensor([[-1.0, -80.0]])
    adv = torch.tensor([[2.0, float("inf")]])
    loss, stats = policy_gradient_loss(logp, sampler, adv, torch.tensor([[True, False]]), num_tokens=1, clip_eps=0.2)
    assert loss.item() == -2.0
    assert stats.ratio_max == 1.0


def test_chunks_add_up_to_the_batch_mean() -> None:
    rng = np.random.default_rng(0)
    logp, sampler, adv = (torch.tensor(rng.normal(size=(6, 5))) for _ in range(3))
    mask = torch.tensor(rng.random((6, 5)) < 0.7)
    tokens = float(mask.sum())
    whole, _ = policy_gradient_loss(logp, sampler, adv, mask, tokens, 0.2, 0.3)
    parts = sum(policy_gradient_loss(logp[i:i + 2], sampler[i:i + 2], adv[i:i + 2], mask[i:i + 2], tokens, 0.2, 0.3)[0]
                for i in range(0, 6, 2))
    assert parts.item() == pytest.approx(whole.item())


def test_token_logprobs_is_the_tempered_log_softmax() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.5, 0.5, 0.5]]])
    tokens = torch.tensor([[0, 2]])
    logp = token_logprobs(logits, tokens, temperature=0.5)
    # logits / 0.5 = [4, 0, -2]: log p(0) = 4 - log(e^4 + e^0 + e^-2)
    assert logp[0, 0].item() == pytest.approx(4 - math.log(math.exp(4) + 1 + math.exp(-2)), abs=1e-6)
    # uniform: log(1/3)
    assert logp[0, 1].item() == pytest.approx(math.log(1 / 3), abs=1e-6)


@settings(max_examples=60, deadline=None)
@given(
    seed=st.integers(0, 2**32 - 1),
    rows=st.integers(1, 5),
    width=st.integers(1, 6),
    clip_eps=st.sampled_from([0.0, 0.1, 0.2]),
    clip_eps_high=st.sampled_from([0.0, 0.28, 1.0]),
)
def test_matches_the_token_by_token_reference(seed, rows, width, clip_eps, clip_eps_high) -> None:
    if clip_eps == 0:
        clip_eps_high = 0.0
    rng = np.random.default_rng(seed)
    logp = rng.normal(-1.5, 0.5, size=(rows, width))
    sampler = logp + rng.normal(0, 0.3, size=(rows, width))
    adv = rng.normal(size=(rows, width))
    mask = rng.random((rows, width)) < 0.8
    mask[0, 0] = True
    expected, expected_clip = reference_loss(logp.tolist(), sampler.tolist(), adv.tolist(), mask.tolist(),
                                             clip_eps, clip_eps_high)
    loss, stats = policy_gradient_loss(*tensors(logp, sampler, adv, mask), float(mask.sum()), clip_eps, clip_eps_high)
    assert loss.item() == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert stats.clipped_tokens / stats.tokens == pytest.approx(expected_clip)
