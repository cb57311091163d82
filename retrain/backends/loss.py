"""The token-level policy-gradient loss of the local backend.

For trajectory ``i`` and token ``t`` with advantage ``A_it`` and loss mask ``m_it`` (1 on
the tokens the policy sampled, 0 on environment turns and padding), the importance ratio
between the policy being trained and the sampler is

    rho_it = exp(log pi_theta(y_it) - log mu(y_it)),

both log-probabilities taken under the same temperature ``tau`` (``softmax(z / tau)``
over the full vocabulary), so ``rho = 1`` exactly while the weights have not moved since
sampling. The loss is the mean over all ``M = sum m_it`` sampled tokens of the batch:

    L = -(1/M) sum_it m_it rho_it A_it                                   (no clipping)
    L = -(1/M) sum_it m_it min(rho_it A_it, clip(rho_it, 1-eps, 1+eps_high) A_it)

The clipped form is PPO's surrogate (Schulman et al., 2017, "Proximal Policy
Optimization Algorithms") with a separate upper bound as in DAPO's clip-higher (Yu et
al., 2025). Since ``grad rho = rho grad log pi``, on-policy the gradient is REINFORCE's
``-(1/M) sum m A grad log pi``. Everything works on padded ``[N, T]`` tensors.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from retrain.engines.sampler import cache_argument_name, output_cache


@dataclass
class LossStats:
    """Sums over the trained tokens of one chunk, combined across micro-batches."""

    ratio_sum: float = 0.0
    ratio_max: float = 0.0
    clipped_tokens: float = 0.0
    tokens: float = 0.0
    # |trainer logprob - sampler logprob| of the trained tokens (sampler/trainer agreement).
    logprob_diff_sum: float = 0.0
    logprob_diff_max: float = 0.0
    # Forward-and-backward passes through the model (one per micro-batch).
    passes: int = 0

    def add(self, other: LossStats) -> None:
        self.ratio_sum += other.ratio_sum
        self.ratio_max = max(self.ratio_max, other.ratio_max)
        self.logprob_diff_sum += other.logprob_diff_sum
        self.logprob_diff_max = max(self.logprob_diff_max, other.logprob_diff_max)
        self.clipped_tokens += other.clipped_tokens
        self.tokens += other.tokens


def token_logprobs(logits_N_T_V: torch.Tensor, token_ids_N_T: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log softmax(logits / temperature)`` at each token, in float32 ([N, T])."""
    scaled = logits_N_T_V.float() / temperature
    chosen = scaled.gather(-1, token_ids_N_T.unsqueeze(-1)).squeeze(-1)
    return chosen - torch.logsumexp(scaled, dim=-1)


def policy_gradient_loss(
    logp_N_T: torch.Tensor,
    sampler_logp_N_T: torch.Tensor,
    advantages_N_T: torch.Tensor,
    mask_N_T: torch.Tensor,
    num_tokens: float,
    clip_eps: float = 0.0,
    clip_eps_high: float = 0.0,
) -> tuple[torch.Tensor, LossStats]:
    """This chunk's share of the batch loss: its masked sum divided by ``num_tokens`` (the
    batch's ``M``), so the chunks of a micro-batched step add up to the batch mean.

    ``clip_eps = 0`` turns clipping off; ``clip_eps_high = 0`` means the same as ``clip_eps``.
    """
    mask = mask_N_T.to(logp_N_T.dtype)
    # Padding may hold any value (even inf); zero it before exp and before summing, since
    # multiplying by a 0/1 mask would turn inf into NaN.
    log_ratio = torch.where(mask_N_T, logp_N_T - sampler_logp_N_T, torch.zeros_like(logp_N_T))
    ratio = torch.exp(log_ratio)
    objective = ratio * advantages_N_T
    clipped = torch.zeros_like(mask_N_T)
    if clip_eps > 0:
        upper = clip_eps_high if clip_eps_high > 0 else clip_eps
        clipped_objective = torch.clamp(ratio, 1.0 - clip_eps, 1.0 + upper) * advantages_N_T
        clipped = (clipped_objective < objective) & mask_N_T
        objective = torch.minimum(objective, clipped_objective)
    loss = -torch.where(mask_N_T, objective, torch.zeros_like(objective)).sum() / num_tokens
    with torch.no_grad():
        ratio_detached = ratio.detach()
        # One device-to-host transfer for all the numbers.
        difference = log_ratio.detach().abs()
        ratio_sum, ratio_max, clipped_tokens, tokens, diff_sum, diff_max = torch.stack([
            (ratio_detached * mask).sum(),
            torch.where(mask_N_T, ratio_detached, torch.zeros_like(ratio_detached)).max(),
            clipped.sum().to(ratio_detached.dtype),
            mask.sum(),
            difference.sum(),
            difference.max(),
        ]).tolist()
    return loss, LossStats(ratio_sum, ratio_max, clipped_tokens, tokens, diff_sum, diff_max)


