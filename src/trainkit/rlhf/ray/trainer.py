"""The Ray backend of the online-RL loop: policy, reference, critic, rollout and reward
engines as Ray actors.

The loop is :func:`trainkit.rlhf.trainers.rl_loop.run_loop`, the one the single-process
trainer runs (same prompts, seeds, record, eval/save timing, Ctrl-C and summary; read it
first); :class:`RayBackend` is where each piece of a step runs:

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

Ctrl-C is the loop's (the step finishes, the critic and policy actors checkpoint it, no
final eval or model, ``interrupted: true``, the CLI exits 130); the Ray processes block
SIGINT, so a terminal's Ctrl-C reaches only the driver. The summary adds ``startup_s``
(cluster + actors ready), ``ray_init_s`` and ``weight_channel`` (broadcast backend).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from typing import Any

import torch

from trainkit.rlhf.ray.shards import concat_rollouts, split_even

__all__ = ["RayBackend", "concat_rollouts", "effective_section", "train_ray"]


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


class RayBackend:
    """:class:`~trainkit.rlhf.trainers.rl_loop.RLBackend` over Ray actors.

    Construction checks the section, writes ``output_dir/config.yaml``, attaches or
    starts Ray, places and starts every actor and opens the broadcast weight channel
    (``ray.weight_sync=broadcast``); on any failure the cluster is closed again.

    Args:
        cfg: a validated RL config.
        ray_cfg: the ray section (default ``cfg.ray``).
    """

    name = "ray"

    def __init__(self, cfg: Any, ray_cfg: Any = None):
        from trainkit.common.errors import UserError
        from trainkit.llm.models import load_tokenizer
        from trainkit.rlhf.ray.cluster import Cluster
        from trainkit.rlhf.trainers.rl_loop import prepare_output

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
        self.cfg, self.rc = cfg, rc
        self.out = prepare_output(cfg)
        self.tokenizer = load_tokenizer(cfg.model.name)
        self.scorer = None  # made on first use: with reward actors the driver scores nothing
        self.nonfinite_skipped = 0
        self.meta = self.channel = None
        t_start = time.perf_counter()
        self.cluster = Cluster(rc)
        try:
            self.roles = _Roles(cfg, rc, self.cluster)
            self.startup_s = time.perf_counter() - t_start
            if rc.weight_sync == "broadcast":
                self._open_channel()
        except BaseException:
            self.cluster.close()
            raise
        a, roles = cfg.algo, self.roles
        self.policy_forwards = a.recompute_old_logp or (
            (a.kl_coef > 0 and not roles.reference) or (cfg.uses_critic and not roles.critic)
        )

    def _open_channel(self) -> None:
        """The broadcast group: policy rank 0 is rank 0, the engines 1..k."""
        from trainkit.rlhf.rollout.sync import choose_backend

        roles, engines = self.roles, self.roles.rollout
        host, port = roles.get("policy", roles.policy[0].sync_endpoint.remote())
        world = len(engines) + 1
        ranks = [roles.get("policy", roles.policy[0].channel_device.remote())]
        ranks += roles.call("rollout", "channel_device")
        self.channel = choose_backend(self.rc.weight_sync_backend, ranks)  # one for all
        refs = [roles.policy[0].open_channel.remote(host, port, world, self.channel)]
        refs += [
            e.open_channel.remote(host, port, i + 1, world, self.channel)
            for i, e in enumerate(engines)
        ]
        roles.get("rollout", refs[1:])
        roles.get("policy", refs[0])
        self.meta = roles.call("policy", "weight_meta")[0]

    def resume(self) -> int:
        start = self.roles.call("policy", "resume")[0]
        self.roles.call("critic", "resume", start)
        return start

    def sync_weights(self) -> float:
        roles, engines = self.roles, self.roles.rollout
        t = time.perf_counter()
        if self.meta is not None:  # every rank in the same collective, engines first
            recv = [e.receive_weights.remote(self.meta) for e in engines]
            sent = [p.send_weights.remote() for p in roles.policy]
            roles.get("rollout", recv)
            roles.get("policy", sent)
        else:  # ObjectRefs: engines fetch rank 0's weights from the store
            ws = [p.weights.remote() for p in roles.policy]
            roles.get("rollout", [e.update_weights.remote(ws[0]) for e in engines])
            roles.get("policy", ws[1:])
        return time.perf_counter() - t

    def snapshot(self) -> Any:
        """The policy's current weights in the object store (rank 0's ObjectRef; every
        replica takes part in the gather)."""
        ws = [p.weights.remote() for p in self.roles.policy]
        self.roles.get("policy", ws[1:])
        return ws[0]

    def load_weights(self, snapshot: Any) -> float:
        """Every rollout actor loads the weights of a :meth:`snapshot`."""
        t = time.perf_counter()
        engines = self.roles.rollout
        self.roles.get("rollout", [e.update_weights.remote(snapshot) for e in engines])
        return time.perf_counter() - t

    def generate(self, prompt_ids: list[list[int]], seed: int, n=None, max_new_tokens=None):
        """The prompts split evenly over the rollout actors; replica ``k`` samples with
        ``seed + k`` (one replica reproduces the single-process samples)."""
        r, engines = self.cfg.rollout, self.roles.rollout
        n = r.n if n is None else n
        tokens = r.max_new_tokens if max_new_tokens is None else max_new_tokens
        chunks = split_even(list(prompt_ids), len(engines))
        refs = [
            e.generate.remote(c, n, tokens, r.temperature, r.top_p, seed + k, r.min_new_tokens)
            for k, (e, c) in enumerate(zip(engines, chunks))
        ]
        return concat_rollouts(self.roles.get("rollout", refs), self.tokenizer.pad_token_id)

    def score(self, prompts: list[str], completions: list[str], labels: dict) -> Any:
        """In the driver, or the rows split evenly over the reward actors."""
        from trainkit.rlhf.trainers.rl_data import Scorer, Scores

        workers = self.roles.reward
        if not workers:
            if self.scorer is None:
                self.scorer = Scorer(self.cfg.data, self.cfg.reward)
            return self.scorer(prompts, completions, labels)
        rows = split_even(list(range(len(completions))), len(workers))
        refs = [
            w.score.remote(
                [prompts[i] for i in r],
                [completions[i] for i in r],
                {k: [v[i] for i in r] for k, v in labels.items()},
            )
            for w, r in zip(workers, rows)
        ]
        parts = [Scores(*p) for p in self.roles.get("reward", refs)]
        n = sum(len(p.rewards) for p in parts)
        stats = {  # failure counts add up; reward/* (extra_logs means) average over rows
            k: sum(
                p.stats[k] * (len(p.rewards) / n if k.startswith("reward/") else 1) for p in parts
            )
            for k in parts[0].stats
            if all(k in p.stats for p in parts)
        }
        return Scores(
            [x for p in parts for x in p.rewards],
            [x for p in parts for x in p.valid],
            stats,
            None if parts[0].hits is None else [x for p in parts for x in p.hits],
        )

    def forwards(self, rollout: Any, step: int) -> dict[str, Any]:
        """The no-grad passes, each role on its rows, concatenated in row order."""
        from trainkit.rlhf.ray.shards import group_rows, rollout_rows

        roles, B = self.roles, len(rollout.truncated)

        def launch(role, method, *extra):
            hs = getattr(roles, role)
            rows = group_rows(B, rollout.n, len(hs))
            return [
                getattr(h, method).remote(rollout_rows(rollout, r), *extra)
                for h, r in zip(hs, rows)
            ]

        pending = {}
        if self.policy_forwards:
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
        return {"policy": None, "precomputed": pre}

    def learn(self, exp: Any, step: int) -> dict[str, float]:
        """Shards of whole prompt groups to the policy and critic replicas."""
        from trainkit.rlhf.ray.shards import shard_experience

        def launch(role):
            hs = getattr(self.roles, role)
            return [h.learn.remote(s, step) for h, s in zip(hs, shard_experience(exp, len(hs)))]

        refs = launch("policy")
        crefs = launch("critic") if self.roles.critic else []
        stats = dict(self.roles.get("policy", refs)[0])  # summed over ranks: same on each
        if crefs:
            stats.update(self.roles.get("critic", crefs)[0])
            stats["nonfinite_skipped"] += stats.pop("critic_nonfinite_skipped", 0)
        self.nonfinite_skipped = int(stats.pop("nonfinite_skipped", self.nonfinite_skipped))
        return stats

    def evaluate(self, step: int) -> dict[str, float] | None:
        engine = self.roles.rollout[0]
        return self.roles.get("rollout", engine.evaluate.remote(self.cfg.train.seed))

    def save(self, step: int) -> None:
        self.roles.save(step)

    def save_model(self) -> None:
        self.roles.call("policy", "save_model")

    def failed(self, error: Exception, done: int, saved: int) -> Exception | None:
        """A dead actor: checkpoint the learners' last finished step if they are alive
        (``train.resume=true`` then loses nothing), and say where the run stands."""
        from trainkit.rlhf.ray.cluster import RoleDiedError

        if not isinstance(error, RoleDiedError):
            return None
        if error.role not in ("policy", "critic") and done > saved:
            try:
                self.roles.save(done)
                saved = done
            except RoleDiedError:
                pass
        where = (
            f"checkpoint of step {saved} in {self.out / 'checkpoints'}"
            if saved
            else "no checkpoint yet"
        )
        return RoleDiedError(
            error.role,
            f"{error} after step {done}; {where}; rerun with train.resume=true to continue",
        )

    def summary(self) -> dict[str, Any]:
        return {
            "startup_s": self.startup_s,
            "ray_init_s": self.cluster.init_s,
            "weight_channel": self.channel,
        }

    def close(self) -> None:
        self.cluster.close()


def train_ray(
    cfg: Any,
    on_log: Callable[[dict], Any] | None = None,
    ray_cfg: Any = None,
    metrics: Sequence[Any] = (),
) -> dict[str, Any]:
    """:func:`~trainkit.rlhf.trainers.rl_loop.run_loop` with a :class:`RayBackend`
    (``ray_cfg``: the ray section, default ``cfg.ray``); what ``trainers.ppo.train``
    runs for ``ray.enabled=true``, with the section passed explicitly."""
    from trainkit.rlhf.trainers.rl_loop import run_loop

    return run_loop(cfg, RayBackend(cfg, ray_cfg), on_log, metrics)
