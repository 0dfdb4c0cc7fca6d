"""Scoring a batch with a reward callable, failures isolated to the samples that caused them.

A reward is any callable ``f(prompts, completions, **labels) -> list[float]``
(:data:`RewardFn`; see :mod:`trainkit.rlhf.rewards`). :func:`score` calls it on the batch,
and when that raises, once per sample; a sample whose reward raises or is NaN/inf is
marked invalid with its error recorded and counted (:class:`RewardResult`), and the run
stops with a :class:`RewardError` only when more than ``max_invalid_fraction`` of a batch
failed.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from trainkit.common.errors import UserError

# the logger keeps the name of the module users import score from
log = logging.getLogger("trainkit.rlhf.rewards")

RewardFn = Callable[..., Sequence[float]]


class RewardError(UserError):
    """A reward function failed on too many samples, or could not be loaded."""


def check_reward_values(vals: Any, n: int, fn: Any) -> list:
    """``vals`` as a list of ``n`` values, or a TypeError/ValueError naming the reward ``fn``
    that returned something else (not a sequence, or one of another length)."""
    try:
        vals = list(vals)
    except TypeError:
        raise TypeError(
            f"reward {getattr(fn, '__name__', fn)} returned "
            f"{type(vals).__name__}, expected a list of floats"
        ) from None
    if len(vals) != n:
        raise ValueError(
            f"reward {getattr(fn, '__name__', fn)} returned {len(vals)} values for {n} completions"
        )
    return vals


@dataclass
class RewardResult:
    """Rewards of one batch, with per-sample validity.

    Attributes:
        rewards: ``[n]`` floats; an invalid sample holds ``fill`` (default 0.0).
        valid: ``[n]`` bools; False where the reward raised or was NaN/inf.
        errors: ``[n]`` error text (None when valid).
    """

    rewards: list[float]
    valid: list[bool]
    errors: list[str | None] = field(default_factory=list)

    @property
    def n_invalid(self) -> int:
        return sum(not v for v in self.valid)

    @property
    def n_nan(self) -> int:
        return sum(1 for e in self.errors if e is not None and e.startswith("non-finite"))

    @property
    def n_raised(self) -> int:
        return self.n_invalid - self.n_nan

    def stats(self) -> dict[str, float]:
        """Counts for the metrics log: ``reward_invalid``, ``reward_nan``, ``reward_raised``."""
        return {
            "reward_invalid": self.n_invalid,
            "reward_nan": self.n_nan,
            "reward_raised": self.n_raised,
        }


def _to_float(v: Any) -> float:
    if hasattr(v, "item"):
        v = v.item()
    return float(v)


def score(
    fn: RewardFn,
    prompts: Sequence[str],
    completions: Sequence[str],
    labels: dict[str, Sequence[Any]] | None = None,
    max_invalid_fraction: float = 0.5,
    fill: float = 0.0,
) -> RewardResult:
    """Call a reward on a batch, isolating failures to the samples that caused them.

    The batch is scored in one call; if that raises, each sample is scored alone. Every
    invalid sample is logged with its error (a warning per batch) and counted.

    Args:
        fn: the reward callable.
        prompts: ``[n]``.
        completions: ``[n]``.
        labels: per-sample label lists, each of length ``n``.
        max_invalid_fraction: raise :class:`RewardError` when more than this share of
            the batch is invalid (``1.0`` never raises).
        fill: the reward value stored for invalid samples.

    Returns:
        :class:`RewardResult`.
    """
    n = len(completions)
    labels = dict(labels or {})
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} completions")
    for k, v in labels.items():
        if not hasattr(v, "__len__") or len(v) != n:
            raise ValueError(
                f"label '{k}' must hold one value per completion ({n}), got "
                f"{len(v) if hasattr(v, '__len__') else type(v).__name__}"
            )
    name = getattr(fn, "__name__", repr(fn))
    raw: list[Any] = [None] * n
    errs: list[str | None] = [None] * n
    try:
        raw = check_reward_values(fn(list(prompts), list(completions), **labels), n, fn)
    except Exception as batch_err:  # isolate the failing samples
        log.debug("reward %s failed on the batch (%s); scoring one by one", name, batch_err)
        for i in range(n):
            one = {k: [v[i]] for k, v in labels.items()}
            try:
                raw[i] = check_reward_values(fn([prompts[i]], [completions[i]], **one), 1, fn)[0]
            except Exception as e:
                errs[i] = f"{type(e).__name__}: {e}"
    # a reward that knows why a sample failed (e.g. SandboxedReward) says so in last_errors
    known = getattr(fn, "last_errors", None)
    known = known if isinstance(known, list) and len(known) == n else [None] * n
    rewards, valid = [], []
    for i in range(n):
        val = fill
        if errs[i] is None:
            try:
                val = _to_float(raw[i])
                if not math.isfinite(val):
                    errs[i] = known[i] or f"non-finite reward {val}"
                    val = fill
            except (TypeError, ValueError) as e:
                errs[i] = f"{type(e).__name__}: reward value {raw[i]!r} is not a number ({e})"
                val = fill
        rewards.append(val)
        valid.append(errs[i] is None)
    res = RewardResult(rewards, valid, errs)
    if res.n_invalid:
        first = next(e for e in errs if e is not None)
        log.warning(
            "reward %s: %d of %d samples invalid (%d raised, %d non-finite); first: %s",
            name,
            res.n_invalid,
            n,
            res.n_raised,
            res.n_nan,
            first,
        )
        if n and res.n_invalid / n > max_invalid_fraction:
            raise RewardError(
                f"reward {name} failed on {res.n_invalid} of {n} samples "
                f"(limit {max_invalid_fraction:.0%}); first error: {first}"
            )
    return res
