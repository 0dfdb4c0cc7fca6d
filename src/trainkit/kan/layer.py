"""``KANLinear``: a layer of learnable edge functions (Liu et al. 2024, eq. 2.10).

Edge ``(o, i)`` carries
``phi_oi(x) = mask_oi * (w_b[o, i] * b(x) + w_s[o, i] * sum_j c_oij B_j(x))
+ sym_mask_oi * (c * f_oi(a * x + b) + d)``
and output ``o`` sums its edges: ``y_o = sum_i phi_oi(x_i)``.

Fast path (``forward``): the basis ``[N, in, G + k]`` is contracted with one matmul against
the folded weight ``mask * w_s * c`` (``[out, in * (G + k)]``) inside
:class:`trainkit.kan.spline.SplineLinear`, which keeps only ``x`` for backward; the base
branch is one more matmul. No ``[N, out, in]`` tensor is formed.

Slow path (``edge_activations``): every edge's value ``[N, out, in]``, for the
regulariser, plots, pruning scores and symbolic fitting.

The symbolic slot (``sym_mask``, ``sym_affine``, ``sym_fns``) is inactive (all zero) by
default; a symbolic tool sets ``sym_fns[o][i]`` to a name in :data:`SYMBOLIC_FUNCS` (or
registers one with :func:`register_symbolic`) and flips the masks.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainkit.common.errors import UserError
from trainkit.kan import grid as grid_mod
from trainkit.kan import spline

BASE_FUNS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "identity": lambda x: x,
    "zero": torch.zeros_like,
    "tanh": torch.tanh,
    "gelu": F.gelu,
}

SYMBOLIC_FUNCS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "0": torch.zeros_like,
    "x": lambda x: x,
    "x^2": lambda x: x * x,
    "x^3": lambda x: x**3,
    "exp": torch.exp,
    "sin": torch.sin,
    "cos": torch.cos,
    "tanh": torch.tanh,
    "abs": torch.abs,
}


def register_symbolic(name: str, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
    """Make ``name`` usable in ``KANLinear.sym_fns`` (saved models store the name)."""
    SYMBOLIC_FUNCS[name] = fn


class KANLinear(nn.Module):
    """A KAN layer mapping ``[..., in]`` to ``[..., out]`` like ``nn.Linear``.

    Args:
        in_features, out_features: sizes.
        grid: number of grid intervals ``G``.
        k: spline order.
        grid_range: initial ``(lo, hi)`` of every input's grid.
        base_fun: name in :data:`BASE_FUNS` (``"silu"`` as in the paper).
        noise_scale: spline coefficients start uniform in ``noise_scale / G * [-1/2, 1/2]``.
        scale_base_mu, scale_base_sigma: ``w_b = (mu + sigma * U(-1, 1)) / sqrt(in)``.
        scale_sp: initial ``w_s`` times ``1/sqrt(in)``.
        grid_eps: mix of uniform (1) and percentile (0) knots in :meth:`update_grid`.
        fast: use the memory-lean custom backward (first-order only).
        generator: torch generator for the initialisation.

    Parameters: ``coef [out, in, G + k]``, ``scale_base [out, in]``, ``scale_sp [out, in]``,
    ``sym_affine [out, in, 4]`` (``a, b, c, d``). Buffers: ``grid [in, G + 2k + 1]``,
    ``mask [out, in]`` (1 = edge alive), ``sym_mask [out, in]`` (1 = symbolic branch on).
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        grid: int = 5,
        k: int = 3,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        base_fun: str = "silu",
        noise_scale: float = 0.3,
        scale_base_mu: float = 0.0,
        scale_base_sigma: float = 1.0,
        scale_sp: float = 1.0,
        grid_eps: float = 0.02,
        fast: bool = True,
        dtype: torch.dtype | None = None,
        device=None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        if base_fun not in BASE_FUNS:
            raise UserError(
                f"KANLinear: base_fun '{base_fun}' unknown; choose from {', '.join(BASE_FUNS)}"
            )
        if grid < 1 or k < 0:
            raise UserError(f"KANLinear: need grid >= 1 and k >= 0, got grid={grid}, k={k}")
        self.in_features, self.out_features = in_features, out_features
        self.k, self.base_fun, self.grid_eps, self.fast = k, base_fun, grid_eps, fast
        dtype = dtype or torch.get_default_dtype()
        kw = {"dtype": dtype, "device": device}
        self.register_buffer("grid", spline.uniform_grid(in_features, grid, k, *grid_range, **kw))
        u = lambda *shape: torch.rand(*shape, generator=generator, dtype=dtype).to(device)
        self.coef = nn.Parameter(
            (u(out_features, in_features, grid + k) - 0.5) * noise_scale / grid
        )
        rs = 1.0 / math.sqrt(in_features)
        self.scale_base = nn.Parameter(
            (scale_base_mu + scale_base_sigma * (2 * u(out_features, in_features) - 1)) * rs
        )
        self.scale_sp = nn.Parameter(torch.full((out_features, in_features), scale_sp * rs, **kw))
        self.register_buffer("mask", torch.ones(out_features, in_features, **kw))
        self.register_buffer("sym_mask", torch.zeros(out_features, in_features, **kw))
        aff = torch.zeros(out_features, in_features, 4, **kw)
        aff[..., 0] = 1.0
        aff[..., 2] = 1.0
        self.sym_affine = nn.Parameter(aff)
        self.sym_fns: list[list[str]] = [["0"] * in_features for _ in range(out_features)]

    # ---- sizes ----------------------------------------------------------------------
    @property
    def grid_size(self) -> int:
        """``G``, the number of interior intervals."""
        return self.grid.shape[1] - 2 * self.k - 1

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"grid={self.grid_size}, k={self.k}, base_fun={self.base_fun}"
        )

    def grid_is_uniform(self) -> bool:
        """Whether the grid is equally spaced (cached until the grid tensor changes)."""
        key = (self.grid.data_ptr(), self.grid._version, str(self.grid.device), self.grid.shape)
        if getattr(self, "_uniform_key", None) != key:
            self._uniform_flag = spline.is_uniform(self.grid)
            self._uniform_key = key
        return self._uniform_flag

    # ---- forward --------------------------------------------------------------------
    def spline_weight(self) -> torch.Tensor:
        """Folded spline weight ``mask * w_s * c``: ``[out, in, G + k]``."""
        return (self.mask * self.scale_sp).unsqueeze(-1) * self.coef

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., in]`` -> ``[..., out]``."""
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)  # [N, in]
        y = spline.spline_linear(
            x2,
            self.grid,
            self.spline_weight(),
            self.k,
            fast=self.fast,
            uniform=self.grid_is_uniform(),
        )
        if self.base_fun != "zero":
            y = y + BASE_FUNS[self.base_fun](x2) @ (self.mask * self.scale_base).t()
        if self.sym_mask.any():
            y = y + self.symbolic_activations(x2).sum(-1)
        return y.reshape(*lead, self.out_features)

    def symbolic_activations(self, x: torch.Tensor) -> torch.Tensor:
        """The symbolic branch of each edge, ``sym_mask * (c f(a x + b) + d)``: ``[N, out, in]``."""
        n = x.shape[0]
        out = x.new_zeros(n, self.out_features, self.in_features)
        a, b, c, d = self.sym_affine.unbind(-1)  # each [out, in]
        for o, i in self.sym_mask.nonzero().tolist():
            name = self.sym_fns[o][i]
            fn = SYMBOLIC_FUNCS.get(name)
            if fn is None:  # library names work without importing trainkit.kan.symbolic
                from trainkit.kan.symbolic_functions import LIBRARY

                fn = LIBRARY[name].torch_fn if name in LIBRARY else None
            if fn is None:
                raise UserError(f"KANLinear: symbolic function '{name}' is not registered")
            out[:, o, i] = self.sym_mask[o, i] * (
                c[o, i] * fn(a[o, i] * x[:, i] + b[o, i]) + d[o, i]
            )
        return out

    def edge_activations(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Every edge's value (plain autograd; ``O(N * out * in)`` memory).

        Args:
            x: ``[N, in]``.

        Returns:
            dict with ``postacts [N, out, in]`` (the full ``phi_oi(x_i)``; summing over the
            last axis gives ``forward(x)``), ``spline [N, out, in]`` (``w_s * spline``,
            unmasked), ``base [N, out, in]`` (``w_b * b(x)``, unmasked) and ``symbolic``.
        """
        b = spline.bspline_basis(x, self.grid, self.k, self.grid_is_uniform())  # [N, in, G+k]
        sp = torch.einsum("nij,oij->noi", b, self.coef) * self.scale_sp  # [N, out, in]
        base = BASE_FUNS[self.base_fun](x).unsqueeze(1) * self.scale_base  # [N, out, in]
        sym = self.symbolic_activations(x)
        return {
            "postacts": self.mask * (sp + base) + sym,
            "spline": sp,
            "base": base,
            "symbolic": sym,
        }

    # ---- grid -----------------------------------------------------------------------
    @torch.no_grad()
    def set_grid(self, new_grid: torch.Tensor, x_fit: torch.Tensor) -> None:
        """Replace the grid by ``new_grid [in, G' + 2k + 1]``, refitting every spline by
        least squares at ``x_fit [M, in]`` so the edge functions stay the same."""
        t = spline.refit_matrix(x_fit.to(self.grid), self.grid, new_grid.to(self.grid), self.k)
        coef = spline.apply_refit(t, self.coef.detach())
        self.grid = new_grid.to(self.grid).contiguous()
        self._uniform_key = None  # re-check uniformity for the new grid
        self.coef = nn.Parameter(coef, requires_grad=self.coef.requires_grad)

    @torch.no_grad()
    def update_grid(self, x: torch.Tensor, margin: float = 0.0) -> None:
        """Adapt the grid to the samples ``x [N, in]`` (percentiles mixed with uniform by
        ``grid_eps``), keeping ``G``; the splines are refitted on ``x``."""
        x = x.reshape(-1, self.in_features).detach().to(self.grid)
        knots = grid_mod.adaptive_knots(x, self.grid_size, self.grid_eps)
        if margin:
            knots = knots + margin * (knots[:, -1:] - knots[:, :1]) * torch.linspace(
                -1, 1, knots.shape[1], dtype=knots.dtype, device=knots.device
            )
        self.set_grid(spline.extend_grid(knots, self.k), x)

    @torch.no_grad()
    def refine(self, new_size: int, points_per_interval: int = 8) -> None:
        """Grid extension in place: ``G -> new_size`` intervals over the same range.

        Growing keeps every old knot (:func:`grid_mod.nested_knots`), so the refit -- least
        squares on a dense sample of ``[lo, hi]``, no data needed -- reproduces each edge
        exactly inside the range. Shrinking interpolates the knots (an approximation).
        """
        knots = spline.interior(self.grid, self.k)
        if new_size >= self.grid_size:
            new_knots = grid_mod.nested_knots(knots, new_size)
        else:
            new_knots = grid_mod.resample_knots(knots, new_size)
        m = points_per_interval * (max(new_size, self.grid_size) + self.k)
        frac = torch.linspace(0, 1, m, dtype=self.grid.dtype, device=self.grid.device)
        x = knots[:, :1].t() + (knots[:, -1:] - knots[:, :1]).t() * frac[:, None]  # [m, in]
        self.set_grid(spline.extend_grid(new_knots, self.k), x)

    def __setstate__(self, state):  # pickles made before a field existed keep working
        super().__setstate__(state)
        self.__dict__.setdefault("fast", True)
