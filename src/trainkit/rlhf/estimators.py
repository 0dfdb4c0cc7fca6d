"""The advantage estimators of ``algo.estimator``: one table that the config type, its
validation, the experience maker and docs/rlhf.md all read.

Each row says how an estimator turns a step's scalar rewards ``[B]`` (``B = n_prompts *
rollout.n``) into token advantages ``[B, R]``:

* ``group``: a baseline from the other samples of the same prompt (needs ``rollout.n >= 2``);
* ``token_level``: advantages are (discounted) returns over the response tokens, so a
  per-token KL penalty can go into the reward (``algo.kl_in_reward``); otherwise one value
  per sequence is broadcast to its tokens and the KL is a loss term;
* ``critic``: a value model is trained next to the policy (``model.critic``).

The formulas themselves live in :mod:`trainkit.rlhf.advantages`; docs/papers.md maps each
paper's settings to these names.
"""

from __future__ import annotations

from dataclasses import dataclass

from trainkit.common.markdown import table, yes_no


@dataclass(frozen=True)
class EstimatorSpec:
    """One row of :data:`ESTIMATORS` (see the module docstring for the columns)."""

    group: bool
    token_level: bool
    critic: bool
    recipe: str
    paper: str


ESTIMATORS: dict[str, EstimatorSpec] = {
    "gae": EstimatorSpec(
        group=False,
        token_level=True,
        critic=True,
        recipe="token rewards -> GAE with the critic's values -> whiten",
        paper="PPO (Schulman et al. 2017) with GAE (Schulman et al. 2016), as in InstructGPT",
    ),
    "reinforce": EstimatorSpec(
        group=False,
        token_level=True,
        critic=False,
        recipe="token rewards -> discounted returns -> whiten over the batch",
        paper="REINFORCE++ (Hu et al. 2025)",
    ),
    "reinforce_baseline": EstimatorSpec(
        group=True,
        token_level=True,
        critic=False,
        recipe="reward - group mean -> token rewards -> returns -> whiten over the batch",
        paper="REINFORCE++-baseline (Hu et al. 2025)",
    ),
    "grpo": EstimatorSpec(
        group=True,
        token_level=False,
        critic=False,
        recipe="(reward - group mean) / (group std + eps), broadcast to tokens",
        paper="GRPO (Shao et al. 2024, DeepSeekMath)",
    ),
    "dr_grpo": EstimatorSpec(
        group=True,
        token_level=False,
        critic=False,
        recipe="reward - group mean (no std), broadcast to tokens",
        paper="Dr. GRPO (Liu et al. 2025)",
    ),
    "rloo": EstimatorSpec(
        group=True,
        token_level=False,
        critic=False,
        recipe="reward - mean of the other n - 1 samples, broadcast to tokens",
        paper="RLOO (Ahmadian et al. 2024)",
    ),
}

NAMES: tuple[str, ...] = tuple(ESTIMATORS)
#: estimators whose baseline is the prompt's group (``rollout.n >= 2``)
GROUP: tuple[str, ...] = tuple(n for n, s in ESTIMATORS.items() if s.group)
#: estimators that accept ``algo.kl_in_reward`` (advantages are returns over tokens)
TOKEN_LEVEL: tuple[str, ...] = tuple(n for n, s in ESTIMATORS.items() if s.token_level)


def spec(name: str) -> EstimatorSpec:
    """The row of ``name``; ValueError naming the valid ones otherwise."""
    if name not in ESTIMATORS:
        raise ValueError(f"estimator must be one of {', '.join(NAMES)}, got {name!r}")
    return ESTIMATORS[name]


def markdown_table() -> str:
    """The table as Markdown (docs/rlhf.md holds this text verbatim; a test checks it)."""
    head = ["`algo.estimator`", "group baseline (`rollout.n >= 2`)"]
    head += ["token-level (KL may go in the reward)", "critic", "advantages", "paper"]
    return table(
        head,
        (
            [f"`{n}`", yes_no(s.group), yes_no(s.token_level), yes_no(s.critic), s.recipe, s.paper]
            for n, s in ESTIMATORS.items()
        ),
    )
