"""The ``ray`` config section of the online-RL recipes (``ray.enabled=true``).

Meant to be added to :class:`~trainkit.rlhf.trainers.rl_config.RLConfig` as
``ray: RaySection = field(default_factory=RaySection)``; everything else in the config
(model, data, rollout, algo, ...) is read unchanged by the distributed trainer, so a run
moves to a cluster by flipping ``ray.enabled``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trainkit.config import ConfigError


@dataclass
class RoleResources:
    """Resources of one role (each replica is one Ray actor in its own bundle)."""

    num_cpus: float = field(default=1.0, metadata={"help": "CPUs per replica"})
    num_gpus: float = field(
        default=0.0, metadata={"help": "GPUs per replica (fractions share a GPU)"}
    )
    replicas: int = field(default=1, metadata={"help": "actors of this role"})


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
    policy: RoleResources = field(default_factory=RoleResources)
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
            "per step; broadcast: a private gloo group policy -> engines (no store copy)"
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
        if self.policy.replicas != 1:
            raise ConfigError(
                "ray.policy.replicas > 1 (data-parallel training) is not supported yet; use 1"
            )
        if self.rollout.replicas < 1:
            raise ConfigError("ray.rollout.replicas must be >= 1")
        if self.reward.replicas < 0:
            raise ConfigError("ray.reward.replicas must be >= 0 (0: score in the driver)")
        for role in ("policy", "rollout", "reward"):
            r = getattr(self, role)
            if r.num_cpus < 0 or r.num_gpus < 0:
                raise ConfigError(f"ray.{role}.num_cpus and num_gpus must be >= 0")
