"""The online-RL loop with the policy and the rollout engines as Ray actors.

Same steps, seeds and metrics as :func:`trainkit.rlhf.trainers.ppo.train` (read that
first); what moves where:

* the driver (this process) holds only the prompts, the tokenizer and the reward
  functions: it picks the step's prompts, sends them to the rollout actors (split evenly
  over ``ray.rollout.replicas``; replica ``k`` samples with seed ``step_seed + k``, so one
  replica reproduces the single-process samples), decodes and scores the completions;
* with ``ray.reward.replicas > 0`` the scoring runs in reward actors instead (a reward
  model then lives on its own CPUs/GPU), rows split evenly over them;
* the policy actor makes experience and runs the PPO update
  (:class:`~trainkit.rlhf.ray.workers.PolicyWorker`);
* after every update the policy's weights (LoRA merged) are put in the Ray object store
  once and every rollout actor loads them before the next step: weights travel policy ->
  object store -> engines, never through the driver. With ``ray.weight_sync=broadcast``
  they go over a private gloo group instead (policy rank 0, engines 1..k), streamed
  tensor by tensor into the engines (:class:`~trainkit.rlhf.rollout.sync.WeightChannel`).

Fault handling: every ``ray.get`` names its role; when an actor dies the run stops with
``ray: the <role> actor died ...``. If the policy actor is still alive its state after
the last finished step is checkpointed first, so ``train.resume=true`` loses nothing;
if the policy itself died the newest periodic checkpoint (``train.save_every``) is used.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch

from trainkit.rlhf.rollout.base import Rollout


def concat_rollouts(parts: list[Rollout], pad: int) -> Rollout:
    """Stack rollouts row-wise, re-padding prompts (left) and responses (right) with ``pad``."""
    if len(parts) == 1:
        return parts[0]
    P = max(p.prompt_ids.shape[1] for p in parts)
    R = max(p.response_ids.shape[1] for p in parts)

    def left(t, w, v):
        return torch.nn.functional.pad(t, (w - t.shape[1], 0), value=v)

    def right(t, w, v):
        return torch.nn.functional.pad(t, (0, w - t.shape[1]), value=v)

    info = {
        "gen_s": max(p.info.get("gen_s", 0.0) for p in parts),
        "gen_tokens": sum(p.info.get("gen_tokens", 0) for p in parts),
    }
    return Rollout(
        torch.cat([left(p.prompt_ids, P, pad) for p in parts]),
        torch.cat([left(p.prompt_mask, P, 0) for p in parts]),
        torch.cat([right(p.response_ids, R, pad) for p in parts]),
        torch.cat([right(p.action_mask, R, 0) for p in parts]),
        torch.cat([right(p.logprobs, R, 0.0) for p in parts]),
        torch.cat([p.truncated for p in parts]),
        parts[0].n,
        info,
    )


def _split(items: list, k: int) -> list[list]:
    """``k`` contiguous nearly equal slices (empty ones dropped)."""
    q, r = divmod(len(items), k)
    out, s = [], 0
    for i in range(k):
        e = s + q + (1 if i < r else 0)
        if e > s:
            out.append(items[s:e])
        s = e
    return out


def train_ray(cfg: Any, on_log: Any = None, ray_cfg: Any = None) -> dict[str, Any]:
    """Run the RL recipe on Ray; returns the same summary as the single-process trainer
    plus ``startup_s`` (cluster + actors ready) and ``ray_init_s``.

    Args:
        cfg: a validated RL config.
        on_log: optional callback ``f(record)`` for every metrics record.
        ray_cfg: the ray section (default ``cfg.ray``).
    """
    from trainkit.common.guard import GracefulInterrupt
    from trainkit.common.io import atomic_write_json
    from trainkit.common.logging import MetricsLogger, progress
    from trainkit.common.run import save_config
    from trainkit.llm.models import load_tokenizer
    from trainkit.rlhf.ray.cluster import Cluster, RoleDiedError, role_bundles
    from trainkit.rlhf.ray.workers import PolicyWorker, RewardWorker, RolloutWorker
    from trainkit.rlhf.rewards import load_reward, score
    from trainkit.rlhf.trainers import rl_data
    from trainkit.rlhf.trainers.ppo import prompt_indices

    rc = ray_cfg if ray_cfg is not None else cfg.ray
    rc.validate()
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    tok = load_tokenizer(cfg.model.name)
    train_recs, _ = rl_data.load_prompt_records(cfg.data, cfg.train.seed)
    train_set = rl_data.tokenize_prompts(train_recs, tok, cfg.data)
    reward_fn = rl_data.build_reward(cfg.data)
    acc_fn = load_reward(cfg.data.accuracy_reward) if cfg.data.accuracy_reward else None

    t_start = time.perf_counter()
    cluster = Cluster(rc)
    logger = MetricsLogger(out, tensorboard=False)
    evals: list[dict] = []
    try:
        bundles, index = role_bundles(rc)
        cluster.place(bundles)
        pol_threads = cfg.train.threads or max(1, int(rc.policy.num_cpus))
        ro_threads = max(1, int(rc.rollout.num_cpus))
        policy = cluster.spawn(
            "policy", PolicyWorker, 0, rc.policy.num_cpus, rc.policy.num_gpus, cfg, pol_threads
        )
        engines = [
            cluster.spawn(
                "rollout",
                RolloutWorker,
                b,
                rc.rollout.num_cpus,
                rc.rollout.num_gpus,
                cfg,
                ro_threads,
            )
            for b in index["rollout"]
        ]
        scorers = [
            cluster.spawn("reward", RewardWorker, b, rc.reward.num_cpus, rc.reward.num_gpus, cfg, 1)
            for b in index["reward"]
        ]
        cluster.get("policy", policy.ready.remote())
        cluster.get("rollout", [e.ready.remote() for e in engines])
        cluster.get("reward", [w.ready.remote() for w in scorers])
        startup_s = time.perf_counter() - t_start
        start = cluster.get("policy", policy.resume.remote()) if cfg.train.resume else 0

        meta = None
        if rc.weight_sync == "broadcast":
            host, port = cluster.get("policy", policy.sync_endpoint.remote())
            world = len(engines) + 1
            refs = [policy.open_channel.remote(host, port, world)]
            refs += [e.open_channel.remote(host, port, i + 1, world) for i, e in enumerate(engines)]
            cluster.get("rollout", refs[1:])
            cluster.get("policy", refs[0])
            meta = cluster.get("policy", policy.weight_meta.remote())

        def sync() -> float:
            t = time.perf_counter()
            if meta is not None:  # every rank in the same collective, engines first
                recv = [e.receive_weights.remote(meta) for e in engines]
                sent = policy.send_weights.remote()
                cluster.get("rollout", recv)
                cluster.get("policy", sent)
            else:
                w = policy.weights.remote()  # an ObjectRef: engines fetch it from the store
                cluster.get("rollout", [e.update_weights.remote(w) for e in engines])
            return time.perf_counter() - t

        def score_rows(prompts: list, comps: list, labels: dict):
            """Rewards in the driver, or split over the reward actors."""
            if not scorers:
                res = score(
                    reward_fn,
                    prompts,
                    comps,
                    labels,
                    max_invalid_fraction=cfg.data.max_invalid_fraction,
                )
                hits = None
                if acc_fn is not None:
                    hits = score(acc_fn, prompts, comps, labels, max_invalid_fraction=1.0).rewards
                return res.rewards, res.valid, res.stats(), hits
            rows = _split(list(range(len(comps))), len(scorers))
            refs = [
                w.score.remote(
                    [prompts[i] for i in r],
                    [comps[i] for i in r],
                    {k: [v[i] for i in r] for k, v in labels.items()},
                )
                for w, r in zip(scorers, rows)
            ]
            parts = cluster.get("reward", refs)
            rew = [x for p in parts for x in p[0]]
            valid = [x for p in parts for x in p[1]]
            stats = {k: sum(p[2][k] for p in parts) for k in parts[0][2]}
            hits = None if parts[0][3] is None else [x for p in parts for x in p[3]]
            return rew, valid, stats, hits

        def do_eval(step: int) -> None:
            t = time.perf_counter()
            rec = cluster.get("rollout", engines[0].evaluate.remote(cfg.train.seed))
            if rec is None:
                return
            rec["eval_s"] = time.perf_counter() - t
            evals.append({"step": step, **rec})
            r = logger.log(step, **rec)
            if on_log:
                on_log(r)

        sync_s = sync()
        if start == 0:
            do_eval(0)
        t_run = time.perf_counter()
        bar = progress(
            total=cfg.train.max_steps,
            initial=start,
            desc=f"rl {cfg.algo.estimator} (ray)",
            disable=not cfg.train.progress,
        )
        done = saved = start
        try:
            with GracefulInterrupt() as stop:
                for step in range(start, cfg.train.max_steps):
                    t0 = time.perf_counter()
                    idx = prompt_indices(
                        len(train_set), cfg.rollout.prompts_per_step, step, cfg.train.seed
                    )
                    texts, ids, labels = train_set.take(idx)
                    seed = cfg.train.seed * 1_000_003 + step
                    chunks = _split(list(ids), len(engines))
                    refs = [
                        e.generate.remote(
                            c,
                            cfg.rollout.n,
                            cfg.rollout.max_new_tokens,
                            cfg.rollout.temperature,
                            cfg.rollout.top_p,
                            seed + k,
                        )
                        for k, (e, c) in enumerate(zip(engines, chunks))
                    ]
                    ro = concat_rollouts(cluster.get("rollout", refs), tok.pad_token_id)
                    t1 = time.perf_counter()
                    comps = rl_data.decode(tok, ro.response_ids, ro.action_mask)
                    n = cfg.rollout.n
                    rep = {k: [v for v in vals for _ in range(n)] for k, vals in labels.items()}
                    rtexts = [t for t in texts for _ in range(n)]
                    rew, valid, rstats, hits = score_rows(rtexts, comps, rep)
                    rewards = torch.tensor(rew, dtype=torch.float32)
                    stats = cluster.get(
                        "policy", policy.learn.remote(ro, rewards, torch.tensor(valid), step)
                    )
                    t2 = time.perf_counter()
                    sync_s = sync()
                    t3 = time.perf_counter()
                    rec = {
                        "reward": float(rewards.mean()),
                        "reward_std": float(rewards.std()),
                        "truncated": ro.num_truncated,
                        "truncated_frac": ro.truncated_frac,
                        "response_len": float(ro.response_lengths.float().mean()),
                        "gen_s": t1 - t0,
                        "train_s": t2 - t1,
                        "sync_s": sync_s,
                        "step_s": t3 - t0,
                        "tokens_per_s": ro.info["gen_tokens"] / max(t3 - t0, 1e-9),
                        **rstats,
                        **stats,
                    }
                    if hits is not None:
                        rec["accuracy"] = sum(v == 1.0 for v in hits) / len(comps)
                    r = logger.log(step + 1, **rec)
                    if on_log:
                        on_log(r)
                    bar.update(1)
                    done = step + 1
                    if cfg.eval.every and done % cfg.eval.every == 0 and done < cfg.train.max_steps:
                        do_eval(done)
                    if (
                        cfg.train.save_every and done % cfg.train.save_every == 0
                    ) or stop.requested:
                        cluster.get("policy", policy.save.remote(done))
                        saved = done
                    if stop.requested:
                        break
        except RoleDiedError as e:
            bar.close()
            if e.role != "policy" and done > saved:
                try:  # the learner is alive: keep its last finished step
                    cluster.get("policy", policy.save.remote(done))
                    saved = done
                except RoleDiedError:
                    pass
            where = (
                f"checkpoint of step {saved} in {out / 'checkpoints'}"
                if saved
                else "no checkpoint yet"
            )
            raise RoleDiedError(
                e.role, f"{e} after step {done}; {where}; rerun with train.resume=true to continue"
            ) from None
        bar.close()
        if done > start or not evals:
            do_eval(done)
        if done > saved:
            cluster.get("policy", policy.save.remote(done))
        if cfg.train.save_model:
            cluster.get("policy", policy.save_model.remote())
        summary = {
            "steps": done,
            "seconds": time.perf_counter() - t_run,
            "first_eval": evals[0] if evals else None,
            "last_eval": evals[-1] if evals else None,
            "startup_s": startup_s,
            "ray_init_s": cluster.init_s,
        }
        atomic_write_json(out / "summary.json", summary)
        return summary
    finally:
        logger.close()
        cluster.close()
