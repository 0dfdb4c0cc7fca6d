"""The paper's science workflow in one call, :func:`discover` (Liu et al. 2024, sec. 2.5.1);
the command ``trainkit kan discover`` around it is :mod:`trainkit.kan.discover`.

Reads top to bottom: data -> fit with sparsity -> prune (repeated while it removes nodes)
-> grid extension ("refine") -> ``auto_symbolic`` -> fine-tune the affine parameters ->
formula, its test RMSE, and plots before/after pruning.

Departures from pykan's tutorial workflow:

- Sparsity uses pykan 0.2's normalised penalty by default (``penalty="std"``; both kinds
  are the table :data:`trainkit.kan.penalties.PENALTIES`: each edge's standard
  deviation over the batch divided by its input's, plus the entropy term) rather
  than the raw mean ``|phi|`` of the paper's eq. 2.17: constant offsets cost nothing, and
  on ``exp(sin(pi x) + y^2)`` it prunes ``[2, 5, 1]`` to ``[2, 1, 1]`` for all five seeds
  tried (the raw penalty: two of five).
- Pruning is repeated: after a prune that removed nodes, the smaller model is trained with
  sparsity again and pruned again (``prune_rounds``), so nodes that only just passed the
  threshold get a second chance to die.
- Symbolic snapping is done on a copy and forced on every edge, then the snapped model is
  fine-tuned; the result reports both the spline model's and the formula's test RMSE and
  the worst edge ``R^2``, so a function outside the library (e.g. Bessel ``J0``) yields an
  honest "best fit" with its (poor) error instead of a silent wrong law.
"""

from __future__ import annotations

import contextlib
import copy
import math
import sys
import time
from pathlib import Path

from trainkit.common.errors import UserError
from trainkit.kan.penalties import penalty as penalty_row
from trainkit.kan.penalties import std_penalty
from trainkit.kan.recipes import DataSection

# ---- sparsity ---------------------------------------------------------------------------
#: pykan 0.2's penalty, the ``std`` row of the one table of penalties (kan/penalties.py)
std_regularization = std_penalty


@contextlib.contextmanager
def _penalty(model, kind: str):
    """Make ``fit`` use the ``kind`` row of :data:`~trainkit.kan.penalties.PENALTIES` while
    the block runs (``paper`` is what ``KAN.regularization`` computes anyway)."""
    # fit calls model.regularization(acts, l1, entropy); shadow it
    model.regularization = penalty_row(kind).fn
    try:
        yield model
    finally:
        model.__dict__.pop("regularization", None)


# ---- data -------------------------------------------------------------------------------
def load_data(
    data,
    target: str | None = None,
    var_names=None,
    ranges=(-1.0, 1.0),
    train_num: int = 1000,
    test_num: int = 1000,
    seed: int = 0,
):
    """``(dataset, var_names, true_expr | None)`` from a dataset dict, a formula or a CSV path.

    A string naming an existing ``.csv`` file is read with ``target`` as the label column;
    any other string is a formula sampled uniformly in ``ranges`` (float64).
    """
    import torch

    from trainkit.kan.recipes import csv_dataset, formula_dataset

    if isinstance(data, dict):
        n = data["train_input"].shape[1]
        names = list(var_names) if var_names else [f"x{t + 1}" for t in range(n)]
        ds = {
            k: data[k].to(torch.float64)
            for k in ("train_input", "train_label", "test_input", "test_label")
        }
        return ds, names, None
    if not isinstance(data, (str, Path)):
        raise UserError(
            f"discover: data must be a dataset dict, a formula or a CSV path, got {type(data).__name__}"
        )
    text = str(data)
    if text.lower().endswith(".csv"):
        if not target:
            raise UserError(f"discover: {text}: a CSV file needs a target column (--target COLUMN)")
        ds, names = csv_dataset(DataSection(csv=text, target=target, seed=seed), torch.float64)
        return ds, names, None
    cfg = DataSection(
        formula=text, ranges=list(ranges), train_num=train_num, test_num=test_num, seed=seed
    )
    ds, names = formula_dataset(cfg, torch.float64)
    from trainkit.kan.formula import parse_formula

    return ds, names, parse_formula(text, names)[0]


def _rmse(model, x, y) -> float:
    import torch

    with torch.no_grad():
        v = torch.sqrt(torch.mean((model(x) - y) ** 2)).item()
    return v if math.isfinite(v) else math.inf


