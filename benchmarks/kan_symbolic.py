"""Symbolic search of one trained KAN, like for like: trainkit's vs pykan's ``auto_symbolic``.

Prints one JSON object. The network is trained once with trainkit's paper workflow
(:func:`trainkit.kan.discover.discover` on ``--formula``: sparse fit, prune, refine to
``--grids``; its own snapping is discarded) and then copied, parameter for parameter, into
a PyPI ``pykan`` 0.2.8 ``KAN`` of the same width, grid and order (same knots, ``coef``,
``scale_base``, ``scale_sp``, masks; pykan's node/subnode affines stay at identity), so
both libraries search **the same network** on **the same inputs** (the training inputs,
or their first ``--search-num``: pykan's cost grows linearly with them), in float64, with
the same torch thread count. ``network_max_abs_diff`` checks that the two
copies compute the same function.

Timed, interleaved ``--reps`` times (trainkit, pykan, then pykan, trainkit, ...), each on a
fresh copy of the network, after one untimed warm-up call of each with a one-function
library:

- ``trainkit``: :func:`trainkit.kan.symbolic.auto_symbolic` (``r2_threshold=0``, default
  ``weight_simple=1``): its own forward passes plus the per-edge search;
- ``pykan``: ``model(x)`` (pykan fits on the activations cached by a forward pass) plus
  ``model.auto_symbolic(lib=..., weight_simple=0.8)`` (pykan's defaults: grid search over
  ``a, b`` in ``[-10, 10]``, 101 x 101 points, 3 zoom iterations, per function), run from a
  temporary directory (pykan writes ``./model``) with ``auto_save=False``.

Both search the same function names: by default (``--lib common``) trainkit's whole library
(26 functions), all of which pykan's ``SYMBOLIC_LIB`` has under the same names (pykan's
extra ``1/x^5``, ``cosh``, ``sigmoid``, ``relu`` and its aliases are left out); the
functions' guards near singularities differ. ``--lib default`` gives each library its own
whole library. The ranking rules differ (trainkit: ``log10(1 - R^2) + complexity``; pykan:
``0.8 complexity + 0.2 log2(1 - R^2)``), each at its default; pykan fits every layer on the
activations of the spline network, trainkit fits layer ``l`` on the inputs produced by the
already snapped layers before it (identical for the first layer).

Reported per library: CPU seconds (user + system, ``getrusage`` of this process, all
threads, and of any children; ``user_s``/``sys_s`` give the split) and wall seconds of the
call, median and ``[min, max]`` over the reps; the function chosen and its ``R^2`` per edge ``(l, i, j)``; whether both chose
the same function on every edge; the snapped (not re-trained) networks' test RMSE; and the
load average before and after (the machine may be shared).

Usage: ``python benchmarks/kan_symbolic.py [--reps 3] [--threads 1] [--lib common]
[--formula 'exp(sin(pi*x1)+x2**2)'] [--width 2,5,1] [--grid 3] [--grids 5,10,20]
[--steps 50] [--lamb 0.01] [--train-num 1000] [--search-num 0] [--skip-pykan]``.
"""

# ruff: noqa: E741  -- (l, i, j) = (layer, input node, output node), the paper's edge index

from __future__ import annotations

import argparse
import contextlib
import copy
import io
import json
import os
import platform
import re
import resource
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from trainkit.kan import symbolic as ksym  # noqa: E402
from trainkit.kan import symbolic_lib as slib  # noqa: E402
from trainkit.kan.discover import discover, load_data  # noqa: E402

PYKAN_WEIGHT_SIMPLE = 0.8  # pykan 0.2.8's auto_symbolic default
_PYKAN_FIX = re.compile(r"fixing \((\d+),(\d+),(\d+)\) with (\S+), r2=([^,]+), c=")


def loadavg() -> str | None:
    try:
        with open("/proc/loadavg") as f:
            return f.read().strip()
    except OSError:
        return None


def cpu_seconds() -> tuple[float, float]:
    """``(user, system)`` CPU seconds of this process (all threads) and its reaped children."""
    me, ch = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + ch.ru_utime, me.ru_stime + ch.ru_stime


@contextlib.contextmanager
def timed(out: dict):
    """Fill ``out`` with ``cpu_s`` (user + system), ``user_s``, ``sys_s`` and ``wall_s``."""
    t0, (u0, s0) = time.perf_counter(), cpu_seconds()
    yield out
    wall, (u1, s1) = time.perf_counter() - t0, cpu_seconds()
    out.update(cpu_s=u1 - u0 + s1 - s0, user_s=u1 - u0, sys_s=s1 - s0, wall_s=wall)


@contextlib.contextmanager
def in_tempdir():
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="kan_symbolic_") as d:
        os.chdir(d)
        try:
            yield d
        finally:
            os.chdir(old)


