"""Snapping KAN edges to symbolic functions and reading off formulas (Liu et al. 2024, sec. 2.5.1).

Edge ``(l, i, j)`` is the edge of layer ``l`` from input node ``i`` to output (sub)node
``j`` (pykan's order; the layer stores it at ``[j, i]``). Snapping it to a library function
``f`` (:mod:`trainkit.kan.symbolic_lib`) fits ``c * f(a * x + b) + d`` to the edge's current
values, writes ``(a, b, c, d)`` into the layer's symbolic slot (``sym_affine``, a trainable
parameter), switches the spline off (``mask = 0``) and the symbolic branch on
(``sym_mask = 1``). ``model.fit(...)`` afterwards trains the affine parameters of snapped
edges together with the splines that remain.

Departures from pykan:

- Affine parameters are put in a canonical form after fitting (``a > 0`` for odd and even
  functions, ``sin``/``cos`` phases in ``(-pi/2, pi/2]``), so equal functions print equally.
- :func:`auto_symbolic` leaves an edge a spline when its best fit has ``R^2`` below
  ``r2_threshold`` and says so in its report; :func:`symbolic_formula` refuses a model with
  spline edges left instead of silently dropping them (pykan treats them as 0).
- :func:`symbolic_formula` expands each function's argument, pulls constant factors out of
  exponentials, rounds constants and recombines exponentials, so that the paper's example
  reads ``exp(x2**2 + sin(3.1416*x1))`` rather than a nest of affine maps.
- All library functions are guarded (see :mod:`trainkit.kan.symbolic_lib`): ``log`` of a
  negative, ``1/0`` and the like give large finite values, never NaN.
"""

# ruff: noqa: E741  -- (l, i, j) = (layer, input node, output node), the paper's edge index

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from trainkit.common.errors import UserError
from trainkit.kan import layer as _layer
from trainkit.kan import symbolic_lib as slib
from trainkit.kan.prune import inputs_or_default

ODD = {
    "x",
    "x^3",
    "x^5",
    "1/x",
    "1/x^3",
    "sin",
    "tan",
    "tanh",
    "arcsin",
    "arctan",
    "arctanh",
    "sgn",
}
EVEN = {"x^2", "x^4", "1/x^2", "1/x^4", "abs", "gaussian", "cos"}

for _name, _fn in slib.LIBRARY.items():  # the guarded versions, usable in sym_fns
    _layer.register_symbolic(_name, _fn.torch_fn)


# ---- helpers ----------------------------------------------------------------------------
def edge_layer(model, l: int, i: int, j: int):
    """The layer holding edge ``(l, i, j)`` (layer ``l``, input node ``i``, output node
    ``j``), after checking the indices: a :class:`UserError` names the valid ranges."""
    if not 0 <= l < model.depth:
        raise UserError(f"edge ({l},{i},{j}): layer {l} out of range 0..{model.depth - 1}")
    layer = model.layers[l]
    if not 0 <= i < layer.in_features or not 0 <= j < layer.out_features:
        raise UserError(
            f"edge ({l},{i},{j}): layer {l} maps {layer.in_features} inputs to "
            f"{layer.out_features} outputs"
        )
    return layer


@torch.no_grad()
def edge_samples(model, l: int, i: int, j: int, x=None) -> tuple[torch.Tensor, torch.Tensor]:
    """The input values ``[N]`` reaching edge ``(l, i, j)`` and the edge's values ``[N]``.

    Args:
        x: ``[N, n_0]`` model inputs; default points uniform in the first grid's range.
    """
    layer = edge_layer(model, l, i, j)
    h = model.layer_inputs(inputs_or_default(model, x))[l]
    acts = layer.edge_activations(h)
    return h[:, i], acts["postacts"][:, j, i]


def canonical(
    name: str, a: float, b: float, c: float, d: float
) -> tuple[float, float, float, float]:
    """Equivalent ``(a, b, c, d)`` with ``a >= 0`` for odd/even ``f`` and ``sin``/``cos``
    phases in ``(-pi/2, pi/2]`` (``f(-u) = -f(u)`` or ``f(u)``; ``f(u + pi) = -f(u)``)."""
    if a < 0 and (name in ODD or name in EVEN):
        a, b = -a, -b
        if name in ODD:
            c = -c
    if name in ("sin", "cos"):
        b = math.remainder(b, 2 * math.pi)  # (-pi, pi]
        if b > math.pi / 2:
            b, c = b - math.pi, -c
        elif b <= -math.pi / 2:
            b, c = b + math.pi, -c
    return a, b, c, d


