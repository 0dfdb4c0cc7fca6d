"""Checkpoints, resume, the non-finite policy and Ctrl-C for single-process training loops.

The SFT, reward-model, DPO and context-extension recipes (``trainkit rlhf sft``,
``rlhf rm``, ``rlhf dpo``, ``longctx extend``) share this one copy of the loop-safety code;
the RL loop (:mod:`trainkit.rlhf.trainers.rl_loop`) uses the same guards
(:mod:`trainkit.common.guard`) with its own multi-model checkpoint. Semantics and keys:

* ``train.nonfinite`` / ``train.max_nonfinite``: a step whose loss or gradient norm is
  NaN/inf is never applied (:class:`trainkit.common.guard.NonFiniteGuard`): ``skip`` drops
  it with a warning and counts it, stopping after ``max_nonfinite`` in a row with a
  one-line error that names the newest checkpoint; ``stop`` stops at the first.
* ``train.resume``, ``train.save_every`` / ``train.keep_last``: a checkpoint
  (:mod:`trainkit.llm.checkpoint`: trainable weights as safetensors, optimizer, scheduler,
  RNG states, step, data position, counters) every N steps under
  ``<output_dir>/checkpoints/step-N``, atomically, keeping the newest ``keep_last``.
* Ctrl-C (:class:`trainkit.common.guard.GracefulInterrupt`): the first SIGINT lets the
  step finish, saves a checkpoint and asks the loop to stop; the recipe then writes no
  final output and its CLI exits with 130. ``train.resume=true`` continues from the newest
  checkpoint and, on CPU, reaches the weights of an uninterrupted run. Under torchrun
  (``strategy=`` an FSDP2 strategy) the stop flag is summed over the ranks at the end of
  every step, so a Ctrl-C that reaches one rank stops all of them after the same step.

Usage in a loop (``module`` holds every trainable parameter the optimizer steps)::

    ctl = TrainControl(out, "rm", cfg.train, cfg.train.resume, model, opt, sched)
    state = ctl.restore()                     # None, or trainer_state.json of the checkpoint
    with ctl:
        for step in range(start + 1, max_steps + 1):
            ... loss.backward(); gnorm = clip ...
            if ctl.apply(step, loss, gnorm):
                opt.step()
            ...
            if ctl.end_step(step, data_state, last=step == max_steps):
                break                         # interrupted: a checkpoint is on disk
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainkit.common.errors import UserError


@dataclass
class SafetyFields:
    """Train-section keys for checkpoints and non-finite steps (sft, rm, dpo, longctx extend;
    :class:`trainkit.llm.sections.TrainFields` adds max_steps, seed and progress)."""

    save_every: int = field(
        default=0,
        metadata={"help": "steps between checkpoints (0: only when interrupted with Ctrl-C)"},
    )
    keep_last: int = field(
        default=2, metadata={"help": "keep only this many newest checkpoints (<= 0: all)"}
    )
    nonfinite: Literal["skip", "stop"] = field(
        default="skip", metadata={"help": "NaN/inf loss or grad norm: skip the step, or stop"}
    )
    max_nonfinite: int = field(
        default=5, metadata={"help": "with skip: stop after this many non-finite steps in a row"}
    )
    resume: bool = field(
        default=False, metadata={"help": "continue from the newest checkpoint in output_dir"}
    )

    def validate(self) -> None:
        if self.max_nonfinite < 1:
            raise UserError(f"train.max_nonfinite must be >= 1, got {self.max_nonfinite}")
        if self.save_every < 0:
            raise UserError(f"train.save_every must be >= 0, got {self.save_every}")


def rng_to_json(state: tuple) -> list:
    """``random.Random.getstate()`` as JSON-able lists."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def rng_from_json(state: list) -> tuple:
    """Inverse of :func:`rng_to_json`."""
    version, internal, gauss = state
    return (version, tuple(internal), gauss)


class EpochOrder:
    """Sample indices in epochs reshuffled by a seeded RNG, whole batches only, resumable.

    ``state()`` is the JSON-able ``{"order", "rng"}`` a checkpoint keeps; ``EpochOrder(n,
    seed, state)`` continues exactly where that state was taken.
    """

    def __init__(self, n: int, seed: int, state: dict | None = None):
        import random

        self.n, self.rng = n, random.Random(seed)
        self.order: list[int] = []
        if state:
            self.order = list(state["order"])
            self.rng.setstate(rng_from_json(state["rng"]))

    def take(self, k: int) -> list[int]:
        """The next ``k`` indices (a new shuffled epoch is appended when fewer are left)."""
        if len(self.order) < k:
            perm = list(range(self.n))
            self.rng.shuffle(perm)
            self.order += perm
        idx, self.order = self.order[:k], self.order[k:]
        return idx

    def state(self) -> dict:
        return {"order": list(self.order), "rng": rng_to_json(self.rng.getstate())}


def _scalar(v: Any) -> float:
    return float(v.detach()) if hasattr(v, "detach") else float(v)


