"""The online-RL loop with the policy, reference, critic and rollout engines as Ray actors.

Same steps, seeds and metrics as :func:`trainkit.rlhf.trainers.ppo.train` (read that
first); what moves where:

* the driver (this process) holds only the prompts, the tokenizer and the reward
  functions: it picks the step's prompts, sends them to the rollout actors (split evenly
  over ``ray.rollout.replicas``; replica ``k`` samples with seed ``step_seed + k``, so one
  replica reproduces the single-process samples), decodes and scores the completions;
* with ``ray.reward.replicas > 0`` the scoring runs in reward actors instead (a reward
  model then lives on its own CPUs/GPU), rows split evenly over them;
* the no-grad passes run where the models are: the policy replicas (old log-probs with
  ``algo.recompute_old_logp``; the reference and critic when they live in the policy
  actors), the reference actors (``ray.reference.replicas > 0``) and the critic actors
  (``ray.critic.replicas > 0``), each on its share of the rows; the driver then makes
  the experience (KL, advantages over the whole batch: pure tensor maths);
* the experience is cut into shards of whole prompt groups, one per policy replica
  (:mod:`~trainkit.rlhf.ray.learners`: FSDP2 data parallel when ``replicas > 1``) and
  one per critic replica, which run the PPO / value-loss updates;
* after every update the policy's weights (LoRA merged, gathered in full on rank 0) are
  put in the Ray object store once and every rollout actor loads them before the next
  step. With ``ray.weight_sync=broadcast`` they go over a private process group instead
  (policy rank 0, engines 1..k), streamed tensor by tensor
  (:class:`~trainkit.rlhf.rollout.sync.WeightChannel`): NCCL GPU to GPU when every rank
  has its own CUDA device, else gloo (``ray.weight_sync_backend``; the driver collects
  each rank's device and decides once, so all ranks build the same group).

Fault handling: every ``ray.get`` names its role; when an actor dies the run stops with
``ray: the <role> actor died ...``. If the learners are still alive their state after
the last finished step is checkpointed first, so ``train.resume=true`` loses nothing;
if a learner itself died the newest periodic checkpoint (``train.save_every``) is used.

Ctrl-C: the first SIGINT (:class:`~trainkit.common.guard.GracefulInterrupt`, as in the
single-process trainer) lets the current step finish, asks the critic and policy actors
to checkpoint it, skips the final eval and model, closes the cluster and returns a
summary with ``interrupted: true`` (the CLI exits 130); ``train.resume=true`` continues.
The Ray processes block SIGINT, so a terminal's Ctrl-C reaches only the driver.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from trainkit.rlhf.ray.shards import concat_rollouts, split_even

__all__ = ["concat_rollouts", "effective_section", "train_ray"]


def effective_section(cfg: Any, rc: Any) -> Any:
    """``rc`` with the reference / critic actor roles dropped when the algorithm does not
    use them (``algo.kl_coef = 0``, estimator other than gae)."""
    if cfg.algo.kl_coef <= 0 and rc.reference.replicas:
        rc = replace(rc, reference=replace(rc.reference, replicas=0))
    if not cfg.uses_critic and rc.critic.replicas:
        rc = replace(rc, critic=replace(rc.critic, replicas=0))
    return rc


class _Roles:
    """The run's actors by role, and the collective calls over them."""

    def __init__(self, cfg: Any, rc: Any, cluster: Any):
        from trainkit.rlhf.ray.cluster import role_bundles
        from trainkit.rlhf.ray.learners import CriticWorker, PolicyWorker, ReferenceWorker
        from trainkit.rlhf.ray.workers import RewardWorker, RolloutWorker

        self.cluster = cluster
        groups, slots = role_bundles(rc)
        cluster.place(groups)

        def threads(r):
            return max(1, int(r.num_cpus))

        n_pol, n_crit = rc.policy.replicas, rc.critic.replicas
        pol_threads = cfg.train.threads or threads(rc.policy)
        self.policy = [
            cluster.spawn(
                "policy",
                PolicyWorker,
                slots["policy"][i],
                rc.policy.num_cpus,
                rc.policy.num_gpus,
                cfg,
                pol_threads,
                i,
                n_pol,
                rc.train_strategy(n_pol),
                rc.reference.replicas == 0,
                n_crit == 0,
            )
            for i in range(n_pol)
        ]

        def plain(role, cls, *args):
            r = getattr(rc, role)
            return [
                cluster.spawn(role, cls, s, r.num_cpus, r.num_gpus, cfg, *args) for s in slots[role]
            ]

        self.reference = plain("reference", ReferenceWorker, cfg.train.threads or 1)
        self.critic = [
            cluster.spawn(
                "critic",
                CriticWorker,
                slots["critic"][i],
                rc.critic.num_cpus,
                rc.critic.num_gpus,
                cfg,
                cfg.train.threads or threads(rc.critic),
                i,
                n_crit,
                rc.train_strategy(n_crit),
            )
            for i in range(n_crit)
        ]
        self.rollout = plain("rollout", RolloutWorker, threads(rc.rollout))
        self.reward = plain("reward", RewardWorker, 1)
        for role in ("policy", "reference", "critic", "rollout", "reward"):
            self.get(role, [h.ready.remote() for h in getattr(self, role)])
        for role in ("policy", "critic"):  # process groups (rank 0 publishes host:port)
            hs = getattr(self, role)
            if hs:
                host, port = self.get(role, hs[0].endpoint.remote())
                self.get(role, [h.setup.remote(host, port) for h in hs])

    def get(self, role: str, refs: Any) -> Any:
        return self.cluster.get(role, refs)

    def call(self, role: str, method: str, *args: Any) -> list:
        """``method(*args)`` on every actor of ``role`` (collective for learners)."""
        return self.get(role, [getattr(h, method).remote(*args) for h in getattr(self, role)])

    def save(self, step: int) -> None:
        """Critic first, then the policy: a policy checkpoint at s implies a critic one."""
        self.call("critic", "save", step)
        self.call("policy", "save", step)


