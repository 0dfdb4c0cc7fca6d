"""Asynchronous rollouts for the one RL loop (``rollout.async=true``).

The loop (:mod:`~trainkit.rlhf.trainers.rl_loop`) splits a step in two: *producing* its
batch (generate, decode, score; or the multi-turn episodes) and *learning* on it
(experience, update). :class:`Pipeline` runs the producing of the next steps on one
background thread of this process while the main thread learns; the engine itself is in
another process (:class:`~trainkit.rlhf.rollout.process.EngineProcess`) or Ray actor, so
the thread mostly waits on it.

The schedule is a fixed lag ``k = rollout.max_staleness``: the batch of step ``s`` is
sampled by the policy version ``v(s) = max(0, s - k)`` (version = finished steps). After
every update the loop hands the pipeline a :meth:`~RLBackend.snapshot` of the weights;
before producing step ``s`` the thread loads the snapshot ``v(s)`` into the engine when
the engine holds another. So no batch is ever staler than ``k`` (none is dropped), the
sequence of samples does not depend on timing (a run is reproducible), and a checkpoint
after step ``t`` plus the batches already produced for steps ``t .. t + k - 1`` (written
next to it, :data:`INFLIGHT`) resume the run exactly. Evaluation at step ``t`` runs on
the same thread with snapshot ``t`` loaded (it waits for the batches in flight).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

__all__ = ["INFLIGHT", "Batch", "Pipeline", "load_inflight"]

#: file in a policy checkpoint folder holding the batches produced ahead of it
INFLIGHT = "async_batches.pt"


@dataclass
class Batch:
    """One step's samples, produced before its update.

    Attributes:
        step: the 0-based step it is for.
        version: the policy version (finished steps) that sampled it.
        prompts: ``[B]`` prompt texts (each repeated ``rollout.n`` times).
        labels: per-key ``[B]`` labels.
        rollout: the :class:`~trainkit.rlhf.rollout.base.Rollout`.
        completions: ``[B]`` decoded completions (episodes: the replies).
        scores: the :class:`~trainkit.rlhf.trainers.rl_data.Scores`.
        gen_s / gen_cpu_s: wall and CPU seconds of sampling it (episodes: and scoring).
        score_s: wall seconds of scoring it (single-turn).
    """

    step: int
    version: int
    prompts: list[str]
    labels: dict[str, list]
    rollout: Any
    completions: list[str]
    scores: Any
    gen_s: float
    gen_cpu_s: float
    score_s: float = 0.0

    def state(self) -> dict:
        """Plain tensors, lists and numbers (``torch.load(weights_only=True)`` reads it)."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["rollout"] = {f.name: getattr(self.rollout, f.name) for f in fields(self.rollout)}
        out["scores"] = dict(self.scores._asdict())
        return out

    @classmethod
    def from_state(cls, st: dict) -> Batch:
        from trainkit.rlhf.rollout.base import Rollout
        from trainkit.rlhf.trainers.rl_data import Scores

        return cls(**{**st, "rollout": Rollout(**st["rollout"]), "scores": Scores(**st["scores"])})


def load_inflight(out: Path, step: int) -> dict[int, Batch]:
    """The batches saved with the policy checkpoint of ``step`` (empty: none saved)."""
    path = Path(out) / "checkpoints" / f"step-{step:06d}" / INFLIGHT
    if not path.is_file():
        return {}
    saved = torch.load(path, weights_only=True)
    return {int(b["step"]): Batch.from_state(b) for b in saved}


def _done(value: Any) -> Future:
    f: Future = Future()
    f.set_result(value)
    return f


