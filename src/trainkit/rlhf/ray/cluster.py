"""Ray plumbing: attach or start a cluster, place role actors, name dead roles.

Placement: one placement group for the run with one bundle per actor
(``{CPU: num_cpus, GPU: num_gpus}``), policy first. With ``colocate`` the rollout
actors share the policy's bundle, which holds the resources of both, so fractional GPUs
put training and generation on one device (OpenRLHF's ``--colocate_all_models``).

Deadlock rule (DESIGN.md, "Machine facts"): actors may hold every CPU of the cluster, so
any helper *task* the driver launches (reward scoring, ...) must use ``num_cpus=0``;
:func:`helper_task` does that.
"""

from __future__ import annotations

import os
import time
from typing import Any

from trainkit.common.errors import UserError


class RoleDiedError(UserError):
    """A role's actor died (killed process, OOM, node lost); the message names the role."""

    def __init__(self, role: str, message: str):
        super().__init__(message)
        self.role = role


class Cluster:
    """A Ray connection plus the run's placement group and actors (torn down by close).

    Args:
        rc: the :class:`~trainkit.rlhf.ray.config.RaySection`.
    """

    def __init__(self, rc: Any):
        from trainkit.common.errors import require

        self.ray = require("ray", "rlhf")
        self.rc = rc
        self.started = False
        self.pg = None
        self.actors: dict[str, list[Any]] = {}
        t0 = time.perf_counter()
        if not self.ray.is_initialized():
            kw: dict[str, Any] = dict(
                namespace=rc.namespace,
                include_dashboard=False,
                configure_logging=False,
                log_to_driver=True,
            )
            if rc.address:
                kw["address"] = rc.address
            else:
                kw["num_cpus"] = int(rc.num_cpus or os.cpu_count() or 1)
            self.ray.init(**kw)
            self.started = True
        self.init_s = time.perf_counter() - t0

    # ---------------------------------------------------------------- placement
    def place(self, bundles: list[dict[str, float]]) -> None:
        """Reserve ``bundles`` in one placement group; wait for it (bounded)."""
        from ray.util.placement_group import placement_group

        self.pg = placement_group(bundles, strategy=self.rc.placement_strategy)
        ready = self.ray.wait([self.pg.ready()], timeout=self.rc.startup_timeout_s)[0]
        if not ready:
            have = self.ray.cluster_resources()
            raise UserError(
                f"ray: could not reserve {bundles} within "
                f"{self.rc.startup_timeout_s:.0f} s (cluster has "
                f"CPU={have.get('CPU', 0)}, GPU={have.get('GPU', 0)}); lower "
                "ray.<role>.num_cpus/num_gpus or add nodes"
            )

    def spawn(
        self,
        role: str,
        cls: type,
        bundle: int,
        num_cpus: float,
        num_gpus: float,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Start one actor of ``role`` on bundle ``bundle`` of the placement group."""
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        idx = len(self.actors.get(role, []))
        actor_cls = self.ray.remote(cls)
        handle = actor_cls.options(
            num_cpus=num_cpus,
            num_gpus=num_gpus,
            max_restarts=0,
            max_concurrency=1,
            name=f"{role}-{idx}-{os.getpid()}",
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=bundle
            ),
        ).remote(*args, **kwargs)
        self.actors.setdefault(role, []).append(handle)
        return handle

    # ---------------------------------------------------------------- calls
    def get(self, role: str, refs: Any, timeout: float | None = None) -> Any:
        """``ray.get`` that turns a dead actor into :class:`RoleDiedError` naming ``role``."""
        from ray.exceptions import RayActorError

        try:
            return self.ray.get(refs, timeout=timeout)
        except RayActorError as e:
            cause = str(e).strip().splitlines()[0][:160] if str(e).strip() else type(e).__name__
            raise RoleDiedError(role, f"ray: the {role} actor died ({cause})") from None

    def close(self) -> None:
        """Kill the run's actors, free the placement group, stop Ray if we started it."""
        for handles in self.actors.values():
            for h in handles:
                try:
                    self.ray.kill(h, no_restart=True)
                except Exception:  # noqa: BLE001 - already dead is fine
                    pass
        self.actors.clear()
        if self.pg is not None:
            from ray.util.placement_group import remove_placement_group

            try:
                remove_placement_group(self.pg)
            except Exception:  # noqa: BLE001
                pass
            self.pg = None
        if self.started:
            self.ray.shutdown()
            self.started = False


def helper_task(fn: Any) -> Any:
    """``ray.remote(num_cpus=0)(fn)``: a helper task that can run while actors hold every
    CPU (a default 1-CPU task would wait forever)."""
    import ray

    return ray.remote(num_cpus=0)(fn)


def role_bundles(rc: Any) -> tuple[list[dict[str, float]], dict[str, list[int]]]:
    """Bundles of the placement group and the bundle index of every actor per role.

    Without ``colocate`` each actor gets its own bundle. With ``colocate`` there is one
    bundle holding the resources of the policy and of every rollout/reward replica, so
    fractional GPUs put training and generation on the same device (e.g.
    ``policy.num_gpus=0.5 rollout.num_gpus=0.5`` -> one ``{GPU: 1}`` bundle).

    Returns:
        ``(bundles, {"policy": [0], "rollout": [...], "reward": [...]})``.
    """

    def res(r, times=1):
        b = {"CPU": float(r.num_cpus) * times}
        if r.num_gpus:
            b["GPU"] = float(r.num_gpus) * times
        return b

    k, m = rc.rollout.replicas, rc.reward.replicas
    if rc.colocate:
        parts = [res(rc.policy), res(rc.rollout, k)] + ([res(rc.reward, m)] if m else [])
        keys = sorted({key for p in parts for key in p})
        bundle = {key: sum(p.get(key, 0.0) for p in parts) for key in keys}
        return [bundle], {"policy": [0], "rollout": [0] * k, "reward": [0] * m}
    bundles = [res(rc.policy)] + [res(rc.rollout) for _ in range(k)]
    bundles += [res(rc.reward) for _ in range(m)]
    return bundles, {
        "policy": [0],
        "rollout": list(range(1, k + 1)),
        "reward": list(range(k + 1, k + 1 + m)),
    }
