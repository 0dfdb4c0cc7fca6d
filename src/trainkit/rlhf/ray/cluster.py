"""Ray plumbing: attach or start a cluster, place role actors, name dead roles.

Placement (:func:`role_bundles`): one placement group for the roles on one node each,
one bundle per actor (``{CPU: num_cpus, GPU: num_gpus}``), policy first; a role spread
over ``num_nodes > 1`` gets its own ``STRICT_SPREAD`` group (one bundle per node). With
``colocate`` the other roles share the policy replicas' bundles, which hold the
resources of all, so fractional GPUs put training and generation on one device
(OpenRLHF's ``--colocate_all_models``).

Deadlock rule (docs/papers.md, "Machine facts"): actors may hold every CPU of the cluster, so
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
        self.pgs: list[Any] = []
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
    def place(self, groups: list[tuple[str, list[dict[str, float]]]]) -> None:
        """Reserve one placement group per ``(strategy, bundles)``; wait for all (bounded)."""
        from ray.util.placement_group import placement_group

        for strategy, bundles in groups:
            self.pgs.append(placement_group(bundles, strategy=strategy))
        ready, _ = self.ray.wait(
            [pg.ready() for pg in self.pgs],
            num_returns=len(self.pgs),
            timeout=self.rc.startup_timeout_s,
        )
        if len(ready) < len(self.pgs):
            have = self.ray.cluster_resources()
            want = [b for _, bs in groups for b in bs]
            raise UserError(
                f"ray: could not reserve {want} within "
                f"{self.rc.startup_timeout_s:.0f} s (cluster has "
                f"CPU={have.get('CPU', 0)}, GPU={have.get('GPU', 0)}, "
                f"{sum(1 for n in self.ray.nodes() if n.get('Alive'))} node(s)); lower "
                "ray.<role>.num_cpus/num_gpus/num_nodes or add nodes"
            )

    def spawn(
        self,
        role: str,
        cls: type,
        slot: tuple[int, int],
        num_cpus: float,
        num_gpus: float,
        *args: Any,
        **kwargs: Any,
    ) -> Any:
        """Start one actor of ``role`` on ``slot = (placement group, bundle index)``."""
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
                placement_group=self.pgs[slot[0]], placement_group_bundle_index=slot[1]
            ),
        ).remote(*args, **kwargs)
        self.actors.setdefault(role, []).append(handle)
        return handle

    # ---------------------------------------------------------------- calls
    def get(self, role: str, refs: Any, timeout: float | None = None) -> Any:
        """``ray.get`` that turns a dead actor into :class:`RoleDiedError` naming ``role``."""
        from ray.exceptions import RayActorError

        try:
            if isinstance(refs, list) and len(refs) > 1:
                # fail fast: when one replica dies, the others may wait in a collective
                # with it forever, so a plain ray.get on the list would never return
                pending = list(refs)
                while pending:
                    done, pending = self.ray.wait(pending, num_returns=1, timeout=timeout)
                    if not done:
                        raise self.ray.exceptions.GetTimeoutError(f"{role}: no result")
                    self.ray.get(done)
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
        from ray.util.placement_group import remove_placement_group

        for pg in self.pgs:
            try:
                remove_placement_group(pg)
            except Exception:  # noqa: BLE001
                pass
        self.pgs = []
        if self.started:
            self.ray.shutdown()
            self.started = False


def set_threads(n: int) -> None:
    """Give this actor process ``n`` torch CPU threads (and ``OMP_NUM_THREADS``), at least 1."""
    import torch

    torch.set_num_threads(max(1, int(n)))
    os.environ["OMP_NUM_THREADS"] = str(max(1, int(n)))


def free_endpoint() -> tuple[str, int]:
    """This node's IP (as Ray sees it) and a port that is free right now: the address a
    rank-0 actor publishes for a process group or a weight channel."""
    import socket

    import ray

    with socket.socket() as sk:
        sk.bind(("", 0))
        port = sk.getsockname()[1]
    return ray.util.get_node_ip_address(), int(port)


def helper_task(fn: Any) -> Any:
    """``ray.remote(num_cpus=0)(fn)``: a helper task that can run while actors hold every
    CPU (a default 1-CPU task would wait forever)."""
    import ray

    return ray.remote(num_cpus=0)(fn)


Slot = tuple[int, int]  # (placement group, bundle index)


def role_bundles(rc: Any) -> tuple[list[tuple[str, list[dict[str, float]]]], dict[str, list[Slot]]]:
    """The placement groups of a run and the slot of every actor, per role (pure).

    * Roles with ``num_nodes == 1`` share the first group (strategy
      ``ray.placement_strategy``, PACK by default), one bundle per actor, in the order
      policy, reference, critic, rollout, reward.
    * A role with ``num_nodes = m > 1`` gets its own group of ``m`` bundles placed
      ``STRICT_SPREAD`` (one per node), each holding ``replicas / m`` of its actors.
    * With ``colocate`` there is one bundle per policy replica; bundle ``i`` holds policy
      ``i`` and, round robin, the other roles' actors ``j`` with ``j % replicas == i``,
      so fractional GPUs put training and generation on one device (e.g.
      ``policy.num_gpus=0.5 rollout.num_gpus=0.5`` -> ``{GPU: 1}`` bundles).

    Returns:
        ``([(strategy, bundles), ...], {role: [(group, bundle) per replica]})``.
    """
    from trainkit.rlhf.ray.config import ROLES

    def res(r, times=1):
        b = {"CPU": float(r.num_cpus) * times}
        if r.num_gpus:
            b["GPU"] = float(r.num_gpus) * times
        return b

    roles = {name: getattr(rc, name) for name in ROLES}
    slots: dict[str, list[Slot]] = {name: [] for name in ROLES}
    if rc.colocate:
        n = roles["policy"].replicas
        bundles: list[dict[str, float]] = [{} for _ in range(n)]
        for name, r in roles.items():
            for j in range(r.replicas):
                for key, v in res(r).items():
                    bundles[j % n][key] = bundles[j % n].get(key, 0.0) + v
                slots[name].append((0, j % n))
        return [(rc.placement_strategy, [dict(sorted(b.items())) for b in bundles])], slots
    groups: list[tuple[str, list[dict[str, float]]]] = []
    shared: list[dict[str, float]] = []
    spread = []
    for name, r in roles.items():
        if r.num_nodes > 1:
            spread.append((name, r))
            continue
        for _ in range(r.replicas):
            slots[name].append((0, len(shared)))
            shared.append(res(r))
    if shared:
        groups.append((rc.placement_strategy, shared))
    for name, r in spread:
        per = r.replicas // r.num_nodes
        slots[name] = [(len(groups), j // per) for j in range(r.replicas)]
        groups.append(("STRICT_SPREAD", [res(r, per) for _ in range(r.num_nodes)]))
    return groups, slots
