"""Symbolic function library and fast affine fits ``y ~ c * f(a * x + b) + d``.

KAN paper (arXiv 2404.19756, section 2.5.1, step 3): each learned edge activation
is compared with named functions ``f`` by fitting ``(a, b, c, d)`` and ranking by R^2
and simplicity. Model independent: it sees 1-D samples ``x, y`` of one edge.

The named functions (guarded torch forms, derivatives, SymPy forms, complexities) are in
:mod:`trainkit.kan.symbolic_functions`, the fits in :mod:`trainkit.kan.affine_fit`; this
module ranks them and is the import path for all three (``from trainkit.kan import
symbolic_lib``).

Ranking rule (:func:`suggest`), lower is better::

    score = log10(1 - R^2 + r2_floor) + weight_simple * complexity

each complexity unit must buy ``weight_simple`` decades of unexplained variance;
``r2_floor`` (1e-10) caps the credit at the noise level. Ties: higher R^2, lower
complexity, library order.
"""

from __future__ import annotations

import math

import torch

from trainkit.kan.affine_fit import AffineFit, fit_affine, fit_affine_many
from trainkit.kan.symbolic_functions import (
    ARC_EPS,
    EPS,
    EXP_MAX,
    LIBRARY,
    SQRT_EPS,
    SymbolicFunction,
    get_function,
    resolve_lib,
)

__all__ = [
    "ARC_EPS",
    "EPS",
    "EXP_MAX",
    "LIBRARY",
    "SQRT_EPS",
    "AffineFit",
    "SymbolicFunction",
    "fit_affine",
    "fit_affine_many",
    "get_function",
    "resolve_lib",
    "score",
    "suggest",
]


def score(r2: float, complexity: int, weight_simple: float = 1.0, r2_floor: float = 1e-10) -> float:
    """Ranking score, lower is better: ``log10(1 - r2 + r2_floor) + weight_simple * complexity``."""
    return math.log10(max(1.0 - r2, 0.0) + r2_floor) + weight_simple * complexity


def suggest(
    x: torch.Tensor,
    y: torch.Tensor,
    lib=None,
    topk: int = 5,
    *,
    weight_simple: float = 1.0,
    r2_floor: float = 1e-10,
    refine: bool = True,
    n_starts: int = 3,
    n_sub: int = 128,
) -> list[AffineFit]:
    """Rank library functions for one edge by R^2 and simplicity.

    Every function is fitted (grid search, then one batched Levenberg-Marquardt for
    all functions together) and scored with :func:`score`: decades of unexplained
    variance plus ``weight_simple`` per complexity unit, lower is better. Ties go
    to the higher R^2, then the lower complexity, then library order.

    Args:
        x, y: [N] samples of the edge (float32 or float64).
        lib: None (whole library), names, or :class:`SymbolicFunction` entries.
        topk: number of candidates returned.
        weight_simple: decades of ``1 - R^2`` one unit of complexity is worth.
        r2_floor: ``1 - R^2`` below this earns no more credit.

    Returns:
        Up to ``topk`` :class:`AffineFit`, best first, each with its ``score``.
    """
    fns = resolve_lib(lib)
    fits = fit_affine_many(x, y, fns, refine=refine, n_starts=n_starts, n_sub=n_sub)
    for f in fits:
        f.score = score(f.r2, f.complexity, weight_simple, r2_floor)
    order = sorted(
        range(len(fits)), key=lambda i: (fits[i].score, -fits[i].r2, fits[i].complexity, i)
    )
    return [fits[i] for i in order[:topk]]
