"""B-spline math for KANs: grids, the basis, curve <-> coefficient conversions.

Pure tensor functions; nothing here holds state. Notation (Liu et al. 2024, arXiv
2404.19756, section 2.2): an edge function's spline part is ``spline(x) = sum_j c_j B_j(x)``
with ``B_j`` the order-``k`` B-splines on a grid of ``G`` intervals over ``[lo, hi]``,
extended by ``k`` knots on each side so that there are ``G + k`` basis functions and
they sum to one everywhere inside ``[lo, hi]``.

Shapes used throughout:

- ``x``: ``[batch, in]``, one column per input feature (each feature has its own grid);
- ``grid``: ``[in, G + 2k + 1]``, the extended knots of each feature, non-decreasing;
- basis: ``[batch, in, G + k]``;
- ``coef``: ``[out, in, G + k]``, one spline per edge ``(out, in)``;
- curves / edge activations: ``[batch, out, in]``.
"""

from __future__ import annotations

import torch


def extend_grid(knots: torch.Tensor, k: int) -> torch.Tensor:
    """Add ``k`` knots on each side, spaced like the mean interval of ``knots``.

    Args:
        knots: ``[in, G + 1]`` interior knots (the range ``[lo, hi]`` included).
        k: spline order.

    Returns:
        ``[in, G + 2k + 1]`` extended grid.
    """
    g = knots.shape[1] - 1
    h = (knots[:, -1:] - knots[:, :1]) / max(g, 1)
    steps = torch.arange(1, k + 1, dtype=knots.dtype, device=knots.device)
    left = knots[:, :1] - h * steps.flip(0)
    right = knots[:, -1:] + h * steps
    return torch.cat([left, knots, right], dim=1)


def uniform_grid(n_in: int, grid: int, k: int, lo: float = -1.0, hi: float = 1.0,
                 dtype: torch.dtype | None = None, device=None) -> torch.Tensor:
    """An extended uniform grid, the same for every input.

    Returns:
        ``[n_in, grid + 2k + 1]``: knots ``lo + (hi - lo) * j / grid`` for
        ``j = -k .. grid + k``.
    """
    j = torch.arange(-k, grid + k + 1, dtype=torch.float64, device=device)
    knots = lo + (hi - lo) * j / grid
    return knots.to(dtype or torch.get_default_dtype()).expand(n_in, -1).contiguous()


def interior(grid: torch.Tensor, k: int) -> torch.Tensor:
    """The interior knots ``[in, G + 1]`` of an extended grid ``[in, G + 2k + 1]``."""
    return grid[:, k:grid.shape[1] - k]


def _recip(d: torch.Tensor) -> torch.Tensor:
    """``1/d`` for knot differences, finite when ``d = 0`` (repeated knots: then the
    B-spline it multiplies is zero, which gives the 0/0 = 0 convention)."""
    return 1.0 / d.clamp_min(1e-30)


def bspline_basis_cox(x: torch.Tensor, grid: torch.Tensor, k: int) -> torch.Tensor:
    """All order-``k`` B-splines at ``x`` by the dense Cox-de Boor recursion.

    ``B_j^0(x) = [t_j <= x < t_{j+1}]`` and
    ``B_j^p(x) = (x - t_j)/(t_{j+p} - t_j) B_j^{p-1}(x) + (t_{j+p+1} - x)/(t_{j+p+1} - t_{j+1}) B_{j+1}^{p-1}(x)``
    (de Boor, A Practical Guide to Splines, ch. IX), evaluated for every ``j`` at once.
    The reference implementation (efficient-kan works this way): under plain autograd it
    keeps every level, about ``3k`` tensors of ``[batch, in, G + 2k]``, for backward.

    Args:
        x: ``[batch, in]``; grid: ``[in, G + 2k + 1]`` extended knots; k: order.

    Returns:
        ``[batch, in, G + k]``; zero outside ``[t_0, t_last)``.
    """
    xe = x.unsqueeze(-1)  # [N, in, 1]
    t = grid.unsqueeze(0)  # [1, in, M]
    b = ((xe >= t[..., :-1]) & (xe < t[..., 1:])).to(x.dtype)  # [N, in, M-1]
    for p in range(1, k + 1):
        left = (xe - t[..., :-(p + 1)]) * _recip(t[..., p:-1] - t[..., :-(p + 1)])
        right = (t[..., p + 1:] - xe) * _recip(t[..., p + 1:] - t[..., 1:-p])
        b = left * b[..., :-1] + right * b[..., 1:]  # [N, in, M-1-p]
    return b