class Pipeline:
    """Batches produced ahead on one background thread, on the fixed-lag schedule.

    Args:
        backend: the run's backend (``snapshot``, ``load_weights``, ``evaluate``).
        produce: ``produce(step, version) -> Batch`` (runs on the thread).
        start: the first step of this run (the engine holds version ``start``).
        k: ``rollout.max_staleness``.
        max_steps: ``train.max_steps`` (nothing is produced for steps past it).
        restored: batches saved with the checkpoint this run resumed from.
    """

    def __init__(
        self,
        backend: Any,
        produce: Callable[[int, int], Batch],
        start: int,
        k: int,
        max_steps: int,
        restored: dict[int, Batch] | None = None,
    ):
        self.b, self.produce, self.k, self.max_steps = backend, produce, k, max_steps
        self.pool = ThreadPoolExecutor(1, thread_name_prefix="trainkit-rollout")
        self.futures: dict[int, Future] = {
            s: _done(x) for s, x in (restored or {}).items() if s >= start
        }
        self.start = start
        self.snaps: dict[int, Any] = {start: backend.snapshot()}
        self.engine_version = start
        self.load_s = 0.0  # seconds the thread spent loading snapshots since the last get
        self.staleness: dict[int, int] = {}

    def version_for(self, step: int) -> int:
        """``max(start, step - k)``: from step 0, the fixed lag; after a resume without
        saved batches, the first ``k`` steps are sampled by the resumed version."""
        return max(self.start, step - self.k)

    def _ensure(self, version: int) -> None:
        if self.engine_version != version:
            self.load_s += self.b.load_weights(self.snaps[version])
            self.engine_version = version

    def _job(self, step: int, version: int) -> Batch:
        self._ensure(version)
        return self.produce(step, version)

    def _fill(self, step: int) -> None:
        """Submit every step of ``[step, step + k]`` not yet submitted."""
        for s in range(step, min(step + self.k, self.max_steps - 1) + 1):
            if s not in self.futures:
                self.futures[s] = self.pool.submit(self._job, s, self.version_for(s))

    def get(self, step: int) -> tuple[Batch, dict[str, float]]:
        """The batch of ``step`` (waiting for it) and its ``async/*`` record figures."""
        self._fill(step)
        t = time.perf_counter()
        batch = self.futures.pop(step).result()
        wait = time.perf_counter() - t
        stale = step - batch.version
        self.staleness[stale] = self.staleness.get(stale, 0) + 1
        rec = {"async/staleness": stale, "async/wait_s": wait, "async/load_s": self.load_s}
        self.load_s = 0.0
        return batch, rec

    def histogram(self) -> dict[str, int]:
        """``{staleness: steps}`` of the steps this run trained (keys as strings, JSON)."""
        return {str(k): v for k, v in sorted(self.staleness.items())}

    def updated(self, version: int) -> None:
        """The trainer finished step ``version - 1``: snapshot version ``version`` and
        forget the snapshots no future batch or evaluation needs."""
        self.snaps[version] = self.b.snapshot()
        # the batches in flight, and the next one submitted (and an eval now) need `version`
        need = {self.version_for(s) for s in self.futures} | {version}
        for v in [v for v in self.snaps if v not in need and v != self.engine_version]:
            del self.snaps[v]

    def evaluate(self, step: int) -> dict[str, float] | None:
        """``backend.evaluate`` with version ``step`` loaded, after the batches in flight."""

        def job():
            self._ensure(step)
            return self.b.evaluate(step)

        return self.pool.submit(job).result()

    def inflight(self) -> list[Batch]:
        """Every batch submitted for later steps (waits for them), in step order."""
        return [self.futures[s].result() for s in sorted(self.futures)]

    def save(self, out: Path, step: int) -> None:
        """Write the batches in flight next to the policy checkpoint of ``step``."""
        import io

        from trainkit.common.io import atomic_write_bytes

        buf = io.BytesIO()
        torch.save([b.state() for b in self.inflight()], buf)
        folder = Path(out) / "checkpoints" / f"step-{step:06d}"
        if folder.is_dir():
            atomic_write_bytes(folder / INFLIGHT, buf.getvalue())

    def close(self) -> None:
        for f in self.futures.values():
            f.cancel()
        self.pool.shutdown(wait=True)