def train_network(args) -> tuple[object, dict, dict]:
    """trainkit's workflow up to the refined spline network; ``(model, dataset, info)``."""
    ds, names, _ = load_data(
        args.formula, train_num=args.train_num, test_num=args.train_num, seed=0
    )
    t0, c0 = time.perf_counter(), time.process_time()
    res = discover(
        ds,
        args.width,
        var_names=names,
        grid=args.grid,
        lamb=args.lamb,
        sparse_steps=args.steps,
        resparse_steps=min(20, args.steps),  # discover's default (20)
        grids=args.grids,
        steps=args.steps,
        finetune_steps=0,
    )
    info = {
        "width_initial": res["width_initial"],
        "width": [w[0] for w in res["width_pruned"]],
        "grid": res["model"].grid,
        "kan_test_rmse": res["kan_test_rmse"],
        "train_cpu_s": time.process_time() - c0,
        "train_wall_s": time.perf_counter() - t0,
    }
    return res["model"], ds, info


def to_pykan(tk, workdir: str):
    """A pykan ``KAN`` computing the same function as trainkit's ``tk`` (float64)."""
    import kan as pykan

    if any(w[1] for w in tk.width):
        raise SystemExit("kan_symbolic: multiplication nodes are not transferred to pykan")
    with contextlib.redirect_stdout(io.StringIO()):
        pk = pykan.KAN(
            width=[w[0] for w in tk.width],
            grid=tk.grid,
            k=tk.k,
            seed=0,
            auto_save=False,
            ckpt_path=os.path.join(workdir, "model"),
            device="cpu",
        )
    pk = pk.double()  # not .to(dtype): pykan overrides .to() and stores its argument as .device
    with torch.no_grad():
        for tl, pl in zip(tk.layers, pk.act_fun):
            # trainkit stores edge (i -> j) at [j, i]; pykan at [i, j]
            pl.grid.data = tl.grid.detach().clone()
            pl.coef.data = tl.coef.detach().permute(1, 0, 2).clone()
            pl.scale_base.data = tl.scale_base.detach().t().clone()
            pl.scale_sp.data = tl.scale_sp.detach().t().clone()
            pl.mask.data = tl.mask.detach().t().clone()
    return pk


def lib_names(kind: str) -> tuple[list[str] | None, list[str] | None]:
    """``(trainkit lib, pykan lib)``; None = that library's whole default library."""
    if kind == "default":
        return None, None
    if kind == "common":
        names = list(slib.LIBRARY)
    else:
        names = [slib.get_function(n).name for n in kind.split(",") if n.strip()]
    try:
        from kan.utils import SYMBOLIC_LIB
    except ImportError:
        return names, None
    missing = [n for n in names if n not in SYMBOLIC_LIB]
    if missing:
        raise SystemExit(f"kan_symbolic: pykan's SYMBOLIC_LIB lacks {missing}")
    return names, names


def _canon(name: str) -> str:
    try:
        return slib.get_function(name).name
    except Exception:  # a pykan-only function (cosh, sigmoid, relu, 1/x^5)
        return name


def run_trainkit(tk, x, lib) -> tuple[dict, list[dict], object]:
    m = copy.deepcopy(tk)
    with timed({}) as times:
        report = ksym.auto_symbolic(m, lib=lib, r2_threshold=0.0, x=x)
    edges = [{"edge": [e["l"], e["i"], e["j"]], "name": e["name"], "r2": e["r2"]} for e in report]
    return times, edges, m


def run_pykan(pk, x, lib, workdir: str) -> tuple[dict, list[dict], object]:
    m = copy.deepcopy(pk)
    out = io.StringIO()
    with contextlib.chdir(workdir), contextlib.redirect_stdout(out):
        with timed({}) as times:
            m(x)  # pykan fits on the activations cached by the last forward pass
            m.auto_symbolic(lib=lib, verbose=1, weight_simple=PYKAN_WEIGHT_SIMPLE)
    r2 = {
        (int(a), int(b), int(c)): float(v) for a, b, c, _, v in _PYKAN_FIX.findall(out.getvalue())
    }
    edges = []
    for l, sym in enumerate(m.symbolic_fun):
        for j in range(sym.out_dim):
            for i in range(sym.in_dim):
                if float(pk.act_fun[l].mask[i, j]) == 0.0:
                    continue  # pruned edge (trainkit reports only alive edges)
                e = {"edge": [l, i, j], "name": _canon(sym.funs_name[j][i])}
                e["r2"] = r2.get((l, i, j))
                edges.append(e)
    return times, edges, m


def summary(runs: list[dict]) -> dict:
    out = {"reps": len(runs)}
    for key in ("cpu_s", "wall_s"):
        vals = [r[key] for r in runs]
        out[key] = statistics.median(vals)
        out[f"{key}_range"] = [min(vals), max(vals)]
        out[f"{key}_all"] = vals
    for key in ("user_s", "sys_s"):  # the split of cpu_s (allocating big temporaries: sys)
        out[key] = statistics.median(r[key] for r in runs)
    return out


