"""``trainkit kan discover``: its config sections and the command.

The workflow it runs (fit with sparsity, prune, refine, snap to symbols, fine-tune) is
:func:`trainkit.kan.workflow.discover`, importable from here too with :func:`load_data`
and :func:`std_regularization`.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Literal

from trainkit.common.errors import UserError
from trainkit.kan.recipes import DataSection
from trainkit.kan.workflow import discover, load_data, std_regularization

__all__ = [
    "KanDiscoverConfig",
    "ModelSection",
    "OutSection",
    "RefineSection",
    "SparseSection",
    "SymbolicSection",
    "discover",
    "load_data",
    "run_discover",
    "std_regularization",
]


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
