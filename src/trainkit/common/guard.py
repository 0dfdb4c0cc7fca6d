"""Training-loop guards: non-finite losses/gradients and graceful Ctrl-C.

``NonFiniteGuard`` decides what to do with a step whose loss or gradient norm is NaN
or inf: skip it (the optimizer step is not taken, a counter rises, a warning is
logged) or stop after ``max_consecutive`` such steps in a row, so a model is never
silently corrupted. ``GracefulInterrupt`` turns the first SIGINT into a flag the loop
checks, so it can save a checkpoint and exit cleanly; a second SIGINT interrupts at once.
"""

from __future__ import annotations

import math
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from trainkit.common.errors import UserError


class NonFiniteError(RuntimeError):
    """Too many consecutive non-finite steps: training stops."""


@dataclass
class NonFiniteGuard:
    """Track non-finite steps.

    Attributes:
        policy: "skip" (drop the step, warn, count) or "stop" (raise at the first one).
        max_consecutive: with "skip", raise after this many non-finite steps in a row.
    """

    policy: str = "skip"
    max_consecutive: int = 5
    skipped: int = 0
    consecutive: int = 0

    def __post_init__(self):
        if self.policy not in ("skip", "stop"):
            raise UserError(f"nonfinite policy must be 'skip' or 'stop', got {self.policy!r}")
        if self.max_consecutive < 1:
            raise UserError(f"max_consecutive must be >= 1, got {self.max_consecutive}")

    def check(self, step: int, *values) -> bool:
        """Return True when the step may be applied; False to skip it.

        Args:
            step: the step number, for messages.
            *values: floats or 0-d tensors (loss, grad norm, ...).

        Raises:
            NonFiniteError: policy "stop", or ``max_consecutive`` reached.
        """
        bad = [v for v in values if not math.isfinite(float(v))]
        if not bad:
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        if self.policy == "stop" or self.consecutive >= self.max_consecutive:
            raise NonFiniteError(
                f"non-finite loss/gradient at step {step} ({self.consecutive} in a row, "
                f"{self.skipped} in total); stopping before the model is corrupted"
            )
        print(f"warning: step {step} skipped: non-finite value {float(bad[0])}", file=sys.stderr)
        return False


class GracefulInterrupt:
    """Context manager: the first Ctrl-C sets ``self.requested``; the second raises.

    Only installs the handler in the main thread (signal handlers must live there).
    """

    def __init__(self):
        self.requested = False
        self._old = None

    def _handler(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True
        print(
            "\ninterrupt: finishing this step, saving a checkpoint, then exiting "
            "(Ctrl-C again to abort at once)",
            file=sys.stderr,
            flush=True,
        )

    def requested_on_any_rank(self, all_reduce_sum: Callable[[Any], Any] | None = None) -> bool:
        """True when Ctrl-C reached this process or, under torchrun, any other rank.

        ``all_reduce_sum`` is the strategy's collective (``Strategy.all_reduce_sum``); every
        rank must call this at the same point of the step, so that all of them stop after
        the same step and take part in the same checkpoint (a terminal's Ctrl-C may reach
        only some of them, a ``kill -INT`` only one). ``None``: this process only.
        """
        if all_reduce_sum is None:
            return self.requested
        import torch

        flag = all_reduce_sum(torch.tensor([1.0 if self.requested else 0.0]))
        return bool(float(flag.reshape(-1)[0]) > 0)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = signal.signal(signal.SIGINT, self._handler)
        return self

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)
            self._old = None
        return False
