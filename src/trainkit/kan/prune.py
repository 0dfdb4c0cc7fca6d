"""Attribution scores and pruning of KANs (Liu et al. 2024, section 2.5.1; KAN 2.0 sec. 4.1).

Scores follow the attribution of pykan 0.2 / KAN 2.0 (the version whose thresholds
``node_th=1e-2, edge_th=3e-2`` this module uses): the output nodes score 1 and scores flow
backwards. For layer ``l`` with edge activations ``phi_oi`` and outputs (subnodes) ``z_o``:

    E_l[o, i] = std_n phi_oi(x_ni)           (edge scale over the data)
    S_l[o]    = std_n z_o(x_n)               (subnode scale)
    edge_score_l[o, i] = E_l[o, i] * s_l[o] / (S_l[o] + eps)
    node_score_l[i]    = sum_o edge_score_l[o, i]

where ``s_l[o]`` is the score of subnode ``o``: the score of the node it feeds in row
``l + 1`` (a multiplication node gives its score to each of its two factors). The scores of
row 0 are the input (feature) importances. A score is therefore the fraction of an output's
variation that passes through a node or edge, so thresholds are scale free.

Departures from pykan: pruning returns a new model and never touches the original; the
mean value of every removed edge is folded into a surviving edge of the same output
(B-splines sum to one inside the grid, so adding a constant to all coefficients adds it to
the edge), so the pruned model computes almost the same function, not the same function
minus the removed edges' offsets. Without data, scores are computed on points drawn
uniformly in the first layer's grid range (the grids follow the training data after
:meth:`KAN.update_grid`).
"""

# ruff: noqa: E741  -- (l, i, j) = (layer, input node, output node), the paper's edge index

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from trainkit.common.errors import UserError

EPS = 1e-4
"""Added to subnode scales (pykan uses the same), so silent nodes do not divide by 0."""


# ---- data and scores --------------------------------------------------------------------
def default_inputs(model, n: int = 1000, seed: int = 0) -> torch.Tensor:
    """``[n, n_0]`` points uniform in each input's grid range (the first layer's knots)."""
    layer = model.layers[0]
    k = layer.k
    lo, hi = layer.grid[:, k], layer.grid[:, -k - 1]  # [n_0] each: the interior range
    gen = torch.Generator().manual_seed(seed)
    u = torch.rand(n, layer.in_features, generator=gen, dtype=torch.float64)
    return (lo.double().cpu() + (hi - lo).double().cpu() * u).to(model.device, model.dtype)


def inputs_or_default(model, x) -> torch.Tensor:
    """``x`` as ``[N, n_0]`` on the model's device and dtype, or :func:`default_inputs` when
    ``x`` is None; the data of scores, symbolic fits and plots (:class:`UserError` on a wrong
    shape)."""
    if x is None:
        return default_inputs(model)
    x = torch.as_tensor(x).to(model.device, model.dtype)
    if x.ndim != 2 or x.shape[1] != model.width[0][0]:
        raise UserError(f"KAN scores: x must be [N, {model.width[0][0]}], got {tuple(x.shape)}")
    return x


@torch.no_grad()
def attribution(model, x=None) -> dict[str, list[torch.Tensor]]:
    """Edge and node scores of every layer and row.

    Args:
        model: a :class:`trainkit.kan.KAN`.
        x: ``[N, n_0]`` data; default :func:`default_inputs`.

    Returns:
        ``{"edge": [ [out_l, in_l] per layer ], "node": [ [n_l] per row, n_l = n_sum +
        n_mult ], "subnode": [ [out_l] per layer ]}``; ``node[0]`` are the input scores,
        ``node[-1]`` are ones.
    """
    x = inputs_or_default(model, x)
    _, acts = model.forward_with_acts(x)
    L = model.depth
    node: list[torch.Tensor] = [None] * (L + 1)  # type: ignore[list-item]
    edge: list[torch.Tensor] = [None] * L  # type: ignore[list-item]
    sub: list[torch.Tensor] = [None] * L  # type: ignore[list-item]
    node[L] = torch.ones(sum(model.width[L]), dtype=x.dtype, device=x.device)
    for l in range(L - 1, -1, -1):
        n_sum, n_mult = model.width[l + 1]
        s = node[l + 1]
        sub_score = torch.cat([s[:n_sum], s[n_sum:].repeat_interleave(2)])  # [out_l]
        e_scale = acts[l]["postacts"].std(0, unbiased=False)  # [out, in]
        s_scale = acts[l]["output"].std(0, unbiased=False)  # [out]
        edge[l] = e_scale * (sub_score / (s_scale + EPS))[:, None]
        sub[l] = sub_score
        node[l] = edge[l].sum(0)
    return {"edge": edge, "node": node, "subnode": sub}