class TrainControl:
    """One loop's checkpoints, resume, non-finite guard and Ctrl-C handling.

    Args:
        out_dir: the run folder; checkpoints go to ``out_dir/checkpoints``.
        name: the command, for messages (``rm``, ``dpo``, ``extend``).
        train: a section with the :class:`SafetyFields` keys.
        resume: restore the newest checkpoint in :meth:`restore`.
        module: the ``nn.Module`` whose trainable parameters are checkpointed.
        optimizer / scheduler: what to checkpoint with it (scheduler may be ``None``).
        strategy: the loop's :class:`trainkit.llm.strategy.Strategy` (set up already);
            ``None``: a single-process one on the module's device.
        save_last: also save a checkpoint after the final step (SFT does).
    """

    def __init__(
        self,
        out_dir: str | Path,
        name: str,
        train: Any,
        resume: bool,
        module: Any,
        optimizer: Any,
        scheduler: Any = None,
        strategy: Any = None,
        save_last: bool = False,
    ):
        from trainkit.common.guard import GracefulInterrupt, NonFiniteGuard
        from trainkit.llm.strategy import Strategy

        self.root = Path(out_dir) / "checkpoints"
        self.name, self.train, self.resume = name, train, resume
        self.module, self.optimizer, self.scheduler = module, optimizer, scheduler
        self.guard = NonFiniteGuard(train.nonfinite, train.max_nonfinite)
        self.interrupt = GracefulInterrupt()
        if strategy is None:
            dev = next((p.device for p in module.parameters()), None)
            strategy = Strategy(device=str(dev) if dev is not None else None)
            strategy.setup()
        self.strategy, self.save_last = strategy, save_last
        self.saved = -1
        self.interrupted = False

    # -- resume --------------------------------------------------------------------
    def restore(self) -> dict | None:
        """Load the newest checkpoint when ``resume`` is set; its trainer state or None."""
        from trainkit.llm import checkpoint as ckpt

        if not self.resume:
            return None
        last = ckpt.latest_checkpoint(self.root)
        if last is None:
            return None
        state = ckpt.load_checkpoint(
            last, self.strategy, self.module, self.optimizer, self.scheduler
        )
        self.guard.skipped = int(state.get("nonfinite_skipped", 0))
        self.guard.consecutive = int(state.get("nonfinite_consecutive", 0))
        self.saved = int(state["step"])
        if self.strategy.is_main:
            print(f"{self.name}: resumed from {last} (step {self.saved})", file=sys.stderr)
        return state

    # -- the step ------------------------------------------------------------------
    def apply(self, step: int, loss: Any, grad_norm: Any) -> bool:
        """True when the update of ``step`` may be applied; False: skip it.

        Raises:
            NonFiniteError: the policy says stop; the message names the newest checkpoint.
        """
        from trainkit.common.guard import NonFiniteError

        try:
            return self.guard.check(step, _scalar(loss), _scalar(grad_norm))
        except NonFiniteError as e:
            raise NonFiniteError(f"{e}; last checkpoint: {self.last_checkpoint()}") from None

    def update(self, step: int, loss: Any, params: list, max_norm: float) -> tuple[bool, Any]:
        """Backward, clip to ``max_norm`` (<= 0: no clipping), and an optimizer step unless
        the loss or gradient norm is NaN/inf; returns ``(applied, grad_norm)``."""
        import torch

        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        applied = self.apply(step, loss, gnorm)  # NaN/inf never reaches the weights
        if applied:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return applied, gnorm

    def end_step(self, step: int, data: dict, extra: dict | None = None, last: bool = False):
        """Save when due or interrupted; True when the loop must stop (Ctrl-C).

        Every rank calls this after every step (it holds the collective that shares the
        stop flag, and the checkpoint is a collective under FSDP2).

        Args:
            step: optimizer steps done.
            data: the data position (JSON-able), restored as ``state["data"]``.
            extra: more JSON-able fields for ``trainer_state.json``.
            last: this was the final step (an interrupt then changes nothing).
        """
        stop = self.interrupt.requested_on_any_rank(
            self.strategy.all_reduce_sum if self.strategy.world_size > 1 else None
        )
        self.interrupted = stop and not last
        every = self.train.save_every
        due = (every and step % every == 0) or (last and self.save_last)
        if due or (self.interrupted and self.saved != step):
            self.save(step, data, extra)
        return self.interrupted

    def save(self, step: int, data: dict, extra: dict | None = None) -> Path:
        from trainkit.llm import checkpoint as ckpt

        fields = {
            "nonfinite_skipped": self.guard.skipped,
            "nonfinite_consecutive": self.guard.consecutive,
            **(extra or {}),
        }
        path = ckpt.save_checkpoint(
            self.root,
            step,
            self.strategy,
            self.module,
            self.optimizer,
            self.scheduler,
            data,
            extra=fields,
            keep_last=self.train.keep_last,
        )
        self.saved = step
        return path

    def last_checkpoint(self) -> str:
        from trainkit.llm import checkpoint as ckpt

        last = ckpt.latest_checkpoint(self.root)
        return str(last) if last is not None else "none"

    def message(self, step: int) -> str:
        """The line a CLI prints after an interrupt."""
        return (
            f"{self.name}: interrupted after step {step}; checkpoint {self.last_checkpoint()}; "
            "continue with train.resume=true"
        )

    def __enter__(self):
        self.interrupt.__enter__()
        return self

    def __exit__(self, *exc):
        return self.interrupt.__exit__(*exc)