def sequence_logprobs(
    model: torch.nn.Module,
    prompt_ids: torch.Tensor,
    prompt_mask: torch.Tensor,
    prompt_index: torch.Tensor,
    tokens: torch.Tensor,
    mask: torch.Tensor,
    temperature: float,
    share_prompts: bool = True,
) -> torch.Tensor:
    """``log softmax(logits / temperature)`` of each completion token given its prompt ([N, T]).

    ``prompt_ids``/``prompt_mask`` are the left-padded prompts ``[P, L]``; completion
    ``i`` continues prompt ``prompt_index[i]`` and is right-padded (``mask`` marks its
    real tokens). Right padding is invisible to earlier tokens under the causal mask, so an
    explicit attention mask is only needed when some prompt is left-padded.

    With ``share_prompts`` each distinct prompt is run once and its keys and values are
    gathered for every completion that continues it (autograd carries the completions'
    gradients back through that gather), the training-side twin of the engine's prefix
    caching: a group of G completions costs one prompt instead of G. Otherwise every row
    runs ``[prompt | completion]`` in full.
    """
    if not share_prompts:
        return _full_sequence_logprobs(model, prompt_ids, prompt_mask, prompt_index, tokens, mask, temperature)
    return _shared_prompt_logprobs(model, prompt_ids, prompt_mask, prompt_index, tokens, mask, temperature)


def _full_sequence_logprobs(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                            prompt_index: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    """Every row runs ``[prompt | completion]`` in full."""
    width = tokens.shape[1]
    input_ids = torch.cat([prompt_ids[prompt_index], tokens], dim=1)
    attention_mask = position_ids = None
    if not bool(prompt_mask.all()):
        attention_mask = torch.cat([prompt_mask[prompt_index], mask.to(prompt_mask.dtype)], dim=1)
        position_ids = (attention_mask.cumsum(dim=1) - 1).clamp(min=0)
    logits = model(
        input_ids=input_ids,
        attention_mask=attention_mask,
        position_ids=position_ids,
        use_cache=False,
        logits_to_keep=width + 1,
    ).logits[:, :width]
    return token_logprobs(logits, tokens, temperature)


def _shared_prompt_logprobs(model: torch.nn.Module, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                            prompt_index: torch.Tensor, tokens: torch.Tensor, mask: torch.Tensor,
                            temperature: float) -> torch.Tensor:
    """Each distinct prompt runs once; its cache is gathered for the rows that continue it."""
    width = tokens.shape[1]
    left_padded = not bool(prompt_mask.all())
    used, row_of_prompt = torch.unique(prompt_index, return_inverse=True)
    used_mask = prompt_mask[used]
    prefill = model(
        input_ids=prompt_ids[used],
        attention_mask=used_mask if left_padded else None,
        position_ids=(used_mask.cumsum(dim=1) - 1).clamp(min=0),
        use_cache=True,
        logits_to_keep=1,
    )
    first_logits = prefill.logits[:, -1][row_of_prompt]
    if width == 1:
        return token_logprobs(first_logits[:, None], tokens, temperature)
    cache = output_cache(prefill)
    cache.batch_select_indices(row_of_prompt)
    row_mask = used_mask[row_of_prompt]
    positions = row_mask.sum(dim=1, keepdim=True) + torch.arange(width - 1, device=tokens.device)
    attention_mask = torch.cat([row_mask, mask[:, :-1].to(row_mask.dtype)], dim=1) if left_padded else None
    rest = model(
        input_ids=tokens[:, :-1],
        attention_mask=attention_mask,
        position_ids=positions,
        use_cache=True,
        **{cache_argument_name(model): cache},
    ).logits
    return token_logprobs(torch.cat([first_logits[:, None], rest], dim=1), tokens, temperature)
