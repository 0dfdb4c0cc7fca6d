"""The serving roles of the Ray trainer (plain classes; :class:`Cluster.spawn` wraps them).

The learning roles (policy, reference, critic) are in :mod:`~trainkit.rlhf.ray.learners`.

* :class:`RewardWorker`: the reward functions of ``data.reward`` (a reward model, a
  remote scorer, rules) scoring a slice of each step's completions;
* :class:`RolloutWorker`: one rollout engine (``rollout.engine``: ``hf`` or ``vllm``) on a
  plain copy of the policy; receives weights after every update and runs evaluations.

They reuse the single-process building blocks (:mod:`~trainkit.rlhf.trainers.ppo`,
:mod:`~trainkit.rlhf.trainers.experience`), so the maths is the same code.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def _threads(n: int) -> None:
    torch.set_num_threads(max(1, int(n)))
    os.environ["OMP_NUM_THREADS"] = str(max(1, int(n)))


def _endpoint() -> tuple[str, int]:
    """This node's IP (as Ray sees it) and a port that is free right now."""
    import socket

    import ray

    with socket.socket() as sk:
        sk.bind(("", 0))
        port = sk.getsockname()[1]
    return ray.util.get_node_ip_address(), int(port)


class RolloutWorker:
    """One rollout engine on its own copy of the policy weights.

    Args:
        cfg: the run's RL config (``model``, ``rollout``, ``data``, ``eval`` sections).
        threads: torch CPU threads of this actor.
    """

    def __init__(self, cfg: Any, threads: int):
        from trainkit.llm.models import load_model, load_tokenizer
        from trainkit.rlhf.trainers import rl_data
        from trainkit.rlhf.trainers.ppo import eos_ids

        _threads(threads)
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
        _, eval_recs = rl_data.load_prompt_records(cfg.data, cfg.train.seed)
        self.eval_set = (
            rl_data.tokenize_prompts(eval_recs, self.tok, cfg.data) if eval_recs else None
        )
        self.reward_fn = rl_data.build_reward(cfg.data)
        from trainkit.rlhf.rewards import load_reward

        self.acc_fn = load_reward(cfg.data.accuracy_reward) if cfg.data.accuracy_reward else None

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
        return self.engine.generate(
            prompt_token_ids,
            n=n,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            seed=seed,
            min_new_tokens=min_new_tokens,
        )

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
        from trainkit.rlhf.trainers import rl_data

        if self.eval_set is None or self.cfg.eval.n_prompts == 0:
            return None
        ev = self.cfg.eval
        tokens = ev.max_new_tokens or self.cfg.rollout.max_new_tokens
        return rl_data.evaluate(
            self.engine, self.tok, self.eval_set, self.reward_fn, self.acc_fn, ev, tokens, seed=seed
        )


class RewardWorker:
    """The run's reward (and accuracy) functions in their own process.

    Args:
        cfg: the run's RL config (``data`` section).
        threads: torch CPU threads of this actor (a reward model uses them).
    """

    def __init__(self, cfg: Any, threads: int):
        from trainkit.rlhf.rewards import load_reward
        from trainkit.rlhf.trainers import rl_data

        _threads(threads)
        self.cfg = cfg
        self.reward_fn = rl_data.build_reward(cfg.data)
        self.acc_fn = load_reward(cfg.data.accuracy_reward) if cfg.data.accuracy_reward else None

    def ready(self) -> int:
        return os.getpid()

    def score(
        self, prompts: list[str], completions: list[str], labels: dict[str, list]
    ) -> tuple[list[float], list[bool], dict[str, float], list[float] | None]:
        """``(rewards, valid, failure counts, accuracy rewards or None)`` of the rows."""
        from trainkit.rlhf.rewards import score

        res = score(
            self.reward_fn,
            prompts,
            completions,
            labels,
            max_invalid_fraction=self.cfg.data.max_invalid_fraction,
        )
        hits = None
        if self.acc_fn is not None:
            hits = score(
                self.acc_fn, prompts, completions, labels, max_invalid_fraction=1.0
            ).rewards
        return list(res.rewards), list(res.valid), res.stats(), hits
