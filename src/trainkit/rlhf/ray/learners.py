"""The learning roles of the Ray trainer (plain classes; :meth:`Cluster.spawn` wraps them).

* :class:`PolicyWorker`: one policy replica (actor model + optimizer; with
  ``ray.reference.replicas=0`` / ``ray.critic.replicas=0`` also the reference and the
  critic, as in the single-process trainer). ``ray.policy.replicas = N > 1`` replicas
  form one ``torch.distributed`` group (gloo on CPU, nccl on GPU; rank 0 publishes its
  address and a free port through a Ray call) and wrap the model with the LLM base's
  FSDP2 strategy (:class:`~trainkit.llm.strategy.FSDP2Strategy`); each trains on its
  shard of the step's prompt groups and FSDP averages the gradients
  (:mod:`~trainkit.rlhf.trainers.ppo_update` scales the losses so the step equals the
  whole-batch one). Weights for the rollout engines and checkpoints are gathered in full
  (``get_model_state_dict(full_state_dict=True)``) and written or shipped by rank 0.
* :class:`ReferenceWorker`: the frozen reference model; reference log-probs of a batch.
* :class:`CriticWorker`: the gae critic; values of a batch and the value-loss update
  (data-parallel like the policy when ``ray.critic.replicas > 1``).

Every method that touches a sharded model is collective: the driver calls it on every
replica of the role, with shards of equal size (the same number of forward calls).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

import torch

from trainkit.rlhf.ray.cluster import free_endpoint, set_threads
from trainkit.rlhf.trainers.rl_loop import step_seed


def _init_strategy(name: str, host: str, port: int, rank: int, world: int) -> Any:
    """A set-up :class:`~trainkit.llm.strategy.Strategy`; ``fsdp2`` joins the group
    ``host:port`` as ``rank`` of ``world`` (Ray gives each GPU actor its own device 0)."""
    from trainkit.llm.strategy import make_strategy

    if name == "fsdp2":
        os.environ.update(
            MASTER_ADDR=host,
            MASTER_PORT=str(port),
            RANK=str(rank),
            WORLD_SIZE=str(world),
            LOCAL_RANK="0",
        )
    strategy = make_strategy(name)
    strategy.setup()
    return strategy


def _forward_kw(cfg: Any, ro: Any) -> dict[str, Any]:
    from trainkit.rlhf.trainers.ppo_update import share_prompt

    return dict(
        sequences=ro.sequences,
        attention_mask=ro.attention_mask,
        action_mask=ro.action_mask.bool(),
        temperature=cfg.rollout.temperature,
        micro_batch=cfg.train.micro_batch_size,
        group=ro.n if share_prompt(cfg) else 1,
    )


class _Learner:
    """What the policy and critic replicas share: the process group and the optimizer."""

    def ready(self) -> int:
        """The actor's process id (also proves it finished building)."""
        return os.getpid()

    def endpoint(self) -> tuple[str, int]:
        """``(this node's IP, a free port)``: rank 0's address for the process group."""
        return free_endpoint()

    def _setup(self, model: Any, lr: float, host: str, port: int) -> Any:
        from trainkit.common.guard import NonFiniteGuard
        from trainkit.llm.optim import make_optimizer

        cfg = self.cfg
        self.strategy = _init_strategy(self.strategy_name, host, port, self.rank, self.world)
        self.dp = self.strategy if self.strategy_name == "fsdp2" else None
        if self.dp is not None:
            model = self.strategy.wrap(model)
        self.guard = NonFiniteGuard(cfg.train.nonfinite)
        opt, sched = make_optimizer(model.parameters(), cfg.optim, cfg.train.max_steps, lr=lr)
        return model, opt, sched


