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


def uniform_grid(
    n_in: int,
    grid: int,
    k: int,
    lo: float = -1.0,
    hi: float = 1.0,
    dtype: torch.dtype | None = None,
    device=None,
) -> torch.Tensor:
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
    return grid[:, k : grid.shape[1] - k]


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
        left = (xe - t[..., : -(p + 1)]) * _recip(t[..., p:-1] - t[..., : -(p + 1)])
        right = (t[..., p + 1 :] - xe) * _recip(t[..., p + 1 :] - t[..., 1:-p])
        b = left * b[..., :-1] + right * b[..., 1:]  # [N, in, M-1-p]
    return b


def is_uniform(grid: torch.Tensor) -> bool:
    """Whether every row of ``grid [in, M]`` is equally spaced (to rounding)."""
    d = grid[:, 1:] - grid[:, :-1]
    h = d.mean(1, keepdim=True)
    tol = 64 * torch.finfo(grid.dtype).eps * grid.abs().amax(1, keepdim=True).clamp_min(1.0)
    return bool(((d - h).abs() <= tol).all() and (h > 0).all())


def bspline_local(
    x: torch.Tensor, grid: torch.Tensor, k: int, deriv: bool = False, uniform: bool = False
):
    """The ``k + 1`` B-splines that are non-zero at each ``x`` (de Boor's triangle).

    For ``t_j <= x < t_{j+1}`` only ``B_{j-k}, ..., B_j`` are non-zero. The same recursion
    as :func:`bspline_basis_cox` is run on those alone, so the work is
    ``O(batch * in * k^2)`` instead of ``O(batch * in * (G + 2k) * k)``; knots are read
    from one gathered window ``t_{j-k} .. t_{j+k+1}``. With ``deriv`` also
    ``d/dx B_m^k = k (B_m^{k-1}/(t_{m+k} - t_m) - B_{m+1}^{k-1}/(t_{m+k+1} - t_{m+1}))``.

    On a uniform grid (``uniform=True``, see :func:`is_uniform`) the interval comes from
    ``floor((x - t_0) / h)`` and, with ``u = (x - t_j) / h``, the recursion weights reduce
    to ``B^p_r = ((u + p - r) B^{p-1}_{r-1} + (r + 1 - u) B^{p-1}_r) / p`` (for k = 3 the
    closed-form cubic pieces ``(1-u)^3/6, (3u^3 - 6u^2 + 4)/6, ...`` are used).

    Args:
        x: ``[N, in]``; grid: ``[in, M]`` with ``M = G + 2k + 1``; k: order.
        uniform: the caller asserts every row of ``grid`` is equally spaced.

    Returns:
        ``(first, vals, dvals)``: ``first [N, in]`` (long) the index ``j - k`` of the first
        listed function, ``vals [N, in, k + 1]`` the values of ``B_{first + r}`` (entries
        whose index falls outside ``0 .. G + k - 1``, and all entries for ``x`` outside the
        grid, are zero), ``dvals`` their derivatives or ``None``. (Views of the
        ``[in, N]`` / ``[k + 1, in, N]`` tensors of :func:`_local_t`.)
    """
    first, vals, dvals, _ = _local_t(x, grid, k, deriv, uniform)
    return first.t(), vals.permute(2, 1, 0), (dvals.permute(2, 1, 0) if dvals is not None else None)