# ---- the workflow -----------------------------------------------------------------------
def discover(
    data,
    width=None,
    *,
    target: str | None = None,
    var_names=None,
    ranges=(-1.0, 1.0),
    train_num: int = 1000,
    test_num: int = 1000,
    data_seed: int = 0,
    grid: int = 3,
    k: int = 3,
    seed: int = 0,
    lamb: float = 0.01,
    penalty: str = "std",
    lamb_relative: bool = False,
    sparse_steps: int = 50,
    prune_rounds: int = 3,
    resparse_steps: int = 20,
    node_th: float = 1e-2,
    edge_th: float = 3e-2,
    grids=(5, 10, 20),
    steps: int = 50,
    lib=None,
    r2_threshold: float = 0.999,
    weight_simple: float = 1.0,
    finetune_steps: int = 50,
    digits: int = 4,
    out_dir=None,
    truth=None,
    verbose: bool = False,
) -> dict:
    """Fit, prune, refine, snap to symbols and fine-tune; report the formula and its error.

    Args:
        data: a dataset dict (``train_input [N, n_0]``, ``train_label [N, n_L]``,
            ``test_input``, ``test_label``), a formula such as ``"exp(sin(pi*x1)+x2**2)"``
            (sampled in ``ranges``), or the path of a CSV file (with ``target``).
        width: KAN widths; default ``[n_0, 5, n_L]``. Entries may be ``[n_sum, n_mult]``.
        grid, k, seed: initial grid, spline order, initialisation seed.
        lamb, penalty: sparsity strength and kind (``"std"``: pykan 0.2's normalised
            penalty; ``"paper"``: eq. 2.17's mean ``|phi|``). ``lamb=0`` skips the sparse
            phase and pruning.
        lamb_relative: multiply ``lamb`` by the training labels' standard deviation (the
            squared error scales with its square, the penalty only linearly), so the
            sparsity/accuracy trade-off does not depend on the label's units (helps labels
            with a small spread, e.g. Feynman I.27.6; off by default: the paper example was
            verified with the plain ``lamb``).
        sparse_steps, resparse_steps, prune_rounds: LBFGS steps of the first sparse fit, of
            each re-fit after a prune that removed nodes, and the number of prune rounds.
        node_th, edge_th: pruning thresholds (:func:`trainkit.kan.prune.prune`).
        grids, steps: grid extension schedule and LBFGS steps per grid.
        lib, weight_simple: symbolic library and simplicity weight (:func:`auto_symbolic`).
        r2_threshold: the formula is ``confident`` when every edge's fit reaches it.
        finetune_steps: LBFGS steps on the snapped model's affine parameters.
        digits: decimals of the reported formula's constants.
        out_dir: if given, ``before_pruning.png``, ``after_pruning.png`` and
            ``symbolic.png`` are written there.
        truth: the generating formula (string or SymPy) when ``data`` is a dataset dict;
            a formula ``data`` is its own truth.

    Returns:
        dict with ``var_names``, ``width_initial``, ``width_pruned``, ``kan_test_rmse``
        (refined spline model), ``symbolic_test_rmse`` (snapped and fine-tuned model),
        ``formula`` (str, constants rounded to ``digits``), ``formula_latex``,
        ``formula_test_rmse`` (the rounded formula), ``edges`` (per-edge fits),
        ``min_r2``, ``confident``, ``exact`` (SymPy-equivalent to the generating formula
        after rounding to 3 decimals; None when unknown), ``plots`` (file names),
        ``seconds``, ``cpu_seconds``, and the objects ``model`` (spline), ``symbolic_model``
        and ``expr`` (SymPy).
    """
    import torch

    from trainkit.kan import plot as kplot
    from trainkit.kan import prune as kprune
    from trainkit.kan import symbolic as ksym
    from trainkit.kan.formula import equivalent, to_latex
    from trainkit.kan.model import KAN

    penalty_row(penalty)  # a one-line UserError for an unknown name
    t0, c0 = time.perf_counter(), time.process_time()
    ds, names, parsed = load_data(data, target, var_names, ranges, train_num, test_num, data_seed)
    truth = parsed if truth is None else truth
    n_in, n_out = ds["train_input"].shape[1], ds["train_label"].shape[1]
    width = list(width) if width is not None else [n_in, 5, n_out]
    model = KAN(width, grid=grid, k=k, seed=seed, dtype=torch.float64)
    if model.width[0][0] != n_in or sum(model.width[-1]) != n_out:
        raise UserError(
            f"discover: width {width} must start with {n_in} ({', '.join(names)}) "
            f"and end with {n_out}"
        )
    xtr, xte, yte = ds["train_input"], ds["test_input"], ds["test_label"]
    out = Path(out_dir) if out_dir is not None else None
    plots: dict[str, str] = {}
    log = (
        (lambda msg: print(f"discover: {msg}", file=sys.stderr)) if verbose else (lambda msg: None)
    )

    timings: dict[str, float] = {}
    mark = [time.process_time()]

    def tick(stage: str) -> None:  # CPU seconds per stage (robust to other processes)
        now = time.process_time()
        timings[stage] = timings.get(stage, 0.0) + now - mark[0]
        mark[0] = now

    def fit(m, n, **kw):
        return m.fit(ds, steps=n, verbose=False, **kw) if n > 0 else None

    width_initial = copy.deepcopy(model.width)
    if lamb > 0 and lamb_relative:
        lamb = lamb * float(ds["train_label"].std())
    if lamb > 0:
        with _penalty(model, penalty):
            fit(model, sparse_steps, lamb=lamb)
        log(f"sparse fit {width_initial}: test RMSE {_rmse(model, xte, yte):.3e}")
        tick("sparse_fit")
        if out is not None:
            kplot.plot(
                model,
                out / "before_pruning.png",
                in_vars=names,
                x=xtr,
                title="after sparse training",
            )
            plots["before"] = "before_pruning.png"
            tick("plots")
        for _ in range(max(1, prune_rounds)):
            before = copy.deepcopy(model.width)
            model = kprune.prune(model, node_th, edge_th, x=xtr)
            log(f"pruned {before} -> {model.width}")
            if model.width == before or resparse_steps <= 0:
                break
            with _penalty(model, penalty):
                fit(model, resparse_steps, lamb=lamb)
        tick("prune")
    for g in grids:
        if g != model.grid:
            model = model.refine(g)
        fit(model, steps)
        log(f"grid {g}: test RMSE {_rmse(model, xte, yte):.3e}")
    kan_rmse = _rmse(model, xte, yte)
    tick("refine")
    if out is not None:
        kplot.plot(
            model, out / "after_pruning.png", in_vars=names, x=xtr, title="pruned and refined"
        )
        plots["after"] = "after_pruning.png"
        tick("plots")

    sym = copy.deepcopy(model)
    edges = ksym.auto_symbolic(sym, lib=lib, r2_threshold=0.0, weight_simple=weight_simple, x=xtr)
    tick("auto_symbolic")
    fit(sym, finetune_steps, update_grid=False)
    tick("finetune")
    sym_rmse = _rmse(sym, xte, yte)
    exprs = ksym.symbolic_formula(sym, names, digits=digits)
    formula_rmse = ksym.formula_rmse(exprs, names, xte, yte)
    min_r2 = min((e["r2"] for e in edges), default=1.0)
    if out is not None:
        kplot.plot(sym, out / "symbolic.png", in_vars=names, x=xtr, title="snapped to symbols")
        plots["symbolic"] = "symbolic.png"
        tick("plots")
    exact = None
    if truth is not None and n_out == 1:
        try:
            exact = bool(equivalent(exprs[0], truth, 3))
        except (OverflowError, ValueError):  # constants beyond float range: not the law
            exact = False
    text = "; ".join(str(e) for e in exprs)
    log(
        f"formula {text}: test RMSE {formula_rmse:.3e} (snapped model {sym_rmse:.3e}, "
        f"min edge R^2 {min_r2:.6f})"
    )
    return {
        "var_names": names,
        "width_initial": width_initial,
        "width_pruned": copy.deepcopy(model.width),
        "kan_test_rmse": kan_rmse,
        "symbolic_test_rmse": sym_rmse,
        "formula": text,
        "formula_latex": "; ".join(to_latex(e) for e in exprs),
        "formula_test_rmse": formula_rmse,
        "edges": edges,
        "min_r2": min_r2,
        "confident": min_r2 >= r2_threshold,
        "exact": exact,
        "plots": plots,
        "cpu_timings": timings,
        "seconds": time.perf_counter() - t0,
        "cpu_seconds": time.process_time() - c0,
        "model": model,
        "symbolic_model": sym,
        "expr": exprs,
    }
