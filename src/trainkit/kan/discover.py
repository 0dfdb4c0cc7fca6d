"""The paper's science workflow in one call: ``trainkit kan discover`` (Liu et al. 2024, sec. 2.5.1).

Reads top to bottom: data -> fit with sparsity -> prune (repeated while it removes nodes)
-> grid extension ("refine") -> ``auto_symbolic`` -> fine-tune the affine parameters ->
formula, its test RMSE, and plots before/after pruning.

Departures from pykan's tutorial workflow:

- Sparsity uses pykan 0.2's normalised penalty (``std_regularization``: each edge's
  standard deviation over the batch divided by its input's, plus the entropy term) rather
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainkit.common.errors import UserError
from trainkit.kan.recipes import DataSection


# ---- sparsity ---------------------------------------------------------------------------
def std_regularization(acts, lamb_l1: float = 1.0, lamb_entropy: float = 2.0, eps: float = 1e-12):
    """pykan 0.2's default penalty (``reg_metric='edge_forward_spline_n'``).

    For layer ``l``: ``|phi_oi| = std_n phi_oi(x_ni) / (std_n x_ni + 0.1)``; returns
    ``sum_l lamb_l1 * sum_oi |phi_oi| + lamb_entropy * S(p)``, ``p = |phi| / sum |phi|``.
    ``acts`` as returned by :meth:`KAN.forward_with_acts`.
    """
    total = 0.0
    for a in acts:
        l1 = a["postacts"].std(0) / (a["input"].std(0) + 0.1)  # [out, in]
        s = l1.sum()
        p = l1 / (s + eps)
        total = total + lamb_l1 * s - lamb_entropy * (p * (p + eps).log()).sum()
    return total


@contextlib.contextmanager
def _penalty(model, kind: str):
    """Make ``fit`` use ``std_regularization`` (``kind='std'``) while the block runs."""
    if kind == "std":  # fit calls model.regularization(acts, l1, entropy); shadow it
        model.regularization = std_regularization
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

    if penalty not in ("std", "paper"):
        raise UserError(f"discover: penalty must be 'std' or 'paper', got {penalty!r}")
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


# ---- the command ------------------------------------------------------------------------
@dataclass
class ModelSection:
    """The ``model:`` section of ``kan discover``: the initial KAN before sparsification.

    Attributes:
        k: B-spline order of every activation (pykan's ``k``; 3 = cubic, as in the paper).
        seed: seed of the model's random initialisation (not of the data; see ``data.seed``).
    """

    width: list[Any] | None = field(
        default=None,
        metadata={
            "help": "node counts, e.g. [2,5,1] or [2,[0,1],1]; default [n_inputs, 5, n_outputs]"
        },
    )
    grid: int = field(default=3, metadata={"help": "initial grid intervals"})
    k: int = 3
    seed: int = 0


@dataclass
class SparseSection:
    """The ``sparse:`` section: sparse training and pruning (paper sec. 2.5.1).

    Attributes:
        penalty: sparsity penalty kind: ``std`` = pykan 0.2's normalised penalty (edge std over
            the batch / input std, plus entropy); ``paper`` = eq. 2.17's mean ``|phi|``.
        steps: LBFGS steps of the first sparse fit, before the first prune (0 skips the fit).
        resparse_steps: LBFGS steps of the sparse re-fit after a prune that removed nodes;
            0 or less stops after the first prune.
        prune_rounds: maximum number of prune (+ re-fit) rounds, at least 1; stops early once a
            prune removes no node.
        node_th: node attribution score (fraction of the output's variation) below which a
            hidden node is removed; 1e-2 is pykan 0.2 / KAN 2.0's default.
        edge_th: edge attribution score below which an edge is masked off (its mean folded into
            a surviving edge); 3e-2 is pykan 0.2 / KAN 2.0's default.
    """

    lamb: float = field(default=0.01, metadata={"help": "sparsity strength; 0 skips pruning"})
    penalty: Literal["std", "paper"] = "std"
    steps: int = 50
    resparse_steps: int = 20
    prune_rounds: int = 3
    node_th: float = 1e-2
    edge_th: float = 3e-2


@dataclass
class RefineSection:
    """The ``refine:`` section: grid extension after pruning (paper sec. 2.4).

    Attributes:
        grids: grid sizes ``G`` (intervals) trained in turn, the model refined to each one
            (skipped when already at that size); positive integers.
        steps: LBFGS steps of training at each grid size of ``grids``.
    """

    grids: list[int] = field(default_factory=lambda: [5, 10, 20])
    steps: int = 50


@dataclass
class SymbolicSection:
    """The ``symbolic:`` section: ``auto_symbolic`` snapping and the reported formula.

    Attributes:
        r2_threshold: the formula is reported ``confident`` only when every edge's symbolic fit
            reaches this ``R^2``; otherwise it is labelled a best fit (snapping happens anyway).
        weight_simple: simplicity weight of ``auto_symbolic``: decades of ``1 - R^2`` one unit
            of function complexity is worth (pykan's ``weight_simple``; 0 = best fit only).
        finetune_steps: LBFGS steps fine-tuning the snapped model's affine parameters, grids
            frozen (0 = no fine-tune).
        digits: decimals the constants of the reported formula are rounded to.
    """

    lib: list[str] | None = field(default=None, metadata={"help": "library names; default all"})
    r2_threshold: float = 0.999
    weight_simple: float = 1.0
    finetune_steps: int = 50
    digits: int = 4


@dataclass
class OutSection:
    """The ``out:`` section: where the run is written and how chatty it is.

    Attributes:
        root: parent folder of run directories; a run goes to ``root/name/<timestamp>/``.
        name: run name, the sub-folder of ``root`` (holds models, plots, summary.json, config).
        verbose: print each stage's progress (widths, test RMSE) to stderr.
    """

    root: str = "runs"
    name: str = "kan-discover"
    verbose: bool = True


@dataclass
class KanDiscoverConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    sparse: SparseSection = field(default_factory=SparseSection)
    refine: RefineSection = field(default_factory=RefineSection)
    symbolic: SymbolicSection = field(default_factory=SymbolicSection)
    out: OutSection = field(default_factory=OutSection)

    def validate(self) -> None:
        if not self.refine.grids or any(g < 1 for g in self.refine.grids):
            raise UserError(
                f"kan discover: refine.grids must be positive integers, got {self.refine.grids}"
            )
        d = self.data
        if len(d.ranges) != 2 or not d.ranges[0] < d.ranges[1]:
            raise UserError(
                f"kan discover: data.ranges must be [lo, hi] with lo < hi, got {d.ranges}"
            )
        if self.sparse.lamb < 0:
            raise UserError(f"kan discover: sparse.lamb must be >= 0, got {self.sparse.lamb}")


def run_discover(cfg: KanDiscoverConfig, args=None) -> int:
    """The ``kan discover`` command; returns the exit code (0)."""
    from trainkit.common.io import atomic_write_json
    from trainkit.common.run import make_run_dir

    d = cfg.data
    if (d.formula is None) == (d.csv is None):
        raise UserError(
            "kan discover: give a formula (--formula 'exp(sin(pi*x1)+x2**2)') "
            "or a CSV file (--data file.csv --target y), not both"
        )
    source = d.formula if d.formula is not None else d.csv
    run_dir = make_run_dir(cfg.out.name, cfg.out.root, config=cfg)
    print(f"kan discover: {source}; run {run_dir}", file=sys.stderr)
    m, s, r, y = cfg.model, cfg.sparse, cfg.refine, cfg.symbolic
    res = discover(
        source,
        m.width,
        target=d.target,
        ranges=d.ranges,
        train_num=d.train_num,
        test_num=d.test_num,
        data_seed=d.seed,
        grid=m.grid,
        k=m.k,
        seed=m.seed,
        lamb=s.lamb,
        penalty=s.penalty,
        sparse_steps=s.steps,
        prune_rounds=s.prune_rounds,
        resparse_steps=s.resparse_steps,
        node_th=s.node_th,
        edge_th=s.edge_th,
        grids=r.grids,
        steps=r.steps,
        lib=y.lib,
        r2_threshold=y.r2_threshold,
        weight_simple=y.weight_simple,
        finetune_steps=y.finetune_steps,
        digits=y.digits,
        out_dir=run_dir,
        verbose=cfg.out.verbose,
    )
    res["model"].save(run_dir / "model")
    res["symbolic_model"].save(run_dir / "symbolic_model")
    summary = {key: v for key, v in res.items() if key not in ("model", "symbolic_model", "expr")}
    summary["source"] = str(source)
    atomic_write_json(run_dir / "summary.json", summary)
    print(
        f"width {res['width_initial']} -> {res['width_pruned']}; KAN test RMSE {res['kan_test_rmse']:.3e}"
    )
    for e in res["edges"]:
        print(f"  edge ({e['l']},{e['i']},{e['j']}): {e['name']:<9} R^2 = {e['r2']:.6f}")
    tag = (
        ""
        if res["confident"]
        else f"  (best fit only: an edge has R^2 {res['min_r2']:.4f} < {y.r2_threshold})"
    )
    print(f"formula: {res['formula']}{tag}")
    print(
        f"formula test RMSE {res['formula_test_rmse']:.3e}  (snapped model {res['symbolic_test_rmse']:.3e})"
    )
    if res["exact"] is not None:
        print(f"exact formula recovered: {'yes' if res['exact'] else 'no'}")
    print(f"run directory: {run_dir}")
    return 0
