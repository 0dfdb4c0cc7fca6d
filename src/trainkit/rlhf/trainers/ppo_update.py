"""The PPO-style update shared by the single-process and the Ray trainers.

:func:`ppo_update` runs ``algo.ppo_epochs`` x ``algo.mini_batches`` optimizer steps on a
batch of :class:`~trainkit.rlhf.trainers.experience.Experience`: per micro-batch the
clipped policy loss (+ ``kl_coef`` x KL when the KL is a loss, - ``entropy_coef`` x
entropy) and, for gae, the clipped value loss on the critic, each weighted by its share
of the mini-batch (token share for ``token_mean``), so accumulation gives the exact
mini-batch mean.

Data parallel (``dp``, a strategy such as FSDP2 over Ray actors): each rank holds a
shard of the batch with the same number of prompt groups. The mini-batch token and row
totals are summed over ranks and every rank scales its loss by ``world_size`` (the
strategy averages gradients), so the gradient equals the one of the whole batch:

    sum_r world * sum_{micro in r} w_global(micro) * grad loss(micro) / world
    = sum_{micro} w_global(micro) * grad loss(micro).

The logged stats are summed over ranks too (the same numbers on every rank), which also
keeps the non-finite guard's skip decisions identical on all ranks.
"""

from __future__ import annotations

from typing import Any

import torch

#: the actor-loss stats the update logs (weighted means over the mini-batch)
ACTOR_LOGGED = ("loss", "policy_loss", "kl_loss", "entropy", "clip_frac", "approx_kl", "ratio_mean")


def share_prompt(cfg: Any) -> bool:
    """Encode each prompt group once (needs a KV cache: off with gradient checkpointing)."""
    return cfg.train.share_prompt and not cfg.model.gradient_checkpointing


def _weights(mask: torch.Tensor, rows: int, agg: str, total_tokens: float, total_rows: int):
    """Share of a micro-batch in its mini-batch mean (exact token mean when accumulating)."""
    if agg == "token_mean":
        return float(mask.sum()) / max(total_tokens, 1.0)
    return rows / total_rows


def _grad_norm(opt: Any, max_norm: float) -> float:
    """Clip the optimizer's parameters to ``max_norm``; the global pre-clip norm (DTensor
    parameters under FSDP2 give a DTensor norm, made whole here)."""
    params = [p for grp in opt.param_groups for p in grp["params"]]
    gn = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(gn, "full_tensor"):
        gn = gn.full_tensor()
    return float(gn)


def _sum_over_ranks(dp: Any, st: dict[str, float]) -> dict[str, float]:
    keys = sorted(st)
    t = dp.all_reduce_sum(torch.tensor([st[k] for k in keys], dtype=torch.float64))
    return dict(zip(keys, t.tolist()))


