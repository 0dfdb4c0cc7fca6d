"""Loss functions of RLHF / RLVR, as pure tensor functions.

Formulas follow OpenRLHF (Hu et al. 2024, arXiv 2405.11143) and the papers it cites;
see docs/papers.md (OpenRLHF). Conventions used everywhere in this module:

* token tensors are ``[batch, T]`` over the *response* tokens, right padded;
* ``mask`` is ``[batch, T]`` (bool or 0/1 float), 1 on valid response tokens;
* log-probabilities are natural logs; ``logp[b, t]`` is the log-probability of the
  token at position ``t`` (callers align logits and labels, nothing is shifted here);
* reductions over tokens are *masked*: padding never changes a value.

Nothing here imports anything but torch.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


# ----------------------------------------------------------------------------- helpers


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over entries where ``mask`` is 1 (masked entries may hold NaN/inf).

    Args:
        x: ``[...]`` values.
        mask: same shape as ``x``, bool or 0/1.
        dim: reduce this dimension only; ``None`` reduces everything.
    """
    m = mask.to(torch.bool)
    x = torch.where(m, x, torch.zeros((), dtype=x.dtype, device=x.device))
    return x.sum() if dim is None else x.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over valid entries: ``sum(x * mask) / max(sum(mask), 1)``.

    An all-masked input gives 0 (not NaN), so an empty micro-batch cannot poison a step.
    """
    n = mask.to(x.dtype).sum() if dim is None else mask.to(x.dtype).sum(dim)
    return masked_sum(x, mask, dim) / n.clamp(min=1)


def aggregate(
    loss: Tensor, mask: Tensor, agg: str = "token_mean", norm: float | None = None
) -> Tensor:
    """Reduce a per-token loss ``[batch, T]`` to a scalar.

    Args:
        loss: ``[batch, T]`` per-token losses.
        mask: ``[batch, T]`` valid tokens.
        agg: ``"token_mean"``: sum over all valid tokens / their count (OpenRLHF default,
            DAPO); ``"seq_mean"``: mean over each sequence's tokens, then over sequences
            (original GRPO); ``"sum_norm"``: sum over valid tokens / (batch * ``norm``)
            with a constant ``norm`` such as the max generation length (Dr.GRPO, which
            removes the length bias of per-sequence normalisation).
        norm: the constant of ``"sum_norm"`` (defaults to ``T``).
    """
    if agg == "token_mean":
        return masked_mean(loss, mask)
    if agg == "seq_mean":
        return masked_mean(loss, mask, dim=-1).mean()
    if agg == "sum_norm":
        n = float(norm) if norm is not None else float(loss.shape[-1])
        return masked_sum(loss, mask) / (loss.shape[0] * n)
    raise ValueError(f"agg must be token_mean, seq_mean or sum_norm, got {agg!r}")


# ------------------------------------------------------------------ log-probs, entropy


def token_logps(logits: Tensor, labels: Tensor, chunk_elems: int = 1 << 24) -> Tensor:
    """Log-probability of each label under ``logits``.

    ``log p(y_t) = logits[t, y_t] - logsumexp(logits[t])``, computed without keeping
    a full ``[batch, T, vocab]`` log-softmax: the log-sum-exp runs over chunks of rows
    (each cast to float32 on its own), so a bf16 ``[32, 256, 49152]`` tensor needs no
    full float32 copy when no gradient is taken. Labels < 0 (e.g. -100) give 0.

    Args:
        logits: ``[batch, T, vocab]`` (already aligned: ``logits[:, t]`` predicts
            ``labels[:, t]``).
        labels: ``[batch, T]`` token ids.
        chunk_elems: elements per log-sum-exp chunk.

    Returns:
        ``[batch, T]`` float32 (or the logits' dtype when wider).
    """
    dtype = torch.promote_types(logits.dtype, torch.float32)
    safe = labels.clamp(min=0).unsqueeze(-1)
    picked = torch.gather(logits, -1, safe).squeeze(-1).to(dtype)
    flat = logits.reshape(-1, logits.shape[-1])
    rows = max(1, chunk_elems // max(1, logits.shape[-1]))
    if flat.shape[0] <= rows:
        lse = torch.logsumexp(flat.to(dtype), dim=-1)
    else:
        lse = torch.cat(
            [
                torch.logsumexp(flat[i : i + rows].to(dtype), dim=-1)
                for i in range(0, flat.shape[0], rows)
            ]
        )
    lse = lse.reshape(labels.shape)
    return torch.where(
        labels >= 0, picked - lse, torch.zeros((), dtype=dtype, device=logits.device)
    )


def sequence_logps(
    logits_or_token_logps: Tensor, labels: Tensor | None, mask: Tensor, average: bool = False
) -> Tensor:
    """Sequence log-probability: sum (or mean) of token log-probs over valid tokens.

    ``log pi(y | x) = sum_t mask_t * log pi(y_t | x, y_<t)`` (DPO uses the sum;
    ``average=True`` gives the length-normalised mean, as in SimPO/IPO variants).

    Args:
        logits_or_token_logps: ``[batch, T, vocab]`` logits, or ``[batch, T]`` token
            log-probs already gathered.
        labels: ``[batch, T]`` token ids (needed with logits; ignored otherwise).
        mask: ``[batch, T]`` valid (response) tokens.
        average: divide by the number of valid tokens.

    Returns:
        ``[batch]``.
    """
    x = logits_or_token_logps
    if x.dim() == 3:
        if labels is None:
            raise ValueError("labels are required when logits are given")
        x = token_logps(x, labels)
    if average:
        return masked_mean(x, mask, dim=-1)
    return masked_sum(x, mask, dim=-1)


def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of the categorical distribution at each position.

    ``H = logsumexp(z) - sum_v softmax(z)_v z_v``.

    Args:
        logits: ``[..., vocab]``.

    Returns:
        ``[...]`` (e.g. ``[batch, T]``), in nats.
    """
    z = logits.to(torch.promote_types(logits.dtype, torch.float32))
    p = torch.softmax(z, dim=-1)
    return torch.logsumexp(z, dim=-1) - (p * z).sum(-1)


# ------------------------------------------------------------------- reward model


def pairwise_rm_loss(
    chosen_rewards: Tensor, rejected_rewards: Tensor, margin: Tensor | float | None = None
) -> Tensor:
    """Bradley-Terry pairwise loss of a reward model (InstructGPT, OpenRLHF ``PairWiseLoss``).

    ``loss = mean(-log sigmoid(r_c - r_r - m))``, with ``m = 0`` when no margin is given
    (Llama-2 adds a per-pair margin).

    Args:
        chosen_rewards: ``[batch]`` scalar rewards of the chosen answers.
        rejected_rewards: ``[batch]`` rewards of the rejected answers.
        margin: ``[batch]`` or a float, or ``None``.

    Returns:
        scalar.
    """
    diff = chosen_rewards - rejected_rewards
    if margin is not None:
        diff = diff - margin
    return -F.logsigmoid(diff).mean()


def pairwise_rm_loss_logexp(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """The "log-exp" form of the pairwise loss (OpenRLHF ``LogExpLoss``).

    ``loss = mean(log(1 + exp(r_r - r_c)))``. Mathematically equal to
    :func:`pairwise_rm_loss` without margin; computed as ``softplus`` so large gaps do
    not overflow.

    Args:
        chosen_rewards: ``[batch]``.
        rejected_rewards: ``[batch]``.
    """
    return F.softplus(rejected_rewards - chosen_rewards).mean()


def pairwise_accuracy(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Tensor:
    """Fraction of pairs where the chosen reward is strictly higher. ``[batch]`` -> scalar."""
    return (chosen_rewards > rejected_rewards).float().mean()


# ------------------------------------------------------------------------ DPO family


def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Tensor,
    ref_rejected_logps: Tensor,
    beta: float = 0.1,
    label_smoothing: float = 0.0,
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid",
) -> tuple[Tensor, Tensor, Tensor]:
    """DPO (Rafailov et al. 2023), cDPO and IPO (Azar et al. 2023) losses.

    With ``delta = (logp_c - logp_r) - (logp_ref_c - logp_ref_r)``:

    * ``"sigmoid"``: ``-(1 - eps) log sigmoid(beta delta) - eps log sigmoid(-beta delta)``;
      ``eps = label_smoothing``; ``eps = 0`` is DPO, ``eps > 0`` is conservative DPO
      (cDPO, preference labels flipped with probability ``eps``). At step 0
      (policy = reference) ``delta = 0`` and the loss is ``ln 2``.
    * ``"ipo"``: ``(delta - 1 / (2 beta))^2``.

    Args:
        policy_chosen_logps: ``[batch]`` sequence log-probs (see :func:`sequence_logps`).
        policy_rejected_logps: ``[batch]``.
        ref_chosen_logps: ``[batch]`` under the frozen reference.
        ref_rejected_logps: ``[batch]``.
        beta: inverse temperature (KL strength).
        label_smoothing: ``eps`` of cDPO, in ``[0, 0.5)``.
        loss_type: ``"sigmoid"`` or ``"ipo"``.

    Returns:
        ``(loss, chosen_rewards, rejected_rewards)``: the scalar mean loss and the
        implicit rewards ``beta * (logp - logp_ref)`` of each side, ``[batch]``, detached.
    """
    if beta <= 0:
        raise ValueError(f"beta must be > 0, got {beta}")
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    chosen_ratio = policy_chosen_logps - ref_chosen_logps
    rejected_ratio = policy_rejected_logps - ref_rejected_logps
    delta = chosen_ratio - rejected_ratio
    if loss_type == "sigmoid":
        losses = -(1.0 - label_smoothing) * F.logsigmoid(
            beta * delta
        ) - label_smoothing * F.logsigmoid(-beta * delta)
    elif loss_type == "ipo":
        losses = (delta - 1.0 / (2.0 * beta)) ** 2
    else:
        raise ValueError(f"loss_type must be 'sigmoid' or 'ipo', got {loss_type!r}")
    return losses.mean(), (beta * chosen_ratio).detach(), (beta * rejected_ratio).detach()


# ------------------------------------------------------------------------------- PPO


def policy_loss_with_stats(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token_mean",
    norm: float | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017) with asymmetric and dual clipping.

    Per token, with ``rho = exp(logp - old_logp)``:

    * ``obj = min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A)``
      (``clip_high > clip_low`` is DAPO's "clip-higher");
    * dual clip (Ye et al. 2020), ``c = dual_clip > 1``: where ``A < 0``,
      ``obj = max(obj, c A)``, which bounds the loss of a token whose ratio exploded;
    * ``loss_t = -obj``, reduced with :func:`aggregate` (default: mean over valid tokens).

    Args:
        logp: ``[batch, T]`` log-probs of the sampled tokens under the current policy.
        old_logp: ``[batch, T]`` under the policy that sampled them.
        advantages: ``[batch, T]``.
        mask: ``[batch, T]``.
        clip_low: ``eps_low``.
        clip_high: ``eps_high``.
        dual_clip: ``c > 1`` or ``None``.
        agg: see :func:`aggregate`.
        norm: see :func:`aggregate`.

    Returns:
        ``(loss, stats)``; ``stats`` holds detached scalars ``clip_frac`` (share of valid
        tokens where the clipped branch is the minimum), ``dual_clip_frac``,
        ``approx_kl`` (mean of ``(rho - 1) - log rho``, the k3 estimate of
        KL(old || new) from tokens sampled by the old policy) and ``ratio_mean``.
    """
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    surr1 = ratio * advantages
    surr2 = ratio.clamp(1.0 - clip_low, 1.0 + clip_high) * advantages
    obj = torch.min(surr1, surr2)
    dual_active = torch.zeros_like(obj, dtype=torch.bool)
    if dual_clip is not None:
        floor = dual_clip * advantages
        dual_active = (advantages < 0) & (obj < floor)
        obj = torch.where(advantages < 0, torch.max(obj, floor), obj)
    loss = aggregate(-obj, mask, agg, norm)
    with torch.no_grad():
        m = mask.to(torch.bool)
        stats = {
            "clip_frac": masked_mean((surr2 < surr1).float(), m),
            "dual_clip_frac": masked_mean(dual_active.float(), m),
            # k3 of KL(old || new) from tokens sampled by old: (rho - 1) - log rho
            "approx_kl": masked_mean(torch.expm1(log_ratio) - log_ratio, m),
            "ratio_mean": masked_mean(ratio, m),
        }
    return loss, stats


def policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
) -> Tensor:
    """Scalar PPO policy loss, mean over valid tokens; see :func:`policy_loss_with_stats`."""
    return policy_loss_with_stats(logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip)[
        0
    ]


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip: float | None = 0.5
) -> Tensor:
    """Clipped value loss of the PPO critic (OpenRLHF ``ValueLoss``).

    ``loss_t = 0.5 * max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2)``, mean over
    valid tokens; ``clip=None`` gives the plain ``0.5 (V - R)^2``.

    Args:
        values: ``[batch, T]`` current critic values.
        old_values: ``[batch, T]`` values at rollout time.
        returns: ``[batch, T]`` targets (``A + V_old`` from :func:`~trainkit.rlhf.advantages.gae`).
        mask: ``[batch, T]``.
        clip: ``c``.

    Returns:
        scalar.
    """
    unclipped = (values - returns) ** 2
    if clip is None:
        per_tok = unclipped
    else:
        v_clip = old_values + (values - old_values).clamp(-clip, clip)
        per_tok = torch.max(unclipped, (v_clip - returns) ** 2)
    return 0.5 * masked_mean(per_tok, mask)


# ------------------------------------------------------------------------------- KL


def kl_estimate(
    logp: Tensor,
    ref_logp: Tensor,
    kind: Literal["k1", "k2", "k3"] = "k1",
    mask: Tensor | None = None,
    clamp: float | None = None,
) -> Tensor:
    """Per-token estimators of ``KL(pi || pi_ref)`` from sampled tokens (Schulman 2020).

    With ``r = logp - ref_logp`` (tokens sampled from ``pi``):

    * ``k1 = r`` (unbiased, can be negative);
    * ``k2 = r^2 / 2`` (biased, low variance);
    * ``k3 = exp(-r) - 1 + r`` (unbiased, always >= 0).

    Args:
        logp: ``[batch, T]`` policy log-probs.
        ref_logp: ``[batch, T]`` reference log-probs.
        kind: ``"k1"``, ``"k2"`` or ``"k3"``.
        mask: optional ``[batch, T]``; masked tokens get 0.
        clamp: optional bound on the log-ratio: trainkit clamps ``r`` to
            ``[-clamp, clamp]`` *before* the estimator (so ``exp(-r)`` in k3 cannot
            overflow); ``None`` (the default) keeps the exact formula. OpenRLHF does
            something else: it clamps the *estimate* (k1, k2 and k3 alike) to
            ``[-10, 10]`` after computing it. The two agree while ``|r|`` and the estimate
            stay below the bounds.

    Returns:
        ``[batch, T]``.
    """
    r = logp - ref_logp
    if clamp is not None:
        r = r.clamp(-clamp, clamp)
    if kind == "k1":
        kl = r
    elif kind == "k2":
        kl = 0.5 * r * r
    elif kind == "k3":
        kl = torch.expm1(-r) + r
    else:
        raise ValueError(f"kind must be 'k1', 'k2' or 'k3', got {kind!r}")
    if mask is not None:
        kl = torch.where(mask.to(torch.bool), kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    return kl


def entropy_bonus(logits: Tensor, mask: Tensor) -> Tensor:
    """Mean entropy over valid tokens: ``[batch, T, vocab]``, ``[batch, T]`` -> scalar."""
    return masked_mean(entropy_from_logits(logits), mask)


# ------------------------------------------------------------------------------- actor


def actor_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logp: Tensor | None = None,
    entropy: Tensor | None = None,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    dual_clip: float | None = None,
    agg: str = "token_mean",
    norm: float | None = None,
    kl_coef: float = 0.0,
    kl_kind: Literal["k1", "k2", "k3"] = "k3",
    entropy_coef: float = 0.0,
) -> tuple[Tensor, dict[str, float]]:
    """The whole actor objective of one micro-batch: what the PPO/GRPO update minimises.

    ``L = L_clip + kl_coef * KL - entropy_coef * H`` where

    * ``L_clip`` is :func:`policy_loss_with_stats` (PPO eq. 7 with clip-higher and dual
      clip, reduced with ``agg``);
    * ``KL = masked_mean(kl_estimate(logp, ref_logp, kl_kind))``, the KL *in the loss*
      (GRPO eq. 3, its k3 estimator; pass ``ref_logp=None`` or ``kl_coef=0`` when the KL
      is a reward penalty instead: ``algo.kl_in_reward``);
    * ``H = masked_mean(entropy)`` (``entropy=None``: no entropy term).

    Shapes: every tensor is ``[batch, T]`` over the response tokens.

    Returns:
        ``(loss, stats)``: ``loss`` a scalar with gradient; ``stats`` plain floats:
        ``loss`` (L), ``policy_loss`` (L_clip), ``clip_frac``, ``dual_clip_frac``,
        ``approx_kl`` (k3 of KL(old || new)), ``ratio_mean``, and ``kl_loss`` (KL) /
        ``entropy`` (H) when those terms are on.
    """
    pl, ps = policy_loss_with_stats(
        logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip, agg, norm
    )
    loss = pl
    stats = {k: float(v) for k, v in ps.items()}
    stats["policy_loss"] = float(pl.detach())
    if kl_coef > 0 and ref_logp is not None:
        kl = masked_mean(kl_estimate(logp, ref_logp, kl_kind), mask)
        loss = loss + kl_coef * kl
        stats["kl_loss"] = float(kl.detach())
    if entropy is not None and entropy_coef > 0:
        h = masked_mean(entropy, mask)
        loss = loss - entropy_coef * h
        stats["entropy"] = float(h.detach())
    stats["loss"] = float(loss.detach())
    return loss, stats
