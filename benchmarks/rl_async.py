"""Asynchronous vs synchronous GRPO on configs/rlhf/grpo_smollm2.yaml, in one run.

    python benchmarks/rl_throughput.py --modes sync,async     # the same as:
    python benchmarks/rl_async.py                              # SmolLM2-135M-Instruct
    python benchmarks/rl_async.py --quick                      # tiny-llama, a fast check

Modes (every run: the shipped config, float32, seed 0, LoRA r16, 1 prompt x 8 samples a
step, ``algo.recompute_old_logp=true`` in the two placed modes):

* ``sync``: the synchronous loop with the engine in its own process
  (``rollout.engine_process``), engine on core 1 with one thread, trainer on core 0 with
  one thread, as on separate rollout and training devices;
* ``async``: the same placement with ``rollout.async=true`` (``max_staleness=1``,
  ``algo.tis_cap=2``): the engine samples step t+1 while the trainer learns on step t;
* ``sync_best``: the best synchronous setting on both cores: the engine in the trainer's
  process sharing the policy, two torch threads, no pinning (the config's own loop);
* ``trl``: TRL's GRPOTrainer on both cores (two threads), the same model, n, completion
  length and LoRA (``rl_throughput.run_trl``).

Throughput runs force every completion to ``max_new_tokens`` tokens
(``rollout.min_new_tokens``), so every mode does the same work per step; they alternate
sync, async, sync_best, trl, ... for ``--reps`` repetitions of ``--steps`` steps, and a
run's figure is the median over its steps after the first (the first fills the
pipeline). CPU seconds per step are this process's plus the engine process's.

The accuracy pair trains ``sync`` and ``async`` for ``--acc-steps`` steps with the config
as shipped (no forced length) and evaluates held-out greedy exact accuracy (64 prompts)
before and after.

Prints one JSON object: per mode ``s_per_step``, ``steps_per_s``, ``cpu_s_per_step``
(median and range over reps), ``async_over_sync`` and ``async_over_sync_best``
(steps/s ratios, median of the per-rep ratios, and range), the staleness histogram, the
accuracy pair and the settings.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "rlhf" / "grpo_smollm2.yaml"
sys.path.insert(0, str(Path(__file__).resolve().parent))

PLACED = [
    "algo.recompute_old_logp=true",
    "rollout.engine_process=true",
    "rollout.engine_threads=1",
    "rollout.engine_cpus=[1]",
    "train.cpus=[0]",
    "train.threads=1",
]
MODES = {
    "sync": PLACED,
    "async": [*PLACED, "rollout.async=true", "rollout.max_staleness=1", "algo.tis_cap=2.0"],
    "sync_best": ["train.threads=2"],
}


def run_mode(mode: str, a, out: Path, steps: int, throughput: bool) -> dict:
    """One fresh run of ``mode``; per-step wall and CPU seconds, evals, staleness."""
    from trainkit.config import load_config
    from trainkit.rlhf.trainers.ppo import GRPOConfig, train

    over = [*MODES[mode], f"model.name={a.model}", "train.seed=0", "train.progress=false"]
    over += ["train.save_model=false", "train.save_every=0", f"train.max_steps={steps}"]
    over += ["eval.every=0", f"output_dir={out}"]
    if throughput:
        over += [f"rollout.min_new_tokens={a.max_new_tokens}", "eval.n_prompts=0"]
    over += [f"rollout.max_new_tokens={a.max_new_tokens}"]
    cfg = load_config(GRPOConfig, CONFIG, over)
    stamps, cpu, engine_cpu, lens = [], [], [], []

    def engine_seconds(ctx) -> dict:
        engine_cpu.append(float(ctx.rollout.info.get("actor_cpu_s", 0.0)))
        return {}

    def on_log(rec: dict) -> None:
        if "loss" in rec:
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
            lens.append(rec["response_len"])

    everything = os.sched_getaffinity(0)
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        s = train(cfg, on_log=on_log, metrics=[engine_seconds])
    finally:
        os.sched_setaffinity(0, everything)  # train.cpus pinned this process
    walls = [b - x for x, b in zip([t0] + stamps[:-1], stamps)]
    cpus = [b - x + e for x, b, e in zip([c0] + cpu[:-1], cpu, engine_cpu)]
    warm_w, warm_c = walls[1:] or walls, cpus[1:] or cpus
    res = {
        "s_per_step": statistics.median(warm_w),
        "cpu_s_per_step": statistics.median(warm_c),
        "steps_s": [round(x, 3) for x in walls],
        "mean_completion_len": statistics.mean(lens),
    }
    if "staleness" in s:
        res["staleness"] = s["staleness"]
    if not throughput:
        res["first_eval"], res["last_eval"] = s["first_eval"], s["last_eval"]
    return res


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "range": [min(values), max(values)]}


def run_trl_rep(a, out: Path, steps: int) -> dict:
    """TRL's GRPOTrainer (rl_throughput.run_trl) on both cores, ``steps`` steps."""
    import torch
    from rl_throughput import prompts_for, run_trl

    from trainkit.llm.models import resolve

    torch.set_num_threads(2)
    ns = argparse.Namespace(
        n=8,
        max_new_tokens=a.max_new_tokens,
        lora_r=16,
        steps=steps,
        gradient_checkpointing="off",
        model_name=a.model,
    )
    walls, cpus, lens, _ = run_trl(resolve(a.model), prompts_for(steps), ns, out)
    return {
        "s_per_step": statistics.median(walls[1:] or walls),
        "cpu_s_per_step": statistics.median(cpus[1:] or cpus),
        "steps_s": [round(x, 3) for x in walls],
        "mean_completion_len": statistics.mean(lens) if lens else float("nan"),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny-llama, few steps")
    p.add_argument("--model", default=None)
    p.add_argument("--steps", type=int, default=None, help="steps per throughput run")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--acc-steps", type=int, default=None, help="steps of the accuracy pair")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--no-trl", action="store_true", help="leave TRL's column out")
    a = p.parse_args(argv)
    if len(os.sched_getaffinity(0)) < 2:
        p.error("needs two cores (engine and trainer each on its own)")
    a.model = a.model or ("tiny-llama" if a.quick else "smollm2-135m-instruct")
    a.steps = a.steps or (4 if a.quick else 10)
    a.acc_steps = a.acc_steps if a.acc_steps is not None else (4 if a.quick else 20)
    modes = [*MODES, *([] if a.no_trl else ["trl"])]
    reps: dict[str, list[dict]] = {m: [] for m in modes}
    result: dict = {"model": a.model, "config": str(CONFIG.relative_to(ROOT)), "steps": a.steps}
    result.update(reps_n=a.reps, order=[m for _ in range(a.reps) for m in modes])
    result["date"] = time.strftime("%Y-%m-%d")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i in range(a.reps):
            for m in modes:
                out = tmp / f"{m}{i}"
                if m == "trl":
                    reps[m].append(run_trl_rep(a, out, a.steps))
                else:
                    reps[m].append(run_mode(m, a, out, a.steps, throughput=True))
                print(f"rep {i} {m}: {reps[m][-1]['s_per_step']:.2f} s/step", file=sys.stderr)
        acc = {}
        for m in ("sync", "async") if a.acc_steps else ():
            r = run_mode(m, a, tmp / f"acc_{m}", a.acc_steps, throughput=False)
            acc[m] = {
                "accuracy_before": r["first_eval"].get("eval_accuracy"),
                "accuracy_after": r["last_eval"].get("eval_accuracy"),
                "reward_before": r["first_eval"].get("eval_reward"),
                "reward_after": r["last_eval"].get("eval_reward"),
                "s_per_step": r["s_per_step"],
                **({"staleness": r["staleness"]} if "staleness" in r else {}),
            }
            print(f"accuracy {m}: {acc[m]}", file=sys.stderr)
    for m, rs in reps.items():
        result[m] = {
            "s_per_step": spread([r["s_per_step"] for r in rs]),
            "steps_per_s": spread([1.0 / r["s_per_step"] for r in rs]),
            "cpu_s_per_step": spread([r["cpu_s_per_step"] for r in rs]),
            "reps": rs,
        }

    def ratio(num: str, den: str) -> dict:
        return spread([b["s_per_step"] / x["s_per_step"] for x, b in zip(reps[num], reps[den])])

    result["async_over_sync"] = ratio("async", "sync")
    result["async_over_sync_best"] = ratio("async", "sync_best")
    result["sync_best_over_sync"] = ratio("sync_best", "sync")
    if "trl" in reps:
        result["async_over_trl"] = ratio("async", "trl")
    result["staleness"] = reps["async"][0].get("staleness")
    if acc:
        result["accuracy"] = acc
        result["accuracy_gap_points"] = 100 * abs(
            acc["async"]["accuracy_after"] - acc["sync"]["accuracy_after"]
        )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