def ppo_update(
    exp,
    policy,
    opt,
    sched,
    cfg: Any,
    step: int,
    guard,
    critic=None,
    critic_opt=None,
    critic_sched=None,
    dp: Any = None,
) -> dict[str, float]:
    """``ppo_epochs`` x ``mini_batches`` optimizer steps on one batch of experience.

    Args:
        exp: the experience (with ``dp``: this rank's shard, whole prompt groups, the
            same number of groups on every rank).
        policy / opt / sched: the actor, its optimizer and scheduler; ``policy=None``
            updates only the critic (a critic actor of the Ray trainer).
        cfg: the RL config (``algo``, ``optim``, ``train``, ``rollout`` sections).
        step: the RL step (seeds the mini-batch shuffle).
        guard: a :class:`~trainkit.common.guard.NonFiniteGuard`.
        critic / critic_opt / critic_sched: the value model of gae, or None.
        dp: a data-parallel :class:`~trainkit.llm.strategy.Strategy` (world > 1), or None.

    Returns:
        Mean stats over the optimizer steps (policy_loss, kl_loss, clip_frac, grad_norm,
        value_loss, ... and the engine-vs-trainer log-prob mismatch).
    """
    from trainkit.rlhf.losses import actor_loss, value_loss
    from trainkit.rlhf.trainers.experience import logprob_mismatch, mismatch_stats, policy_logps

    a = cfg.algo
    dev = next((policy if policy is not None else critic).parameters()).device
    world = dp.world_size if dp is not None else 1
    group = exp.group if share_prompt(cfg) else 1
    n_groups = len(exp) // group
    groups_per_micro = max(1, cfg.train.micro_batch_size // group)
    agg = (
        a.loss_agg
        if a.loss_agg != "auto"
        else ("sum_norm" if a.estimator == "dr_grpo" else "token_mean")
    )
    norm = float(cfg.rollout.max_new_tokens)
    g = torch.Generator().manual_seed(cfg.train.seed * 7919 + step)
    offs = torch.arange(group)
    sums: dict[str, float] = {}
    count = 0
    # engine-vs-trainer log-prob mismatch, from the first mini-batch's forward (no update
    # yet, so logp is the trainer's recomputation); with recompute_old_logp the old
    # log-probs are already the trainer's and make_experience measured it
    measure = policy is not None and not a.recompute_old_logp
    mism = [0.0, 0.0, 0]
    for _ in range(a.ppo_epochs):
        # shuffle whole groups (a group's rows stay together so its prompt is shared)
        gperm = torch.randperm(n_groups, generator=g)
        for gmini in gperm.chunk(min(a.mini_batches, n_groups)):
            mini = (gmini[:, None] * group + offs).reshape(-1)
            tot_tok = float(exp.action_mask[mini].sum())
            if dp is not None:
                tot_tok = float(dp.all_reduce_sum(torch.tensor(tot_tok, dtype=torch.float64)))
            for o in (opt, critic_opt):
                if o is not None:
                    o.zero_grad(set_to_none=True)
            st: dict[str, float] = {}
            for gmicro in gmini.split(groups_per_micro):
                micro = (gmicro[:, None] * group + offs).reshape(-1)
                e = exp.select(micro).to(dev)
                R = e.action_mask.shape[1]
                w = _weights(e.action_mask, len(micro), agg, tot_tok, len(mini) * world)
                if policy is not None:
                    logp, ent = policy_logps(
                        policy,
                        e.sequences,
                        e.attention_mask,
                        e.action_mask,
                        cfg.rollout.temperature,
                        group,
                        return_entropy=a.entropy_coef > 0,
                    )
                    if measure:
                        mx, tot, cnt = logprob_mismatch(logp, e.old_logp, e.action_mask)
                        mism = [max(mism[0], mx), mism[1] + tot, mism[2] + cnt]
                    loss, ls = actor_loss(
                        logp,
                        e.old_logp,
                        e.advantages,
                        e.action_mask,
                        ref_logp=None if a.kl_in_reward else e.ref_logp,
                        entropy=ent,
                        clip_low=a.clip_low,
                        clip_high=a.clip_high,
                        dual_clip=a.dual_clip,
                        agg=agg,
                        norm=norm,
                        kl_coef=a.kl_coef,
                        kl_kind=a.kl_kind,
                        entropy_coef=a.entropy_coef,
                        is_weight=e.is_weight,
                    )
                    (loss * (w * world)).backward()
                    for k in ACTOR_LOGGED:
                        if k in ls:
                            st[k] = st.get(k, 0.0) + w * ls[k]
                if critic is not None:
                    v = _critic_forward(critic, e.sequences, e.attention_mask, R)
                    vl = value_loss(v, e.values, e.returns, e.action_mask, a.value_clip)
                    (a.vf_coef * vl * (w * world)).backward()
                    st["value_loss"] = st.get("value_loss", 0.0) + w * float(vl.detach())
            if dp is not None:
                st = _sum_over_ranks(dp, st)
            if policy is not None:
                st["grad_norm"] = gn = _grad_norm(opt, cfg.optim.max_grad_norm)
                if guard.check(step, st["loss"], gn):
                    opt.step()
                    sched.step()
            if critic is not None:
                st["critic_grad_norm"] = cgn = _grad_norm(critic_opt, cfg.optim.max_grad_norm)
                if guard.check(step, st["value_loss"], cgn):
                    critic_opt.step()
                    critic_sched.step()
            for k, v in st.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            measure = False
    out = {k: v / max(count, 1) for k, v in sums.items()}
    if policy is not None and not a.recompute_old_logp:
        if dp is not None:
            parts = dp.all_gather_object(mism)
            mism = [max(p[0] for p in parts), sum(p[1] for p in parts), sum(p[2] for p in parts)]
        out.update(mismatch_stats(*mism))
    return out


def _critic_forward(critic, sequences, attention_mask, n_response):
    from trainkit.rlhf.rollout.base import position_ids

    v = critic(sequences, attention_mask=attention_mask, position_ids=position_ids(attention_mask))
    return v[:, -n_response - 1 : -1]
