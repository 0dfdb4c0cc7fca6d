"""Cutting a step's batch into per-actor pieces and putting rollouts back together (pure).

Data-parallel learners (FSDP2 policy or critic replicas) must make the same number of
forward/backward calls, so they get shards with the same number of prompt groups; a
shard short of groups (after dynamic sampling) is padded with copies whose action mask
is zero: they add no token to the loss and no gradient, only the matching calls.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from trainkit.rlhf.rollout.base import Rollout


def split_even(items: list, k: int) -> list[list]:
    """``k`` contiguous nearly equal slices (empty ones dropped)."""
    q, r = divmod(len(items), k)
    out, s = [], 0
    for i in range(k):
        e = s + q + (1 if i < r else 0)
        if e > s:
            out.append(items[s:e])
        s = e
    return out


def group_rows(n_rows: int, group: int, k: int) -> list[list[int]]:
    """Row indices of ``k`` contiguous shards of whole groups (``n_rows / group`` groups,
    nearly equal shards, empty ones dropped)."""
    groups = split_even(list(range(n_rows // group)), k)
    return [[g * group + j for g in gs for j in range(group)] for gs in groups]


def rollout_rows(ro: Rollout, rows: list[int]) -> Rollout:
    """The rollout restricted to ``rows`` (same padding widths)."""
    return ro.select(torch.tensor(rows, dtype=torch.long))


def shard_experience(exp, k: int) -> list:
    """``k`` shards of whole prompt groups with the same number of groups each.

    Shard ``i`` takes groups ``[i * per, (i + 1) * per)`` with ``per = ceil(G / k)``;
    missing groups are copies of group 0 with a zero action mask (no loss tokens).

    Args:
        exp: an :class:`~trainkit.rlhf.trainers.experience.Experience` of ``G`` groups of
            ``exp.group`` consecutive rows.
        k: shards (data-parallel ranks).
    """
    g = exp.group
    n_groups = len(exp) // g
    per = -(-n_groups // k)
    out = []
    for i in range(k):
        gs = list(range(i * per, min((i + 1) * per, n_groups)))
        pad = per - len(gs)
        rows = [x * g + j for x in gs + [0] * pad for j in range(g)]
        sub = exp.select(torch.tensor(rows, dtype=torch.long))
        if pad:
            keep = torch.ones(len(rows), 1, dtype=sub.action_mask.dtype)
            keep[len(gs) * g :] = 0
            sub = replace(sub, action_mask=sub.action_mask * keep)
        out.append(sub)
    return out


def concat_rollouts(parts: list[Rollout], pad: int) -> Rollout:
    """Stack rollouts row-wise, re-padding prompts (left) and responses (right) with ``pad``."""
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_ids.shape[1] for p in parts)
    R = max(p.response_ids.shape[1] for p in parts)

    def left(t, w, v):
        return torch.nn.functional.pad(t, (w - t.shape[1], 0), value=v)

    def right(t, w, v):
        return torch.nn.functional.pad(t, (0, w - t.shape[1]), value=v)

    info = {
        "gen_s": max(p.info.get("gen_s", 0.0) for p in parts),
        "gen_tokens": sum(p.info.get("gen_tokens", 0) for p in parts),
        "actor_cpu_s": sum(p.info.get("actor_cpu_s", 0.0) for p in parts),
    }
    return Rollout(
        torch.cat([left(p.prompt_ids, P, pad) for p in parts]),
        torch.cat([left(p.prompt_mask, P, 0) for p in parts]),
        torch.cat([right(p.response_ids, R, pad) for p in parts]),
        torch.cat([right(p.action_mask, R, 0) for p in parts]),
        torch.cat([right(p.logprobs, R, 0.0) for p in parts]),
        torch.cat([p.truncated for p in parts]),
        parts[0].n,
        info,
        None
        if all(p.response_mask is None for p in parts)
        else torch.cat(
            [
                right(p.action_mask if p.response_mask is None else p.response_mask, R, 0)
                for p in parts
            ]
        ),
    )