def _local_t(x, grid, k, deriv, uniform):
    """:func:`bspline_local` in the internal layout: ``first [in, N]``, values
    ``[k + 1, in, N]``. Every slice is then a contiguous block and the elementwise work
    runs on long rows (an ``[N, in, k + 1]`` layout is ~5x slower on CPU).

    Masking (points outside the grid, functions that exist only in the padding) costs
    several passes, so it is done only when some point needs it (one reduction).
    """
    m_knots = grid.shape[1]
    xt = x.t().contiguous()  # [in, N]
    if uniform and k > 0:
        t0 = grid[:, :1]  # [in, 1]
        h = (grid[:, -1:] - t0) / (m_knots - 1)
        pos = (xt - t0) / h  # position in units of h
        jf = torch.floor(pos.detach())
        j = jf.long()
    else:
        h = None
        # interval index j with t_j <= x < t_{j+1}
        j = torch.searchsorted(grid.contiguous(), xt.detach(), right=True) - 1
    first = j - k  # [in, N]
    # inside the interior range [t_k, t_{M-1-k}) every listed function exists: no masking.
    # (On CUDA the check is a host sync; always masking instead raised the measured H100
    # peak of a [784,256,10] step from 33 to 42 MB at about the same time.)
    if k > 0:
        edge = bool(((first < 0) | (first > m_knots - 2 * k - 2)).any())
    else:
        edge = bool(((j < 0) | (j > m_knots - 2)).any())
    if edge:
        inside = ((j >= 0) & (j <= m_knots - 2)).to(x.dtype)
        j = j.clamp(0, m_knots - 2)
        first = j - k
        if uniform and k > 0:
            jf = jf.clamp(0, m_knots - 2)
    else:
        inside = None
    if uniform and k > 0:
        vals, dvals = _uniform_pieces(pos - jf, h, k, deriv)
    else:
        vals, dvals = _general_pieces(xt, j, grid, k, deriv)
    if edge:
        mask = inside.unsqueeze(0)
        if k > 0:
            # functions with index < 0 or >= G + k exist only in the padding: drop them
            idx = first.unsqueeze(0) + torch.arange(k + 1, device=x.device)[:, None, None]
            mask = mask * ((idx >= 0) & (idx < m_knots - k - 1)).to(x.dtype)
        vals = vals * mask
        if dvals is not None:
            dvals = dvals * mask
    return first, vals, dvals, edge


def _general_pieces(xt, j, grid, k, deriv):
    """Local Cox-de Boor on any grid; ``xt, j``: ``[in, N]`` -> ``[k+1, in, N]`` (unmasked)."""
    n_in, n = xt.shape
    # knots padded by k on each side so the window t_{j-k} .. t_{j+k+1} always exists
    padded = extend_grid(grid, k) if k > 0 else grid  # [in, M + 2k]
    base = j + torch.arange(n_in, device=xt.device)[:, None] * padded.shape[1]
    offs = torch.arange(2 * k + 2, device=xt.device)[:, None, None]
    win = torch.take(padded, base.unsqueeze(0) + offs)  # [2k+2, in, N]: t_{j-k+s}
    xe = xt.unsqueeze(0)
    b = torch.ones_like(xe)  # order 0: [1, in, N]
    dvals = None
    for p in range(1, k + 1):
        t_m = win[k - p : k + 1]  # t_{m}, m = j - p + r, r = 0..p
        t_mp = win[k : k + p + 1]  # t_{m+p}
        t_m1 = win[k - p + 1 : k + 2]  # t_{m+1}
        t_mp1 = win[k + 1 : k + p + 2]  # t_{m+p+1}
        zero = b.new_zeros(1, n_in, n)
        bl = torch.cat([zero, b], 0) * _recip(t_mp - t_m)  # B_m^{p-1} / (t_{m+p} - t_m)
        br = torch.cat([b, zero], 0) * _recip(t_mp1 - t_m1)  # B_{m+1}^{p-1} / (...)
        if deriv and p == k:
            dvals = k * (bl - br)
        b = (xe - t_m) * bl + (t_mp1 - xe) * br  # [p+1, in, N]
    if deriv and dvals is None:
        dvals = torch.zeros_like(b)
    return b, dvals


def _uniform_pieces(u, h, k, deriv):
    """Local B-splines on a uniform grid from ``u = (x - t_j)/h`` (``[in, N]``), unmasked."""
    n_in, n = u.shape
    if k == 3:
        return _uniform_cubic(u, h, deriv)
    u = u.unsqueeze(0)
    b = torch.ones_like(u)
    dvals = None
    for p in range(1, k + 1):
        r = torch.arange(p + 1, dtype=u.dtype, device=u.device)[:, None, None]
        zero = b.new_zeros(1, n_in, n)
        bl = torch.cat([zero, b], 0)
        br = torch.cat([b, zero], 0)
        if deriv and p == k:
            dvals = (bl - br) / h.unsqueeze(0)
        b = ((u + (p - r)) * bl + ((r + 1) - u) * br) / p  # [p+1, in, N]
    return b, dvals


def _local_index(first: torch.Tensor, kp1: int, n_basis: int, clamp: bool) -> torch.Tensor:
    """``[in, k+1, N]`` basis indices ``first + r``; ``clamp`` when some fall outside."""
    idx = first.unsqueeze(1) + torch.arange(kp1, device=first.device)[:, None]
    return idx.clamp_(0, n_basis - 1) if clamp else idx


