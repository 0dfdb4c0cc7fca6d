"""Loss functions of RLHF / RLVR, as pure tensor functions.

Formulas follow OpenRLHF (Hu et al. 2024, arXiv 2405.11143) and the papers it cites;
see docs/papers.md (OpenRLHF). Conventions used everywhere in this module:

* token tensors are ``[batch, T]`` over the *response* tokens, right padded;
* ``mask`` is ``[batch, T]`` (bool or 0/1 float), 1 on valid response tokens;
* log-probabilities are natural logs; ``logp[b, t]`` is the log-probability of the
  token at position ``t`` (callers align logits and labels, nothing is shifted here);
* reductions over tokens are *masked*: padding never changes a value.

Nothing here imports anything but torch. The pairwise reward-model and DPO losses live in
:mod:`~trainkit.rlhf.pref_losses` and are re-exported here.
"""

from __future__ import annotations

from typing import Literal

import torch

from trainkit.rlhf.pref_losses import (  # noqa: F401  (re-exported)
    dpo_loss,
    pairwise_accuracy,
    pairwise_rm_loss,
    pairwise_rm_loss_logexp,
)

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
    is_weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """PPO clipped surrogate (Schulman et al. 2017) with asymmetric and dual clipping.

    Per token, with ``rho = exp(logp - old_logp)``:

    * ``obj = min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A)``
      (``clip_high > clip_low`` is DAPO's "clip-higher");
    * dual clip (Ye et al. 2020), ``c = dual_clip > 1``: where ``A < 0``,
      ``obj = max(obj, c A)``, which bounds the loss of a token whose ratio exploded;
    * ``loss_t = -w_t obj``, ``w_t`` the off-policy weight of the token (``is_weight``,
      e.g. :func:`truncated_is_weights`; 1 when None), reduced with :func:`aggregate`
      (default: mean over valid tokens).

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
        is_weight: ``[batch, T]`` constant per-token weights (no gradient), or None.

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
    if is_weight is not None:
        obj = obj * is_weight.detach()
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


# ------------------------------------------------------------- off-policy correction


def truncated_is_weights(
    trainer_logp: Tensor, engine_logp: Tensor, mask: Tensor, cap: float
) -> tuple[Tensor, float]:
    """Truncated importance weights of tokens sampled by a rollout engine (TIS).

    The engine samples from ``pi_engine`` (an older policy version with asynchronous
    rollouts, other kernels or precision with vLLM); the PPO ratio is taken against the
    trainer's own ``pi_old``. The policy gradient is re-weighted per token by

        ``w_t = min(pi_old(y_t) / pi_engine(y_t), C)``  (Yao et al. 2025, "Your efficient
        RL framework secretly brings you off-policy RL training"; ``C = 2`` there)

    which is unbiased where the ratio is below ``C`` and bounds the variance above it.

    Args:
        trainer_logp: ``[B, T]`` ``log pi_old`` of the sampled tokens (the trainer's).
        engine_logp: ``[B, T]`` ``log pi_engine`` of the same tokens.
        mask: ``[B, T]`` 1 on response tokens.
        cap: ``C > 0``.

    Returns:
        ``(w [B, T], truncated_frac)``: ``w`` is 0 off the mask; the fraction is over
        masked tokens whose ratio exceeded ``C``.
    """
    if cap <= 0:
        raise ValueError(f"cap must be > 0, got {cap}")
    ratio = torch.exp(trainer_logp.detach().float() - engine_logp.detach().float())
    m = mask.to(torch.bool)
    w = torch.where(m, ratio.clamp(max=cap), torch.zeros_like(ratio))
    frac = float(masked_mean((ratio > cap).float(), m)) if bool(m.any()) else 0.0
    return w, frac


def ratio_mask(
    trainer_logp: Tensor, engine_logp: Tensor, mask: Tensor, low: float, high: float
) -> tuple[Tensor, float]:
    """The tokens to keep when masking extreme trainer/engine ratios (IcePop).

    A token whose ratio ``r_t = pi_old(y_t) / pi_engine(y_t)`` leaves ``[low, high]`` is
    dropped from the loss (no gradient, not counted in the token mean), where TIS would
    only cap its weight; the IcePop paper (Ring-1T, 2025) uses ``[0.5, 5]``.

    Args:
        trainer_logp / engine_logp / mask: as :func:`truncated_is_weights`.
        low, high: ``0 <= low < 1 < high``.

    Returns:
        ``(keep [B, T] bool, masked_frac)``: ``keep`` is False off the mask and on
        dropped tokens; the fraction is of masked tokens dropped.
    """
    if not 0 <= low < 1 < high:
        raise ValueError(f"need 0 <= low < 1 < high, got [{low}, {high}]")
    ratio = torch.exp(trainer_logp.detach().float() - engine_logp.detach().float())
    m = mask.to(torch.bool)
    inside = (ratio >= low) & (ratio <= high)
    frac = float(masked_mean((~inside).float(), m)) if bool(m.any()) else 0.0
    return m & inside, frac


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
    is_weight: Tensor | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """The whole actor objective of one micro-batch: what the PPO/GRPO update minimises.

    ``L = L_clip + kl_coef * KL - entropy_coef * H`` where

    * ``L_clip`` is :func:`policy_loss_with_stats` (PPO eq. 7 with clip-higher and dual
      clip, each token weighted by ``is_weight`` when given, reduced with ``agg``);
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
        logp, old_logp, advantages, mask, clip_low, clip_high, dual_clip, agg, norm, is_weight
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