# ---- one edge -----------------------------------------------------------------------------
def suggest_symbolic(
    model, l: int, i: int, j: int, topk: int = 5, lib=None, x=None, weight_simple: float = 1.0
) -> list[slib.AffineFit]:
    """Rank library functions for edge ``(l, i, j)`` by ``R^2`` and complexity.

    Args:
        model: a :class:`trainkit.kan.KAN`.
        l, i, j: layer, input node, output (sub)node.
        topk: number of candidates returned.
        lib: library names (default: the whole library).
        x: ``[N, n_0]`` inputs at which the edge is sampled (ideally the training inputs).
        weight_simple: decades of ``1 - R^2`` one unit of complexity is worth.

    Returns:
        Up to ``topk`` :class:`trainkit.kan.symbolic_lib.AffineFit`, best first.
    """
    xs, ys = edge_samples(model, l, i, j, x)
    return slib.suggest(xs, ys, lib=lib, topk=topk, weight_simple=weight_simple)


@torch.no_grad()
def _write(layer, i: int, j: int, name: str, params: Sequence[float]) -> None:
    layer.sym_affine[j, i] = torch.tensor(list(params), dtype=layer.sym_affine.dtype)
    layer.sym_fns[j][i] = name
    layer.sym_mask[j, i] = 1.0
    layer.mask[j, i] = 0.0


def fix_symbolic(
    model,
    l: int,
    i: int,
    j: int,
    name: str,
    fit_params: bool = True,
    x=None,
    fit: slib.AffineFit | None = None,
) -> float:
    """Snap edge ``(l, i, j)`` to ``c * name(a * x + b) + d``, in place.

    Args:
        name: a library name (``"sin"``, ``"x^2"``, ``"exp"``...; see
            :data:`trainkit.kan.symbolic_lib.LIBRARY`).
        fit_params: fit ``(a, b, c, d)`` to the edge's current values; else ``(1, 0, 1, 0)``.
        x: ``[N, n_0]`` inputs at which the edge is sampled.
        fit: an already computed fit to write (skips fitting).

    Returns:
        The ``R^2`` of the fit (``nan`` when ``fit_params`` is False).
    """
    layer = edge_layer(model, l, i, j)
    fn = slib.get_function(name)
    if fit is None and fit_params:
        xs, ys = edge_samples(model, l, i, j, x)
        fit = slib.fit_affine(xs, ys, fn)
    if fit is None:
        params, r2 = (1.0, 0.0, 1.0, 0.0), float("nan")
    else:
        params, r2 = canonical(fn.name, *fit.params), fit.r2
    if not all(math.isfinite(p) for p in params):
        raise UserError(
            f"fix_symbolic: fitting '{fn.name}' to edge ({l},{i},{j}) gave non-finite "
            f"parameters {params}"
        )
    _write(layer, i, j, fn.name, params)
    return r2


@torch.no_grad()
def unfix_symbolic(model, l: int, i: int, j: int) -> None:
    """Give edge ``(l, i, j)`` back to its spline (the spline was kept while snapped)."""
    layer = edge_layer(model, l, i, j)
    layer.sym_mask[j, i] = 0.0
    layer.mask[j, i] = 1.0
    layer.sym_fns[j][i] = "0"


def spline_edges(model) -> list[tuple[int, int, int]]:
    """Edges ``(l, i, j)`` still carried by a spline (alive and not snapped)."""
    out = []
    for l, layer in enumerate(model.layers):
        live = (layer.mask > 0) & (layer.sym_mask == 0)
        out += [(l, i, j) for j, i in live.nonzero().tolist()]
    return out


# ---- the whole model --------------------------------------------------------------------------
def auto_symbolic(
    model,
    lib=None,
    r2_threshold: float = 0.0,
    weight_simple: float = 1.0,
    x=None,
    verbose: bool = False,
) -> list[dict]:
    """Snap every spline edge to its best library function (in place), layer by layer.

    Each layer's edges are fitted on the inputs the already-snapped layers before it produce.

    Args:
        lib: library names (default: the whole library).
        r2_threshold: an edge whose best fit has a lower ``R^2`` stays a spline.
        weight_simple: see :func:`trainkit.kan.symbolic_lib.score`.
        x: ``[N, n_0]`` inputs (ideally the training inputs).
        verbose: print one line per edge.

    Returns:
        One dict per edge: ``l, i, j, name, r2, params, fixed`` (``fixed`` False when
        ``R^2 < r2_threshold``; ``name`` is then the best candidate, for the record) and
        ``candidates``, the top 3 ``(name, R^2)`` by score.
    """
    x = inputs_or_default(model, x)
    report = []
    for l in range(model.depth):
        edges = [e for e in spline_edges(model) if e[0] == l]
        for _, i, j in edges:
            cands = suggest_symbolic(
                model, l, i, j, topk=3, lib=lib, x=x, weight_simple=weight_simple
            )
            best = cands[0]
            ok = best.r2 >= r2_threshold
            if ok:
                fix_symbolic(model, l, i, j, best.name, x=x, fit=best)
            rec = {
                "l": l,
                "i": i,
                "j": j,
                "name": best.name,
                "r2": best.r2,
                "params": list(canonical(best.name, *best.params)),
                "fixed": ok,
                "candidates": [(c.name, c.r2) for c in cands],
            }
            report.append(rec)
            if verbose:
                state = "fixed" if ok else f"kept spline (R^2 < {r2_threshold})"
                print(f"edge ({l},{i},{j}): {best.name:<9} R^2 = {best.r2:.6f}  {state}")
    return report


