"""Fast affine fits ``y ~ c * f(a * x + b) + d`` of the named functions
(:mod:`trainkit.kan.symbolic_functions`) to 1-D samples ``x, y`` of one KAN edge.

Fitting runs in float64 on standardised ``z = (x - mean) / std`` and ``y`` (grids
are unit-free), in two stages:

1. a grid search exploiting each function's structure (``kind``): ``linear`` is
   closed form; ``shift`` (powers, ``1/x``, ``log``, ``sqrt``, ``abs``) searches only
   the shift of ``f(+-(z - s))`` (the scale is absorbed by ``c``); ``scale``
   (``exp``) only ``a`` (``exp(b)`` is absorbed by ``c``); ``periodic`` uses
   ``c sin(az + b) = alpha sin(az) + beta cos(az)`` (linear in alpha, beta) so only
   the frequency is searched; ``step`` (``sgn``) finds the exact breakpoint by prefix
   sums; ``general`` searches a (scale, centre) grid. R^2 of a grid point is the
   squared correlation, on a 128-point quantile subsample;
2. Levenberg-Marquardt batched over the best grid points of all functions at once
   (subsample, then a few steps on all points), then least squares for ``(c, d)``.

``sin``/``cos`` keep at least a quarter period across the data; with less they
mimic the polynomials already in the library (and would tie with ``x^2``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from trainkit.common.errors import UserError
from trainkit.kan.symbolic_functions import SymbolicFunction, get_function


@dataclass
class AffineFit:
    """Result of fitting ``y ~ c * f(a * x + b) + d`` (parameters in x units)."""

    name: str
    a: float
    b: float
    c: float
    d: float
    r2: float
    complexity: int
    score: float = float("nan")
    fn: SymbolicFunction | None = field(default=None, repr=False)

    @property
    def params(self) -> tuple[float, float, float, float]:
        return (self.a, self.b, self.c, self.d)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """``c * f(a * x + b) + d`` with the guarded torch function; same shape as x."""
        fn = self.fn or get_function(self.name)
        return self.c * fn(self.a * x + self.b) + self.d

    def sympy(self, x):
        """SymPy expression ``c * f(a * x + b) + d`` for a SymPy symbol/expression x."""
        import sympy as sp

        fn = self.fn or get_function(self.name)
        f = sp.Float
        return f(self.c) * fn.sympy(f(self.a) * x + f(self.b)) + f(self.d)


@dataclass
class _Data:
    z: torch.Tensor  # [n] standardised x, float64
    y: torch.Tensor  # [n] standardised y
    zs: torch.Tensor  # [m] subsample of z (sorted quantiles)
    ys: torch.Tensor  # [m]
    mx: float
    sx: float
    my: float
    sy: float
    const_x: bool
    const_y: bool


def _prepare(x, y, n_sub: int) -> _Data:
    x = torch.as_tensor(x).detach().reshape(-1).to("cpu", torch.float64)
    y = torch.as_tensor(y).detach().reshape(-1).to("cpu", torch.float64)
    if x.numel() != y.numel():
        raise UserError(
            f"symbolic fit: x and y must have the same number of points "
            f"({x.numel()} != {y.numel()})"
        )
    if x.numel() < 2:
        raise UserError(f"symbolic fit: need at least 2 points, got {x.numel()}")
    if not (torch.isfinite(x).all() and torch.isfinite(y).all()):
        raise UserError("symbolic fit: x and y must be finite (found NaN or inf)")
    mx, sx = float(x.mean()), float(x.std(unbiased=False))
    my, sy = float(y.mean()), float(y.std(unbiased=False))
    const_x = sx == 0.0 or sx < 1e-13 * abs(mx)
    const_y = sy == 0.0 or sy < 1e-13 * abs(my)
    z = (x - mx) / (sx if not const_x else 1.0)
    yn = (y - my) / (sy if not const_y else 1.0)
    n = z.numel()
    if n > n_sub:
        idx = torch.argsort(z)[torch.linspace(0, n - 1, n_sub, dtype=torch.float64).round().long()]
        zs, ys = z[idx], yn[idx]
    else:
        zs, ys = z, yn
    return _Data(z, yn, zs, ys, mx, sx, my, sy, const_x, const_y)


def _corr_r2(F: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """R^2 of the best ``c * F_g + d`` for each row. F: [G, m], y: [m] -> [G]."""
    Fc = F - F.mean(-1, keepdim=True)
    yc = y - y.mean()
    num = (Fc @ yc) ** 2
    den = (Fc * Fc).sum(-1) * (yc @ yc)
    r2 = torch.where(den > 0, num / den.clamp_min(1e-300), torch.zeros_like(den))
    return torch.nan_to_num(r2, nan=0.0, posinf=0.0, neginf=0.0).clamp(0.0, 1.0)


def _span(d: _Data) -> tuple[float, float, float]:
    lo, hi = float(d.zs.min()), float(d.zs.max())
    return lo, hi, max(hi - lo, 1e-12)


def _grid_starts(fn: SymbolicFunction, d: _Data, n_starts: int) -> torch.Tensor:
    """Coarse search on the subsample. Returns the best ``(a, b)`` in z units: [K, 2]."""
    lo, hi, w = _span(d)
    dt = torch.float64
    signs = [1.0] if fn.reflect else [1.0, -1.0]
    if fn.kind == "linear":
        return torch.tensor([[1.0, 0.0]], dtype=dt)
    if fn.kind == "shift":
        s = torch.cat(
            [
                torch.linspace(lo - 0.5 * w, hi + 0.5 * w, 49, dtype=dt),
                lo - w * torch.tensor([1.0, 2, 4, 8, 16], dtype=dt),
                hi + w * torch.tensor([1.0, 2, 4, 8, 16], dtype=dt),
            ]
        )
        a = torch.cat([torch.full_like(s, sg) for sg in signs])
        b = torch.cat([-sg * s for sg in signs])
    elif fn.kind == "scale":
        mag = torch.logspace(-2, math.log10(30.0 / w), 32, dtype=dt)
        a = torch.cat([mag, -mag])
        b = torch.zeros_like(a)
    elif fn.kind == "periodic":
        a = torch.linspace(math.pi / (2 * w), 16 * math.pi / w, 64, dtype=dt)
        A = a[:, None] * d.zs[None, :]  # [G, m]
        S, C = torch.sin(A), torch.cos(A)
        S, C = S - S.mean(-1, keepdim=True), C - C.mean(-1, keepdim=True)
        yc = d.ys - d.ys.mean()
        g11, g22, g12 = (S * S).sum(-1), (C * C).sum(-1), (S * C).sum(-1)
        ridge = 1e-12 * (g11 + g22)
        g11, g22 = g11 + ridge, g22 + ridge
        t1, t2 = S @ yc, C @ yc
        det = g11 * g22 - g12 * g12
        alpha, beta = (g22 * t1 - g12 * t2) / det, (g11 * t2 - g12 * t1) / det
        r2 = torch.nan_to_num(alpha * t1 + beta * t2, nan=0.0)
        top = torch.topk(r2, min(n_starts, r2.numel())).indices
        # c sin(a z + phi) = alpha sin(a z) + beta cos(a z); f(u) = sin(u + phase).
        b = torch.atan2(beta[top], alpha[top]) - fn.phase
        return torch.stack([a[top], b], -1)
    else:  # general: u = a (z - centre)
        mag = torch.logspace(math.log10(0.2 / w), math.log10(60.0 / w), 16, dtype=dt)
        centre = torch.linspace(lo - 0.5 * w, hi + 0.5 * w, 25, dtype=dt)
        A = torch.cat([sg * mag for sg in signs])[:, None].expand(-1, 25).reshape(-1)
        Cn = centre[None, :].expand(len(signs) * 16, -1).reshape(-1)
        a, b = A, -A * Cn
    r2 = _corr_r2(fn(a[:, None] * d.zs[None, :] + b[:, None]), d.ys)  # [G]
    top = torch.topk(r2, min(n_starts, r2.numel())).indices
    return torch.stack([a[top], b[top]], -1)


def _step_fit(d: _Data) -> torch.Tensor:
    """Exact best breakpoint for ``c sgn(z - s) + d`` by prefix sums. Returns [1, 2]."""
    z, idx = torch.sort(d.z)
    y = d.y[idx]
    n = z.numel()
    i = torch.arange(1, n, dtype=torch.float64)  # points left of the breakpoint
    cs = torch.cumsum(y, 0)
    left, right = cs[:-1] / i, (cs[-1] - cs[:-1]) / (n - i)
    gain = i * left**2 + (n - i) * right**2  # SSE = sum(y^2) - gain
    gain = torch.where(z[1:] > z[:-1], gain, torch.full_like(gain, -math.inf))
    k = int(torch.argmax(gain))
    s = 0.5 * float(z[k] + z[k + 1])
    return torch.tensor([[1.0, -s]], dtype=torch.float64)


def _linear_cd(f: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Least squares ``y ~ c f + d`` per row. f: [K, n], y: [n] -> c, d: [K]."""
    fm = f.mean(-1, keepdim=True)
    fc = f - fm
    ym = y.mean()
    den = (fc * fc).sum(-1)
    c = torch.where(den > 0, (fc @ (y - ym)) / den.clamp_min(1e-300), torch.zeros_like(den))
    d = ym - c * fm.squeeze(-1)
    return c, d


