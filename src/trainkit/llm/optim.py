"""The one optimizer and LR schedule of every recipe's ``optim`` section.

AdamW over the trainable parameters with a per-step LR multiplier
(:func:`lr_factor`): linear warmup, then cosine, linear or constant. SFT, the reward
model, DPO, the RL policy/critic and ``longctx extend`` all build theirs here from the
shared :class:`trainkit.llm.sections.OptimSection`.
"""

from __future__ import annotations

import math
from typing import Any


def lr_factor(
    step: int,
    max_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    min_ratio: float = 0.0,
) -> float:
    """Multiplier of the peak LR for the update made at ``step`` (0-based).

    Linear warmup ``(step + 1) / warmup_steps`` for ``step < warmup_steps``, then with
    ``p = (step - warmup) / max(1, max_steps - warmup)`` in ``[0, 1)``:
    cosine ``m + (1 - m) * (1 + cos(pi p)) / 2`` (Loshchilov & Hutter 2017), linear
    ``m + (1 - m) * (1 - p)``, constant ``1``; ``m = min_ratio``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    p = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    p = min(max(p, 0.0), 1.0)
    if schedule == "cosine":
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * p))
    if schedule == "linear":
        return min_ratio + (1 - min_ratio) * (1 - p)
    return 1.0


def make_optimizer(params: Any, optim: Any, max_steps: int, lr: float | None = None):
    """``(AdamW, LambdaLR)`` over the parameters of ``params`` that require grad.

    Args:
        params: parameters (an iterable; frozen ones are dropped).
        optim: an ``optim`` config section: ``lr``, ``weight_decay``, ``warmup_steps`` and,
            where the section has them, ``betas`` (default ``(0.9, 0.999)``), ``eps``
            (``1e-8``), ``schedule`` (``constant``) and ``min_lr_ratio`` (``0``).
        max_steps: optimizer steps of the run (the length of a decaying schedule).
        lr: peak LR instead of ``optim.lr`` (the RL critic's ``optim.critic_lr``).
    """
    import torch

    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(
        params,
        lr=optim.lr if lr is None else lr,
        betas=tuple(getattr(optim, "betas", (0.9, 0.999))),
        eps=getattr(optim, "eps", 1e-8),
        weight_decay=optim.weight_decay,
    )
    warm = max(0, optim.warmup_steps)
    schedule = getattr(optim, "schedule", "constant")
    floor = getattr(optim, "min_lr_ratio", 0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: lr_factor(s, max_steps, warm, schedule, floor)
    )
    return opt, sched