def bspline_local(x: torch.Tensor, grid: torch.Tensor, k: int, deriv: bool = False):
    """The ``k + 1`` B-splines that are non-zero at each ``x`` (de Boor's triangle).

    For ``t_j <= x < t_{j+1}`` only ``B_{j-k}, ..., B_j`` are non-zero. The same recursion
    as :func:`bspline_basis_cox` is run on those alone, so the work is
    ``O(batch * in * k^2)`` instead of ``O(batch * in * (G + 2k) * k)``; knots are read
    from one gathered window ``t_{j-k} .. t_{j+k+1}``. With ``deriv`` also
    ``d/dx B_m^k = k (B_m^{k-1}/(t_{m+k} - t_m) - B_{m+1}^{k-1}/(t_{m+k+1} - t_{m+1}))``.

    Args:
        x: ``[N, in]``; grid: ``[in, M]`` with ``M = G + 2k + 1``; k: order.

    Returns:
        ``(first, vals, dvals)``: ``first [N, in]`` (long) the index ``j - k`` of the first
        listed function, ``vals [N, in, k + 1]`` the values of ``B_{first + r}`` (entries
        whose index falls outside ``0 .. G + k - 1``, and all entries for ``x`` outside the
        grid, are zero), ``dvals`` their derivatives or ``None``.
    """
    n, n_in = x.shape
    m_knots = grid.shape[1]
    # interval index j with t_j <= x < t_{j+1}
    j = torch.searchsorted(grid.contiguous(), x.detach().t().contiguous(), right=True).t() - 1
    inside = (j >= 0) & (j <= m_knots - 2)
    j = j.clamp(0, m_knots - 2)
    # knots padded by k on each side so the window t_{j-k} .. t_{j+k+1} always exists
    padded = extend_grid(grid, k) if k > 0 else grid
    width = m_knots + 2 * k
    offs = torch.arange(2 * k + 2, device=x.device)
    rows = torch.arange(n_in, device=x.device)[None, :, None] * width
    win = padded.reshape(-1)[rows + j.unsqueeze(-1) + offs]  # [N, in, 2k+2]: t_{j-k+s}
    xe = x.unsqueeze(-1)
    b = inside.to(x.dtype).unsqueeze(-1)  # order 0: [N, in, 1]
    dvals = None
    for p in range(1, k + 1):
        t_m = win[..., k - p:k + 1]  # t_{m}, m = j - p + r, r = 0..p
        t_mp = win[..., k:k + p + 1]  # t_{m+p}
        t_m1 = win[..., k - p + 1:k + 2]  # t_{m+1}
        t_mp1 = win[..., k + 1:k + p + 2]  # t_{m+p+1}
        r1, r2 = _recip(t_mp - t_m), _recip(t_mp1 - t_m1)
        zero = b.new_zeros(n, n_in, 1)
        bl = torch.cat([zero, b], -1)  # B_m^{p-1}
        br = torch.cat([b, zero], -1)  # B_{m+1}^{p-1}
        if deriv and p == k:
            dvals = k * (bl * r1 - br * r2)
        b = (xe - t_m) * r1 * bl + (t_mp1 - xe) * r2 * br
    first = j - k
    idx = first.unsqueeze(-1) + torch.arange(k + 1, device=x.device)
    valid = ((idx >= 0) & (idx < m_knots - k - 1)).to(x.dtype)
    vals = b * valid
    if dvals is not None:
        dvals = dvals * valid
    elif deriv:
        dvals = torch.zeros_like(vals)
    return first, vals, dvals


