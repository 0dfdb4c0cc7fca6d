"""Peak memory and time of chunked vs plain cross-entropy for one forward + backward.

Shapes default to SmolLM2-135M at a long context: hidden ``[seq=8192, 576]``, LM head
``[49152, 576]``. Each variant runs in a fresh subprocess; on CPU the peak is the rise of
the resident set's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``)
over the footprint after the inputs are allocated, on CUDA ``max_memory_allocated``
above the inputs. Prints one JSON object with both peaks, their ratio and the loss /
gradient differences.

    python benchmarks/llm_loss_memory.py [--seq 8192] [--vocab 49152] [--hidden 576]
        [--chunk 1024] [--device cpu|cuda] [--threads 1]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _procmem import PeakMemory  # benchmarks/ is on sys.path when run as a script


def _worker(a) -> dict:
    import torch

    from trainkit.llm.loss import chunked_cross_entropy, plain_cross_entropy

    torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    g = torch.Generator().manual_seed(0)
    hidden = (torch.randn(a.seq, a.hidden, generator=g) * 0.5).to(dev).requires_grad_()
    weight = (torch.randn(a.vocab, a.hidden, generator=g) * 0.05).to(dev).requires_grad_()
    targets = torch.randint(0, a.vocab, (a.seq,), generator=g).to(dev)
    targets[::10] = -100
    mem = PeakMemory(dev)
    mem.start()
    t = time.perf_counter()
    if a.variant == "plain":
        loss, n = plain_cross_entropy(hidden, weight, targets)
    else:
        loss, n = chunked_cross_entropy(hidden, weight, targets, chunk_size=a.chunk)
    (loss / n).backward()
    peak = mem.peak()
    secs = time.perf_counter() - t
    return {
        "peak_bytes": int(peak),
        "seconds": round(secs, 3),
        "loss": float(loss / n),
        "grad_hidden": hidden.grad.double().cpu().numpy().ravel()[:4096].tolist(),
        "grad_weight_norm": float(weight.grad.double().norm()),
    }


def _run(variant: str, a) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--worker",
        variant,
        "--seq",
        str(a.seq),
        "--vocab",
        str(a.vocab),
        "--hidden",
        str(a.hidden),
        "--chunk",
        str(a.chunk),
        "--device",
        a.device,
        "--threads",
        str(a.threads),
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq", type=int, default=8192)
    p.add_argument("--vocab", type=int, default=49152)
    p.add_argument("--hidden", type=int, default=576)
    p.add_argument("--chunk", type=int, default=1024)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--worker", choices=["plain", "chunked"], default=None)
    a = p.parse_args(argv)
    if a.worker:
        a.variant = a.worker
        print(json.dumps(_worker(a)))
        return 0
    plain, chunked = _run("plain", a), _run("chunked", a)
    gh = max(abs(x - y) for x, y in zip(plain["grad_hidden"], chunked["grad_hidden"]))
    res = {
        "benchmark": "llm_loss_memory",
        "device": a.device,
        "seq": a.seq,
        "vocab": a.vocab,
        "hidden": a.hidden,
        "chunk": a.chunk,
        "threads": a.threads,
        "plain_peak_mib": round(plain["peak_bytes"] / 2**20, 1),
        "chunked_peak_mib": round(chunked["peak_bytes"] / 2**20, 1),
        "peak_ratio": round(chunked["peak_bytes"] / max(plain["peak_bytes"], 1), 4),
        "plain_seconds": plain["seconds"],
        "chunked_seconds": chunked["seconds"],
        "loss_plain": plain["loss"],
        "loss_chunked": chunked["loss"],
        "loss_abs_diff": abs(plain["loss"] - chunked["loss"]),
        "grad_hidden_max_abs_diff": gh,
        "grad_weight_norm_rel_diff": abs(plain["grad_weight_norm"] - chunked["grad_weight_norm"])
        / max(plain["grad_weight_norm"], 1e-30),
        "logits_full_mib": round(a.seq * a.vocab * 4 / 2**20, 1),
    }
    print(json.dumps(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