class PolicyWorker(_Learner):
    """One policy replica (+ reference, + critic when they are not actors of their own).

    Args:
        cfg: the run's RL config.
        threads: torch CPU threads of this actor.
        rank / world: this replica's rank and the number of policy replicas.
        strategy: ``single`` or ``fsdp2``.
        with_ref / with_critic: hold the reference / the critic in this process.
    """

    def __init__(
        self,
        cfg: Any,
        threads: int,
        rank: int = 0,
        world: int = 1,
        strategy: str = "single",
        with_ref: bool = True,
        with_critic: bool = True,
    ):
        from trainkit.common.seed import seed_everything
        from trainkit.rlhf.trainers.rl_build import build_models

        set_threads(threads)
        seed_everything(cfg.train.seed)  # the same initial weights on every replica
        self.cfg, self.rank, self.world, self.strategy_name = cfg, rank, world, strategy
        self.out = Path(cfg.output_dir)
        self.policy, self.tok, self.ref, self.critic = build_models(cfg, with_ref, with_critic)
        self.with_ref = with_ref

    def setup(self, host: str, port: int) -> int:
        """Join the process group, shard the models, build the optimizers; world size."""
        from trainkit.llm.optim import make_optimizer
        from trainkit.rlhf.trainers.rl_checkpoint import RLCheckpoint

        cfg = self.cfg
        # rank 0 keeps a plain CPU copy to assemble gathered weights in (LoRA merge, HF names)
        self.shadow = (
            copy.deepcopy(self.policy).cpu()
            if self.strategy_name == "fsdp2" and self.rank == 0
            else None
        )
        self.policy, self.opt, self.sched = self._setup(self.policy, cfg.optim.lr, host, port)
        self.copt = self.csched = None
        if self.critic is not None:
            if self.dp is not None:
                self.critic = self.strategy.wrap(self.critic)
            self.copt, self.csched = make_optimizer(
                self.critic.parameters(), cfg.optim, cfg.train.max_steps, lr=cfg.optim.critic_lr
            )
        self.ckpt = RLCheckpoint.for_run(
            cfg,
            self.strategy,
            (self.policy, self.opt, self.sched),
            (self.critic, self.copt, self.csched),
        )
        return self.strategy.world_size

    def resume(self) -> int:
        """Load the newest checkpoint of ``output_dir``; returns its step (0: none)."""
        return self.ckpt.resume()

    # ---- weights for the rollout engines (collective under fsdp2: every replica calls)
    def _full_model(self) -> Any:
        """The policy with full weights on rank 0 (the shadow copy under fsdp2), None on
        the other ranks."""
        if self.dp is None:
            return self.policy
        sd = self.strategy.model_state_dict(self.policy)  # gathered; full on rank 0 only
        if self.rank != 0:
            return None
        self.shadow.load_state_dict(sd)
        return self.shadow

    def weights(self) -> dict[str, torch.Tensor] | None:
        """Policy weights under HF checkpoint names, LoRA merged, on CPU (rank 0)."""
        from trainkit.rlhf.rollout.sync import merged_state_dict

        model = self._full_model()
        return None if model is None else merged_state_dict(model, device="cpu")

    def sync_endpoint(self) -> tuple[str, int]:
        """``(this node's IP, a free port)`` for the weight channel's store."""
        return free_endpoint()

    def channel_device(self) -> tuple:
        """Rank 0's :func:`~trainkit.rlhf.rollout.sync.rank_device` entry (the device the
        strategy trains on; sent tensors are copied there for nccl)."""
        import ray

        from trainkit.rlhf.rollout.sync import rank_device

        return rank_device(self.strategy.device, ray.util.get_node_ip_address())

    def open_channel(self, host: str, port: int, world_size: int, backend: str = "gloo") -> bool:
        from trainkit.rlhf.rollout.sync import WeightChannel

        dev = self.strategy.device if backend == "nccl" else None
        self.channel = WeightChannel(host, port, 0, world_size, backend=backend, device=dev)
        return True

    def weight_meta(self) -> list | None:
        from trainkit.rlhf.rollout.sync import WeightChannel, hf_weights

        model = self._full_model()
        return None if model is None else WeightChannel.describe(hf_weights(model))

    def send_weights(self) -> int:
        from trainkit.rlhf.rollout.sync import hf_weights

        model = self._full_model()
        if model is None:
            return 0
        with torch.no_grad():
            return self.channel.send(hf_weights(model))

    # ---- one step
    def forwards(self, ro: Any, step: int) -> dict[str, torch.Tensor]:
        """No-grad passes over this replica's rows: ``old_logp`` (recompute_old_logp),
        ``ref_logp`` (in-process reference) and ``values`` (in-process critic)."""
        from trainkit.rlhf.trainers.experience import critic_values, forward_no_grad, ref_context

        cfg, a = self.cfg, self.cfg.algo
        torch.manual_seed(step_seed(cfg.train.seed, step))
        kw = _forward_kw(cfg, ro)
        out: dict[str, torch.Tensor] = {}
        if a.recompute_old_logp:
            out["old_logp"] = forward_no_grad(self.policy, **kw)
        if a.kl_coef > 0 and self.with_ref:
            model, ctx = ref_context(self.policy, self.ref)
            with ctx:
                out["ref_logp"] = forward_no_grad(model, **kw)
        if a.estimator == "gae" and self.critic is not None:
            n = ro.action_mask.shape[1]
            out["values"] = critic_values(
                self.critic, ro.sequences, ro.attention_mask, n, cfg.train.micro_batch_size
            )
        return out

    def learn(self, exp: Any, step: int) -> dict[str, float]:
        """PPO update on this replica's shard of the experience; the (global) stats."""
        from trainkit.rlhf.trainers.ppo_update import ppo_update

        cfg = self.cfg
        torch.manual_seed(step_seed(cfg.train.seed, step))  # dropout etc., as single-process
        stats = ppo_update(
            exp,
            self.policy,
            self.opt,
            self.sched,
            cfg,
            step,
            self.guard,
            self.critic,
            self.copt,
            self.csched,
            dp=self.dp,
        )
        return {**stats, "lr": self.sched.get_last_lr()[0], "nonfinite_skipped": self.guard.skipped}

    def save(self, step: int) -> str:
        """Write the checkpoint of ``step`` (atomic; rank 0 writes); returns its folder."""
        return str(self.ckpt.save(step).parent)

    def save_model(self) -> str:
        """``output_dir/final``: the final policy (and tokenizer)."""
        self.strategy.save_pretrained(self.policy, self.out / "final", tokenizer=self.tok)
        return str(self.out / "final")