def node_scores(model, x=None) -> list[torch.Tensor]:
    """Importance of every node, one ``[n_l]`` tensor per row (``[0]`` = inputs)."""
    return attribution(model, x)["node"]


def edge_scores(model, x=None) -> list[torch.Tensor]:
    """Importance of every edge, one ``[out_l, in_l]`` tensor per layer."""
    return attribution(model, x)["edge"]


def feature_score(model, x=None) -> torch.Tensor:
    """Importance of each input variable: ``[n_0]`` (row 0 of :func:`node_scores`)."""
    return attribution(model, x)["node"][0]


# ---- surgery ----------------------------------------------------------------------------
def _set(layer: nn.Module, name: str, value: torch.Tensor) -> None:
    cur = getattr(layer, name)
    if isinstance(cur, nn.Parameter):
        setattr(layer, name, nn.Parameter(value.contiguous(), requires_grad=cur.requires_grad))
    else:
        setattr(layer, name, value.contiguous())


def _slice_layer(layer, out_idx: list[int] | None = None, in_idx: list[int] | None = None) -> None:
    """Keep outputs ``out_idx`` and inputs ``in_idx`` of a KANLinear, in place."""
    with torch.no_grad():
        if out_idx is not None:
            for name in ("coef", "scale_base", "scale_sp", "mask", "sym_mask", "sym_affine"):
                _set(layer, name, getattr(layer, name)[out_idx])
            layer.sym_fns = [list(layer.sym_fns[o]) for o in out_idx]
            layer.out_features = len(out_idx)
        if in_idx is not None:
            for name in ("coef", "scale_base", "scale_sp", "mask", "sym_mask", "sym_affine"):
                _set(layer, name, getattr(layer, name)[:, in_idx])
            _set(layer, "grid", layer.grid[in_idx])
            layer.sym_fns = [[row[i] for i in in_idx] for row in layer.sym_fns]
            layer.in_features = len(in_idx)


@torch.no_grad()
def _edge_means(model, x: torch.Tensor) -> list[torch.Tensor]:
    """Mean of every edge's value over ``x``: ``[out_l, in_l]`` per layer."""
    _, acts = model.forward_with_acts(x)
    return [a["postacts"].mean(0) for a in acts]


@torch.no_grad()
def _fold_constant(layer, o: int, value: float, skip: Sequence[int] = ()) -> bool:
    """Add ``value`` to output ``o`` of ``layer`` through one alive edge (not in ``skip``).

    Symbolic edges take it in their ``d``; spline edges in their coefficients (partition of
    unity inside the grid). Returns False when output ``o`` has no other alive edge.
    """
    if value == 0.0:
        return True
    for i in range(layer.in_features):
        if i in skip:
            continue
        if layer.sym_mask[o, i] > 0:
            layer.sym_affine[o, i, 3] += value / float(layer.sym_mask[o, i])
            return True
    for i in range(layer.in_features):
        if i in skip or layer.mask[o, i] == 0:
            continue
        w = float(layer.scale_sp[o, i] * layer.mask[o, i])
        if abs(w) > 1e-8:
            layer.coef[o, i] += value / w
            return True
    return False


def _check_row(model, l: int) -> None:
    if not 0 < l < model.depth:
        raise UserError(f"prune_node: row {l} is not a hidden row (1..{model.depth - 1})")


@torch.no_grad()
def remove_nodes(model, l: int, keep: Sequence[int], x=None):
    """A copy of ``model`` keeping only nodes ``keep`` of hidden row ``l``.

    The mean output of each removed node's outgoing edges is folded into the layer after it.
    """
    _check_row(model, l)
    n_sum, n_mult = model.width[l]
    keep = sorted(set(int(i) for i in keep))
    if any(not 0 <= i < n_sum + n_mult for i in keep):
        raise UserError(f"prune_node: row {l} has nodes 0..{n_sum + n_mult - 1}, got {keep}")
    if not keep:
        raise UserError(f"prune_node: cannot remove every node of row {l}")
    x = inputs_or_default(model, x)
    means = _edge_means(model, x)[l]  # [out_l, n_l] of the next layer
    new = copy.deepcopy(model)
    drop = [i for i in range(n_sum + n_mult) if i not in keep]
    nxt = new.layers[l]
    for o in range(nxt.out_features):
        total = float(means[o, drop].sum()) if drop else 0.0
        _fold_constant(nxt, o, total, skip=drop)
    # rows of the previous layer that feed the kept nodes (sum nodes, then factor pairs)
    sums = [i for i in keep if i < n_sum]
    mults = [i - n_sum for i in keep if i >= n_sum]
    out_idx = sums + [n_sum + 2 * j + t for j in mults for t in range(2)]
    _slice_layer(new.layers[l - 1], out_idx=out_idx)
    _slice_layer(nxt, in_idx=keep)
    new.width[l] = [len(sums), len(mults)]
    return new


