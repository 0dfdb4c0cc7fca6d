"""The checkpoint state of an online-RL run: what is saved every ``train.save_every``
steps, at Ctrl-C and at the end, and what ``train.resume=true`` loads.

Layout under ``output_dir``: ``checkpoints/step-N`` holds the policy, its optimizer,
scheduler and the RNG states (:mod:`trainkit.llm.checkpoint`), ``checkpoints_critic/step-N``
the gae critic with its own. The critic is written first, so a policy checkpoint of step
``N`` implies a critic one; the policy folder decides which step a resume continues from.

One object serves the three holders of the state: the single-process trainer (policy and
critic in one process), a Ray policy replica (the critic too when it has no actors of its
own) and a Ray critic actor (``policy=None``: only ``checkpoints_critic``).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class RLCheckpoint:
    """Where and what to checkpoint.

    Attributes:
        out: the run's ``output_dir``.
        strategy: the :class:`~trainkit.llm.strategy.Strategy` that gathers (fsdp2) and
            writes; every rank of a data-parallel group calls :meth:`save` / :meth:`resume`.
        policy / opt / sched: the actor, its optimizer and scheduler (None: a critic actor).
        critic / critic_opt / critic_sched: the value model of gae and its optimizer (None:
            no critic in this process).
        keep_last: newest checkpoints kept per folder (``train.keep_last``).
        extra: fields written into the policy's ``trainer_state.json``.
    """

    out: Path
    strategy: Any
    policy: Any = None
    opt: Any = None
    sched: Any = None
    critic: Any = None
    critic_opt: Any = None
    critic_sched: Any = None
    keep_last: int = 2
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.out = Path(self.out)

    @classmethod
    def for_run(
        cls,
        cfg: Any,
        strategy: Any,
        policy: tuple = (None, None, None),
        critic: tuple = (None, None, None),
    ) -> RLCheckpoint:
        """The checkpoint of the RL run ``cfg``: its ``output_dir`` and
        ``train.keep_last``, ``algo.estimator`` in the state; ``policy`` / ``critic`` are
        ``(model, optimizer, scheduler)`` triples (None: not held here)."""
        return cls(
            Path(cfg.output_dir),
            strategy,
            *policy,
            *critic,
            keep_last=cfg.train.keep_last,
            extra={"estimator": cfg.algo.estimator},
        )

    @property
    def policy_root(self) -> Path:
        return self.out / "checkpoints"

    @property
    def critic_root(self) -> Path:
        return self.out / "checkpoints_critic"

    def save(self, step: int, extra: dict | None = None) -> Path:
        """Write step ``step`` (atomic folders): the critic first, then the policy (with
        ``{**self.extra, **extra}`` in its state). Returns the policy's ``step-N``
        folder (the critic's when there is no policy)."""
        from trainkit.llm.checkpoint import save_checkpoint

        path = self.critic_root / f"step-{step:06d}"
        policy_kw = {"data_state": {"step": step}, "extra": {**self.extra, **(extra or {})}}
        for root, model, opt, sched, kw in (
            (self.critic_root, self.critic, self.critic_opt, self.critic_sched, {}),
            (self.policy_root, self.policy, self.opt, self.sched, policy_kw),
        ):
            if model is not None:
                path = save_checkpoint(
                    root, step, self.strategy, model, opt, sched, keep_last=self.keep_last, **kw
                )
        return path

    def resume(self, step: int | None = None) -> int:
        """Load a checkpoint into the models, optimizers and RNGs; returns its step.

        Args:
            step: None: the newest policy checkpoint (0 when there is none), and the
                critic's of the same step. A critic-only holder passes the step the policy
                resumed from (0: nothing to load).

        Raises:
            UserError: the critic checkpoint matching the policy's step is missing.
        """
        from trainkit.common.errors import UserError
        from trainkit.llm.checkpoint import list_checkpoints, load_checkpoint

        path = None
        if self.policy is not None:
            found = list_checkpoints(self.policy_root)
            if not found:
                return 0
            step, path = found[-1]
        if not step:
            return 0
        if self.critic is not None:
            cpath = self.critic_root / f"step-{step:06d}"
            if not cpath.is_dir():
                raise UserError(f"no critic checkpoint {cpath} for the policy's step {step}")
            load_checkpoint(cpath, self.strategy, self.critic, self.critic_opt, self.critic_sched)
        if path is None:
            return step
        # the policy last: its RNG state is the one that continues the run
        state = load_checkpoint(path, self.strategy, self.policy, self.opt, self.sched)
        print(f"resumed from {path} (step {state['step']})", file=sys.stderr)
        return int(state["step"])
