"""Drawing KANs: every edge's learned activation in a small box (Liu et al. 2024, Fig. 2.4).

Rows of nodes go bottom (inputs) to top (outputs). Between two rows, each alive edge
``(l, i, j)`` is a small plot of ``phi_ji`` over the values its input takes on the data,
linked to input node ``i`` below and to output (sub)node ``j`` above. As in pykan, an
edge's opacity is ``tanh(beta * score)`` with the attribution score of
:mod:`trainkit.kan.prune`, so unimportant edges fade; snapped (symbolic) edges are drawn in
red, splines in black. Multiplication nodes are drawn as a circled ``x`` fed by their two
factor subnodes.

Only ``matplotlib.figure.Figure`` is used (no pyplot, no GUI backend): rendering works
headless, and nothing accumulates in pyplot's global figure list.
"""

# ruff: noqa: E741  -- (l, i, j) = (layer, input node, output node), the paper's edge index

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch

from trainkit.common.errors import UserError
from trainkit.kan.prune import attribution, inputs_or_default

SPLINE_COLOR, SYMBOLIC_COLOR = "black", "tab:red"


def _require_mpl():
    try:
        from matplotlib.figure import Figure
    except ImportError:  # pragma: no cover - matplotlib is in the kan extra
        raise UserError("KAN plots need matplotlib: pip install 'trainkit[kan]'") from None
    return Figure


def _save(fig, path, dpi: int) -> None:
    from trainkit.common.io import atomic_path

    with atomic_path(Path(path)) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)


def _positions(n: int) -> list[float]:
    """``n`` x-positions spread evenly in (0, 1)."""
    return [(t + 0.5) / n for t in range(n)]


def _names(given, n: int, prefix: str, what: str) -> list[str]:
    if given is None:
        return [f"{prefix}{t + 1}" for t in range(n)]
    given = [str(v) for v in given]
    if len(given) != n:
        raise UserError(f"plot: {len(given)} {what} for {n} nodes")
    return given


@torch.no_grad()
def _curves(model, x: torch.Tensor) -> list[dict]:
    """Per layer: the sorted input values ``[N, in]`` and edge values ``[N, out, in]``."""
    out = []
    for layer, h in zip(model.layers, model.layer_inputs(x)):
        order = torch.argsort(h, dim=0)  # [N, in]
        post = layer.edge_activations(h)["postacts"]  # [N, out, in]
        hs = torch.gather(h, 0, order)
        ps = torch.gather(post, 0, order[:, None, :].expand_as(post))
        out.append({"x": hs.double().cpu(), "y": ps.double().cpu()})
    return out