def prune_node(
    model, threshold: float = 1e-2, x=None, active: dict[int, Sequence[int]] | None = None
):
    """Remove hidden nodes whose score is below ``threshold`` (or keep ``active[l]``).

    Args:
        model: a :class:`trainkit.kan.KAN` (unchanged).
        threshold: minimum node score (see module docstring) to survive.
        x: ``[N, n_0]`` data for the scores; default :func:`default_inputs`.
        active: ``{row: [node indices to keep]}``, overriding the scores for those rows.

    Returns:
        A new, smaller KAN. A row keeps at least its best node.
    """
    new = model
    scores = node_scores(model, x)
    plan = {}
    for l in range(1, model.depth):
        if active and l in active:
            plan[l] = list(active[l])
        else:
            s = scores[l]
            keep = [i for i in range(s.numel()) if float(s[i]) >= threshold]
            plan[l] = keep or [int(torch.argmax(s))]
    for l in range(1, model.depth):  # indices of row l are unaffected by other rows
        if len(plan[l]) < sum(new.width[l]):
            new = remove_nodes(new, l, plan[l], x)
    return new


@torch.no_grad()
def prune_edge(model, threshold: float = 3e-2, x=None):
    """A copy of ``model`` with every edge scoring below ``threshold`` masked off.

    The removed edge's mean is folded into another edge of the same output.
    """
    x = inputs_or_default(model, x)
    scores = edge_scores(model, x)
    means = _edge_means(model, x)
    new = copy.deepcopy(model)
    for l, layer in enumerate(new.layers):
        dead = (scores[l] < threshold) & ((layer.mask > 0) | (layer.sym_mask > 0))
        for o, i in dead.nonzero().tolist():
            alive = (layer.mask[o] > 0) | (layer.sym_mask[o] > 0)
            if int(alive.sum()) <= 1:
                continue  # the last edge into a node stays
            layer.mask[o, i] = 0.0
            layer.sym_mask[o, i] = 0.0
            _fold_constant(layer, o, float(means[l][o, i]), skip=[i])
    return new


def prune_input(model, threshold: float = 1e-2, x=None, active_inputs: Sequence[int] | None = None):
    """Remove input variables scoring below ``threshold`` (or keep ``active_inputs``).

    Returns:
        ``(new_model, kept)``: the model takes ``x[:, kept]`` as input.
    """
    x = inputs_or_default(model, x)
    if active_inputs is None:
        s = feature_score(model, x)
        kept = [i for i in range(s.numel()) if float(s[i]) >= threshold] or [int(torch.argmax(s))]
    else:
        kept = sorted(set(int(i) for i in active_inputs))
        if not kept or any(not 0 <= i < model.width[0][0] for i in kept):
            raise UserError(
                f"prune_input: active_inputs must be in 0..{model.width[0][0] - 1}, got {kept}"
            )
    if len(kept) == model.width[0][0]:
        return copy.deepcopy(model), kept
    means = _edge_means(model, x)[0]
    new = copy.deepcopy(model)
    drop = [i for i in range(model.width[0][0]) if i not in kept]
    with torch.no_grad():
        for o in range(new.layers[0].out_features):
            _fold_constant(new.layers[0], o, float(means[o, drop].sum()), skip=drop)
    _slice_layer(new.layers[0], in_idx=kept)
    new.width[0] = [len(kept), 0]
    return new, kept


def prune(model, node_th: float = 1e-2, edge_th: float = 3e-2, x=None):
    """Prune nodes then edges (pykan's ``prune``): a new, smaller KAN.

    Args:
        model: a :class:`trainkit.kan.KAN` (unchanged).
        node_th: node score threshold (:func:`prune_node`).
        edge_th: edge score threshold (:func:`prune_edge`).
        x: ``[N, n_0]`` data for the scores (ideally the training inputs).

    Returns:
        The pruned KAN, e.g. ``[2, 5, 1] -> [2, 1, 1]`` after sparse training on
        ``exp(sin(pi x) + y^2)``.
    """
    x = inputs_or_default(model, x)
    return prune_edge(prune_node(model, node_th, x), edge_th, x)
