"""KAN training-step speed and memory: trainkit vs pykan vs plain-autograd splines vs an MLP.

Prints one JSON object. For each shape (``[64,64,10]`` at batch 1024 and
``[784,256,10]`` at batch 512, float32, G=5, k=3) and each implementation it times one
training step (forward, MSE loss, backward; gradients zeroed), interleaving the
implementations round by round, and reports the median and the ratios to trainkit:

- ``trainkit``: :class:`trainkit.kan.KAN` (local basis, custom backward);
- ``cox_autograd``: the same layer computed with plain autograd through the dense
  Cox-de Boor recursion (efficient-kan's approach) -- the memory baseline;
- ``pykan_default`` / ``pykan_speed``: PyPI ``pykan`` (``KAN(...)`` and ``.speed()``),
  constructed inside a temporary directory because it writes ``./model``;
- ``mlp``: ``Linear-SiLU-Linear`` with about as many parameters as the KAN.

Memory: ``saved_mb`` is what autograd keeps for backward (distinct storages, via
``saved_tensors_hooks``) -- on CPU the activation memory that dominates a step's peak;
on CUDA ``peak_mb`` is ``torch.cuda.max_memory_allocated`` during the step minus the
memory allocated before it (parameters, inputs).

Usage: ``python benchmarks/kan_speed.py [--device cuda] [--threads 1] [--quick]
[--skip pykan_default] [--budget 20]``.
"""

from __future__ import annotations

import argparse
import contextlib
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


def make_pykan(width, speed: bool, device: str):
    import kan as pykan  # PyPI pykan (a dev extra)

    with in_tempdir() as d:
        with contextlib.redirect_stdout(sys.stderr):
            m = pykan.KAN(
                width=width, grid=5, k=3, seed=0, device=device, ckpt_path=os.path.join(d, "model")
            )
        m.auto_save = False
        if speed:
            m = m.speed()
    return m


def implementations(tk: KAN, width: list[int], dev: str) -> dict:
    """Builders of every compared model (pykan gets a copy: it rewrites ``width``)."""
    return {
        "trainkit": lambda: tk,
        "cox_autograd": lambda: CoxKAN(tk),
        "mlp": lambda: mlp_like(tk.n_params(), width[0], width[-1]).to(dev),
        "pykan_speed": lambda: make_pykan(list(width), True, dev),
        "pykan_default": lambda: make_pykan(list(width), False, dev),
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


def measure_all(steps: dict, device: str, budget_s: float, max_reps: int = 40) -> dict:
    """Time the steps interleaved (A B C A B C ...), so load changes on a shared machine
    hit every implementation alike; each gets at most ``budget_s`` of timed steps
    (at least 3, or 1 when a single step exceeds the budget)."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for step in steps.values():
        step()  # warm-up
    sync()
    times = {name: [] for name in steps}
    for _ in range(max_reps):
        active = [n for n, ts in times.items() if sum(ts) < budget_s or len(ts) < 3]
        active = [n for n in active if not (times[n] and times[n][0] > budget_s)]
        if not active:
            break
        for name in active:
            t0 = time.perf_counter()
            steps[name]()
            sync()
            times[name].append(time.perf_counter() - t0)
    out = {}
    for name, step in steps.items():
        r = {"median_ms": statistics.median(times[name]) * 1e3, "reps": len(times[name])}
        r["saved_mb"] = saved_mb(step)
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            step()
            torch.cuda.synchronize()
            r["peak_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
        out[name] = r
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument(
        "--budget",
        type=float,
        default=15.0,
        help="seconds of timed steps per implementation and shape",
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
        "machine": platform.platform(),
        "dtype": "float32",
        "grid": 5,
        "k": 3,
        "step": "forward + MSE + backward",
        "cases": [],
    }
    if dev == "cuda":
        result["gpu"] = torch.cuda.get_device_name(0)
    for width, batch in SHAPES[:1] if args.quick else SHAPES:
        gen = torch.Generator().manual_seed(0)
        x = (torch.rand(batch, width[0], generator=gen) * 2 - 1).to(dev)
        y = torch.randn(batch, width[-1], generator=gen).to(dev)
        tk = KAN(width, grid=5, k=3, seed=0, device=dev)
        impls = implementations(tk, width, dev)
        case = {"width": width, "batch": batch, "kan_params": tk.n_params(), "impls": {}}
        steps = {}
        for name, build in impls.items():
            if name in skip:
                continue
            try:
                steps[name] = step_fn(build(), x, y)
            except ImportError as e:
                case["impls"][name] = {"skipped": f"import failed: {e}"}
        print(f"[kan_speed] {width} batch {batch}: {', '.join(steps)}", file=sys.stderr, flush=True)
        case["impls"].update(measure_all(steps, dev, args.budget))
        base = case["impls"]["trainkit"]
        ratios = {}
        for name, r in case["impls"].items():
            if name == "trainkit" or "median_ms" not in r:
                continue
            ratios[f"{name}_time_over_trainkit"] = r["median_ms"] / base["median_ms"]
            ratios[f"trainkit_saved_mem_over_{name}"] = base["saved_mb"] / max(r["saved_mb"], 1e-9)
            if "peak_mb" in r:
                ratios[f"trainkit_peak_mem_over_{name}"] = base["peak_mb"] / max(r["peak_mb"], 1e-9)
        case["ratios"] = ratios
        result["cases"].append(case)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