def plot(
    model,
    path=None,
    in_vars: Sequence[str] | None = None,
    out_vars: Sequence[str] | None = None,
    beta: float = 3.0,
    x=None,
    title: str | None = None,
    scale: float = 1.0,
    dpi: int = 120,
):
    """Draw ``model`` with every edge's activation curve.

    Args:
        model: a :class:`trainkit.kan.KAN`.
        path: write a PNG here (atomically) when given.
        in_vars, out_vars: labels of the inputs and outputs (default ``x1..``, ``y1..``).
        beta: opacity ``tanh(beta * score)``; larger shows weak edges more.
        x: ``[N, n_0]`` data for the curves and scores (default: uniform in the first
            grid's range).
        title: figure title.
        scale: figure size factor.
        dpi: resolution of the PNG.

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    Figure = _require_mpl()
    x = inputs_or_default(model, x)
    att = attribution(model, x)
    curves = _curves(model, x)
    widths = [sum(w) for w in model.width]
    in_names = _names(in_vars, widths[0], "x", "in_vars")
    out_names = _names(out_vars, widths[-1], "y", "out_vars")
    n_edges = [layer.out_features * layer.in_features for layer in model.layers]
    cols = max(max(widths), max(n_edges))
    L = model.depth
    fig = Figure(figsize=(scale * max(4.0, min(0.9 * cols + 1.0, 16.0)), scale * (2.0 * L + 0.8)))
    ax = fig.add_axes((0, 0, 1, 1))
    y_lo, y_hi = -0.35, L + 0.35 + (0.15 if title else 0.0)
    ax.set_xlim(0, 1)
    ax.set_ylim(y_lo, y_hi)
    ax.axis("off")

    def fig_y(yv: float) -> float:
        return (yv - y_lo) / (y_hi - y_lo)

    node_x = [_positions(w) for w in widths]
    # nodes
    for r, w in enumerate(widths):
        n_sum = model.width[r][0]
        s = att["node"][r]
        for t in range(w):
            alpha = math.tanh(beta * float(s[t])) if r < L else 1.0
            alpha = max(alpha, 0.08)
            if t >= n_sum:  # multiplication node
                ax.scatter(
                    [node_x[r][t]],
                    [r],
                    s=160,
                    facecolor="white",
                    edgecolor="black",
                    alpha=alpha,
                    zorder=3,
                )
                ax.text(
                    node_x[r][t],
                    r,
                    "\u00d7",
                    ha="center",
                    va="center",
                    fontsize=10,
                    alpha=alpha,
                    zorder=4,
                )
            else:
                ax.scatter([node_x[r][t]], [r], s=40, color="black", alpha=alpha, zorder=3)
    for t, name in enumerate(in_names):
        ax.text(node_x[0][t], -0.12, name, ha="center", va="top", fontsize=9)
    for t, name in enumerate(out_names):
        ax.text(node_x[L][t], L + 0.1, name, ha="center", va="bottom", fontsize=9)
    if title:
        ax.text(0.5, L + 0.33, title, ha="center", va="top", fontsize=10)

    for l, layer in enumerate(model.layers):
        n_sum, n_mult = model.width[l + 1]
        # subnode x positions: sum nodes sit under their node; factors flank their product
        sub_x = list(node_x[l + 1][:n_sum])
        for t in range(n_mult):
            cx = node_x[l + 1][n_sum + t]
            d = 0.25 / max(widths[l + 1], 1)
            sub_x += [cx - d / 2, cx + d / 2]
        y_sub = l + 0.82
        for t in range(n_sum):
            a_node = max(math.tanh(beta * float(att["node"][l + 1][t])) if l + 1 < L else 1.0, 0.08)
            ax.plot([sub_x[t], sub_x[t]], [y_sub, l + 1], color="black", lw=0.8, alpha=a_node)
        for t in range(n_mult):
            cx = node_x[l + 1][n_sum + t]
            for s in (0, 1):
                ax.plot([sub_x[n_sum + 2 * t + s], cx], [y_sub, l + 1], color="black", lw=0.8)
        edges = [(i, j) for i in range(layer.in_features) for j in range(layer.out_features)]
        box_x = _positions(len(edges))
        bw = min(0.8 / len(edges), 0.16)
        bh_data = 0.36
        for (i, j), bx in zip(edges, box_x):
            alive_sp, alive_sym = float(layer.mask[j, i]) > 0, float(layer.sym_mask[j, i]) > 0
            if not (alive_sp or alive_sym):
                continue
            score = float(att["edge"][l][j, i])
            alpha = max(math.tanh(beta * score), 0.03)
            color = SYMBOLIC_COLOR if alive_sym and not alive_sp else SPLINE_COLOR
            y_c = l + 0.43
            ax.plot([node_x[l][i], bx], [l, y_c - bh_data / 2], color=color, lw=0.8, alpha=alpha)
            ax.plot([bx, sub_x[j]], [y_c + bh_data / 2, y_sub], color=color, lw=0.8, alpha=alpha)
            inset = fig.add_axes(
                (
                    bx - bw / 2,
                    fig_y(y_c - bh_data / 2),
                    bw,
                    fig_y(y_c + bh_data / 2) - fig_y(y_c - bh_data / 2),
                )
            )
            inset.plot(
                curves[l]["x"][:, i], curves[l]["y"][:, j, i], color=color, lw=1.5, alpha=alpha
            )
            inset.set_xticks([])
            inset.set_yticks([])
            for sp in inset.spines.values():
                sp.set_alpha(alpha)
            inset.patch.set_alpha(0.0)
    if path is not None:
        _save(fig, path, dpi)
    return fig


def plot_edge(model, l: int, i: int, j: int, path=None, x=None, dpi: int = 120):
    """Plot edge ``(l, i, j)``'s activation against its input; snapped edges also show the
    formula ``c f(a x + b) + d`` in the title.

    Args:
        model: a :class:`trainkit.kan.KAN`.
        l, i, j: layer, input node, output (sub)node.
        path: write a PNG here (atomically) when given.
        x: ``[N, n_0]`` model inputs (default: uniform in the first grid's range).

    Returns:
        The ``matplotlib.figure.Figure``.
    """
    Figure = _require_mpl()
    from trainkit.kan.symbolic import edge_layer, edge_samples

    layer = edge_layer(model, l, i, j)
    xs, ys = edge_samples(model, l, i, j, x)
    order = torch.argsort(xs)
    xs, ys = xs[order].double().cpu(), ys[order].double().cpu()
    sym = float(layer.sym_mask[j, i]) > 0 and float(layer.mask[j, i]) == 0
    fig = Figure(figsize=(4.0, 3.0))
    ax = fig.add_subplot()
    ax.plot(xs, ys, color=SYMBOLIC_COLOR if sym else SPLINE_COLOR, lw=1.8)
    if sym:
        a, b, c, d = layer.sym_affine[j, i].tolist()
        label = f"{c:.3g} {layer.sym_fns[j][i]}({a:.3g} x + {b:.3g}) + {d:.3g}"
    elif float(layer.mask[j, i]) == 0:
        label = "pruned"
    else:
        label = f"spline, G={layer.grid_size}"
    ax.set_title(f"edge ({l},{i},{j}): {label}", fontsize=9)
    ax.set_xlabel(f"input of node ({l},{i})")
    ax.set_ylabel("activation")
    fig.tight_layout()
    if path is not None:
        _save(fig, path, dpi)
    return fig
