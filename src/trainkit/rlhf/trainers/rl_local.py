"""The single-process backend of the RL loop (:mod:`~trainkit.rlhf.trainers.rl_loop`):
policy, reference, critic and rollout engine all in this process.

The HF engine shares the policy object, so it samples from the current weights without
a copy; a vLLM engine is separate and gets the policy's weights after each update. With
``rollout.async`` (or ``rollout.engine_process``) the engine, HF or vLLM, runs in its own
process (:class:`~trainkit.rlhf.rollout.process.EngineProcess`) and gets the trainable
weights after each update (async: the snapshot of the version each batch is due).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from trainkit.llm.optim import make_optimizer
from trainkit.rlhf.trainers.rl_build import build_models, make_engine


class LocalBackend:
    """:class:`~trainkit.rlhf.trainers.rl_loop.RLBackend` in one process.

    Builds everything at construction: torch threads (``train.threads``), the global
    seed, ``output_dir`` with its config, the models, the rollout engine, the strategy and
    the optimizers.

    Args:
        cfg: a validated RL config.
        build: ``build(cfg) -> (policy, tokenizer, ref or None, critic or None)``
            (default :func:`~trainkit.rlhf.trainers.rl_build.build_models`).
    """

    name = "local"

    def __init__(self, cfg: Any, build: Callable[[Any], tuple] = build_models):
        from trainkit.common.guard import NonFiniteGuard
        from trainkit.common.seed import seed_everything
        from trainkit.llm.strategy import Strategy
        from trainkit.rlhf.trainers.rl_checkpoint import RLCheckpoint
        from trainkit.rlhf.trainers.rl_data import HeldOut, Scorer
        from trainkit.rlhf.trainers.rl_loop import prepare_output

        if cfg.train.cpus:
            import os

            os.sched_setaffinity(0, cfg.train.cpus)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.train.seed)
        self.cfg = cfg
        self.out = prepare_output(cfg)
        self.policy, self.tokenizer, self.ref, self.critic = build(cfg)
        self.scorer = Scorer(cfg.data, cfg.reward)
        self.held_out = HeldOut(cfg, self.tokenizer, self.scorer)
        r = cfg.rollout
        if r.async_ or r.engine_process:  # its own process, threads and cores
            from trainkit.rlhf.rollout.process import EngineProcess

            threads = r.engine_threads or cfg.train.threads or 1
            self.engine = EngineProcess(cfg, threads, r.engine_cpus)
            self.engine.update_weights(self.policy)
        else:
            self.engine = make_engine(cfg, self.policy, self.tokenizer)
        self.stale = False  # the engine has the policy's weights (make_engine synced them)
        self.strategy = Strategy()
        self.strategy.setup()
        o = cfg.optim
        self.opt, self.sched = make_optimizer(self.policy.parameters(), o, cfg.train.max_steps)
        self.copt = self.csched = None
        if self.critic is not None:
            self.copt, self.csched = make_optimizer(
                self.critic.parameters(), o, cfg.train.max_steps, lr=o.critic_lr
            )
        self.guard = NonFiniteGuard(cfg.train.nonfinite)
        self.ckpt = RLCheckpoint.for_run(
            cfg,
            self.strategy,
            (self.policy, self.opt, self.sched),
            (self.critic, self.copt, self.csched),
        )

    @property
    def nonfinite_skipped(self) -> int:
        return self.guard.skipped

    def _separate_engine(self) -> bool:
        return getattr(self.engine, "model", None) is not self.policy

    def resume(self) -> int:
        self.stale = True
        return self.ckpt.resume()

    def sync_weights(self) -> float:
        if not (self.stale and self._separate_engine()):
            return 0.0
        t = time.perf_counter()
        self.engine.update_weights(self.policy)
        self.stale = False
        return time.perf_counter() - t

    def snapshot(self) -> Any:
        from trainkit.rlhf.rollout.process import trainable_snapshot

        return trainable_snapshot(self.policy)

    def load_weights(self, snapshot: Any) -> float:
        t = time.perf_counter()
        self.engine.update_weights(snapshot)
        return time.perf_counter() - t

    def generate(self, prompt_ids: list[list[int]], seed: int, n=None, max_new_tokens=None):
        r = self.cfg.rollout
        return self.engine.generate(
            prompt_ids,
            n=r.n if n is None else n,
            max_new_tokens=r.max_new_tokens if max_new_tokens is None else max_new_tokens,
            temperature=r.temperature,
            top_p=r.top_p,
            seed=seed,
            min_new_tokens=r.min_new_tokens,
        )

    def score(self, prompts: list[str], completions: list[str], labels: dict) -> Any:
        return self.scorer(prompts, completions, labels)

    def forwards(self, rollout: Any, step: int) -> dict[str, Any]:
        return {"policy": self.policy, "ref_model": self.ref, "critic": self.critic}

    def learn(self, exp: Any, step: int) -> dict[str, float]:
        from trainkit.rlhf.trainers.ppo_update import ppo_update

        stats = ppo_update(
            exp,
            self.policy,
            self.opt,
            self.sched,
            self.cfg,
            step,
            self.guard,
            self.critic,
            self.copt,
            self.csched,
        )
        self.stale = True
        return {**stats, "lr": self.sched.get_last_lr()[0]}

    def evaluate(self, step: int) -> dict[str, float] | None:
        return self.held_out(self.engine, seed=self.cfg.train.seed)

    def save(self, step: int) -> None:
        self.ckpt.save(step)

    def save_model(self) -> None:
        self.strategy.save_pretrained(self.policy, self.out / "final", tokenizer=self.tokenizer)

    def failed(self, error: Exception, done: int, saved: int) -> Exception | None:
        return None

    def summary(self) -> dict[str, Any]:
        return {}

    def close(self) -> None:
        if hasattr(self.engine, "close"):
            self.engine.close()  # in-process vLLM engines must be released explicitly
