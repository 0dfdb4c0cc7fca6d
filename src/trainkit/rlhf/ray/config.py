"""The ``ray`` config section of the online-RL recipes (``ray.enabled=true``).

Meant to be added to :class:`~trainkit.rlhf.trainers.rl_config.RLConfig` as
``ray: RaySection = field(default_factory=RaySection)``; everything else in the config
(model, data, rollout, algo, ...) is read unchanged by the distributed trainer, so a run
moves to a cluster by flipping ``ray.enabled``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainkit.config import ConfigError

ROLES = ("policy", "reference", "critic", "rollout", "reward")
STRATEGIES = ("auto", "single", "fsdp2")


@dataclass
class RoleResources:
    """Resources of one role (each replica is one Ray actor in its own bundle)."""

    num_cpus: float = field(default=1.0, metadata={"help": "CPUs per replica"})
    num_gpus: float = field(
        default=0.0, metadata={"help": "GPUs per replica (fractions share a GPU)"}
    )
    replicas: int = field(
        default=1,
        metadata={
            "help": "actors of this role; 0 for reference/critic keeps the model inside each "
            "policy actor, 0 for reward scores in the driver"
        },
    )
    num_nodes: int = field(
        default=1,
        metadata={
            "help": "nodes the replicas spread over (replicas divisible by it); > 1: one "
            "bundle per node holding replicas/num_nodes actors, placed STRICT_SPREAD"
        },
    )


@dataclass
class RaySection:
    enabled: bool = field(
        default=False, metadata={"help": "run the policy and the rollout engines as Ray actors"}
    )
    address: str | None = field(
        default=None,
        metadata={
            "help": "null: start a local Ray sized to the machine; 'auto' or host:port: attach "
            "to a running cluster (`ray start --head` first)"
        },
    )
    num_cpus: int | None = field(
        default=None, metadata={"help": "CPUs of the local cluster (null: all of the machine's)"}
    )
    policy: RoleResources = field(
        default_factory=RoleResources,
        metadata={
            "help": "policy actors; replicas > 1 train data-parallel (one torch.distributed "
            "group, see ray.strategy), each on its share of the step's prompt groups"
        },
    )
    strategy: str = field(
        default="auto",
        metadata={
            "help": "training strategy of the policy (and critic) replicas: auto (single for "
            "1 replica, fsdp2 for more), single (1 replica only), fsdp2 (FSDP2 over gloo on "
            "CPU, nccl on GPU; gradients averaged over replicas)"
        },
    )
    reference: RoleResources = field(
        default_factory=lambda: RoleResources(replicas=0),
        metadata={
            "help": "reference-model actors (used when algo.kl_coef > 0); replicas=0 keeps "
            "the reference inside each policy actor, 1+ computes reference log-probs in its "
            "own actors, rows split over them"
        },
    )
    critic: RoleResources = field(
        default_factory=lambda: RoleResources(replicas=0),
        metadata={
            "help": "critic actors (algo.estimator=gae); replicas=0 keeps the critic inside "
            "each policy actor, 1+ runs values and the value-loss update in its own actors "
            "(data-parallel like the policy when > 1)"
        },
    )
    rollout: RoleResources = field(default_factory=RoleResources)
    reward: RoleResources = field(
        default_factory=lambda: RoleResources(num_cpus=1.0, replicas=0),
        metadata={
            "help": "reward actors; replicas=0 scores in the driver, 1+ runs data.reward in "
            "actors (e.g. a reward model on its own GPU), rows split over replicas"
        },
    )
    colocate: bool = field(
        default=False,
        metadata={
            "help": "rollout actors share the policy's bundle (one set of resources, e.g. one "
            "GPU for training and generation)"
        },
    )
    weight_sync: str = field(
        default="object_store",
        metadata={
            "help": "object_store: the policy puts its weights in Ray's object store once "
            "per step; broadcast: a private process group policy -> engines (no store copy; "
            "see weight_sync_backend)"
        },
    )
    weight_sync_backend: str = field(
        default="auto",
        metadata={
            "help": "backend of ray.weight_sync=broadcast: auto (nccl when the policy and "
            "every engine hold their own CUDA device and NCCL is available, else gloo), "
            "gloo (through CPU memory), nccl (GPU to GPU; an error when impossible)"
        },
    )
    placement_strategy: str = field(
        default="PACK",
        metadata={"help": "placement-group strategy: PACK, SPREAD, STRICT_PACK, STRICT_SPREAD"},
    )
    startup_timeout_s: float = field(
        default=300.0, metadata={"help": "give up when the placement group is not ready by then"}
    )
    namespace: str = field(default="trainkit", metadata={"help": "Ray namespace of the actors"})

    def validate(self) -> None:
        """Reject settings the Ray trainer cannot honour, one line each."""
        if self.placement_strategy not in ("PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"):
            raise ConfigError(
                f"ray.placement_strategy must be PACK, SPREAD, STRICT_PACK or "
                f"STRICT_SPREAD, got {self.placement_strategy!r}"
            )
        if self.weight_sync not in ("object_store", "broadcast"):
            raise ConfigError(
                f"ray.weight_sync must be object_store or broadcast, got {self.weight_sync!r}"
            )
        if self.weight_sync_backend not in ("auto", "gloo", "nccl"):
            raise ConfigError(
                "ray.weight_sync_backend must be auto, gloo or nccl, got "
                f"{self.weight_sync_backend!r}"
            )
        if self.strategy not in STRATEGIES:
            raise ConfigError(
                f"ray.strategy must be one of {', '.join(STRATEGIES)}, got {self.strategy!r}"
            )
        for role in ("policy", "rollout"):
            if getattr(self, role).replicas < 1:
                raise ConfigError(f"ray.{role}.replicas must be >= 1")
        for role in ("reward", "reference", "critic"):
            if getattr(self, role).replicas < 0:
                raise ConfigError(f"ray.{role}.replicas must be >= 0 (0: not an actor role)")
        if self.strategy == "single" and max(self.policy.replicas, self.critic.replicas) > 1:
            raise ConfigError(
                "ray.strategy=single trains one replica; use fsdp2 (or auto) for "
                "ray.policy.replicas or ray.critic.replicas > 1"
            )
        for role in ROLES:
            r = getattr(self, role)
            if r.num_cpus < 0 or r.num_gpus < 0:
                raise ConfigError(f"ray.{role}.num_cpus and num_gpus must be >= 0")
            if r.num_nodes < 1:
                raise ConfigError(f"ray.{role}.num_nodes must be >= 1, got {r.num_nodes}")
            if r.replicas and r.replicas % r.num_nodes:
                raise ConfigError(
                    f"ray.{role}.replicas={r.replicas} is not divisible by "
                    f"ray.{role}.num_nodes={r.num_nodes}"
                )
            if self.colocate and r.num_nodes > 1:
                raise ConfigError(
                    f"ray.colocate puts roles in shared bundles on one node per policy "
                    f"replica; ray.{role}.num_nodes must be 1"
                )

    def train_strategy(self, replicas: int) -> str:
        """The strategy name (``single`` or ``fsdp2``) of a group of ``replicas`` learners."""
        if self.strategy == "auto":
            return "fsdp2" if replicas > 1 else "single"
        return self.strategy