class ReferenceWorker:
    """The frozen reference model (``model.name``; with LoRA that is the adapter-free
    base, the same weights the in-process reference uses).

    Args:
        cfg: the run's RL config.
        threads: torch CPU threads of this actor.
    """

    def __init__(self, cfg: Any, threads: int):
        from trainkit.llm.models import load_model

        set_threads(threads)
        self.cfg = cfg
        self.model, _ = load_model(cfg.model.name, dtype=cfg.model.dtype)
        dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(dev).eval().requires_grad_(False)

    def ready(self) -> int:
        return os.getpid()

    def logps(self, ro: Any) -> torch.Tensor:
        """``[B, R]`` reference log-probs of the rollout's response tokens."""
        from trainkit.rlhf.trainers.experience import forward_no_grad

        return forward_no_grad(self.model, **_forward_kw(self.cfg, ro))


class CriticWorker(_Learner):
    """One critic replica (estimator gae): values, the clipped value-loss update, its
    checkpoints (``output_dir/checkpoints_critic``).

    Args:
        cfg: the run's RL config.
        threads: torch CPU threads of this actor.
        rank / world / strategy: as :class:`PolicyWorker`, over the critic replicas.
    """

    def __init__(self, cfg: Any, threads: int, rank: int = 0, world: int = 1, strategy="single"):
        from trainkit.rlhf.trainers.rl_build import build_critic

        set_threads(threads)
        self.cfg, self.rank, self.world, self.strategy_name = cfg, rank, world, strategy
        self.out = Path(cfg.output_dir)
        self.critic = build_critic(cfg)

    def setup(self, host: str, port: int) -> int:
        from trainkit.rlhf.trainers.rl_checkpoint import RLCheckpoint

        self.critic, self.opt, self.sched = self._setup(
            self.critic, self.cfg.optim.critic_lr, host, port
        )
        self.ckpt = RLCheckpoint.for_run(
            self.cfg, self.strategy, critic=(self.critic, self.opt, self.sched)
        )
        return self.strategy.world_size

    def values(self, ro: Any) -> torch.Tensor:
        """``[B, R]`` values of the states before each response token."""
        from trainkit.rlhf.trainers.experience import critic_values

        n = ro.action_mask.shape[1]
        return critic_values(
            self.critic, ro.sequences, ro.attention_mask, n, self.cfg.train.micro_batch_size
        )

    def learn(self, exp: Any, step: int) -> dict[str, float]:
        from trainkit.rlhf.trainers.ppo_update import ppo_update

        torch.manual_seed(step_seed(self.cfg.train.seed, step))
        stats = ppo_update(
            exp,
            None,
            None,
            None,
            self.cfg,
            step,
            self.guard,
            self.critic,
            self.opt,
            self.sched,
            dp=self.dp,
        )
        return {**stats, "critic_nonfinite_skipped": self.guard.skipped}

    def save(self, step: int) -> str:
        """Write ``checkpoints_critic/step-<step>``; returns the folder it is in."""
        return str(self.ckpt.save(step).parent)

    def resume(self, step: int) -> int:
        """Load ``checkpoints_critic/step-<step>`` (the policy's checkpoint step)."""
        return self.ckpt.resume(step)