def _tidy(expr, digits: int | None):
    """Expand function arguments, fold constants, round to ``digits``, recombine exponentials."""
    import sympy as sp

    expr = sp.expand(
        expr, deep=True, power_exp=True, mul=True, multinomial=True, power_base=False, log=False
    )
    if digits is not None:  # equal-looking constants become equal, so they factor below
        expr = _round(expr, digits)
    # sqrt(2.3*a**2 + 2.3) -> 1.52*sqrt(a**2 + 1): SymPy pulls a positive factor out of a
    # power's base once it is a product, so constants can meet (and round) outside
    expr = expr.replace(
        lambda e: e.is_Pow and e.base.is_Add and not e.exp.is_Integer,
        lambda e: sp.Pow(sp.factor_terms(e.base), e.exp),
    )
    if digits is not None:
        expr = _round(expr, digits)
    return sp.powsimp(expr)


def _round(expr, digits: int):
    """Round every Float to ``digits`` decimals (integers become Integers, zeros vanish);
    constants too large for a Python float (``exp(800)``) are kept as they are."""
    import sympy as sp

    repl = {}
    for f in expr.atoms(sp.Float):
        v = float(f)
        if not math.isfinite(v) or abs(v) >= 1e15:
            continue
        r = round(v, digits)
        repl[f] = sp.Integer(int(r)) if r == int(r) else sp.Float(r)
    return expr.xreplace(repl) if repl else expr


def symbolic_formula(
    model, var_names: Sequence[str] | None = None, digits: int | None = 4, simplify: bool = True
) -> list:
    """The model as SymPy expressions, one per output (every edge must be snapped).

    Layer ``l`` maps node expressions ``h_i`` to ``z_j = sum_i [c f(a h_i + b) + d]_{ji}``
    over its alive edges; multiplication nodes multiply their two factors.

    Args:
        var_names: input names (default ``x1, x2, ...``).
        digits: decimals kept for constants (None: full precision).
        simplify: expand/round/recombine (see :func:`_tidy`); False gives the raw nest.

    Returns:
        ``list[sympy.Expr]`` of length ``n_L``.

    Raises:
        UserError: if some edge is still a spline (run :func:`auto_symbolic` first).
    """
    import sympy as sp

    left = spline_edges(model)
    if left:
        shown = ", ".join(str(e) for e in left[:6]) + (" ..." if len(left) > 6 else "")
        raise UserError(
            f"symbolic_formula: edges {shown} are still splines; snap them with "
            "fix_symbolic or auto_symbolic (lower r2_threshold) first"
        )
    n0 = model.width[0][0]
    names = list(var_names) if var_names is not None else [f"x{t + 1}" for t in range(n0)]
    if len(names) != n0:
        raise UserError(f"symbolic_formula: {len(names)} var_names for {n0} inputs")
    h = [sp.Symbol(str(v), real=True) for v in names]
    for l, layer in enumerate(model.layers):
        aff = layer.sym_affine.detach().double().cpu().tolist()
        z = []
        for j in range(layer.out_features):
            acc = sp.Integer(0)
            for i in range(layer.in_features):
                w = float(layer.sym_mask[j, i])
                if w == 0.0:
                    continue
                a, b, c, d = (sp.Float(v, 17) for v in aff[j][i])
                name = layer.sym_fns[j][i]
                if name not in slib.LIBRARY:
                    raise UserError(
                        f"symbolic_formula: edge ({l},{i},{j}) uses '{name}', "
                        "which has no SymPy form in the symbolic library"
                    )
                acc += sp.Float(w, 17) * (c * slib.LIBRARY[name].sympy(a * h[i] + b) + d)
            z.append(acc)
        n_sum, n_mult = model.width[l + 1]
        h = z[:n_sum] + [z[n_sum + 2 * t] * z[n_sum + 2 * t + 1] for t in range(n_mult)]
        if simplify:
            h = [_tidy(e, None) for e in h]
    if simplify:
        h = [_tidy(e, digits) for e in h]
    return h


def formula_rmse(
    exprs: Sequence, var_names: Sequence[str], x: torch.Tensor, y: torch.Tensor
) -> float:
    """RMSE of formulas (one per output) on ``x [N, n_0]``, ``y [N, n_L]``; inf if not finite
    (including constants beyond float range, e.g. a snapped ``exp`` with a huge shift)."""
    from trainkit.kan.formula import to_callable

    cols = []
    for e in exprs:
        try:
            f = to_callable(e, list(var_names))
        except UserError:
            return math.inf
        cols.append(f(x.double()))
    pred = torch.cat(cols, 1)
    err = torch.sqrt(torch.mean((pred - y.double()) ** 2)).item()
    return err if math.isfinite(err) else math.inf
