"""Online RL recipe: PPO, REINFORCE++(-baseline), GRPO, Dr.GRPO and RLOO in one loop.

``trainkit rlhf ppo`` and ``trainkit rlhf grpo`` run :func:`train` with the defaults of
:class:`~trainkit.rlhf.trainers.rl_config.PPOConfig` / ``GRPOConfig``. Each step:

1. take ``rollout.prompts_per_step`` prompts (a seeded permutation per epoch, so the
   order depends only on ``(seed, step)`` and resume is exact);
2. sample ``rollout.n`` completions each with the rollout engine (HF, KV cache);
3. score them with the reward functions; make experience (old/ref log-probs, values,
   KL, advantages: :mod:`~trainkit.rlhf.trainers.experience`);
4. (:mod:`~trainkit.rlhf.trainers.ppo_update`) ``algo.ppo_epochs`` passes over ``algo.mini_batches`` shuffled mini-batches, each an
   optimizer step accumulated over micro-batches: clipped policy loss
   (+ ``kl_coef`` x KL when the KL is a loss, - ``entropy_coef`` x entropy), and for gae
   the clipped value loss on the critic;
5. log, evaluate on held-out prompts every ``eval.every`` steps, checkpoint.

The loop itself is :func:`~trainkit.rlhf.trainers.rl_loop.run_loop`, the same for both
places the models can live: this process
(:class:`~trainkit.rlhf.trainers.rl_local.LocalBackend`) or Ray actors
(:class:`~trainkit.rlhf.ray.trainer.RayBackend`, ``ray.enabled=true``); :func:`train`
picks the backend.

Departures from OpenRLHF, on purpose: the behaviour log-probs are the rollout engine's
own (no second forward) unless ``algo.recompute_old_logp`` (either way their distance to
the trainer's forward is logged as ``rollout/logprob_abs_diff_max``/``_mean``, the usual
source of ratio spikes with vLLM rollouts); with LoRA the reference is
the policy with adapters disabled; the critic is a full model (LoRA applies to the
actor only); dynamic sampling drops all-equal groups without drawing replacements.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from trainkit.llm.optim import make_optimizer
from trainkit.rlhf.trainers.ppo_update import ppo_update, share_prompt
from trainkit.rlhf.trainers.rl_build import (
    build_critic,
    build_models,
    eos_ids,
    make_engine,
)
from trainkit.rlhf.trainers.rl_config import GRPOConfig, PPOConfig, RLConfig
from trainkit.rlhf.trainers.rl_loop import Metric, StepContext, prompt_indices

__all__ = [
    "GRPOConfig",
    "Metric",
    "PPOConfig",
    "RLConfig",
    "StepContext",
    "build_critic",
    "build_models",
    "eos_ids",
    "make_engine",
    "make_optimizer",
    "ppo_update",
    "prompt_indices",
    "run_cli",
    "share_prompt",
    "train",
]


def train(
    cfg: RLConfig,
    on_log: Callable[[dict], Any] | None = None,
    metrics: Sequence[Metric] = (),
) -> dict[str, Any]:
    """Run the recipe; returns a summary (first/last eval, steps, seconds, ...).

    Args:
        cfg: a validated :class:`RLConfig` (or GRPO/PPO variant); ``ray.enabled`` puts
            the models on Ray actors, nothing else changes.
        on_log: optional callback ``f(record: dict)`` called with every metrics record.
        metrics: extra per-step metrics: functions ``f(ctx) -> dict`` of a
            :class:`~trainkit.rlhf.trainers.rl_loop.StepContext` (step, prompts,
            completions, labels, rewards, rollout, the record so far); their keys are
            added to the step record in ``metrics.jsonl``.
    """
    from trainkit.rlhf.trainers.rl_loop import run_loop

    if cfg.ray.enabled:  # same config, actors on a Ray cluster
        from trainkit.rlhf.ray.trainer import RayBackend

        backend = RayBackend(cfg)
    else:
        from trainkit.rlhf.trainers.rl_local import LocalBackend

        backend = LocalBackend(cfg, build_models)  # looked up here: tests replace it
    return run_loop(cfg, backend, on_log, metrics)


def run_cli(cfg: RLConfig, args: Any = None) -> int:
    """CLI entry (``trainkit rlhf grpo|ppo``): train and print the summary as JSON; 130
    after a Ctrl-C (a checkpoint was saved)."""
    import json

    summary = train(cfg)
    print(json.dumps(summary, indent=2, default=float))
    if summary.get("interrupted"):
        print(
            f"rl: interrupted after step {summary['steps']}; checkpoint in "
            f"{Path(cfg.output_dir) / 'checkpoints'}; continue with train.resume=true",
            file=sys.stderr,
        )
        return 130
    return 0
