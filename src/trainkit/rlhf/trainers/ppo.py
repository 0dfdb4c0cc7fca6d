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

Departures from OpenRLHF, on purpose: the behaviour log-probs are the rollout engine's
own (no second forward) unless ``algo.recompute_old_logp`` (either way their distance to
the trainer's forward is logged as ``rollout/logprob_abs_diff_max``/``_mean``, the usual
source of ratio spikes with vLLM rollouts); with LoRA the reference is
the policy with adapters disabled; the critic is a full model (LoRA applies to the
actor only); dynamic sampling drops all-equal groups without drawing replacements.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch

from trainkit.rlhf.trainers.ppo_update import ppo_update, share_prompt
from trainkit.rlhf.trainers.rl_config import GRPOConfig, PPOConfig, RLConfig

__all__ = ["GRPOConfig", "PPOConfig", "RLConfig", "ppo_update", "run_cli", "share_prompt", "train"]


# ------------------------------------------------------------------------ building
def build_models(cfg: RLConfig, with_ref: bool = True, with_critic: bool = True):
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


def build_critic(cfg: RLConfig):
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


def make_engine(cfg: RLConfig, policy: Any, tok: Any):
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
    ids = {tok.eos_token_id}
    gen = getattr(model, "generation_config", None)
    extra = getattr(gen, "eos_token_id", None)
    if isinstance(extra, int):
        ids.add(extra)
    elif extra:
        ids.update(extra)
    return sorted(i for i in ids if i is not None)


def make_optimizer(params, lr: float, optim: Any, max_steps: int):
    params = [p for p in params if p.requires_grad]
    opt = torch.optim.AdamW(
        params, lr=lr, betas=tuple(optim.betas), weight_decay=optim.weight_decay
    )
    warm = max(optim.warmup_steps, 0)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) if warm else 1.0
    )
    return opt, sched


def prompt_indices(n_items: int, per_step: int, step: int, seed: int) -> list[int]:
    """Prompts of ``step``: consecutive slots of a seeded permutation per epoch."""
    out = []
    for slot in range(step * per_step, (step + 1) * per_step):
        epoch, pos = divmod(slot, n_items)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        out.append(int(torch.randperm(n_items, generator=g)[pos]))
    return out


# ------------------------------------------------------------------------ checkpoints
def _save(
    out: Path,
    step: int,
    strategy,
    policy,
    opt,
    sched,
    critic,
    critic_opt,
    critic_sched,
    keep_last: int,
    extra: dict,
) -> None:
    """The critic first, then the policy: a policy checkpoint at step s implies a critic one."""
    from trainkit.llm.checkpoint import save_checkpoint

    if critic is not None:
        save_checkpoint(
            out / "checkpoints_critic",
            step,
            strategy,
            critic,
            critic_opt,
            critic_sched,
            keep_last=keep_last,
        )
    save_checkpoint(
        out / "checkpoints",
        step,
        strategy,
        policy,
        opt,
        sched,
        data_state={"step": step},
        extra=extra,
        keep_last=keep_last,
    )


def _resume(
    out: Path, strategy, policy, opt, sched, critic, critic_opt, critic_sched
) -> tuple[int, dict]:
    from trainkit.common.errors import UserError
    from trainkit.llm.checkpoint import latest_checkpoint, load_checkpoint

    path = latest_checkpoint(out / "checkpoints")
    if path is None:
        return 0, {}
    if critic is not None:
        cpath = out / "checkpoints_critic" / path.name
        if not cpath.is_dir():
            raise UserError(f"{path}: no matching critic checkpoint {cpath}")
        load_checkpoint(cpath, strategy, critic, critic_opt, critic_sched)
    state = load_checkpoint(path, strategy, policy, opt, sched)  # last: its RNG state wins
    print(f"resumed from {path} (step {state['step']})", file=sys.stderr)
    return int(state["step"]), state


