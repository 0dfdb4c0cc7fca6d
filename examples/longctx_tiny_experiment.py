"""The CPU long-context experiment: the tiny retrieval base (native 256) extended 8x.

    python examples/longctx_tiny_experiment.py [--base src/trainkit/longctx/assets/tiny_base] \
        [--steps 60] [--samples 4] [--threads 1] [--out runs/longctx/tiny_experiment.json]

Compares, on random-filler passkey and 4-key kv retrieval (greedy exact match, lengths
512..2048 x 5 depths): the base; theta (1e4 -> 1e6) / linear x8 / yarn x8 / dynamic x8 without
training; and theta / no change / linear / yarn after the same fixed full fine-tune budget
(``--steps`` steps of 4 samples of 256..2048 tokens, configs/longctx/tiny_8x.yaml).
Prints one JSON object (also written to ``--out``) with every variant's accuracy by
length, short-context (64..256) accuracy and answer perplexity, and the target checks.
"""

import argparse
import json
import time

from trainkit.common.io import atomic_write_json
from trainkit.longctx.experiment import tiny_experiment


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default=None, help="tiny base folder (default: the shipped one)")
    ap.add_argument("--steps", type=int, default=60, help="fine-tune steps per variant")
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--samples", type=int, default=4, help="haystacks per grid cell")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--ft-rules", default="theta,none,linear,yarn")
    ap.add_argument("--free-rules", default="theta,linear,yarn,dynamic")
    ap.add_argument("--out", default="runs/longctx/tiny_experiment.json")
    args = ap.parse_args()
    t0 = time.time()
    res = tiny_experiment(
        args.base,
        steps=args.steps,
        lr=args.lr,
        samples=args.samples,
        threads=args.threads,
        seed=args.seed,
        ft_rules=tuple(r for r in args.ft_rules.split(",") if r),
        free_rules=tuple(r for r in args.free_rules.split(",") if r),
        log=lambda r: print(json.dumps(r), flush=True),
    )
    res["seconds"] = round(time.time() - t0, 1)
    atomic_write_json(args.out, res)
    short = {
        k: {
            m: v[m]
            for m in (
                "passkey",
                "kv",
                "short_passkey",
                "short_kv",
                "short_answer_ppl",
                "ft_seconds",
            )
            if m in v
        }
        for k, v in res["variants"].items()
    }
    print(json.dumps({"variants": short, "checks": res["checks"], "seconds": res["seconds"]}))


if __name__ == "__main__":
    main()
