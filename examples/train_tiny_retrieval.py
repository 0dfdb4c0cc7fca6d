"""Train the tiny retrieval base model of the CPU context-extension experiment.

    python examples/train_tiny_retrieval.py --config configs/longctx/tiny_base.yaml \
        [output_dir=runs/longctx/tiny_base] [train.max_seconds=600] [init_from=FOLDER]

A ~1M-parameter Llama with a 64-token character vocabulary learns passkey and multi-key
retrieval in random-letter filler (``train.source=random``; ``stdlib`` = real text) with
answer-only loss, a length curriculum 64 -> 256 (its native window) and a constant-then-
decay LR. It then reports greedy exact-match accuracy by length (up to 8x the window) and
saves an HF folder plus ``<output_dir>_metrics.json``. The shipped checkpoint
(src/trainkit/longctx/assets/tiny_base) came from the default config in ~12 min on a shared
2-core machine (1 thread; more threads are slower when the cores are busy). Resume with
``init_from=<previous output_dir>``.
"""

import argparse
import json
import time
from pathlib import Path

from trainkit.common.io import atomic_write_json
from trainkit.common.seed import seed_everything
from trainkit.config import load_config, to_dict
from trainkit.longctx import tinybase


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/longctx/tiny_base.yaml")
    ap.add_argument("--eval-lengths", default="128,256,512,1024,2048")
    ap.add_argument("--eval-samples", type=int, default=64)
    ap.add_argument("overrides", nargs="*")
    args = ap.parse_args()
    cfg = load_config(tinybase.TinyBaseConfig, args.config, args.overrides)
    seed_everything(cfg.seed)
    t0 = time.time()
    model, tok, history, opt = tinybase.train(cfg, log=lambda r: print(json.dumps(r), flush=True))
    train_s = time.time() - t0
    out = Path(cfg.output_dir)
    tinybase.save(model, tok, out, optimizer=opt)
    acc = {}
    for task in cfg.train.tasks:
        acc[task] = {
            L: tinybase.evaluate_accuracy(
                model, tok, cfg.train, int(L), args.eval_samples, cfg.seed, task=task
            )
            for L in args.eval_lengths.split(",")
        }
    report = {
        "config": to_dict(cfg),
        "train_seconds": round(train_s, 1),
        "final": history[-1],
        "accuracy_by_length": acc,
        "params": sum(p.numel() for p in model.parameters()),
    }
    atomic_write_json(out.parent / f"{out.name}_metrics.json", report)
    print(json.dumps({"accuracy_by_length": acc, "train_seconds": report["train_seconds"]}))


if __name__ == "__main__":
    main()