# ------------------------------------------------------------------------ the loop
def train(cfg: RLConfig, on_log: Any = None) -> dict[str, Any]:
    """Run the recipe; returns a summary (first/last eval, steps, seconds).

    Args:
        cfg: a validated :class:`RLConfig` (or GRPO/PPO variant).
        on_log: optional callback ``f(record: dict)`` called with every metrics record.
    """
    from trainkit.common.guard import GracefulInterrupt, NonFiniteGuard
    from trainkit.common.io import atomic_write_json
    from trainkit.common.logging import MetricsLogger, progress
    from trainkit.common.run import save_config
    from trainkit.common.seed import seed_everything
    from trainkit.llm.strategy import Strategy
    from trainkit.rlhf.rewards import load_reward, score
    from trainkit.rlhf.trainers import rl_data
    from trainkit.rlhf.trainers.experience import make_experience, rollout_stats

    if cfg.ray.enabled:  # same config, actors on a Ray cluster
        from trainkit.rlhf.ray.trainer import train_ray

        return train_ray(cfg, on_log)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")

    policy, tok, ref, critic = build_models(cfg)
    train_recs, eval_recs = rl_data.load_prompt_records(cfg.data, cfg.train.seed)
    train_set = rl_data.tokenize_prompts(train_recs, tok, cfg.data)
    eval_set = rl_data.tokenize_prompts(eval_recs, tok, cfg.data) if eval_recs else None
    reward_fn = rl_data.build_reward(cfg.data)
    acc_fn = load_reward(cfg.data.accuracy_reward) if cfg.data.accuracy_reward else None
    engine = make_engine(cfg, policy, tok)
    strategy = Strategy()
    strategy.setup()
    opt, sched = make_optimizer(policy.parameters(), cfg.optim.lr, cfg.optim, cfg.train.max_steps)
    critic_opt = critic_sched = None
    if critic is not None:
        critic_opt, critic_sched = make_optimizer(
            critic.parameters(), cfg.optim.critic_lr, cfg.optim, cfg.train.max_steps
        )
    start = 0
    if cfg.train.resume:
        start, _ = _resume(out, strategy, policy, opt, sched, critic, critic_opt, critic_sched)
        if getattr(engine, "model", None) is not policy:  # a separate engine samples from
            engine.update_weights(policy)  # the resumed weights, not the initial ones
    guard = NonFiniteGuard(cfg.train.nonfinite)
    eval_tokens = cfg.eval.max_new_tokens or cfg.rollout.max_new_tokens
    logger = MetricsLogger(out, tensorboard=False)
    evals: list[dict] = []

    def save(step: int) -> None:
        _save(
            out,
            step,
            strategy,
            policy,
            opt,
            sched,
            critic,
            critic_opt,
            critic_sched,
            cfg.train.keep_last,
            {"estimator": cfg.algo.estimator},
        )

    def do_eval(step: int) -> None:
        if eval_set is None or cfg.eval.n_prompts == 0:
            return
        t = time.perf_counter()
        rec = rl_data.evaluate(
            engine, tok, eval_set, reward_fn, acc_fn, cfg.eval, eval_tokens, seed=cfg.train.seed
        )
        rec["eval_s"] = time.perf_counter() - t
        evals.append({"step": step, **rec})
        r = logger.log(step, **rec)
        if on_log:
            on_log(r)

    if start == 0:
        do_eval(0)
    t_run = time.perf_counter()
    bar = progress(
        total=cfg.train.max_steps,
        initial=start,
        desc=f"rl {cfg.algo.estimator}",
        disable=not cfg.train.progress,
    )
    done = saved = start
    with GracefulInterrupt() as stop:
        for step in range(start, cfg.train.max_steps):
            t0, c0 = time.perf_counter(), time.process_time()  # CPU s: fair on shared cores
            torch.manual_seed(cfg.train.seed * 1_000_003 + step)  # dropout etc.: exact resume
            idx = prompt_indices(len(train_set), cfg.rollout.prompts_per_step, step, cfg.train.seed)
            texts, ids, labels = train_set.take(idx)
            ro = engine.generate(
                ids,
                n=cfg.rollout.n,
                max_new_tokens=cfg.rollout.max_new_tokens,
                temperature=cfg.rollout.temperature,
                top_p=cfg.rollout.top_p,
                seed=cfg.train.seed * 1_000_003 + step,
                min_new_tokens=cfg.rollout.min_new_tokens,
            )
            t1, c1 = time.perf_counter(), time.process_time()
            comps = rl_data.decode(tok, ro.response_ids, ro.action_mask)
            n = cfg.rollout.n
            rep_labels = {k: [v for v in vals for _ in range(n)] for k, vals in labels.items()}
            res = score(
                reward_fn,
                [t for t in texts for _ in range(n)],
                comps,
                rep_labels,
                max_invalid_fraction=cfg.data.max_invalid_fraction,
            )
            rewards = torch.tensor(res.rewards, dtype=torch.float32)
            exp, xstats = make_experience(
                ro,
                rewards,
                policy=policy,
                algo=cfg.algo,
                temperature=cfg.rollout.temperature,
                micro_batch=cfg.train.micro_batch_size,
                ref_model=ref,
                critic=critic,
                share_prompt=share_prompt(cfg),
                valid=torch.tensor(res.valid),
            )
            t2 = time.perf_counter()
            ustats = {}
            if exp is not None:
                ustats = ppo_update(
                    exp, policy, opt, sched, cfg, step, guard, critic, critic_opt, critic_sched
                )
            sync_s = 0.0
            if exp is not None and getattr(engine, "model", None) is not policy:  # separate engine
                ts = time.perf_counter()
                engine.update_weights(policy)
                sync_s = time.perf_counter() - ts
            t3 = time.perf_counter()
            acc = None
            if acc_fn is not None:
                hits = score(
                    acc_fn,
                    [t for t in texts for _ in range(n)],
                    comps,
                    rep_labels,
                    max_invalid_fraction=1.0,
                ).rewards
                acc = sum(v == 1.0 for v in hits) / len(comps)
            rec = {
                **rollout_stats(rewards, ro),
                "gen_s": t1 - t0,
                "gen_cpu_s": c1 - c0,
                "exp_s": t2 - t1,
                "train_s": t3 - t2 - sync_s,
                "sync_s": sync_s,
                "step_s": t3 - t0,
                "tokens_per_s": ro.info["gen_tokens"] / max(t3 - t0, 1e-9),
                "lr": sched.get_last_lr()[0],
                **res.stats(),
                **xstats,
                **ustats,
            }
            if acc is not None:
                rec["accuracy"] = acc
            if exp is None:
                rec["skipped_update"] = 1
            r = logger.log(step + 1, **rec)
            if on_log:
                on_log(r)
            bar.update(1)
            bar.set_postfix(reward=f"{rec['reward']:.3f}", kl=f"{rec.get('kl', 0.0):.3f}")
            done = step + 1
            if cfg.eval.every and done % cfg.eval.every == 0 and done < cfg.train.max_steps:
                do_eval(done)
            if (cfg.train.save_every and done % cfg.train.save_every == 0) or stop.requested:
                save(done)
                saved = done
            if stop.requested:
                break
    bar.close()
    interrupted = stop.requested and done < cfg.train.max_steps  # Ctrl-C: no final eval/model
    if not interrupted and (done > start or not evals):
        do_eval(done)
    if done > saved:
        save(done)
    if cfg.train.save_model and not interrupted:
        strategy.save_pretrained(policy, out / "model", tokenizer=tok)
    logger.close()
    if hasattr(engine, "close"):
        engine.close()  # in-process vLLM engines must be released explicitly
    summary = {
        "steps": done,
        "seconds": time.perf_counter() - t_run,
        "first_eval": evals[0] if evals else None,
        "last_eval": evals[-1] if evals else None,
        "nonfinite_skipped": guard.skipped,
        "interrupted": interrupted,
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


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
