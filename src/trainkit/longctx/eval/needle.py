"""Needle in a haystack (G. Kamradt 2023; the paper evaluates 10 lengths x 10 depths):
"The special magic number for <town> is <7 digits>." hidden in stdlib text, asked back."""

from __future__ import annotations

from typing import Any

from trainkit.longctx.eval.common import run_grid

TASK = "needle"


def evaluate_needle(
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
    """Grid accuracy of the needle task; see :func:`trainkit.longctx.eval.common.run_grid`."""
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
