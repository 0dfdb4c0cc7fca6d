"""Make experience: from a rollout and its rewards to what the PPO update consumes.

Steps (OpenRLHF's ``make_experience``, Hu et al. 2024, arXiv 2405.11143, section 3):

1. old log-probs: the rollout engine's own log-probs of the sampled tokens (an in-process
   HF engine computes them from the logits it sampled from, equal to a recomputation
   within float error); ``recompute_old=True`` does one extra no-grad forward instead
   (needed for engines such as vLLM whose numbers differ) and reports the mismatch
   (:func:`logprob_mismatch`; without it the PPO update reports it from its first
   forward);
2. reference log-probs: one no-grad forward of the frozen reference, which with LoRA is
   the same model with adapters disabled (no second copy); skipped when ``kl_coef = 0``;
3. values: one no-grad critic forward (``estimator = "gae"`` only);
4. per-token KL ``k(old, ref)`` and, with ``kl_in_reward``, per-token rewards
   ``-beta KL_t`` plus the scalar reward on the last token;
5. advantages per estimator: ``gae`` (then whitened), ``reinforce`` (REINFORCE++:
   discounted returns whitened over the batch), ``reinforce_baseline`` (group mean
   subtracted first), ``grpo``, ``dr_grpo``, ``rloo`` (group-relative, one value per
   sequence broadcast to its tokens);
6. dynamic sampling (DAPO): groups whose rewards are all equal are dropped.

Tensors are ``[B, R]`` over response tokens, right padded, ``B = n_prompts * n``.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, fields
from typing import Any

import torch

from trainkit.rlhf.rollout.base import Rollout, response_logps

Tensor = torch.Tensor


@dataclass
class Experience:
    """One batch of experience.

    Attributes:
        sequences: ``[B, T]`` prompt (left padded) + response (right padded) ids.
        attention_mask: ``[B, T]``.
        action_mask: ``[B, R]`` valid response tokens (``R`` = last ``R`` columns).
        old_logp: ``[B, R]`` behaviour-policy log-probs.
        advantages: ``[B, R]``.
        rewards: ``[B]`` scalar rewards.
        ref_logp: ``[B, R]`` or None (no KL term).
        values: ``[B, R]`` critic values at rollout time, or None.
        returns: ``[B, R]`` critic targets, or None.
        group: rows per prompt group (consecutive rows share their prompt).
        is_weight: ``[B, R]`` off-policy weights of the policy loss (``algo.tis_cap``:
            :func:`~trainkit.rlhf.losses.truncated_is_weights`), or None.
    """

    sequences: Tensor
    attention_mask: Tensor
    action_mask: Tensor
    old_logp: Tensor
    advantages: Tensor
    rewards: Tensor
    ref_logp: Tensor | None = None
    values: Tensor | None = None
    returns: Tensor | None = None
    group: int = 1
    is_weight: Tensor | None = None

    def __len__(self) -> int:
        return self.sequences.shape[0]

    def select(self, idx: Tensor) -> Experience:
        """Rows ``idx``, with all-padding columns trimmed on both sides (less compute)."""
        kw = {
            f.name: (
                getattr(self, f.name)
                if f.name == "group" or getattr(self, f.name) is None
                else getattr(self, f.name)[idx]
            )
            for f in fields(self)
        }
        sub = Experience(**kw)
        return sub.trimmed()

    def to(self, device: Any) -> Experience:
        """The same experience with every tensor on ``device``."""
        kw = {
            f.name: (v.to(device) if isinstance(v := getattr(self, f.name), Tensor) else v)
            for f in fields(self)
        }
        return Experience(**kw)

    def prompt_response(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(prompt_ids [B, P], prompt_mask [B, P], response_ids [B, R])``."""
        P = self.sequences.shape[1] - self.action_mask.shape[1]
        return self.sequences[:, :P], self.attention_mask[:, :P], self.sequences[:, P:]

    def trimmed(self) -> Experience:
        """Drop leading prompt columns that are padding in every row and trailing
        response columns that are padding in every row; values are unchanged."""
        R = self.action_mask.shape[1]
        P = self.sequences.shape[1] - R
        used = self.attention_mask[:, :P].any(0).nonzero()
        first = int(used[0]) if used.numel() else 0
        valid = self.action_mask.any(0).nonzero()
        r_keep = int(valid[-1]) + 1 if valid.numel() else 1
        cut = R - r_keep
        kw = {}
        for f in fields(self):
            v = getattr(self, f.name)
            if v is None or f.name == "group" or v.dim() == 1:
                kw[f.name] = v
            elif f.name in ("sequences", "attention_mask"):
                kw[f.name] = v[:, first : v.shape[1] - cut]
            else:
                kw[f.name] = v[:, :r_keep]
        return Experience(**kw)


