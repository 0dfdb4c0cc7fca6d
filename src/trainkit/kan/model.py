"""``KAN``: a stack of :class:`KANLinear` layers, with MultKAN multiplication nodes.

``width = [2, 5, 1]`` is the paper's ``[n_0, ..., n_L]``. An entry may be ``[n_sum,
n_mult]`` (Liu et al. 2024b, "KAN 2.0", MultKAN): the layer feeding that node row then
has ``n_sum + 2 * n_mult`` outputs; the first ``n_sum`` are summation nodes and each pair
after them is multiplied, so the row holds ``n_sum + n_mult`` values for the next layer.

Construction writes nothing to disk. ``save``/``load`` are methods here (the folder format is
:mod:`trainkit.kan.io`), training is :mod:`trainkit.kan.fit` (also the method ``fit``).
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from trainkit.common.errors import UserError
from trainkit.kan.layer import KANLinear
from trainkit.kan.penalties import paper_penalty

MULT_ARITY = 2


def normalize_width(width: Any) -> list[list[int]]:
    """``[2, [3, 2], 1]`` -> ``[[2, 0], [3, 2], [1, 0]]``; raises :class:`UserError` if malformed."""
    if not isinstance(width, (list, tuple)) or len(width) < 2:
        raise UserError(f"KAN: width must be a list of at least 2 layer sizes, got {width!r}")
    out = []
    for i, w in enumerate(width):
        if isinstance(w, (list, tuple)) and len(w) == 2:
            w = [int(w[0]), int(w[1])]
        elif isinstance(w, int) and not isinstance(w, bool):
            w = [int(w), 0]
        else:
            raise UserError(f"KAN: width[{i}] must be an int or [n_sum, n_mult], got {w!r}")
        if w[0] < 0 or w[1] < 0 or w[0] + w[1] == 0:
            raise UserError(f"KAN: width[{i}] must have a positive number of nodes, got {w}")
        out.append(w)
    if out[0][1] or out[-1][1]:
        raise UserError("KAN: the input and output rows cannot have multiplication nodes")
    return out


class KAN(nn.Module):
    """Kolmogorov-Arnold Network.

    Args:
        width: node counts per row, ints or ``[n_sum, n_mult]``.
        grid: grid intervals ``G`` of every layer.
        k: spline order.
        seed: seed of the initialisation (a private generator: global RNG untouched).
        grid_range: initial range of every grid.
        dtype, device: of parameters and buffers.
        **layer_kw: passed to :class:`KANLinear` (``base_fun``, ``noise_scale``,
            ``scale_base_mu``, ``scale_base_sigma``, ``grid_eps``, ``fast``...).

    ``forward(x)``: ``[..., n_0]`` -> ``[..., n_L]``.
    """

    def __init__(
        self,
        width=(2, 5, 1),
        grid: int = 5,
        k: int = 3,
        seed: int = 0,
        grid_range: tuple[float, float] = (-1.0, 1.0),
        dtype: torch.dtype | None = None,
        device=None,
        **layer_kw,
    ):
        super().__init__()
        self.width = normalize_width(list(width))
        self.k = k
        self.grid_range = (float(grid_range[0]), float(grid_range[1]))
        self.seed = seed
        self.layer_kw = dict(layer_kw)
        gen = torch.Generator().manual_seed(seed)
        layers = []
        for (n_in_sum, n_in_mult), (n_sum, n_mult) in zip(self.width[:-1], self.width[1:]):
            layers.append(
                KANLinear(
                    n_in_sum + n_in_mult,
                    n_sum + MULT_ARITY * n_mult,
                    grid=grid,
                    k=k,
                    grid_range=grid_range,
                    dtype=dtype,
                    device=device,
                    generator=gen,
                    **layer_kw,
                )
            )
        self.layers = nn.ModuleList(layers)

    # ---- description ----------------------------------------------------------------
    @property
    def grid(self) -> int:
        """The current ``G`` (of the first layer; refine keeps all layers equal)."""
        return self.layers[0].grid_size

    @property
    def depth(self) -> int:
        return len(self.layers)

    def config(self) -> dict:
        """JSON-ready constructor arguments reproducing this architecture at its current grid."""
        return {
            "width": self.width,
            "grid": self.grid,
            "k": self.k,
            "seed": self.seed,
            "grid_range": list(self.grid_range),
            "layer_kw": self.layer_kw,
            "dtype": str(self.dtype).replace("torch.", ""),
        }

    @property
    def dtype(self) -> torch.dtype:
        return self.layers[0].coef.dtype

    @property
    def device(self) -> torch.device:
        return self.layers[0].coef.device

    # ---- forward --------------------------------------------------------------------
    def _nodes(self, z: torch.Tensor, row: int) -> torch.Tensor:
        """Layer outputs ``[N, n_sum + 2 n_mult]`` -> node values ``[N, n_sum + n_mult]``."""
        n_sum, n_mult = self.width[row]
        if n_mult == 0:
            return z
        prod = z[:, n_sum:].reshape(z.shape[0], n_mult, MULT_ARITY).prod(-1)
        return torch.cat([z[:, :n_sum], prod], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        h = x.reshape(-1, x.shape[-1])
        for li, layer in enumerate(self.layers):
            h = self._nodes(layer(h), li + 1)
        return h.reshape(*lead, h.shape[-1])

    def forward_with_acts(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
        """Forward through the slow path, keeping each layer's activations.

        Args:
            x: ``[N, n_0]``.

        Returns:
            ``(y [N, n_L], acts)`` where ``acts[l]`` has ``input [N, in_l]`` (the layer's
            pre-activations), ``postacts [N, out_l, in_l]`` (each edge's value), ``spline``,
            ``base``, ``symbolic`` (``[N, out_l, in_l]``, see
            :meth:`KANLinear.edge_activations`) and ``output [N, out_l]`` (before the
            multiplication nodes). Differentiable.
        """
        h = x
        acts = []
        for li, layer in enumerate(self.layers):
            a = layer.edge_activations(h)
            z = a["postacts"].sum(-1)
            acts.append({"input": h, **a, "output": z})
            h = self._nodes(z, li + 1)
        return h, acts

    @torch.no_grad()
    def layer_inputs(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each layer's input ``[N, in_l]`` for ``x [N, n_0]`` (fast path, no grad)."""
        h, out = x, []
        for li, layer in enumerate(self.layers):
            out.append(h)
            h = self._nodes(layer(h), li + 1)
        return out

    # ---- regulariser ----------------------------------------------------------------
    @staticmethod
    def regularization(
        acts: list[dict[str, torch.Tensor]],
        lamb_l1: float = 1.0,
        lamb_entropy: float = 2.0,
        eps: float = 1e-12,
    ) -> torch.Tensor:
        """The paper's sparsity penalty (section 2.5.1, eqs. 2.17-2.20).

        For layer ``l``: ``|phi_oi|_1 = mean_n |phi_oi(x_ni)|``, ``|Phi|_1 = sum_oi |phi_oi|_1``,
        ``S(Phi) = -sum_oi p_oi log p_oi`` with ``p = |phi|_1 / |Phi|_1``; returns
        ``sum_l lamb_l1 |Phi_l|_1 + lamb_entropy S(Phi_l)``. The ``paper`` row of
        :data:`trainkit.kan.penalties.PENALTIES`, the one table of sparsity penalties.
        """
        return paper_penalty(acts, lamb_l1, lamb_entropy, eps)

    # ---- grid -----------------------------------------------------------------------
    @torch.no_grad()
    def update_grid(self, x: torch.Tensor) -> None:
        """Adapt every layer's grid to the activations of ``x [N, n_0]`` (layer by layer,
        each layer seeing the inputs produced after its predecessor was updated)."""
        h = x.reshape(-1, x.shape[-1]).to(self.dtype)
        for li, layer in enumerate(self.layers):
            layer.update_grid(h)
            h = self._nodes(layer(h), li + 1)

    @torch.no_grad()
    def refine(self, new_grid: int) -> KAN:
        """Grid extension: a new model with ``new_grid`` intervals per edge computing the
        same function (splines refitted by least squares over each grid's range)."""
        if new_grid < 1:
            raise UserError(f"KAN.refine: new_grid must be >= 1, got {new_grid}")
        new = copy.deepcopy(self)
        for layer in new.layers:
            layer.refine(new_grid)
        return new

    # ---- training and files (thin wrappers) -----------------------------------------
    def fit(self, dataset: dict, **kw) -> dict:
        """Train in place; see :func:`trainkit.kan.fit.fit`. Returns the history dict."""
        from trainkit.kan.fit import fit

        return fit(self, dataset, **kw)

    def save(self, path) -> None:
        """Write ``path/`` with ``model.safetensors`` and ``config.json`` (atomically)."""
        from trainkit.kan.io import save

        save(self, path)

    @classmethod
    def from_config(cls, cfg: dict) -> KAN:
        """A fresh model from :meth:`config`'s dict (the inverse; weights not included)."""
        return cls(
            width=cfg["width"],
            grid=cfg["grid"],
            k=cfg["k"],
            seed=cfg.get("seed", 0),
            grid_range=tuple(cfg["grid_range"]),
            dtype=getattr(torch, cfg.get("dtype", "float32")),
            **cfg.get("layer_kw", {}),
        )

    @classmethod
    def load(cls, path, device=None) -> KAN:
        """Read a model written by :meth:`save` (format: :mod:`trainkit.kan.io`)."""
        from trainkit.kan.io import read, restore

        cfg, state = read(path)
        model = restore(cls.from_config(cfg), cfg, state)
        return model.to(device) if device is not None else model

    def n_params(self) -> int:
        """Trainable spline + base parameters (the symbolic slot excluded)."""
        return sum(m.coef.numel() + m.scale_base.numel() + m.scale_sp.numel() for m in self.layers)

    # ---- science tools (thin wrappers: trainkit.kan.prune / symbolic / plot) -------------
    def node_scores(self, x=None):
        from trainkit.kan.prune import node_scores

        return node_scores(self, x)

    def edge_scores(self, x=None):
        from trainkit.kan.prune import edge_scores

        return edge_scores(self, x)

    def feature_score(self, x=None):
        from trainkit.kan.prune import feature_score

        return feature_score(self, x)

    def prune(self, node_th: float = 1e-2, edge_th: float = 3e-2, x=None) -> KAN:
        from trainkit.kan.prune import prune

        return prune(self, node_th, edge_th, x)

    def plot(self, path=None, in_vars=None, out_vars=None, beta: float = 3.0, **kw):
        from trainkit.kan.plot import plot

        return plot(self, path, in_vars, out_vars, beta, **kw)

    def plot_edge(self, l: int, i: int, j: int, path=None, **kw):
        from trainkit.kan.plot import plot_edge

        return plot_edge(self, l, i, j, path, **kw)

    def suggest_symbolic(self, l: int, i: int, j: int, topk: int = 5, **kw):
        from trainkit.kan.symbolic import suggest_symbolic

        return suggest_symbolic(self, l, i, j, topk, **kw)

    def fix_symbolic(self, l: int, i: int, j: int, name: str, fit_params: bool = True, **kw):
        from trainkit.kan.symbolic import fix_symbolic

        return fix_symbolic(self, l, i, j, name, fit_params, **kw)

    def unfix_symbolic(self, l: int, i: int, j: int) -> None:
        from trainkit.kan.symbolic import unfix_symbolic

        unfix_symbolic(self, l, i, j)

    def auto_symbolic(self, lib=None, r2_threshold: float = 0.0, **kw):
        from trainkit.kan.symbolic import auto_symbolic

        return auto_symbolic(self, lib, r2_threshold, **kw)

    def symbolic_formula(self, var_names=None, digits: int | None = 4):
        from trainkit.kan.symbolic import symbolic_formula

        return symbolic_formula(self, var_names, digits)