class _Rows:
    """Several functions' candidate rows stacked into one batch: ``u`` is [R, n]."""

    def __init__(self, fns: list[SymbolicFunction], starts: list[torch.Tensor]):
        self.owners, r = [], 0
        for fn, st in zip(fns, starts):
            self.owners.append((fn, r, r + st.shape[0]))
            r += st.shape[0]
        self.theta_ab = torch.cat(starts, 0)  # [R, 2]

    def _blocks(self, active: list[bool] | None):
        """(fn, start, stop) blocks of the (compacted) active rows, in row order."""
        if active is None:
            return self.owners
        out, pos = [], 0
        for fn, r0, r1 in self.owners:
            k = sum(active[r0:r1])
            if k:
                out.append((fn, pos, pos + k))
                pos += k
        return out

    def f(self, u: torch.Tensor, active: list[bool] | None = None) -> torch.Tensor:
        return torch.cat([fn(u[r0:r1]) for fn, r0, r1 in self._blocks(active)], 0)

    def f_and_grad(self, u: torch.Tensor, active: list[bool] | None = None):
        fs, gs = [], []
        for fn, r0, r1 in self._blocks(active):
            ub = u[r0:r1]
            if fn.deriv is not None:
                fs.append(fn(ub))
                gs.append(fn.deriv(ub))
                continue
            with torch.enable_grad():
                ub = ub.detach().requires_grad_(True)
                fb = fn(ub)
                gb = None
                if fb.requires_grad:
                    (gb,) = torch.autograd.grad(fb.sum(), ub, allow_unused=True)
            if gb is None:  # no autograd formula (e.g. torch.special.bessel_j0)
                h = 1e-6 * (1.0 + ub.detach().abs())
                gb = (fn(ub.detach() + h) - fn(ub.detach() - h)) / (2 * h)
            fs.append(fb.detach())
            gs.append(gb)
        g = torch.nan_to_num(torch.cat(gs, 0), nan=0.0, posinf=0.0, neginf=0.0)
        return torch.cat(fs, 0), g