def rmse(model, x, y) -> float:
    with torch.no_grad():
        return float(torch.sqrt(torch.mean((model(x) - y) ** 2)))


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--formula", default="exp(sin(pi*x1)+x2**2)")
    ap.add_argument("--width", default="2,5,1", help="initial width, before pruning")
    ap.add_argument("--grid", type=int, default=3, help="initial grid (discover's default)")
    ap.add_argument("--grids", default="5,10,20", help="grid extension schedule")
    ap.add_argument("--steps", type=int, default=50, help="LBFGS steps per training phase")
    ap.add_argument("--lamb", type=float, default=0.01, help="sparsity; 0 = no pruning")
    ap.add_argument("--train-num", type=int, default=1000, help="training (= search) points")
    ap.add_argument(
        "--search-num",
        type=int,
        default=0,
        help="search on the first N training inputs (both libraries; 0 = all)",
    )
    ap.add_argument("--lib", default="common", help="common | default | comma-separated names")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-pykan", action="store_true")
    args = ap.parse_args(argv)
    args.width = [int(v) for v in args.width.split(",")]
    args.grids = [int(v) for v in args.grids.split(",")]
    if args.reps < 1:
        ap.error("--reps must be >= 1")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    result = {
        "benchmark": "kan_symbolic",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "torch": torch.__version__,
        "threads": args.threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.platform(),
        "loadavg_start": loadavg(),
        "formula": args.formula,
        "train_num": args.train_num,
        "dtype": "float64",
        "timed": {
            "trainkit": "trainkit.kan.symbolic.auto_symbolic(model, lib, r2_threshold=0, x=x)",
            "pykan": "model(x); model.auto_symbolic(lib=lib, weight_simple=0.8)",
        },
        "weight_simple": {"trainkit": 1.0, "pykan": PYKAN_WEIGHT_SIMPLE},
        "reps_order": "interleaved, alternating which library goes first",
    }
    tk, ds, info = train_network(args)
    result["network"] = info
    n = args.search_num if args.search_num > 0 else ds["train_input"].shape[0]
    x, xte, yte = ds["train_input"][:n], ds["test_input"], ds["test_label"]
    result["search_points"] = x.shape[0]
    tk_lib, pk_lib = lib_names(args.lib)
    result["lib"] = {"kind": args.lib, "trainkit": tk_lib, "pykan": pk_lib}
    if tk_lib is None:
        result["lib"]["trainkit"] = list(slib.LIBRARY)

    with tempfile.TemporaryDirectory(prefix="kan_symbolic_") as workdir:
        pk = None
        if not args.skip_pykan:
            try:
                import kan  # noqa: F401
            except ImportError as e:
                result["pykan"] = {"skipped": f"import failed: {e}"}
            else:
                with contextlib.chdir(workdir):
                    pk = to_pykan(tk, workdir)
                with torch.no_grad():
                    diff = (pk(x) - tk(x)).abs().max().item()
                result["network_max_abs_diff"] = diff
                if pk_lib is None:
                    from kan.utils import SYMBOLIC_LIB

                    result["lib"]["pykan"] = list(SYMBOLIC_LIB)
        # untimed warm-up on a one-function library (first-call costs of both code paths)
        run_trainkit(tk, x, ["x"])
        if pk is not None:
            run_pykan(pk, x, ["x"], workdir)
        runs = {"trainkit": [], "pykan": []}
        last = {}
        for rep in range(args.reps):
            order = ["trainkit", "pykan"] if rep % 2 == 0 else ["pykan", "trainkit"]
            for name in order:
                if name == "trainkit":
                    t, edges, m = run_trainkit(tk, x, tk_lib)
                elif pk is not None:
                    t, edges, m = run_pykan(pk, x, pk_lib, workdir)
                else:
                    continue
                runs[name].append(t)
                last[name] = (edges, m)
                print(
                    f"[kan_symbolic] rep {rep + 1}/{args.reps} {name}: "
                    f"{t['cpu_s']:.2f} CPU-s, {t['wall_s']:.2f} s",
                    file=sys.stderr,
                    flush=True,
                )
        for name in ("trainkit", "pykan"):
            if not runs[name]:
                continue
            edges, m = last[name]
            with contextlib.chdir(workdir), contextlib.redirect_stdout(io.StringIO()):
                snapped = rmse(m, xte, yte)
            result[name] = {**summary(runs[name]), "edges": edges, "snapped_test_rmse": snapped}
    if "cpu_s" in result.get("pykan", {}):
        tkr, pkr = result["trainkit"], result["pykan"]
        result["pykan_over_trainkit_cpu"] = pkr["cpu_s"] / tkr["cpu_s"]
        result["pykan_over_trainkit_wall"] = pkr["wall_s"] / tkr["wall_s"]
        by_edge = {tuple(e["edge"]): e["name"] for e in pkr["edges"]}
        per_edge = [
            {"edge": e["edge"], "trainkit": e["name"], "pykan": by_edge.get(tuple(e["edge"]))}
            for e in tkr["edges"]
        ]
        result["per_edge_functions"] = per_edge
        result["same_functions"] = all(p["trainkit"] == p["pykan"] for p in per_edge) and len(
            per_edge
        ) == len(by_edge)
    result["loadavg_end"] = loadavg()
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
