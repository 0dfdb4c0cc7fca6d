"""Demo section helper: the paper's science workflow on ``exp(sin(pi x) + y^2)``.

``run_science(out_dir, quick)`` runs :func:`trainkit.kan.discover.discover` from a
``[2, 5, 1]`` KAN, writes the network plots before and after pruning (and once snapped to
symbols) under ``out_dir/kan_science/``, and returns what the demo report shows.
"""

from __future__ import annotations

from pathlib import Path

FORMULA = "exp(sin(pi*x1) + x2**2)"
SUBDIR = "kan_science"


def run_science(out_dir, quick: bool = True) -> dict:
    """Recover the formula of the paper's running example.

    Args:
        out_dir: the demo's output folder; plots go to ``out_dir/kan_science/``.
        quick: shorter refinement (grids 5, 10 with 30 steps; ~15 CPU-seconds) instead of
            the full schedule (grids 5, 10, 20 with 50 steps; ~25 CPU-seconds).

    Returns:
        JSON-ready dict: ``target``, ``formula``, ``formula_latex``, ``exact`` (SymPy-
        equivalent to the target after rounding to 3 decimals), ``width_initial``,
        ``width_pruned``, ``kan_test_rmse``, ``symbolic_test_rmse``, ``formula_test_rmse``,
        ``plots`` (``before``, ``after``, ``symbolic``: PNG paths relative to ``out_dir``),
        ``seconds``, ``cpu_seconds``.
    """
    from trainkit.common.io import atomic_write_json
    from trainkit.kan.discover import discover

    out_dir = Path(out_dir)
    run_dir = out_dir / SUBDIR
    run_dir.mkdir(parents=True, exist_ok=True)
    kw = dict(grids=(5, 10), steps=30, finetune_steps=20) if quick else {}
    r = discover(FORMULA, [2, 5, 1], seed=0, out_dir=run_dir, **kw)
    keys = (
        "formula",
        "formula_latex",
        "exact",
        "width_initial",
        "width_pruned",
        "kan_test_rmse",
        "symbolic_test_rmse",
        "formula_test_rmse",
        "seconds",
        "cpu_seconds",
    )
    res = {"target": FORMULA, **{key: r[key] for key in keys}}
    res["plots"] = {name: f"{SUBDIR}/{fname}" for name, fname in r["plots"].items()}
    atomic_write_json(run_dir / "summary.json", res)
    return res
