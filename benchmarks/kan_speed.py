"""KAN training-step speed and memory: trainkit vs pykan vs plain-autograd splines vs an MLP.

Prints one JSON object. For each shape (``[64,64,10]`` at batch 1024 and
``[784,256,10]`` at batch 512, float32, G=5, k=3) and each implementation it times one
training step (forward, MSE loss, backward; gradients zeroed) on two grids:

- ``uniform``: a freshly built model, equally spaced knots (trainkit's fast path);
- ``after_update_grid``: the same model after ``update_grid(x)`` on the step's inputs,
  i.e. data-adapted, non-uniform knots -- what every model trained with ``fit`` (which
  updates the grid by default) runs on.

Implementations:

- ``trainkit``: :class:`trainkit.kan.KAN` (local basis, custom backward);
- ``cox_autograd``: the same layer computed with plain autograd through the dense
  Cox-de Boor recursion (efficient-kan's approach) -- the memory baseline;
- ``pykan_default`` / ``pykan_speed``: PyPI ``pykan`` (``KAN(...)`` and ``.speed()``; the
  grid is updated with ``update_grid(x)`` before ``.speed()``), constructed inside a
  temporary directory because it writes ``./model``;
- ``mlp``: ``Linear-SiLU-Linear`` with about as many parameters as the KAN (no grid: timed
  in ``uniform`` only).

Timing: every (implementation, grid) pair is timed interleaved, one step each per round,
the order rotated every round (A B C, B C A, C A B, ...), so load changes on a shared
machine hit all alike and no step always follows the same one; each gets at least 3 rounds and at most ``--budget`` seconds of timed steps beyond those. Reported per pair:
wall ``median_ms`` and ``range_ms`` ([min, max]) and the process CPU time of the step
(``time.process_time``, all threads) ``cpu_median_ms`` and ``cpu_range_ms``.

Memory: ``saved_mb`` is what autograd keeps for backward (distinct storages, via
``saved_tensors_hooks``) -- on CPU the activation memory that dominates a step's peak;
on CUDA ``peak_mb`` is ``torch.cuda.max_memory_allocated`` during the step minus the
memory allocated before it (parameters, inputs).

Usage: ``python benchmarks/kan_speed.py [--device cuda] [--threads 1] [--quick]
[--skip pykan_default] [--budget 15]``.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from trainkit.kan import (
    KAN,  # noqa: E402
    spline,  # noqa: E402
)

SHAPES = [([64, 64, 10], 1024), ([784, 256, 10], 512)]
GRIDS = ("uniform", "after_update_grid")
MIN_REPS = 3


class CoxKAN(nn.Module):
    """The trainkit KAN's math with plain autograd through the dense recursion."""

    def __init__(self, ref: KAN):
        super().__init__()
        self.ref = ref

    def forward(self, x):
        h = x
        for layer in self.ref.layers:
            b = spline.bspline_basis_cox(h, layer.grid, layer.k)  # [N, in, G+k]
            w = layer.spline_weight().reshape(layer.out_features, -1)
            h = b.reshape(h.shape[0], -1) @ w.t() + F.silu(h) @ (layer.mask * layer.scale_base).t()
        return h


def mlp_like(n_params: int, n_in: int, n_out: int) -> nn.Module:
    hidden = max(1, round((n_params - n_out) / (n_in + n_out + 1)))
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out))


@contextlib.contextmanager
def in_tempdir():
    old = os.getcwd()
    with tempfile.TemporaryDirectory(prefix="kan_bench_") as d:
        os.chdir(d)
        try:
            yield d
        finally:
            os.chdir(old)


def make_pykan(width, speed: bool, device: str, grid_x: torch.Tensor | None = None):
    """A pykan model; ``grid_x`` given: its grids updated to those samples first."""
    import kan as pykan  # PyPI pykan (a dev extra)

    with in_tempdir() as d:
        with contextlib.redirect_stdout(sys.stderr):
            m = pykan.KAN(
                width=width, grid=5, k=3, seed=0, device=device, ckpt_path=os.path.join(d, "model")
            )
            m.auto_save = False
            if grid_x is not None:
                m.update_grid(grid_x)
        if speed:
            m = m.speed()
    return m


def updated(tk: KAN, x: torch.Tensor) -> KAN:
    m = copy.deepcopy(tk)
    m.update_grid(x)
    return m


def implementations(tk: KAN, width: list[int], dev: str, x: torch.Tensor) -> dict:
    """``{(name, grid): builder}`` of every compared model (pykan gets a copy of ``width``:
    it rewrites it); the ``after_update_grid`` models are updated on ``x``."""
    tk_u = {}  # built once, shared by trainkit and cox_autograd

    def tk_upd():
        if "m" not in tk_u:
            tk_u["m"] = updated(tk, x)
        return tk_u["m"]

    return {
        ("trainkit", "uniform"): lambda: tk,
        ("trainkit", "after_update_grid"): tk_upd,
        ("cox_autograd", "uniform"): lambda: CoxKAN(tk),
        ("cox_autograd", "after_update_grid"): lambda: CoxKAN(tk_upd()),
        ("mlp", "uniform"): lambda: mlp_like(tk.n_params(), width[0], width[-1]).to(dev),
        ("pykan_speed", "uniform"): lambda: make_pykan(list(width), True, dev),
        ("pykan_speed", "after_update_grid"): lambda: make_pykan(list(width), True, dev, x),
        ("pykan_default", "uniform"): lambda: make_pykan(list(width), False, dev),
        ("pykan_default", "after_update_grid"): lambda: make_pykan(list(width), False, dev, x),
    }


def step_fn(model, x, y):
    def step():
        for p in model.parameters():
            p.grad = None
        loss = torch.mean((model(x) - y) ** 2)
        loss.backward()
        return loss

    return step


