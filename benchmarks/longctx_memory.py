"""Peak memory and tokens/s of one QLoRA training step at several sequence lengths.

Model: SmolLM2-135M-Instruct (vocab 49152) in NF4 with the paper's LoRA (r=32, alpha=16 on
q/k/v/o, embed_tokens trained fully), batch 1, LM loss on every token, one AdamW step.

Four configurations, so that each of trainkit's two memory savers is measured against a
baseline that differs from it in that one setting only:

* ``nockpt_full``: no gradient checkpointing, full logits: the plain transformers + peft
  loop, ``model(input_ids, labels=...).loss`` (the ``[T, vocab]`` logits exist at once);
* ``nockpt_chunked``: no checkpointing, the chunked loss of
  :class:`trainkit.llm.loss.CausalLMLoss` (the logits never exist at once);
* ``ckpt_full``: non-reentrant gradient checkpointing, full logits;
* ``ckpt_chunked``: checkpointing + chunked loss: trainkit's long-context recipe.

(``--variants plain,trainkit`` are aliases of ``nockpt_full,ckpt_chunked``.)

Each (variant, length) runs in a fresh subprocess. On CPU the peak is the rise of the
resident set's high-water mark (``VmHWM``, reset through ``/proc/self/clear_refs``) over
the footprint after the model, inputs and optimizer state (one 64-token warm-up step)
are ready; on CUDA ``max_memory_allocated``
above it. ``--layers N`` keeps only the first N decoder layers (all 30 by default) so
that long lengths fit a shared CPU box; the logits' share does not depend on it, the
checkpointing saving grows with it.

    python benchmarks/longctx_memory.py [--lengths 1024,2048,4096,8192] [--layers 30]
        [--threads 1] [--device cpu|cuda] [--variants V,...] [--out runs/longctx/memory.json]
        [--plot PNG]

Prints (and writes to ``--out``) one JSON object: per variant and length the peak in MiB,
seconds and tokens/s; ``effects``, the peak ratios per length of one change at a time
(chunked loss at the same checkpointing, checkpointing at the same loss) and of both
together (``combined``: ckpt_chunked / nockpt_full); and the peak's growth per doubling
of the length (2.0 = linear).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _procmem import PeakMemory  # benchmarks/ is on sys.path when run as a script

#: name -> (gradient checkpointing, "full" logits or "chunked" loss)
VARIANTS = {
    "nockpt_full": (False, "full"),
    "nockpt_chunked": (False, "chunked"),
    "ckpt_full": (True, "full"),
    "ckpt_chunked": (True, "chunked"),
}
ALIASES = {"plain": "nockpt_full", "trainkit": "ckpt_chunked"}

#: effect name -> (numerator, denominator): one change at a time, then both
EFFECTS = {
    "chunked_loss_at_ckpt_on": ("ckpt_chunked", "ckpt_full"),
    "chunked_loss_at_ckpt_off": ("nockpt_chunked", "nockpt_full"),
    "ckpt_at_full_logits": ("ckpt_full", "nockpt_full"),
    "ckpt_at_chunked_loss": ("ckpt_chunked", "nockpt_chunked"),
    "combined": ("ckpt_chunked", "nockpt_full"),
}


def _worker(a) -> dict:
    import torch

    from trainkit.llm.lora import apply_lora
    from trainkit.llm.loss import CausalLMLoss
    from trainkit.llm.models import load_model
    from trainkit.longctx.recipe import ExtendLoraSection

    torch.set_num_threads(a.threads)
    model, tok = load_model(
        "smollm2-135m-instruct",
        quantization="nf4",
        dtype="float32",
        device=a.device if a.device != "cpu" else None,
    )
    if a.layers and a.layers < len(model.model.layers):
        model.model.layers = model.model.layers[: a.layers]
        model.config.num_hidden_layers = a.layers
    ckpt, logits = VARIANTS[a.variant]
    model = apply_lora(model, ExtendLoraSection(), quantized=True, gradient_checkpointing=ckpt)
    model.train()
    dev = next(model.parameters()).device
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, model.config.vocab_size, (1, a.length), generator=g).to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    loss_mod = CausalLMLoss(model, chunk_size=a.chunk)

    def step(x):
        if logits == "full":
            loss = model(input_ids=x, labels=x).loss
        else:
            s, n = loss_mod(input_ids=x, labels=x)
            loss = s / n
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    step(ids[:, :64])  # warm-up: the optimizer state exists before the measured step
    mem = PeakMemory(dev)
    mem.start()
    t = time.perf_counter()
    loss = step(ids)
    peak = mem.peak()
    sec = time.perf_counter() - t
    return {
        "variant": a.variant,
        "ckpt": ckpt,
        "logits": logits,
        "length": a.length,
        "peak_mib": round(peak / 2**20, 1),
        "seconds": round(sec, 2),
        "tokens_per_s": round(a.length / sec, 1),
        "loss": round(float(loss), 4),
        "layers": len(model.get_base_model().model.layers),
    }


def _plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainkit.common.io import atomic_path

    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for v, (ckpt, logits) in VARIANTS.items():
        rows = [r for r in res["runs"] if r["variant"] == v and "peak_mib" in r]
        if rows:
            what = "full logits" if logits == "full" else "chunked loss"
            label = f"ckpt {'on' if ckpt else 'off'}, {what}"
            ax.plot([r["length"] for r in rows], [r["peak_mib"] for r in rows], "o-", label=label)
    ax.set_xlabel("sequence length (tokens)")
    ax.set_ylabel("peak memory of one step (MiB)")
    ax.set_title(f"QLoRA step, SmolLM2-135M ({res['layers']} layers)")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--lengths", default="1024,2048,4096,8192")
    ap.add_argument(
        "--layers", type=int, default=0, help="keep the first N decoder layers (0 = all)"
    )
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--timeout", type=float, default=900, help="seconds per run")
    ap.add_argument(
        "--variants",
        default=",".join(VARIANTS),
        help=f"comma-separated, of {', '.join(VARIANTS)} (aliases: plain, trainkit)",
    )
    ap.add_argument("--out", default="")
    ap.add_argument("--plot", default="")
    ap.add_argument("--variant", help=argparse.SUPPRESS)
    ap.add_argument("--length", type=int, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.variant:
        print(json.dumps(_worker(a)))
        return
    variants = [ALIASES.get(v, v) for v in a.variants.split(",")]
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        ap.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    runs = []
    for L in [int(x) for x in a.lengths.split(",")]:
        for v in variants:
            cmd = [
                sys.executable,
                __file__,
                "--variant",
                v,
                "--length",
                str(L),
                "--chunk",
                str(a.chunk),
                "--threads",
                str(a.threads),
                "--device",
                a.device,
                "--layers",
                str(a.layers),
            ]
            try:
                p = subprocess.run(cmd, capture_output=True, text=True, timeout=a.timeout)
                lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
                r = (
                    json.loads(lines[-1])
                    if p.returncode == 0 and lines
                    else {"variant": v, "length": L, "error": p.stderr.strip().splitlines()[-1:]}
                )
            except subprocess.TimeoutExpired:
                r = {"variant": v, "length": L, "error": f"timeout after {a.timeout} s"}
            print(json.dumps(r), file=sys.stderr, flush=True)
            runs.append(r)
    peak = {(r["variant"], r["length"]): r["peak_mib"] for r in runs if "peak_mib" in r}
    lengths = sorted({r["length"] for r in runs})
    effects = {
        name: {
            str(L): round(peak[(num, L)] / peak[(den, L)], 3)
            for L in lengths
            if (num, L) in peak and (den, L) in peak
        }
        for name, (num, den) in EFFECTS.items()
    }
    growth = {
        v: {
            f"{a_}->{b_}": round(peak[(v, b_)] / peak[(v, a_)], 2)
            for a_, b_ in zip(lengths, lengths[1:])
            if (v, a_) in peak and (v, b_) in peak
        }
        for v in variants
    }
    res = {
        "model": "smollm2-135m-instruct (nf4) + LoRA r32/a16 qkvo + embed_tokens",
        "layers": a.layers or "all",
        "device": a.device,
        "threads": a.threads,
        "chunk": a.chunk,
        "runs": runs,
        "effects": effects,
        "effects_definition": {k: f"peak {n} / peak {d}" for k, (n, d) in EFFECTS.items()},
        "peak_growth_per_doubling": growth,
    }
    if a.out:
        from trainkit.common.io import atomic_write_json

        atomic_write_json(a.out, res)
    if a.plot:
        _plot(res, a.plot)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