def _uniform_cubic(u, h, deriv):
    """Closed-form uniform cubic pieces ``[4, in, N]`` (de Boor, ch. IX) and derivatives.

    ``(1-u)^3/6, (3u^3 - 6u^2 + 4)/6, (-3u^3 + 3u^2 + 3u + 1)/6, u^3/6``; the third is
    taken from the partition of unity, its derivative from the derivatives summing to 0.
    Written in place (fewest passes over memory) unless autograd needs the graph.
    """
    n_in, n = u.shape
    v = 1 - u
    u6 = u * (1 / 6)
    half_h = 0.5 / h  # [in, 1]
    if torch.is_grad_enabled() and (u.requires_grad or h.requires_grad):
        b0, b3 = v * v * (v * (1 / 6)), u * u * u6
        b1 = u * u6 * (3 * u - 6) + 2 / 3
        vals = torch.stack([b0, b1, 1 - b0 - b1 - b3, b3])
        dvals = None
        if deriv:
            d0, d3, d1 = -v * v * half_h, u * u * half_h, u * (3 * u - 4) * half_h
            dvals = torch.stack([d0, d1, -d0 - d1 - d3, d3])
        return vals, dvals
    vals = u.new_empty(4, n_in, n)
    torch.mul(v * v, v * (1 / 6), out=vals[0])  # (1-u)^3 / 6
    torch.mul(u * u, u6, out=vals[3])  # u^3 / 6
    torch.add(u * u6 * (3 * u - 6), 2 / 3, out=vals[1])  # (3u^3 - 6u^2 + 4) / 6
    torch.sub(1 - vals[0] - vals[1], vals[3], out=vals[2])  # partition of unity
    dvals = None
    if deriv:
        dvals = u.new_empty(4, n_in, n)
        torch.mul(v * v, -half_h, out=dvals[0])  # -(1-u)^2 / 2h
        torch.mul(u * u, half_h, out=dvals[3])  # u^2 / 2h
        torch.mul(u * (3 * u - 4), half_h, out=dvals[1])  # (3u^2 - 4u) / 2h
        torch.sub(-dvals[0] - dvals[1], dvals[3], out=dvals[2])  # derivatives sum to 0
    return vals, dvals


def _dense_t(
    first: torch.Tensor, vals: torch.Tensor, n_basis: int, clamp: bool = True
) -> torch.Tensor:
    """``first [in, N]``, ``vals [k+1, in, N]`` -> dense basis ``[in, n_basis, N]``.

    ``clamp=False`` is allowed when every ``first + r`` is a valid index (no edge points).
    """
    idx = _local_index(first, vals.shape[0], n_basis, clamp)
    # scatter_add: clamped out-of-range entries carry zeros and must not overwrite
    return vals.new_zeros(first.shape[0], n_basis, first.shape[1]).scatter_add_(
        1, idx, vals.transpose(0, 1)
    )


def scatter_local(first: torch.Tensor, vals: torch.Tensor, n_basis: int) -> torch.Tensor:
    """Local values ``[N, in, k + 1]`` starting at ``first [N, in]`` -> dense ``[N, in, n_basis]``."""
    return _dense_t(first.t(), vals.permute(2, 1, 0), n_basis).permute(2, 0, 1)


def bspline_basis(
    x: torch.Tensor, grid: torch.Tensor, k: int, uniform: bool = False
) -> torch.Tensor:
    """All order-``k`` B-splines at ``x``: ``[N, in]`` -> ``[N, in, G + k]``.

    Same values as :func:`bspline_basis_cox`, computed locally (:func:`bspline_local`) and
    scattered; differentiable in ``x`` by autograd. The result is a strided view.
    """
    first, vals, _, edge = _local_t(x, grid, k, False, uniform)
    return _dense_t(first, vals, grid.shape[1] - k - 1, edge).permute(2, 0, 1)


