"""Multi-key key-value retrieval: ``n_keys`` "The value of key <k> is <v>." lines at random
depths, the asked one at the grid depth; the distractor keys make it harder than passkey."""

from __future__ import annotations

from typing import Any

from trainkit.longctx.eval.common import run_grid

TASK = "kv"


def evaluate_kv(
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
    """Grid accuracy of the kv task; see :func:`trainkit.longctx.eval.common.run_grid`."""
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
