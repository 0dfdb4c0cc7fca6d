"""Preference losses: the pairwise reward-model loss (Bradley-Terry) and DPO / IPO /
cDPO, as pure tensor functions (re-exported by :mod:`~trainkit.rlhf.losses`).

Shapes: every argument is ``[batch]`` (one scalar per preference pair).
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

Tensor = torch.Tensor


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