def bspline_basis_deriv(
    x: torch.Tensor, grid: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """The dense basis and its derivative in ``x`` (no autograd): two ``[N, in, G + k]``."""
    with torch.no_grad():
        first, vals, dvals, edge = _local_t(x, grid, k, True, False)
        nb = grid.shape[1] - k - 1
        return (
            _dense_t(first, vals, nb, edge).permute(2, 0, 1),
            _dense_t(first, dvals, nb, edge).permute(2, 0, 1),
        )


class SplineLinear(torch.autograd.Function):
    """``y = basis(x).flatten(1) @ weight.T`` keeping only the local basis for backward.

    Plain autograd through :func:`bspline_basis_cox` keeps every level of the recursion
    (about ``3k`` tensors of ``[batch, in, G + 2k]``) for backward. Here the forward runs
    under ``no_grad`` and saves only the ``k + 1`` non-zero basis values and their
    derivatives per input (:func:`bspline_local`: ``2 x [batch, in, k + 1]`` plus the
    ``[batch, in]`` start index), i.e. ``O(batch * in * (k + 1))``; the dense basis
    (``[in, G + k, batch]`` here) exists only transiently (forward matmul, weight
    gradient). First-order only (``once_differentiable``): use ``fast=False`` in the
    layer for higher-order derivatives in ``x``.

    Inputs: ``x [N, in]``, ``grid [in, G+2k+1]``, ``weight [out, in * (G + k)]``, ``k``,
    ``uniform``. Output: ``[N, out]``.
    """

    @staticmethod
    def forward(ctx, x, grid, weight, k, uniform=False):  # noqa: D102
        nb = grid.shape[1] - k - 1
        n, n_in = x.shape
        with torch.no_grad():
            first, vals, dvals, edge = _local_t(x, grid, k, ctx.needs_input_grad[0], uniform)
            d = _dense_t(first, vals, nb, edge).view(n_in * nb, n)  # freed after the matmul
            y = (weight @ d).t()  # [N, out]
        # int32 start indices and no weight when x needs no gradient: less kept for backward
        ctx.save_for_backward(
            first.to(torch.int32), vals, dvals, weight if ctx.needs_input_grad[0] else None
        )
        ctx.nb, ctx.edge = nb, edge
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, gy):  # noqa: D102
        first, vals, dvals, weight = ctx.saved_tensors
        first = first.long()
        n_in, n = first.shape
        nb = ctx.nb
        gx = gw = None
        if ctx.needs_input_grad[2]:
            d = _dense_t(first, vals, nb, ctx.edge).view(n_in * nb, n)
            gw = gy.t() @ d.t()  # [out, in*(G+k)]
            del d
        if ctx.needs_input_grad[0]:
            gb = (weight.t() @ gy.t()).view(n_in, nb, n)  # dL/dbasis [in, G+k, N]
            local = gb.gather(
                1, _local_index(first, vals.shape[0], nb, ctx.edge)
            )  # [in, k+1, N]: only the k+1 non-zero terms
            gx = (local * dvals.transpose(0, 1)).sum(1).t()  # [N, in]
        return gx, None, gw, None, None


def spline_linear(
    x: torch.Tensor,
    grid: torch.Tensor,
    weight: torch.Tensor,
    k: int,
    fast: bool = True,
    uniform: bool = False,
) -> torch.Tensor:
    """Sum over inputs of every edge's spline: ``y[n, o] = sum_i sum_j w[o, i, j] B_j(x[n, i])``.

    Args:
        x: ``[N, in]``; grid: ``[in, G + 2k + 1]``; weight: ``[out, in, G + k]``.
        fast: memory-lean custom backward (:class:`SplineLinear`); ``False`` uses plain
            autograd (supports double backward).
        uniform: ``grid`` is equally spaced (:func:`is_uniform`): a cheaper basis.

    Returns:
        ``[N, out]``.
    """
    w = weight.reshape(weight.shape[0], -1)
    if fast:
        return SplineLinear.apply(x, grid, w, k, uniform)
    return bspline_basis(x, grid, k, uniform).reshape(x.shape[0], -1) @ w.t()


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
        eye = torch.eye(p, dtype=torch.float64).expand(a64.shape[0], p, p) * ridge**0.5
        a64 = torch.cat([a64, eye], dim=1)
        b64 = torch.cat([b64, b64.new_zeros(b64.shape[0], p, b64.shape[-1])], dim=1)
    # gelsd (SVD) copes with basis functions that no sample touches (min-norm solution)
    return torch.linalg.lstsq(a64, b64, driver="gelsd").solution


def curve2coef(
    x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor, k: int, ridge: float = 0.0
) -> torch.Tensor:
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


def refit_matrix(
    x: torch.Tensor, old_grid: torch.Tensor, new_grid: torch.Tensor, k: int, ridge: float = 0.0
) -> torch.Tensor:
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
