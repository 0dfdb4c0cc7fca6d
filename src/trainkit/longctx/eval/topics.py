"""Topic retrieval (LongChat, Li et al. 2023): sections on several stdlib modules; the model
must name the first. The answer is always at depth 0, so the grid has one depth column."""

from __future__ import annotations

from typing import Any

from trainkit.longctx.eval.common import run_grid

TASK = "topics"


def evaluate_topics(
    model: Any,
    tokenizer: Any,
    lengths: list[int],
    depths: list[float] | None = None,
    *,
    seed: int,
    samples: int = 1,
    meter=None,
    scorer: str = "contains",
    **options,
) -> tuple[dict, list]:
    """Accuracy of naming the first topic, per length (``by_depth`` has the key ``"0.0"``)."""
    return run_grid(
        model,
        tokenizer,
        TASK,
        lengths,
        [0.0],
        seed=seed,
        samples=samples,
        meter=meter,
        scorer=scorer,
        options=options,
    )
