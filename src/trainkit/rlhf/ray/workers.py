"""The serving roles of the Ray trainer (plain classes; :class:`Cluster.spawn` wraps them).

The learning roles (policy, reference, critic) are in :mod:`~trainkit.rlhf.ray.learners`.

* :class:`RewardWorker`: the reward functions of ``data.reward`` (a reward model, a
  remote scorer, rules) scoring a slice of each step's completions;
* :class:`RolloutWorker`: one rollout engine (``rollout.engine``: ``hf`` or ``vllm``) on a
  plain copy of the policy; receives weights after every update and runs evaluations.

They reuse the single-process building blocks (:mod:`~trainkit.rlhf.trainers.rl_build`,
:mod:`~trainkit.rlhf.trainers.rl_data`), so the scoring and evaluation are the same code.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from trainkit.rlhf.ray.cluster import set_threads


class RolloutWorker:
    """One rollout engine on its own copy of the policy weights.

    Args:
        cfg: the run's RL config (``model``, ``rollout``, ``data``, ``eval`` sections).
        threads: torch CPU threads of this actor.
    """

    def __init__(self, cfg: Any, threads: int):
        from trainkit.llm.models import load_model, load_tokenizer
        from trainkit.rlhf.trainers.rl_build import eos_ids
        from trainkit.rlhf.trainers.rl_data import HeldOut

        set_threads(threads)
        self.cfg = cfg
        kind = getattr(cfg.rollout, "engine", "hf")
        if kind == "vllm":
            from types import SimpleNamespace

            from transformers import GenerationConfig

            from trainkit.llm.models import resolve
            from trainkit.rlhf.rollout.vllm_engine import VLLMEngine

            self.tok = load_tokenizer(cfg.model.name)
            try:
                gen = GenerationConfig.from_pretrained(resolve(cfg.model.name))
            except OSError:  # no generation_config.json: the tokenizer's EOS only
                gen = None
            eos = eos_ids(SimpleNamespace(generation_config=gen), self.tok)
            self.engine = VLLMEngine.from_config(cfg, self.tok.pad_token_id, eos)
        else:
            from trainkit.rlhf.rollout.hf import HFEngine

            model, self.tok = load_model(cfg.model.name, dtype=cfg.model.dtype)
            model.eval().requires_grad_(False)
            self.engine = HFEngine(
                model, self.tok.pad_token_id, eos_ids(model, self.tok), cfg.rollout.max_batch
            )
        self.held_out = HeldOut(cfg, self.tok)

    def ready(self) -> int:
        return os.getpid()

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        seed: int | None,
        min_new_tokens: int = 0,
    ) -> Any:
        """The engine's rollout; ``info["actor_cpu_s"]``: this process's CPU seconds."""
        c0 = time.process_time()
        ro = self.engine.generate(
            prompt_token_ids,
            n=n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            min_new_tokens=min_new_tokens,
        )
        ro.info["actor_cpu_s"] = time.process_time() - c0
        return ro

    def update_weights(self, weights: dict[str, torch.Tensor]) -> int:
        """Load the policy's weights; returns how many tensors arrived."""
        self.engine.update_weights(weights)
        return len(weights)

    def _device(self) -> torch.device:
        """Where the engine's weights live (an in-process vLLM: this actor's GPU if any)."""
        model = getattr(self.engine, "model", None)
        if model is not None:
            return next(model.parameters()).device
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")

    def channel_device(self) -> tuple:
        """This rank's :func:`~trainkit.rlhf.rollout.sync.rank_device` entry."""
        import ray

        from trainkit.rlhf.rollout.sync import rank_device

        return rank_device(self._device(), ray.util.get_node_ip_address())

    def open_channel(
        self, host: str, port: int, rank: int, world_size: int, backend: str = "gloo"
    ) -> bool:
        from trainkit.rlhf.rollout.sync import WeightChannel

        self.channel = WeightChannel(
            host, port, rank, world_size, backend=backend, device=self._device()
        )
        return True

    def receive_weights(self, meta: list) -> int:
        """Take part in one broadcast; the engine loads the tensors as they arrive."""
        from trainkit.rlhf.rollout.hf import HFEngine

        it = self.channel.receive(meta)
        self.engine.update_weights(dict(it) if isinstance(self.engine, HFEngine) else it)
        return len(meta)

    def evaluate(self, seed: int) -> dict[str, float] | None:
        """Held-out reward/accuracy with the current weights (None: no eval split)."""
        return self.held_out(self.engine, seed)


class RewardWorker:
    """The run's reward (and accuracy) functions in their own process.

    Args:
        cfg: the run's RL config (``data`` section).
        threads: torch CPU threads of this actor (a reward model uses them).
    """

    def __init__(self, cfg: Any, threads: int):
        from trainkit.rlhf.trainers.rl_data import Scorer

        set_threads(threads)
        self.scorer = Scorer(cfg.data, cfg.reward)

    def ready(self) -> int:
        return os.getpid()

    def score(self, prompts: list[str], completions: list[str], labels: dict[str, list]) -> Any:
        """:class:`~trainkit.rlhf.trainers.rl_data.Scores` of the rows: rewards, valid,
        failure counts, accuracy rewards (None without ``data.accuracy_reward``)."""
        return self.scorer(prompts, completions, labels)
