"""The ``rollout`` and ``algo`` sections of the online-RL config (re-exported by
:mod:`~trainkit.rlhf.trainers.rl_config`): how completions are sampled, where the engine
runs (in this process, its own process, asynchronously), the advantage estimator, the
losses and the off-policy correction of the engine's samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trainkit.rlhf import estimators as E

# the names and their properties come from the one table in rlhf/estimators.py
Estimator = Literal[E.NAMES]  # type: ignore[valid-type]


@dataclass
class RolloutSection:
    """Sampling of completions for each training step.

    Attributes:
        prompts_per_step: prompts per step, from a seeded permutation per epoch; a step
            samples prompts_per_step * n completions.
        max_new_tokens: most tokens generated per completion; also the normaliser of the
            sum_norm loss (dr_grpo) and the eval default.
        min_new_tokens: EOS cannot be sampled before this many tokens (HF generate's
            min_new_tokens, vLLM's min_tokens); = max_new_tokens makes every completion
            exactly max_new_tokens long (equal-work benchmarks). Training rollouts only,
            not eval.
        temperature: sampling temperature, must be > 0; training log-probs are of
            softmax(logits / temperature) too.
        top_p: nucleus sampling threshold in (0, 1]; 1.0 disables it.
        async: asynchronous RL: the engine runs in its own process (single-process
            backend) or actor (Ray) and samples step t+1 while the trainer learns on step
            t; the trainer's weights reach it after each update. Needs
            algo.recompute_old_logp (the trainer's old log-probs; the engine's are of an
            older policy: algo.tis_cap / algo.is_mask correct for the gap).
        max_staleness: k >= 1 with async: the batch of step s is sampled by the policy
            after max(0, s - k) updates (a fixed lag, so a run is reproducible and its
            resume exact); the trainer then learns on samples k versions old.
        engine_process: the engine in its own process also without async (the placement
            async uses, for like-for-like comparisons); single-process backend only.
        engine_threads: torch threads of the engine process (null: train.threads).
        engine_cpus: CPU cores the engine process is pinned to (empty: not pinned).
    """

    engine: Literal["hf", "vllm"] = field(
        default="hf",
        metadata={
            "help": "hf: in-process, shares the policy; vllm: separate engine, weights synced "
            "after every update (needs the vllm extra)"
        },
    )
    n: int = field(default=8, metadata={"help": "samples per prompt (group size)"})
    prompts_per_step: int = 1
    max_new_tokens: int = 32
    min_new_tokens: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    max_batch: int | None = field(default=None, metadata={"help": "rows per generate call"})
    merge_lora: bool = field(
        default=False,
        metadata={
            "help": "fold LoRA into the weights while generating (fewer matmuls per token; "
            "costs a transient copy of the adapted weights)"
        },
    )
    async_: bool = False
    max_staleness: int = 1
    engine_process: bool = False
    engine_threads: int | None = None
    engine_cpus: list[int] = field(default_factory=list)


@dataclass
class AlgoSection:
    """Advantage estimator, KL penalty and the PPO-style clipped losses.

    Attributes:
        estimator: advantages: gae (PPO, needs a critic), reinforce (REINFORCE++), or the
            group ones reinforce_baseline, grpo, dr_grpo, rloo (need rollout.n >= 2).
        kl_kind: per-token KL(pi || pi_ref) estimator (Schulman 2020): k1 = log-ratio, k2 =
            half its square, k3 = exp(-r) - 1 + r (unbiased, >= 0); used when kl_coef > 0.
        clip_low: eps_low of the PPO ratio clip, ratio >= 1 - clip_low.
        clip_high: eps_high, ratio <= 1 + clip_high; larger than clip_low is DAPO's
            clip-higher.
        dual_clip: dual-clip constant c > 1 (Ye et al. 2020) bounding the loss of
            negative-advantage tokens at c * A; null: off.
        value_clip: clip of the critic's new values to old +- value_clip in the value loss
            (OpenRLHF value_clip; gae only); null: unclipped.
        vf_coef: weight of the critic's value loss (gae only; the critic has its own
            optimizer).
        gamma: discount of gae and reinforce returns; 1.0: no discount (unused by grpo,
            dr_grpo, rloo).
        lam: GAE lambda (bias/variance trade-off of the advantages); gae only.
        entropy_coef: weight of the entropy bonus subtracted from the loss; 0 skips computing
            the entropy.
        ppo_epochs: passes over each step's experience (each pass: mini_batches optimizer
            steps).
        tis_cap: truncated importance sampling (Yao et al. 2025): each token's policy loss
            is weighted by min(pi_old / pi_engine, tis_cap), pi_old the trainer's
            recomputed probability and pi_engine the rollout engine's; null: off. Needs
            recompute_old_logp.
        is_mask: [low, high]: tokens whose ratio pi_old / pi_engine leaves [low, high] are
            left out of the loss (IcePop's masking; e.g. [0.5, 5.0]); null: off. Needs
            recompute_old_logp.
    """

    estimator: Estimator = "grpo"
    kl_coef: float = field(default=0.0, metadata={"help": "beta; 0 skips the reference pass"})
    kl_kind: Literal["k1", "k2", "k3"] = "k3"
    kl_in_reward: bool = field(
        default=False,
        metadata={
            "help": "KL as a per-token reward (PPO/REINFORCE++) instead of a loss term (GRPO)"
        },
    )
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    value_clip: float | None = 0.5
    vf_coef: float = 1.0
    gamma: float = 1.0
    lam: float = 0.95
    entropy_coef: float = 0.0
    ppo_epochs: int = 1
    mini_batches: int = field(default=1, metadata={"help": "optimizer steps per ppo epoch"})
    loss_agg: Literal["auto", "token_mean", "seq_mean", "sum_norm"] = field(
        default="auto",
        metadata={"help": "auto: sum_norm (over max_new_tokens) for dr_grpo, else token_mean"},
    )
    dynamic_sampling: bool = field(
        default=False, metadata={"help": "drop groups whose rewards are all equal (DAPO)"}
    )
    recompute_old_logp: bool = field(
        default=False,
        metadata={
            "help": "recompute behaviour log-probs with a forward pass instead of the engine's"
        },
    )
    tis_cap: float | None = None
    is_mask: list[float] | None = None