def scatter_local(first: torch.Tensor, vals: torch.Tensor, n_basis: int) -> torch.Tensor:
    """Local values ``[N, in, k + 1]`` starting at ``first [N, in]`` -> dense ``[N, in, n_basis]``."""
    idx = (first.unsqueeze(-1) + torch.arange(vals.shape[-1], device=vals.device)).clamp(0, n_basis - 1)
    # scatter_add: clamped out-of-range entries carry zeros and must not overwrite
    return vals.new_zeros(*first.shape, n_basis).scatter_add_(2, idx, vals)


def bspline_basis(x: torch.Tensor, grid: torch.Tensor, k: int) -> torch.Tensor:
    """All order-``k`` B-splines at ``x``: ``[N, in]`` -> ``[N, in, G + k]``.

    Same values as :func:`bspline_basis_cox`, computed locally (:func:`bspline_local`) and
    scattered; differentiable in ``x`` by autograd.
    """
    first, vals, _ = bspline_local(x, grid, k)
    return scatter_local(first, vals, grid.shape[1] - k - 1)


def bspline_basis_deriv(x: torch.Tensor, grid: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense basis and its derivative in ``x`` (no autograd): two ``[N, in, G + k]``."""
    with torch.no_grad():
        first, vals, dvals = bspline_local(x, grid, k, deriv=True)
        nb = grid.shape[1] - k - 1
        return scatter_local(first, vals, nb), scatter_local(first, dvals, nb)


class SplineLinear(torch.autograd.Function):
    """``y = basis(x).flatten(1) @ weight.T`` keeping only the local basis for backward.

    Plain autograd through :func:`bspline_basis_cox` keeps every level of the recursion
    (about ``3k`` tensors of ``[batch, in, G + 2k]``) for backward. Here the forward runs
    under ``no_grad`` and saves only the ``k + 1`` non-zero basis values and their
    derivatives per input (:func:`bspline_local`: ``2 x [batch, in, k + 1]`` plus the
    ``[batch, in]`` start index), i.e. ``O(batch * in * (k + 1))``; the dense basis
    ``[batch, in, G + k]`` exists only transiently (forward matmul, weight gradient).
    First-order only (``once_differentiable``): use ``fast=False`` in the layer for
    higher-order derivatives in ``x``.

    Inputs: ``x [N, in]``, ``grid [in, G+2k+1]``, ``weight [out, in * (G + k)]``, ``k``.
    Output: ``[N, out]``.
    """

    @staticmethod
    def forward(ctx, x, grid, weight, k):  # noqa: D102
        nb = grid.shape[1] - k - 1
        with torch.no_grad():
            first, vals, dvals = bspline_local(x, grid, k, deriv=ctx.needs_input_grad[0])
            b = scatter_local(first, vals, nb)  # [N, in, G+k], freed after the matmul
            y = b.reshape(x.shape[0], -1) @ weight.t()
        ctx.save_for_backward(first, vals, dvals, weight)
        ctx.nb = nb
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):  # noqa: D102
        first, vals, dvals, weight = ctx.saved_tensors
        n, n_in = first.shape
        nb = ctx.nb
        gx = gw = None
        if ctx.needs_input_grad[2]:
            b = scatter_local(first, vals, nb)  # [N, in, G+k]
            gw = gy.t() @ b.reshape(n, -1)  # [out, in*(G+k)]
            del b
        if ctx.needs_input_grad[0]:
            gb = (gy @ weight).view(n, n_in, nb)  # dL/dbasis [N, in, G+k]
            idx = (first.unsqueeze(-1) + torch.arange(vals.shape[-1], device=gy.device)).clamp(0, nb - 1)
            gx = (gb.gather(2, idx) * dvals).sum(-1)  # only the k+1 local terms
        return gx, None, gw, None


def spline_linear(x: torch.Tensor, grid: torch.Tensor, weight: torch.Tensor, k: int,
                  fast: bool = True) -> torch.Tensor:
    """Sum over inputs of every edge's spline: ``y[n, o] = sum_i sum_j w[o, i, j] B_j(x[n, i])``.

    Args:
        x: ``[N, in]``; grid: ``[in, G + 2k + 1]``; weight: ``[out, in, G + k]``.
        fast: memory-lean custom backward (:class:`SplineLinear`); ``False`` uses plain
            autograd (supports double backward).

    Returns:
        ``[N, out]``.
    """
    w = weight.reshape(weight.shape[0], -1)
    if fast:
        return SplineLinear.apply(x, grid, w, k)
    return bspline_basis(x, grid, k).reshape(x.shape[0], -1) @ w.t()


def coef2curve(x: torch.Tensor, grid: torch.Tensor, coef: torch.Tensor, k: int) -> torch.Tensor:
    """Every edge's spline at ``x``: ``[N, in]`` x ``coef [out, in, G+k]`` -> ``[N, out, in]``."""
    b = bspline_basis(x, grid, k)
    return torch.einsum("nij,oij->noi", b, coef)


def _lstsq(a: torch.Tensor, b: torch.Tensor, ridge: float) -> torch.Tensor:
    """Batched least squares ``argmin |a s - b|^2 (+ ridge |s|^2)`` in float64 on the CPU.

    Args:
        a: ``[in, N, P]``; b: ``[in, N, Q]``. Returns ``[in, P, Q]``.
    """
    a64 = a.detach().to("cpu", torch.float64)
    b64 = b.detach().to("cpu", torch.float64)
    if ridge > 0:
        p = a64.shape[-1]
        eye = torch.eye(p, dtype=torch.float64).expand(a64.shape[0], p, p) * ridge ** 0.5
        a64 = torch.cat([a64, eye], dim=1)
        b64 = torch.cat([b64, b64.new_zeros(b64.shape[0], p, b64.shape[-1])], dim=1)
    # gelsd (SVD) copes with basis functions that no sample touches (min-norm solution)
    return torch.linalg.lstsq(a64, b64, driver="gelsd").solution


def curve2coef(x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor, k: int,
               ridge: float = 0.0) -> torch.Tensor:
    """Least-squares spline coefficients of sampled curves.

    Args:
        x: ``[N, in]`` sample points; y: ``[N, out, in]`` the curve of edge ``(o, i)`` at
            ``x[:, i]``; grid: ``[in, G + 2k + 1]``.
        ridge: optional Tikhonov term.

    Returns:
        ``coef [out, in, G + k]`` minimising ``sum_n (sum_j c_oij B_j(x_ni) - y_noi)^2``,
        in ``y``'s dtype and device.
    """
    b = bspline_basis(x, grid, k).permute(1, 0, 2)  # [in, N, G+k]
    sol = _lstsq(b, y.permute(2, 0, 1), ridge)  # [in, G+k, out]
    return sol.permute(2, 0, 1).to(y.dtype).to(y.device).contiguous()


def refit_matrix(x: torch.Tensor, old_grid: torch.Tensor, new_grid: torch.Tensor, k: int,
                 ridge: float = 0.0) -> torch.Tensor:
    """Linear map from old-grid to new-grid coefficients, fitted by least squares at ``x``.

    A spline is linear in its coefficients, so refitting every edge of input ``i`` onto a
    new grid is one small matrix ``T_i = argmin_T |B_new(x_i) T - B_old(x_i)|``; then
    ``coef_new[o, i] = T_i @ coef_old[o, i]`` for all outputs at once (no ``[N, out, in]``
    tensor is formed). Exact when the new grid contains the old knots (G -> m G).

    Args:
        x: ``[N, in]``; old_grid: ``[in, G + 2k + 1]``; new_grid: ``[in, G' + 2k + 1]``.

    Returns:
        ``[in, G' + k, G + k]`` in ``x``'s dtype and device.
    """
    bo = bspline_basis(x, old_grid, k).permute(1, 0, 2)
    bn = bspline_basis(x, new_grid, k).permute(1, 0, 2)
    return _lstsq(bn, bo, ridge).to(x.dtype).to(x.device)


def apply_refit(t: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``t [in, P', P]`` applied to ``coef [out, in, P]`` -> ``[out, in, P']``."""
    return torch.einsum("ipq,oiq->oip", t, coef).contiguous()


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
