"""Knot placement for KAN grids: data percentiles, resampling and knot insertion.

Pure functions on interior knots ``[in, G + 1]`` (extend them with
:func:`trainkit.kan.spline.extend_grid`). Used by ``KANLinear.update_grid`` (Liu et al.
2024, section 2.4 "grid update": percentiles of the activations mixed with a uniform
grid by ``grid_eps``) and ``KANLinear.refine`` ("grid extension").
"""

from __future__ import annotations

import torch


def adaptive_knots(x: torch.Tensor, grid: int, eps: float) -> torch.Tensor:
    """Interior knots from the data: percentiles mixed with a uniform grid (pykan's rule).

    ``knots = eps * uniform(min, max) + (1 - eps) * sorted(x)[linspace(0, N - 1, G + 1)]``.

    Args:
        x: ``[N, in]`` samples of each input; grid: ``G``; eps: ``grid_eps`` in ``[0, 1]``.

    Returns:
        ``[in, G + 1]`` strictly increasing knots (a constant input gets a unit-width range).
    """
    xs = torch.sort(x.detach(), dim=0).values  # [N, in]
    n = xs.shape[0]
    idx = torch.linspace(0, n - 1, grid + 1, device=x.device).round().long()
    adaptive = xs[idx].t()  # [in, G+1]
    lo, hi = xs[0], xs[-1]
    flat = (hi - lo) <= 1e-12 * (1 + hi.abs())
    lo = torch.where(flat, lo - 0.5, lo)
    hi = torch.where(flat, hi + 0.5, hi)
    frac = torch.linspace(0, 1, grid + 1, dtype=x.dtype, device=x.device)
    uniform = lo[:, None] + (hi - lo)[:, None] * frac[None, :]
    adaptive = torch.where(flat[:, None], uniform, adaptive)
    return eps * uniform + (1 - eps) * adaptive


def resample_knots(knots: torch.Tensor, grid: int) -> torch.Tensor:
    """``[in, G + 1]`` -> ``[in, grid + 1]`` by piecewise-linear interpolation of the knot
    positions (keeps the old grid's density; nested only when ``grid`` is a multiple of ``G``)."""
    g_old = knots.shape[1] - 1
    pos = torch.linspace(0, g_old, grid + 1, dtype=torch.float64, device=knots.device)
    lo_idx = pos.floor().long().clamp(max=g_old - 1)
    frac = (pos - lo_idx).to(knots.dtype)
    return knots[:, lo_idx] * (1 - frac) + knots[:, lo_idx + 1] * frac


def nested_knots(knots: torch.Tensor, grid: int) -> torch.Tensor:
    """Refine ``[in, G + 1]`` knots to ``[in, grid + 1]`` by knot insertion (``grid >= G``).

    Every old knot is kept, so the old spline space is a subspace of the new one and a
    least-squares refit on ``[lo, hi]`` reproduces the old splines exactly there. Old
    interval ``i`` is split into ``n_i`` equal pieces, ``n_i`` allocated greedily to the
    interval with the largest piece length ``L_i / n_i`` (uniform stays uniform when
    ``grid`` is a multiple of ``G``).
    """
    n_in, g_old = knots.shape[0], knots.shape[1] - 1
    if grid < g_old:
        raise ValueError(f"nested_knots: new grid {grid} < old grid {g_old}")
    lengths = (knots[:, 1:] - knots[:, :-1]).to(torch.float64)  # [in, G]
    counts = torch.ones_like(lengths)
    rows = torch.arange(n_in, device=knots.device)
    for _ in range(grid - g_old):
        # ties go to the leftmost interval; 1e-9 keeps equal lengths tied despite rounding
        score = lengths / counts
        best = torch.argmax(score - 1e-9 * torch.arange(g_old, device=knots.device), dim=1)
        counts[rows, best] += 1
    cum = counts.cumsum(1)  # [in, G]
    q = torch.arange(grid, dtype=torch.float64, device=knots.device).expand(n_in, -1).contiguous()
    i = torch.searchsorted(cum, q, right=True)  # old interval of new knot q
    start = cum.gather(1, i) - counts.gather(1, i)
    frac = ((q - start) / counts.gather(1, i)).to(knots.dtype)
    left = knots.gather(1, i)
    new = left + (knots.gather(1, i + 1) - left) * frac
    return torch.cat([new, knots[:, -1:]], dim=1)