def _lm(
    rows: _Rows,
    z: torch.Tensor,
    y: torch.Tensor,
    masks: torch.Tensor,
    a_min: torch.Tensor,
    theta: torch.Tensor | None = None,
    max_iter: int = 30,
) -> torch.Tensor:
    """Batched Levenberg-Marquardt for ``theta = (a, b, c, d)`` on points ``z, y`` ([n]).

    Rows that have converged (relative SSE decrease < 1e-7, damping saturated, or an
    exact fit) leave the batch, so later iterations only evaluate the rest.

    masks: [R, 4] (1 = free parameter); a_min: [R] lower bound on ``|a|``;
    theta: [R, 4] start (default: ``rows.theta_ab`` with least-squares ``c, d``).
    Returns theta: [R, 4].
    """
    if theta is None:
        ab = rows.theta_ab
        c, dd = _linear_cd(rows.f(ab[:, 0:1] * z + ab[:, 1:2]), y)
        theta = torch.cat([ab, c[:, None], dd[:, None]], -1)  # [R, 4]
    theta = theta.clone()
    R = theta.shape[0]
    eye = 1e-12 * torch.eye(4, dtype=torch.float64)
    tiny = 1e-28 * z.numel()
    active = [True] * R
    idx = torch.arange(R)
    th, m, amin = theta, masks, a_min
    lam = torch.full((R,), 1e-3, dtype=torch.float64)

    def evaluate(t, act):
        f, g = rows.f_and_grad(t[:, 0:1] * z + t[:, 1:2], act)
        r = t[:, 2:3] * f + t[:, 3:4] - y
        return f, g, r, torch.nan_to_num((r * r).sum(-1), nan=math.inf)

    f, g, r, sse = evaluate(th, None)
    for _ in range(max_iter):
        cg = th[:, 2:3] * g
        Jt = torch.stack([cg * z, cg, f, torch.ones_like(f)], 1) * m[:, :, None]  # [A, 4, n]
        A = Jt @ Jt.transpose(1, 2)  # [A, 4, 4]
        grad = (Jt @ r[..., None]).squeeze(-1)  # [A, 4]
        A = A + lam[:, None, None] * torch.diag_embed(torch.diagonal(A, dim1=1, dim2=2))
        A = A + torch.diag_embed(1.0 - m) + eye
        step = torch.linalg.solve(A, -grad[..., None]).squeeze(-1)
        new = th + torch.nan_to_num(step, nan=0.0, posinf=0.0, neginf=0.0)
        na = new[:, 0]
        new[:, 0] = torch.where(na.abs() < amin, torch.where(na < 0, -amin, amin), na)
        f2, g2, r2, sse2 = evaluate(new, active)
        ok = sse2 < sse
        rel = torch.where(ok, (sse - sse2) / sse.clamp_min(1e-300), torch.zeros_like(sse))
        okc = ok[:, None]
        th, f, g, r = (
            torch.where(okc, new, th),
            torch.where(okc, f2, f),
            torch.where(okc, g2, g),
            torch.where(okc, r2, r),
        )
        sse = torch.where(ok, sse2, sse)
        lam = torch.where(ok, lam / 3, lam * 4).clamp(1e-12, 1e12)
        done = (ok & (rel < 1e-7)) | (lam >= 1e8) | (sse <= tiny)
        theta[idx] = th
        if bool(done.any()):
            keep = ~done
            if not bool(keep.any()):
                break
            for i, dn in zip(idx.tolist(), done.tolist()):
                if dn:
                    active[i] = False
            idx, th, m, amin, lam = idx[keep], th[keep], m[keep], amin[keep], lam[keep]
            f, g, r, sse = f[keep], g[keep], r[keep], sse[keep]
    return theta