def train_ray(cfg: Any, on_log: Any = None, ray_cfg: Any = None) -> dict[str, Any]:
    """Run the RL recipe on Ray; returns the same summary as the single-process trainer
    plus ``startup_s`` (cluster + actors ready) and ``ray_init_s``.

    Args:
        cfg: a validated RL config.
        on_log: optional callback ``f(record)`` for every metrics record.
        ray_cfg: the ray section (default ``cfg.ray``).
    """
    from trainkit.common.errors import UserError
    from trainkit.common.guard import GracefulInterrupt
    from trainkit.common.io import atomic_write_json
    from trainkit.common.logging import MetricsLogger, progress
    from trainkit.common.run import save_config
    from trainkit.llm.models import load_tokenizer
    from trainkit.rlhf.ray.cluster import Cluster, RoleDiedError
    from trainkit.rlhf.ray.shards import group_rows, rollout_rows, shard_experience
    from trainkit.rlhf.rewards import load_reward, score
    from trainkit.rlhf.trainers import rl_data
    from trainkit.rlhf.trainers.experience import make_experience, rollout_stats
    from trainkit.rlhf.trainers.ppo import prompt_indices
    from trainkit.rlhf.trainers.ppo_update import share_prompt

    rc = ray_cfg if ray_cfg is not None else cfg.ray
    rc.validate()
    rc = effective_section(cfg, rc)
    for role in ("policy", "critic"):
        k = getattr(rc, role).replicas
        if k and cfg.rollout.prompts_per_step % k:
            raise UserError(
                f"rollout.prompts_per_step={cfg.rollout.prompts_per_step} must be divisible "
                f"by ray.{role}.replicas={k} (each replica trains on whole prompt groups)"
            )
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    tok = load_tokenizer(cfg.model.name)
    train_recs, _ = rl_data.load_prompt_records(cfg.data, cfg.train.seed)
    train_set = rl_data.tokenize_prompts(train_recs, tok, cfg.data)
    reward_fn = rl_data.build_reward(cfg.data)
    acc_fn = load_reward(cfg.data.accuracy_reward) if cfg.data.accuracy_reward else None
    a = cfg.algo

    t_start = time.perf_counter()
    cluster = Cluster(rc)
    logger = MetricsLogger(out, tensorboard=False)
    evals: list[dict] = []
    try:
        roles = _Roles(cfg, rc, cluster)
        engines = roles.rollout
        startup_s = time.perf_counter() - t_start
        start = 0
        if cfg.train.resume:
            start = roles.call("policy", "resume")[0]
            roles.call("critic", "resume", start)

        meta, backend = None, None
        if rc.weight_sync == "broadcast":
            from trainkit.rlhf.rollout.sync import choose_backend

            host, port = roles.get("policy", roles.policy[0].sync_endpoint.remote())
            world = len(engines) + 1
            ranks = [roles.get("policy", roles.policy[0].channel_device.remote())]
            ranks += roles.call("rollout", "channel_device")
            backend = choose_backend(rc.weight_sync_backend, ranks)  # one choice for all
            refs = [roles.policy[0].open_channel.remote(host, port, world, backend)]
            refs += [
                e.open_channel.remote(host, port, i + 1, world, backend)
                for i, e in enumerate(engines)
            ]
            roles.get("rollout", refs[1:])
            roles.get("policy", refs[0])
            meta = roles.call("policy", "weight_meta")[0]

        def sync() -> float:
            t = time.perf_counter()
            if meta is not None:  # every rank in the same collective, engines first
                recv = [e.receive_weights.remote(meta) for e in engines]
                sent = [p.send_weights.remote() for p in roles.policy]
                roles.get("rollout", recv)
                roles.get("policy", sent)
            else:  # ObjectRefs: engines fetch rank 0's weights from the store
                ws = [p.weights.remote() for p in roles.policy]
                roles.get("rollout", [e.update_weights.remote(ws[0]) for e in engines])
                roles.get("policy", ws[1:])
            return time.perf_counter() - t

        def score_rows(prompts: list, comps: list, labels: dict):
            """Rewards in the driver, or split over the reward actors."""
            if not roles.reward:
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
            rows = split_even(list(range(len(comps))), len(roles.reward))
            refs = [
                w.score.remote(
                    [prompts[i] for i in r],
                    [comps[i] for i in r],
                    {k: [v[i] for i in r] for k, v in labels.items()},
                )
                for w, r in zip(roles.reward, rows)
            ]
            parts = roles.get("reward", refs)
            rew = [x for p in parts for x in p[0]]
            valid = [x for p in parts for x in p[1]]
            stats = {k: sum(p[2][k] for p in parts) for k in parts[0][2]}
            hits = None if parts[0][3] is None else [x for p in parts for x in p[3]]
            return rew, valid, stats, hits

        pol_fwd = a.recompute_old_logp or (
            (a.kl_coef > 0 and not roles.reference) or (cfg.uses_critic and not roles.critic)
        )

        def forwards(ro, step: int) -> dict[str, torch.Tensor]:
            """The no-grad passes, each role on its rows, concatenated in row order."""
            B = len(ro.truncated)
            shard = {
                r: group_rows(B, ro.n, len(getattr(roles, r)))
                for r in ("policy", "reference", "critic")
                if getattr(roles, r)
            }

            def launch(role, method, *extra):
                hs = getattr(roles, role)
                return [
                    getattr(h, method).remote(rollout_rows(ro, rows), *extra)
                    for h, rows in zip(hs, shard[role])
                ]

            pending = {}
            if pol_fwd:
                pending["policy"] = launch("policy", "forwards", step)
            if roles.reference:
                pending["reference"] = launch("reference", "logps")
            if roles.critic:
                pending["critic"] = launch("critic", "values")
            pre: dict[str, torch.Tensor] = {}
            for role, refs in pending.items():
                parts = roles.get(role, refs)
                if role == "policy":
                    for key in parts[0]:
                        pre[key] = torch.cat([p[key] for p in parts])
                else:
                    pre["ref_logp" if role == "reference" else "values"] = torch.cat(parts)
            return pre

        def learn(exp, step: int) -> dict[str, float]:
            refs = [
                h.learn.remote(s, step)
                for h, s in zip(roles.policy, shard_experience(exp, len(roles.policy)))
            ]
            crefs = []
            if roles.critic:
                crefs = [
                    h.learn.remote(s, step)
                    for h, s in zip(roles.critic, shard_experience(exp, len(roles.critic)))
                ]
            stats = roles.get("policy", refs)[0]  # summed over ranks: the same on each
            if crefs:
                stats = {**stats, **roles.get("critic", crefs)[0]}
            return stats

        def do_eval(step: int) -> None:
            t = time.perf_counter()
            rec = roles.get("rollout", engines[0].evaluate.remote(cfg.train.seed))
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
            desc=f"rl {a.estimator} (ray)",
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
                    chunks = split_even(list(ids), len(engines))
                    refs = [
                        e.generate.remote(
                            c,
                            cfg.rollout.n,
                            cfg.rollout.max_new_tokens,
                            cfg.rollout.temperature,
                            cfg.rollout.top_p,
                            seed + k,
                            cfg.rollout.min_new_tokens,
                        )
                        for k, (e, c) in enumerate(zip(engines, chunks))
                    ]
                    ro = concat_rollouts(roles.get("rollout", refs), tok.pad_token_id)
                    t1 = time.perf_counter()
                    comps = rl_data.decode(tok, ro.response_ids, ro.action_mask)
                    n = cfg.rollout.n
                    rep = {k: [v for v in vals for _ in range(n)] for k, vals in labels.items()}
                    rtexts = [t for t in texts for _ in range(n)]
                    rew, valid, rstats, hits = score_rows(rtexts, comps, rep)
                    rewards = torch.tensor(rew, dtype=torch.float32)
                    exp, xstats = make_experience(
                        ro,
                        rewards,
                        policy=None,
                        algo=a,
                        temperature=cfg.rollout.temperature,
                        micro_batch=cfg.train.micro_batch_size,
                        share_prompt=share_prompt(cfg),
                        valid=torch.tensor(valid),
                        precomputed=forwards(ro, step),
                    )
                    t2 = time.perf_counter()
                    stats = learn(exp, step) if exp is not None else {"skipped_update": 1}
                    t3 = time.perf_counter()
                    sync_s = sync()
                    t4 = time.perf_counter()
                    rec = {
                        **rollout_stats(rewards, ro),
                        "gen_s": t1 - t0,
                        "exp_s": t2 - t1,
                        "train_s": t3 - t2,
                        "sync_s": sync_s,
                        "step_s": t4 - t0,
                        "tokens_per_s": ro.info["gen_tokens"] / max(t4 - t0, 1e-9),
                        **rstats,
                        **xstats,
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
                        roles.save(done)
                        saved = done
                    if stop.requested:
                        break
        except RoleDiedError as e:
            bar.close()
            if e.role not in ("policy", "critic") and done > saved:
                try:  # the learners are alive: keep their last finished step
                    roles.save(done)
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
        # Ctrl-C (GracefulInterrupt): the step finished and was checkpointed above; no
        # final eval or model, the summary says interrupted and the CLI exits 130
        interrupted = stop.requested and done < cfg.train.max_steps
        if not interrupted and (done > start or not evals):
            do_eval(done)
        if done > saved:
            roles.save(done)
        if cfg.train.save_model and not interrupted:
            roles.call("policy", "save_model")
        summary = {
            "steps": done,
            "seconds": time.perf_counter() - t_run,
            "first_eval": evals[0] if evals else None,
            "last_eval": evals[-1] if evals else None,
            "startup_s": startup_s,
            "ray_init_s": cluster.init_s,
            "weight_channel": backend,
            "interrupted": interrupted,
        }
        atomic_write_json(out / "summary.json", summary)
        return summary
    finally:
        logger.close()
        cluster.close()
