"""Passkey retrieval (Mohtashami & Jaggi 2023, arXiv 2305.16300): a 5-digit key in text."""

from __future__ import annotations

from typing import Any

from trainkit.longctx.eval.common import run_grid

TASK = "passkey"


def evaluate_passkey(
    model: Any,
    tokenizer: Any,
    lengths: list[int],
    depths: list[float],
    *,
    seed: int,
    samples: int = 1,
    meter=None,
    scorer: str = "contains",
    **options,
) -> tuple[dict, list]:
    """Grid accuracy of the passkey task; see :func:`trainkit.longctx.eval.common.run_grid`."""
    return run_grid(
        model,
        tokenizer,
        TASK,
        lengths,
        depths,
        seed=seed,
        samples=samples,
        meter=meter,
        scorer=scorer,
        options=options,
    )