def _fit_many(
    fns: list[SymbolicFunction], d: _Data, refine: bool, n_starts: int
) -> list[AffineFit]:
    """Fit every function; all candidate rows are refined together in one batch."""
    out: list[AffineFit | None] = [None] * len(fns)
    todo, starts = [], []
    for i, fn in enumerate(fns):
        if d.const_y or d.const_x or fn.kind == "zero":
            out[i] = AffineFit(
                fn.name, 1.0, 0.0, 0.0, d.my, 1.0 if d.const_y else 0.0, fn.complexity, fn=fn
            )
            continue
        todo.append(fn)
        starts.append(_step_fit(d) if fn.kind == "step" else _grid_starts(fn, d, n_starts))
    if not todo:
        return out  # type: ignore[return-value]
    rows = _Rows(todo, starts)
    ab = rows.theta_ab
    if refine:
        masks, a_min = [], []
        _, _, w = _span(d)
        for fn, r0, r1 in rows.owners:
            m = [1.0, 1.0, 1.0, 1.0]
            if fn.kind in ("shift", "linear", "step"):
                m[0] = 0.0  # scale absorbed by c
            if fn.kind in ("scale", "linear", "step"):
                m[1] = 0.0  # shift absorbed by c (exp) or not needed
            masks += [m] * (r1 - r0)
            a_min += [math.pi / (2 * w) if fn.kind == "periodic" else 0.0] * (r1 - r0)
        masks_t = torch.tensor(masks, dtype=torch.float64)
        a_min_t = torch.tensor(a_min, dtype=torch.float64)
        # Most iterations on the quantile subsample, a few polishing ones on all points.
        theta = _lm(rows, d.zs, d.ys, masks_t, a_min_t, max_iter=15)
        if d.zs.numel() < d.z.numel():
            theta = _lm(rows, d.z, d.y, masks_t, a_min_t, theta=theta, max_iter=6)
        ab = theta[:, :2]
    f = rows.f(ab[:, 0:1] * d.z + ab[:, 1:2])  # [R, n]
    c, dd = _linear_cd(f, d.y)
    sse = torch.nan_to_num(((c[:, None] * f + dd[:, None] - d.y) ** 2).sum(-1), nan=math.inf)
    sst = float(((d.y - d.y.mean()) ** 2).sum())
    j = 0
    for fn, r0, r1 in rows.owners:
        while out[j] is not None:
            j += 1
        k = r0 + int(torch.argmin(sse[r0:r1]))
        r2 = 1.0 - float(sse[k]) / sst
        r2 = min(max(r2, 0.0), 1.0) if math.isfinite(r2) else 0.0
        az, bz, cn, dn = float(ab[k, 0]), float(ab[k, 1]), float(c[k]), float(dd[k])
        # u = az * (x - mx) / sx + bz ;  y = my + sy * (cn * f(u) + dn)
        out[j] = AffineFit(
            fn.name,
            az / d.sx,
            bz - az * d.mx / d.sx,
            d.sy * cn,
            d.my + d.sy * dn,
            r2,
            fn.complexity,
            fn=fn,
        )
    return out  # type: ignore[return-value]


