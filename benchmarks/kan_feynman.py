"""KAN science workflow vs an MLP on AI-Feynman equations (Liu et al. 2024, sec. 3.3, Table 2).

For each equation: ``trainkit.kan.discover.discover`` (sparse fit, prune, refine,
auto_symbolic, fine-tune) and an MLP baseline with about as many parameters as the pruned,
refined KAN (two tanh hidden layers, LBFGS, same data). Reports the test RMSE of the KAN
(splines), of its symbolic formula (constants rounded to 4 decimals), of the MLP, and
whether the formula is SymPy-equivalent to the equation after rounding to 3 decimals.

Prints one JSON object, then a Markdown table. CPU-only, single-threaded:

    python benchmarks/kan_feynman.py                       # a handful (a few CPU-minutes)
    python benchmarks/kan_feynman.py --equations I.6.2 II.38.3 --steps 50
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time

import torch

DEFAULT = ["II.38.3", "I.12.11", "II.2.42", "I.27.6", "III.10.19"]


def mlp_baseline(ds: dict, n_params: int, seed: int = 0, steps: int = 300) -> dict:
    """Train ``[n_in, h, h, 1]`` (tanh) with LBFGS; ``h`` chosen so parameters ~ ``n_params``."""
    n_in = ds["train_input"].shape[1]
    # params(h) = h^2 + (n_in + 3) h + 1
    b = n_in + 3
    h = max(2, round((-b + math.sqrt(b * b + 4 * max(n_params - 1, 1))) / 2))
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(n_in, h),
        torch.nn.Tanh(),
        torch.nn.Linear(h, h),
        torch.nn.Tanh(),
        torch.nn.Linear(h, 1),
    ).double()
    x, y = ds["train_input"].double(), ds["train_label"].double()
    opt = torch.optim.LBFGS(
        net.parameters(),
        lr=1.0,
        max_iter=20,
        history_size=10,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-32,
        tolerance_change=1e-32,
    )

    def closure():
        opt.zero_grad()
        loss = torch.mean((net(x) - y) ** 2)
        loss.backward()
        return loss

    for _ in range(steps):
        opt.step(closure)
    with torch.no_grad():
        rmse = torch.sqrt(
            torch.mean((net(ds["test_input"].double()) - ds["test_label"].double()) ** 2)
        ).item()
    return {"hidden": h, "params": sum(p.numel() for p in net.parameters()), "test_rmse": rmse}


def run(
    names,
    width_hidden,
    n_mult: int,
    steps: int,
    grids,
    seed: int,
    mlp_steps: int,
    lamb_relative: bool = True,
) -> dict:
    from trainkit.kan import feynman
    from trainkit.kan.discover import discover

    rows = []
    for name in names:
        eq = feynman.get(name)
        ds = feynman.make_dataset_dict(name, 1000, 1000, seed=0)
        width = [eq.n_var, [width_hidden, n_mult], 1]
        t = time.process_time()
        r = discover(
            ds,
            width,
            var_names=list(eq.variables),
            truth=eq.expr(),
            seed=seed,
            grids=grids,
            steps=steps,
            lamb_relative=lamb_relative,
        )
        kan_cpu = time.process_time() - t
        t = time.process_time()
        mlp = mlp_baseline(ds, r["model"].n_params(), seed=seed, steps=mlp_steps)
        rows.append(
            {
                "equation": name,
                "target": eq.formula,
                "width_pruned": r["width_pruned"],
                "kan_params": r["model"].n_params(),
                "kan_test_rmse": r["kan_test_rmse"],
                "formula": r["formula"],
                "formula_test_rmse": r["formula_test_rmse"],
                "symbolic_test_rmse": r["symbolic_test_rmse"],
                "min_r2": r["min_r2"],
                "exact": r["exact"],
                "mlp_params": mlp["params"],
                "mlp_test_rmse": mlp["test_rmse"],
                "kan_cpu_s": round(kan_cpu, 1),
                "mlp_cpu_s": round(time.process_time() - t, 1),
            }
        )
    return {
        "benchmark": "kan_feynman",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "steps": steps,
        "grids": list(grids),
        "width": f"[n, [{width_hidden}, {n_mult}], 1]",
        "lamb_relative": lamb_relative,
        "rows": rows,
    }


def markdown(res: dict) -> str:
    def w(v):
        return "[" + ",".join(str(a) if not b else f"{a}+{b}x" for a, b in v) + "]"

    lines = [
        "| equation | pruned | KAN RMSE | formula RMSE | MLP RMSE (params) | exact | formula |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['equation']} `{r['target']}` | {w(r['width_pruned'])} | "
            f"{r['kan_test_rmse']:.2e} | {r['formula_test_rmse']:.2e} | "
            f"{r['mlp_test_rmse']:.2e} ({r['mlp_params']}) | "
            f"{'yes' if r['exact'] else 'no'} | `{r['formula']}` |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--equations", nargs="+", default=DEFAULT)
    p.add_argument("--hidden", type=int, default=3, help="hidden sum nodes before pruning")
    p.add_argument("--mult", type=int, default=2, help="hidden multiplication nodes before pruning")
    p.add_argument("--steps", type=int, default=50, help="LBFGS steps per grid")
    p.add_argument("--grids", type=int, nargs="+", default=[5, 10, 20])
    p.add_argument("--mlp-steps", type=int, default=300)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--absolute-lamb",
        action="store_true",
        help="do not scale lamb by the labels' std (discover's default)",
    )
    a = p.parse_args(argv)
    torch.set_num_threads(1)
    res = run(
        a.equations, a.hidden, a.mult, a.steps, a.grids, a.seed, a.mlp_steps, not a.absolute_lamb
    )
    print(json.dumps(res))
    print()
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
