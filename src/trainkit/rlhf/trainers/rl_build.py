"""Building the parts of an online-RL run: models, rollout engine, optimizers.

Shared by the single-process backend (:mod:`~trainkit.rlhf.trainers.rl_local`) and the
Ray actors (:mod:`~trainkit.rlhf.ray.learners`, :mod:`~trainkit.rlhf.ray.workers`), so
a model built in another process starts from the same weights. Nothing here writes to
disk.
"""

from __future__ import annotations

from typing import Any

import torch


def build_models(cfg: Any, with_ref: bool = True, with_critic: bool = True):
    """``(policy, tokenizer, ref_model or None, critic or None)``; ``with_ref`` /
    ``with_critic`` False leave them out (the Ray trainer's separate actors hold them)."""
    from trainkit.llm.models import load_model

    lora = cfg.lora if cfg.lora.enabled else None
    policy, tok = load_model(
        cfg.model.name,
        quantization=cfg.model.quantization,
        lora=lora,
        dtype=cfg.model.dtype,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
    )
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.model.quantization is None:  # quantised models are placed by load_model
        policy.to(dev)
    policy.train()
    ref = None
    if (
        with_ref and cfg.algo.kl_coef > 0 and lora is None
    ):  # LoRA: the reference is the adapter-free base
        ref, _ = load_model(cfg.model.name, dtype=cfg.model.dtype)
        ref.to(dev).eval().requires_grad_(False)
    critic = build_critic(cfg) if with_critic and cfg.uses_critic else None
    return policy, tok, ref, critic


def build_critic(cfg: Any):
    """The gae critic (``model.critic``), in train mode. A new value head is initialised
    from ``train.seed`` alone (global RNG untouched), so a critic built in another
    process (the Ray trainer's critic actor) starts from the same weights."""
    from trainkit.llm.value_head import ValueHeadModel

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    name = cfg.model.name if cfg.model.critic == "auto" else cfg.model.critic
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.train.seed)
        critic = ValueHeadModel.from_pretrained(name, dtype=cfg.model.dtype)
    return critic.to(dev).train()


def make_engine(cfg: Any, policy: Any, tok: Any):
    """The rollout engine of ``rollout.engine``.

    ``hf`` shares the policy object (no weight sync); ``vllm`` is a separate engine
    (:mod:`trainkit.rlhf.rollout.vllm_engine`) that gets the policy's weights after each
    update through ``update_weights(policy)``.
    """
    eos = eos_ids(policy, tok)
    if cfg.rollout.engine == "vllm":
        from trainkit.rlhf.rollout.vllm_engine import VLLMEngine

        engine = VLLMEngine.from_config(cfg, tok.pad_token_id, eos)
        engine.update_weights(policy)
        return engine
    from trainkit.rlhf.rollout.hf import HFEngine

    return HFEngine(
        policy,
        tok.pad_token_id,
        eos,
        cfg.rollout.max_batch,
        merge_lora=cfg.rollout.merge_lora and cfg.lora.enabled and cfg.model.quantization is None,
    )


def eos_ids(model: Any, tok: Any) -> list[int]:
    """The tokenizer's EOS id plus the model's ``generation_config.eos_token_id`` (sorted)."""
    ids = {tok.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(extra)
    return sorted(i for i in ids if i is not None)
