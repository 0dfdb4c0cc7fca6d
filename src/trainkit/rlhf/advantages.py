"""Advantage estimators of online RL for LLMs, as pure tensor functions.

Formulas follow OpenRLHF (Hu et al. 2024, arXiv 2405.11143); docs/papers.md gives each
paper's settings and the config keys that reproduce them, and
:mod:`trainkit.rlhf.estimators` is the one table of the estimator names built from these
functions. Token tensors are ``[batch, T]`` over response tokens, **right padded**, with
``mask`` 1 on valid tokens (the policy's own tokens; a multi-turn episode's mask has
holes where observations were inserted); masked positions never influence a result and
come out 0.
Scalar (per-sample) rewards are ``[n_prompts * group_size]``, the ``group_size``
samples of one prompt being consecutive.
"""

from __future__ import annotations

import torch

from trainkit.rlhf.estimators import GROUP
from trainkit.rlhf.losses import masked_mean, masked_sum

Tensor = torch.Tensor


def _zero_masked(x: Tensor, mask: Tensor) -> Tensor:
    return torch.where(mask.to(torch.bool), x, torch.zeros((), dtype=x.dtype, device=x.device))


def gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016).

    ``delta_t = r_t + gamma V_{t+1} - V_t``; ``A_t = delta_t + gamma lam A_{t+1}``;
    ``R_t = A_t + V_t``. The value after the last valid token is 0 (the episode ends).

    Masks with holes (multi-turn episodes, where the tokens of tool results and other
    observations sit between the policy's turns): the time steps are the valid tokens
    only. ``t + 1`` is the next *valid* token, so the recursion runs across a hole as if
    its tokens were not there: the observation is part of the environment's transition
    from the last action of one turn to the first action of the next, with no discount,
    reward or value of its own. The result on the valid tokens equals ``gae`` of the
    same row with the holes removed.

    Args:
        rewards: ``[batch, T]`` per-token rewards (see :func:`token_rewards`).
        values: ``[batch, T]`` critic values ``V_t`` at rollout time.
        mask: ``[batch, T]``, 1 on the policy's tokens (right padding and holes 0).
        gamma: discount.
        lam: GAE lambda.

    Returns:
        ``(advantages, returns)``, both ``[batch, T]``, 0 on masked tokens.
    """
    m = mask.to(torch.bool)
    r = _zero_masked(rewards, m)
    v = _zero_masked(values, m)
    T = r.shape[-1]
    adv = torch.zeros_like(r)
    last = torch.zeros_like(r[..., 0])
    next_v = torch.zeros_like(last)  # value of the next valid token (0 after the last)
    for t in reversed(range(T)):
        delta = r[..., t] + gamma * next_v - v[..., t]
        here = delta + gamma * lam * last
        # a masked step (padding, an observation) passes the recursion through untouched
        last = torch.where(m[..., t], here, last)
        next_v = torch.where(m[..., t], v[..., t], next_v)
        adv[..., t] = _zero_masked(here, m[..., t])
    returns = _zero_masked(adv + v, m)
    return adv, returns


def reinforce_returns(rewards: Tensor, mask: Tensor, gamma: float = 1.0) -> Tensor:
    """Discounted return of each token: ``G_t = r_t + gamma G_{t+1}`` (REINFORCE++).

    As in :func:`gae`, ``t + 1`` is the next valid token: holes in the mask (observation
    tokens of multi-turn episodes) are skipped, not discounted.

    Args:
        rewards: ``[batch, T]``.
        mask: ``[batch, T]``, 1 on the policy's tokens.
        gamma: discount.

    Returns:
        ``[batch, T]``, 0 on masked tokens.
    """
    m = mask.to(torch.bool)
    r = _zero_masked(rewards, m)
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[..., 0])
    for t in reversed(range(r.shape[-1])):
        running = torch.where(m[..., t], r[..., t] + gamma * running, running)
        out[..., t] = _zero_masked(running, m[..., t])
    return out


def whiten(
    x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8, unbiased: bool = False
) -> Tensor:
    """Normalise ``x`` with the mean and std of its valid entries.

    ``y = (x - mu) / sqrt(var + eps)``; with ``shift_mean=False`` the mean is added back
    (``y = (x - mu) / sqrt(var + eps) + mu``: scale only). ``var`` is the population
    variance (``unbiased=True`` divides by ``n - 1``).

    Args:
        x: ``[batch, T]`` (or any shape matching ``mask``).
        mask: valid entries.
        shift_mean: centre the output on 0.
        eps: added to the variance.
        unbiased: Bessel's correction.

    Returns:
        same shape as ``x``, 0 on masked entries.
    """
    mu = masked_mean(x, mask)
    n = mask.to(x.dtype).sum()
    ss = masked_sum((x - mu) ** 2, mask)
    denom = (n - 1).clamp(min=1) if unbiased else n.clamp(min=1)
    var = ss / denom
    y = (x - mu) * torch.rsqrt(var + eps)
    if not shift_mean:
        y = y + mu
    return _zero_masked(y, mask)


def group_advantages(
    rewards: Tensor,
    group_size: int,
    method: str = "grpo",
    eps: float = 1e-6,
) -> Tensor:
    """Per-sample advantages from the rewards of a prompt's group of samples.

    For a group ``r_1..r_n`` (``n = group_size``), with mean ``m`` and std ``s``
    (Bessel-corrected, as ``torch.std``):

    * ``"grpo"`` (Shao et al. 2024): ``A_i = (r_i - m) / (s + eps)``; a group whose
      rewards are all equal gets ``A = 0`` exactly;
    * ``"dr_grpo"`` (Liu et al. 2025): ``A_i = r_i - m``;
    * ``"rloo"`` (Ahmadian et al. 2024): ``A_i = r_i - (sum_j r_j - r_i) / (n - 1)``;
    * ``"reinforce_baseline"`` (REINFORCE++-baseline): ``A_i = r_i - m``; the trainer
      then whitens the token advantages over the batch (:func:`whiten`).

    Args:
        rewards: ``[n_prompts * group_size]`` scalar rewards, groups consecutive.
        group_size: samples per prompt.
        method: see above; the group rows of :data:`trainkit.rlhf.estimators.ESTIMATORS`
            (:data:`~trainkit.rlhf.estimators.GROUP`).
        eps: GRPO's std epsilon.

    Statistics are computed in float64 (then cast back to the rewards' float dtype, at
    least float32), so each group's advantages sum to 0 up to the output's rounding and a
    group of equal rewards gets exactly 0 (OpenRLHF and TRL compute in the input dtype).

    Returns:
        ``[n_prompts * group_size]``.
    """
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} "
            f"entries, got shape {tuple(rewards.shape)}"
        )
    if method not in GROUP:
        raise ValueError(f"method must be one of {', '.join(GROUP)}, got {method!r}")
    if method in ("grpo", "rloo") and group_size < 2:
        raise ValueError(f"{method} needs group_size >= 2, got {group_size}")
    out_dtype = torch.promote_types(rewards.dtype, torch.float32)
    # The group statistics are taken in float64 and the deviations centred twice: in
    # float32, ``(r - mean) / (std + eps)`` turns the rounding of ``mean`` into an
    # advantage of one sign for the whole group (|A| = 0.06 for seven rewards of 0.7),
    # which pushes that prompt one way although every sample earned the same reward.
    r = rewards.reshape(-1, group_size).to(torch.float64)
    dev = r - r.mean(-1, keepdim=True)
    dev = dev - dev.mean(-1, keepdim=True)  # [n_prompts, group_size], sums to 0
    if method == "grpo":
        std = dev.pow(2).sum(-1, keepdim=True).div(group_size - 1).sqrt()
        adv = dev / (std + eps)
    elif method in ("dr_grpo", "reinforce_baseline"):
        adv = dev
    else:  # rloo: r_i - (sum_j r_j - r_i) / (n - 1) = n / (n - 1) * (r_i - m)
        adv = dev * (group_size / (group_size - 1))
    return _round_keeping_sum(adv, out_dtype).reshape(-1)


def _round_keeping_sum(x: Tensor, dtype: torch.dtype) -> Tensor:
    """Cast ``[groups, n]`` float64 to ``dtype`` so that each row still sums to ~0.

    Rounding every entry to float32 moves each by up to half an ulp, and the row sum
    by up to ``n`` of them (4e-6 for 64 samples). The rounding errors of a row are
    folded into its largest entry, so the row sum is off by at most half an ulp of
    that entry (< 1e-6 while |A| < 16).
    """
    y = x.to(dtype)
    if dtype == torch.float64 or x.numel() == 0:
        return y
    residual = (x - y.to(torch.float64)).sum(-1)  # [groups]
    idx = x.abs().argmax(-1, keepdim=True)  # [groups, 1]
    fixed = (y.to(torch.float64).gather(-1, idx).squeeze(-1) + residual).to(dtype)
    return y.scatter(-1, idx, fixed.unsqueeze(-1))


def expand_to_tokens(scalar: Tensor, mask: Tensor) -> Tensor:
    """Broadcast per-sample values ``[batch]`` to every valid token ``[batch, T]``."""
    x = scalar.to(torch.promote_types(scalar.dtype, torch.float32))
    return _zero_masked(x.unsqueeze(-1).expand(mask.shape), mask)


def last_token_index(mask: Tensor) -> Tensor:
    """Index of the last valid token of each row: ``[batch, T]`` -> ``[batch]`` (long).

    Raises:
        ValueError: when a row has no valid token.
    """
    m = mask.to(torch.bool)
    if not bool(m.any(-1).all()):
        raise ValueError("every sequence needs at least one valid token")
    pos = torch.arange(m.shape[-1], device=m.device).expand(m.shape)
    return torch.where(m, pos, torch.full_like(pos, -1)).max(-1).values


def token_rewards(scalar_rewards: Tensor, kl: Tensor, mask: Tensor, beta: float) -> Tensor:
    """Per-token PPO reward: ``r_t = -beta KL_t``, plus the scalar reward on the last token.

    Args:
        scalar_rewards: ``[batch]`` sequence rewards (reward model or rule).
        kl: ``[batch, T]`` per-token KL estimates (:func:`~trainkit.rlhf.losses.kl_estimate`).
        mask: ``[batch, T]``, right padded.
        beta: KL coefficient.

    Returns:
        ``[batch, T]``, 0 on masked tokens.
    """
    r = _zero_masked(-beta * kl, mask)
    idx = last_token_index(mask)
    rows = torch.arange(r.shape[0], device=r.device)
    r = r.clone()
    r[rows, idx] = r[rows, idx] + scalar_rewards.to(r.dtype)
    return r


def dynamic_sampling_mask(rewards: Tensor, group_size: int, atol: float = 0.0) -> Tensor:
    """Which samples to keep when groups with identical rewards are dropped (DAPO).

    A group whose rewards are all equal (all right or all wrong) has zero group-relative
    advantage and only adds noise; its samples are dropped.

    Args:
        rewards: ``[n_prompts * group_size]``.
        group_size: samples per prompt.
        atol: rewards within ``atol`` of each other count as equal.

    Returns:
        ``[n_prompts * group_size]`` bool, True for samples of groups to keep.
    """
    if rewards.dim() != 1 or group_size < 1 or rewards.numel() % group_size:
        raise ValueError(
            f"rewards must be 1-D with a multiple of group_size={group_size} "
            f"entries, got shape {tuple(rewards.shape)}"
        )
    r = rewards.reshape(-1, group_size)
    spread = r.max(-1).values - r.min(-1).values
    keep = spread > atol
    return keep.repeat_interleave(group_size)