def fit_affine(
    x: torch.Tensor,
    y: torch.Tensor,
    fn: str | SymbolicFunction | Callable,
    *,
    refine: bool = True,
    n_starts: int = 3,
    n_sub: int = 128,
) -> AffineFit:
    """Fit ``y ~ c * f(a * x + b) + d`` for one function.

    Args:
        x: [N] (any shape, flattened) inputs of one edge, float32 or float64.
        y: [N] values of the edge activation at x.
        fn: library name (``"sin"``), a :class:`SymbolicFunction`, or a plain torch
            callable (searched as a ``general`` function, complexity 3, no SymPy form).
        refine: run Levenberg-Marquardt after the grid search (else grid only).
        n_starts: number of best grid points refined.
        n_sub: points used for the grid search (quantile subsample).

    Returns:
        :class:`AffineFit` with ``a, b, c, d`` in the units of x and y and ``r2``
        (``1 - SSE/SST``; 1.0 for constant y; 0.0 for the ``0`` function).
    """
    if callable(fn) and not isinstance(fn, SymbolicFunction):
        fn = SymbolicFunction(
            getattr(fn, "__name__", "custom"), fn, lambda sp, u: sp.Function("f")(u)
        )
    fn = get_function(fn)
    return _fit_many([fn], _prepare(x, y, n_sub), refine, n_starts)[0]


def fit_affine_many(
    x: torch.Tensor,
    y: torch.Tensor,
    fns: list[SymbolicFunction],
    *,
    refine: bool = True,
    n_starts: int = 3,
    n_sub: int = 128,
) -> list[AffineFit]:
    """:func:`fit_affine` for every function of ``fns`` on the same samples, with one
    batched Levenberg-Marquardt for all of them; the fits in the order of ``fns``."""
    return _fit_many(fns, _prepare(x, y, n_sub), refine, n_starts)