def saved_mb(step) -> float:
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        seen[(st.data_ptr(), st.nbytes())] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        step()
    return sum(seen.values()) / 2**20


def _stats(values_s: list[float], prefix: str = "") -> dict:
    ms = [v * 1e3 for v in values_s]
    return {f"{prefix}median_ms": statistics.median(ms), f"{prefix}range_ms": [min(ms), max(ms)]}


def measure_all(steps: dict, device: str, budget_s: float, max_reps: int = 40) -> dict:
    """Time the steps interleaved (A B C, B C A, C A B, ...), so load changes on a shared
    machine hit every implementation alike and none always runs after the same one (a
    step after a big one finds the allocator's memory ready); each gets ``MIN_REPS``
    rounds, then more while its timed steps stay within ``budget_s`` (at most
    ``max_reps``)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for step in steps.values():
        step()  # warm-up
    sync()
    wall = {key: [] for key in steps}
    cpu = {key: [] for key in steps}
    for rnd in range(max_reps):
        active = [k for k, ts in wall.items() if len(ts) < MIN_REPS or sum(ts) < budget_s]
        if not active:
            break
        shift = rnd % len(active)  # rotate, so no step always follows the same one
        for key in active[shift:] + active[:shift]:
            t0, c0 = time.perf_counter(), time.process_time()
            steps[key]()
            sync()
            wall[key].append(time.perf_counter() - t0)
            cpu[key].append(time.process_time() - c0)
    out = {}
    for key, step in steps.items():
        r = {**_stats(wall[key]), **_stats(cpu[key], "cpu_"), "reps": len(wall[key])}
        r["saved_mb"] = saved_mb(step)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            r["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        out[key] = r
    return out


def ratios_to_trainkit(impls: dict, grid: str) -> dict:
    """Time and memory ratios of every implementation to trainkit on the same grid."""
    base = impls.get("trainkit", {}).get(grid)
    out = {}
    if not isinstance(base, dict) or "median_ms" not in base:
        return out
    for name, per_grid in impls.items():
        r = per_grid.get(grid)
        if name == "trainkit" or not isinstance(r, dict) or "median_ms" not in r:
            continue
        out[f"{name}_time_over_trainkit"] = r["median_ms"] / base["median_ms"]
        out[f"{name}_cpu_over_trainkit"] = r["cpu_median_ms"] / max(base["cpu_median_ms"], 1e-9)
        out[f"trainkit_saved_mem_over_{name}"] = base["saved_mb"] / max(r["saved_mb"], 1e-9)
        if "peak_mb" in r:
            out[f"trainkit_peak_mem_over_{name}"] = base["peak_mb"] / max(r["peak_mb"], 1e-9)
    return out


def loadavg() -> str | None:
    try:
        with open("/proc/loadavg") as f:
            return f.read().strip()
    except OSError:
        return None


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--budget",
        type=float,
        default=15.0,
        help="seconds of timed steps per implementation, grid and shape (after 3 rounds)",
    )
    ap.add_argument("--quick", action="store_true", help="only the [64,64,10] shape")
    ap.add_argument("--skip", default="", help="comma-separated implementations to skip")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    dev = args.device
    result = {
        "benchmark": "kan_speed",
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "torch": torch.__version__,
        "device": dev,
        "threads": args.threads,
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "machine": platform.platform(),
        "loadavg_start": loadavg(),
        "dtype": "float32",
        "grid": 5,
        "k": 3,
        "step": "forward + MSE + backward",
        "grids": {
            "uniform": "freshly built model, equally spaced knots",
            "after_update_grid": "after update_grid(x) on the step's inputs (non-uniform knots)",
        },
        "min_reps": MIN_REPS,
        "budget_s": args.budget,
        "cases": [],
    }
    if dev == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
    for width, batch in SHAPES[:1] if args.quick else SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = (torch.rand(batch, width[0], generator=gen) * 2 - 1).to(dev)
        y = torch.randn(batch, width[-1], generator=gen).to(dev)
        tk = KAN(width, grid=5, k=3, seed=0, device=dev)
        case = {"width": width, "batch": batch, "kan_params": tk.n_params(), "impls": {}}
        steps = {}
        for (name, grid), build in implementations(tk, width, dev, x).items():
            if name in skip:
                continue
            per_grid = case["impls"].setdefault(name, {})
            try:
                model = build()
            except ImportError as e:
                per_grid[grid] = {"skipped": f"import failed: {e}"}
                continue
            per_grid[grid] = {}
            if name == "trainkit":
                per_grid[grid]["grid_uniform"] = [m.grid_is_uniform() for m in model.layers]
            steps[(name, grid)] = step_fn(model, x, y)
        for per_grid in case["impls"].values():
            for grid in GRIDS:
                per_grid.setdefault(grid, {"skipped": "not applicable: no grid"})
        names = ", ".join(f"{n}/{g}" for n, g in steps)
        print(f"[kan_speed] {width} batch {batch}: {names}", file=sys.stderr, flush=True)
        for (name, grid), r in measure_all(steps, dev, args.budget).items():
            case["impls"][name][grid] = {**case["impls"][name].get(grid, {}), **r}
        case["ratios"] = {g: ratios_to_trainkit(case["impls"], g) for g in GRIDS}
        slow = {}
        for name, per_grid in case["impls"].items():
            a, b = per_grid.get("uniform", {}), per_grid.get("after_update_grid", {})
            if "median_ms" in a and "median_ms" in b:
                slow[name] = b["median_ms"] / a["median_ms"]
        case["after_update_grid_over_uniform_time"] = slow
        result["cases"].append(case)
    result["loadavg_end"] = loadavg()
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