def ref_context(policy: Any, ref_model: Any | None):
    """``(model, context)`` giving reference log-probs: a separate frozen model, or the
    LoRA policy with its adapters disabled (``peft``'s ``disable_adapter``)."""
    if ref_model is not None:
        return ref_model, contextlib.nullcontext()
    if hasattr(policy, "disable_adapter"):
        return policy, policy.disable_adapter()
    raise ValueError("no reference model: pass ref_model or use a LoRA policy")


def policy_logps(
    model: Any,
    sequences: Tensor,
    attention_mask: Tensor,
    action_mask: Tensor,
    temperature: float,
    group: int = 1,
    return_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Log-probs ``[B, R]`` of the response tokens; with ``group > 1`` each group's prompt
    is encoded once (:func:`~trainkit.rlhf.rollout.base.shared_prefix_logps`)."""
    from trainkit.rlhf.rollout.base import shared_prefix_logps

    R = action_mask.shape[1]
    if group > 1:
        P = sequences.shape[1] - R
        got = shared_prefix_logps(
            model,
            sequences[:, :P],
            attention_mask[:, :P],
            sequences[:, P:],
            attention_mask[:, P:],  # observations inside an episode are attended to
            group,
            temperature,
            return_entropy,
        )
        if got is not None:
            return got
    return response_logps(model, sequences, attention_mask, R, temperature, return_entropy)


@torch.no_grad()
def forward_no_grad(
    model: Any,
    sequences: Tensor,
    attention_mask: Tensor,
    action_mask: Tensor,
    temperature: float,
    micro_batch: int,
    group: int = 1,
) -> Tensor:
    """:func:`policy_logps` in eval mode over micro-batches: ``[B, T]`` -> ``[B, R]``."""
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    step = max(group, (micro_batch // group) * group) if group > 1 else micro_batch
    try:
        outs = [
            policy_logps(
                model,
                sequences[s : s + step].to(dev),
                attention_mask[s : s + step].to(dev),
                action_mask[s : s + step].to(dev),
                temperature,
                group,
            )[0]
            .float()
            .cpu()
            for s in range(0, sequences.shape[0], step)
        ]
    finally:
        model.train(was)
    return torch.cat(outs)


@torch.no_grad()
def critic_values(
    critic: Any,
    sequences: Tensor,
    attention_mask: Tensor,
    n_response: int,
    micro_batch: int | None = None,
) -> Tensor:
    """Critic values of the states before each response token: ``[B, T]`` -> ``[B, R]``.

    ``V_t`` is read at position ``P - 1 + t`` (the state that chose response token t).
    """
    from trainkit.rlhf.rollout.base import position_ids

    micro_batch = micro_batch or sequences.shape[0]
    was = critic.training
    critic.eval()
    dev = next(critic.parameters()).device
    try:
        outs = []
        for s in range(0, sequences.shape[0], micro_batch):
            am = attention_mask[s : s + micro_batch].to(dev)
            v = critic(
                sequences[s : s + micro_batch].to(dev),
                attention_mask=am,
                position_ids=position_ids(am),
            )
            outs.append(v[:, -n_response - 1 : -1].float().cpu())
    finally:
        critic.train(was)
    return torch.cat(outs).float()


def compute_advantages(
    estimator: str,
    rewards: Tensor,
    mask: Tensor,
    group_size: int,
    *,
    kl: Tensor | None = None,
    kl_coef: float = 0.0,
    kl_in_reward: bool = False,
    values: Tensor | None = None,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[Tensor, Tensor | None]:
    """Advantages ``[B, R]`` (and returns for gae) from scalar rewards ``[B]``.

    With ``kl_in_reward`` the token reward is ``-kl_coef * kl_t`` plus the scalar reward
    on the last valid token (token-level estimators only).
    """
    from trainkit.rlhf import advantages as A
    from trainkit.rlhf import estimators as E

    row = E.spec(estimator)  # the one table of estimators: rlhf/estimators.py
    mask = mask.bool()
    rewards = rewards.float()
    if row.group and not row.token_level:  # one value per sequence, KL as a loss term
        adv = A.group_advantages(rewards, group_size, method=estimator)
        return A.expand_to_tokens(adv, mask), None
    if row.group:  # a group baseline first, then returns over the tokens
        rewards = A.group_advantages(rewards, group_size, method=estimator)
    use_kl = kl_in_reward and kl is not None and kl_coef > 0
    tok_r = A.token_rewards(
        rewards,
        kl if use_kl else torch.zeros_like(mask, dtype=torch.float),
        mask,
        kl_coef if use_kl else 0.0,
    )
    if row.critic:
        if values is None:
            raise ValueError(f"estimator {estimator!r} needs critic values")
        adv, ret = A.gae(tok_r, values, mask, gamma=gamma, lam=lam)
        return A.whiten(adv, mask), ret
    ret = A.reinforce_returns(tok_r, mask, gamma=gamma)
    return A.whiten(ret, mask), None


MISMATCH_MAX = "rollout/logprob_abs_diff_max"
MISMATCH_MEAN = "rollout/logprob_abs_diff_mean"


def logprob_mismatch(recomputed: Tensor, engine: Tensor, mask: Tensor) -> tuple[float, float, int]:
    """How far the trainer's log-probs are from the rollout engine's on the sampled tokens.

    A mismatch enters the PPO ratio ``exp(logp - old)`` directly, so it shows up as ratio
    spikes and clipping on the first update (vLLM kernels, bf16, top-p renormalisation).

    Args:
        recomputed: ``[B, R]`` the trainer's log-probs of the sampled tokens.
        engine: ``[B, R]`` the engine's log-probs of the same tokens.
        mask: ``[B, R]`` 1 on response tokens.

    Returns:
        ``(max |diff|, sum |diff|, token count)`` over masked tokens (sums so that callers
        can combine micro-batches; the mean is ``sum / count``).
    """
    m = mask.bool()
    d = (recomputed.detach().float() - engine.detach().float()).abs()[m]
    if d.numel() == 0:
        return 0.0, 0.0, 0
    return float(d.max()), float(d.sum()), int(d.numel())


def mismatch_stats(mx: float, total: float, count: int) -> dict[str, float]:
    """``{MISMATCH_MAX: mx, MISMATCH_MEAN: total / count}`` (the logged metrics)."""
    return {MISMATCH_MAX: mx, MISMATCH_MEAN: total / max(count, 1)}


def rollout_stats(rewards: Tensor, ro: Rollout) -> dict[str, float]:
    """The per-step rollout record both trainers log: reward mean/std ``[B*n]``, truncation,
    mean response length."""
    return {
        "reward": float(rewards.mean()),
        "reward_std": float(rewards.std()),
        "truncated": ro.num_truncated,
        "truncated_frac": ro.truncated_frac,
        "response_len": float(ro.response_lengths.float().mean()),
    }


def make_experience(
    rollout: Rollout,
    rewards: Tensor,
    *,
    policy: Any,
    algo: Any,
    temperature: float,
    micro_batch: int,
    ref_model: Any | None = None,
    share_prompt: bool = True,
    critic: Any | None = None,
    valid: Tensor | None = None,
    precomputed: dict[str, Tensor] | None = None,
) -> tuple[Experience | None, dict[str, float]]:
    """Build an :class:`Experience` from a rollout and its scalar rewards.

    Args:
        rollout: the sampled batch (``B`` rows, groups of ``rollout.n`` consecutive).
        rewards: ``[B]`` scalar rewards.
        policy: the actor (used for a recomputation and, with LoRA, the reference).
        algo: the ``algo`` config section (estimator, kl_coef, kl_kind, kl_in_reward,
            gamma, lam, dynamic_sampling, recompute_old_logp).
        temperature: sampling temperature (log-probs are of ``softmax(z / T)``).
        micro_batch: rows per no-grad forward.
        ref_model: a frozen reference, or None (LoRA: adapters disabled; or no KL).
        critic: the value model for gae.
        share_prompt: encode each group's prompt once in the no-grad passes.
        valid: ``[B]`` bool, False for samples whose reward failed: they keep their place
            in their group but get no tokens in the loss.
        precomputed: ``[B, R]`` results of the forward passes made elsewhere (the Ray
            trainer's policy, reference and critic actors): ``old_logp`` (with
            ``recompute_old_logp``), ``ref_logp``, ``values``; a given key replaces the
            forward pass of that model (``policy``/``ref_model``/``critic`` may be None).

    Returns:
        ``(experience or None when dynamic sampling dropped every group, stats)``.
    """
    from trainkit.rlhf.advantages import dynamic_sampling_mask
    from trainkit.rlhf.losses import kl_estimate, masked_mean

    stats: dict[str, float] = {}
    seq, am, mask = rollout.sequences, rollout.attention_mask, rollout.action_mask.bool()
    R = mask.shape[1]
    keep = torch.ones(len(rewards), dtype=torch.bool)
    if algo.dynamic_sampling and rollout.n > 1:
        keep = dynamic_sampling_mask(rewards, rollout.n)
        stats["kept_frac"] = float(keep.float().mean())
        if not bool(keep.any()):
            return None, stats
    idx = keep.nonzero().squeeze(-1)
    seq, am, mask, rewards = seq[idx], am[idx], mask[idx], rewards[idx]
    old = rollout.logprobs[idx]
    group = rollout.n if share_prompt else 1
    pre = precomputed or {}
    keep_tokens = is_weight = None
    if algo.recompute_old_logp:
        if "old_logp" in pre:
            new = pre["old_logp"][idx]
        else:
            new = forward_no_grad(policy, seq, am, mask, temperature, micro_batch, group)
        mx, tot, cnt = logprob_mismatch(new, old, mask)
        stats.update(mismatch_stats(mx, tot, cnt))
        stats["logp_mismatch"] = mx  # the older name of MISMATCH_MAX
        keep_tokens, is_weight = off_policy_correction(new, old, mask, algo, stats)
        old = new
    old = old * mask
    ref = kl = None
    if algo.kl_coef > 0:
        if "ref_logp" in pre:
            ref = pre["ref_logp"][idx] * mask
        else:
            model, ctx = ref_context(policy, ref_model)
            with ctx:
                ref = forward_no_grad(model, seq, am, mask, temperature, micro_batch, group)
            ref = ref * mask
        kl = kl_estimate(old, ref, algo.kl_kind, mask=mask)
        stats["kl"] = float(masked_mean(kl, mask))
    values = None
    if algo.estimator == "gae":
        if "values" in pre:
            values = pre["values"][idx] * mask
        else:
            values = critic_values(critic, seq, am, R, micro_batch) * mask
    adv, ret = compute_advantages(
        algo.estimator,
        rewards,
        mask,
        rollout.n,
        kl=kl,
        kl_coef=algo.kl_coef,
        kl_in_reward=algo.kl_in_reward,
        values=values,
        gamma=algo.gamma,
        lam=algo.lam,
    )
    if valid is not None:
        mask = mask & valid[idx].to(mask.device)[:, None]
    if keep_tokens is not None:
        mask = mask & keep_tokens
    mask = mask.long()
    exp = Experience(
        seq,
        am,
        mask,
        old * mask,
        adv * mask,
        rewards,
        ref,
        values,
        ret,
        group=rollout.n,
        is_weight=None if is_weight is None else is_weight * mask,
    )
    return exp, stats


IS_MASKED = "rollout/is_masked_frac"
IS_TRUNCATED = "rollout/is_truncated_frac"
IS_WEIGHT = "rollout/is_weight_mean"


def off_policy_correction(
    trainer_logp: Tensor, engine_logp: Tensor, mask: Tensor, algo: Any, stats: dict
) -> tuple[Tensor | None, Tensor | None]:
    """The correction of ``algo.is_mask`` / ``algo.tis_cap`` for tokens the engine sampled:
    ``(tokens to keep [B, R] bool or None, importance weights [B, R] or None)``; adds
    :data:`IS_MASKED`, :data:`IS_TRUNCATED` and :data:`IS_WEIGHT` to ``stats``."""
    from trainkit.rlhf.losses import masked_mean, ratio_mask, truncated_is_weights

    keep = w = None
    bounds, cap = getattr(algo, "is_mask", None), getattr(algo, "tis_cap", None)
    if bounds is not None:
        keep, stats[IS_MASKED] = ratio_mask(trainer_logp, engine_logp, mask, *bounds)
    if cap is not None:
        m = mask if keep is None else keep
        w, stats[IS_TRUNCATED] = truncated_is_weights(trainer_logp, engine_logp, m, cap)
        stats[IS_WEIGHT] = float(masked_mean(w, m)) if bool(m.any()) else 1.0
    return keep, w
