"""Startup overhead and step time of the Ray trainer with 1 vs 2 data-parallel policy
replicas (tiny random Llama, GRPO, CPU).

Prints one JSON object. One local Ray (``--cpus``, default 2) is started once
(``ray_init_s``); then for each replica count a short run (``--steps``, 8 prompts x 4
samples x 4 tokens per step) with the policy replicas at ``1/replicas`` CPU each and one
rollout actor at 1 CPU. ``startup_s``: placement group, every actor built (model
loaded) and the FSDP2 process group formed; the step times are medians over the steps.

Usage: ``python benchmarks/ray_startup.py [--replicas 1,2] [--steps 4] [--cpus 2]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--replicas", default="1,2")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--cpus", type=int, default=2)
    args = ap.parse_args()

    import ray

    from trainkit.config import load_config
    from trainkit.rlhf.ray.config import RaySection, RoleResources
    from trainkit.rlhf.ray.trainer import train_ray
    from trainkit.rlhf.trainers.ppo import GRPOConfig

    t = time.perf_counter()
    ray.init(
        num_cpus=args.cpus,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
        namespace="trainkit",
    )
    result: dict = {"ray_init_s": round(time.perf_counter() - t, 2), "runs": {}}
    for k in (int(x) for x in args.replicas.split(",")):
        with tempfile.TemporaryDirectory() as out:
            cfg = load_config(
                GRPOConfig,
                None,
                [
                    "model.name=tiny-llama",
                    "data.path=arithmetic_number_only",
                    "data.chat_template=false",
                    "data.reward=[math_closeness]",
                    "rollout.max_new_tokens=4",
                    "rollout.n=4",
                    "rollout.prompts_per_step=8",
                    "eval.n_prompts=0",
                    "train.progress=false",
                    "train.save_model=false",
                    "train.threads=1",
                    f"train.max_steps={args.steps}",
                    f"output_dir={out}",
                ],
            )
            rc = RaySection(
                enabled=True,
                policy=RoleResources(num_cpus=1.0 / k, replicas=k),
                rollout=RoleResources(num_cpus=1.0),
            )
            recs: list[dict] = []
            t = time.perf_counter()
            s = train_ray(cfg, on_log=recs.append, ray_cfg=rc)
            steps = [r for r in recs if "step_s" in r]
            med = {
                key: round(statistics.median(r[key] for r in steps), 3)
                for key in ("step_s", "gen_s", "train_s", "sync_s")
            }
            result["runs"][f"replicas_{k}"] = {
                "startup_s": round(s["startup_s"], 2),
                "total_s": round(time.perf_counter() - t, 2),
                **med,
            }
    ray.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
