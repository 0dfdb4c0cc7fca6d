"""GRPO throughput: trainkit vs TRL's GRPOTrainer on the same model, prompts and settings.

    python benchmarks/rl_throughput.py            # SmolLM2-135M-Instruct, LoRA r16
    python benchmarks/rl_throughput.py --quick    # tiny-llama, for a fast check
    python benchmarks/rl_throughput.py --engines hf,vllm   # + trainkit with vLLM rollouts

Both sides: the same saved model folder (``trainkit.llm.models.resolve``), the same
chat-formatted prompts (the built-in ``arithmetic`` task), ``n`` completions of one
prompt per step, ``max_new_tokens`` tokens, temperature 1, LoRA (r16, alpha 32, no
dropout, q/k/v/o/gate/up/down), AdamW lr 1e-5, beta (KL) 0, one policy update per
generation batch, the whole batch in one forward/backward, token-mean loss, the graded
``math_closeness`` reward, the same torch thread count. A step is wall time between
consecutive optimizer steps, generation included; we report the median over the steps
after the first (warm-up), in wall seconds and in CPU seconds of the process (the fair
figure when other jobs share the cores; use ``--threads 1``). Prints one JSON object.

``--engines hf,vllm`` also runs trainkit's GRPO with ``rollout.engine=vllm`` (same model,
prompts, seed, steps, batch, tokens, threads) in a subprocess of the vLLM virtual
environment (``.venv-vllm``, built by ``scripts/vllm_env.sh``; TRL lives only in ``.venv``
and vLLM only there, so no single interpreter runs all three). ``rollout_engines`` in the
JSON has, per engine: step wall/CPU seconds, generation wall/CPU seconds, generated tokens
per generation (wall) second, weight-sync seconds (vLLM gets the merged policy after every
update) and the logged engine-vs-trainer log-prob mismatch; ``hf_over_vllm_*`` are the
ratios. Without that venv (or when the run fails) the vllm entry is ``"skipped: <reason>"``.

Where trainkit saves time (same algorithm, same numbers up to float rounding): its decoding
loop folds LoRA into the weights while generating (``rollout.merge_lora``), prefills each
prompt once for its n samples, takes the behaviour log-probs from the sampling logits, and
encodes each prompt once in the training forward/backward (``train.share_prompt``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

LORA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
ROOT = Path(__file__).resolve().parents[1]
MISMATCH = "rollout/logprob_abs_diff_max"
PART_KEYS = (
    "gen_s",
    "gen_cpu_s",
    "exp_s",
    "train_s",
    "sync_s",
    "step_s",
    "tokens_per_s",
    "response_len",
)


def prompts_for(n_steps: int) -> list[dict]:
    from trainkit.rlhf.tasks import load_task

    train, _ = load_task("arithmetic", seed=0, n_train=max(n_steps, 1))
    return train[:n_steps]


def run_trainkit(
    model_path: str, recs: list[dict], a, out: Path, engine: str = "hf"
) -> tuple[list, list, list]:
    from trainkit.common.io import atomic_write_text
    from trainkit.config import load_config
    from trainkit.rlhf.trainers.ppo import GRPOConfig, train

    data = out / "prompts.jsonl"
    atomic_write_text(
        data,
        "".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in recs),
    )
    over = [
        f"model.name={model_path}",
        "model.dtype=float32",
        f"rollout.engine={engine}",
        f"data.path={data}",
        f"data.eval_path={data}",
        "data.reward=[math_closeness]",
        "data.accuracy_reward=",
        "rollout.prompts_per_step=1",
        f"rollout.n={a.n}",
        f"rollout.max_new_tokens={a.max_new_tokens}",
        f"rollout.merge_lora={str(a.merge_lora).lower()}",
        "algo.estimator=grpo",
        "algo.kl_coef=0.0",
        "lora.enabled=true",
        f"lora.r={a.lora_r}",
        f"lora.alpha={2 * a.lora_r}",
        "lora.dropout=0.0",
        "optim.lr=1e-5",
        f"train.micro_batch_size={a.n}",
        f"train.max_steps={a.steps}",
        "train.progress=false",
        "train.save_model=false",
        "train.save_every=0",
        "eval.every=0",
        "eval.n_prompts=0",
        f"output_dir={out / 'run'}",
        f"train.threads={a.threads}",
    ]
    cfg = load_config(GRPOConfig, None, over)
    stamps: list[float] = []
    cpu: list[float] = []
    parts: list[dict] = []

    def on_log(rec: dict) -> None:
        if "loss" in rec:
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())
            parts.append({k: rec[k] for k in PART_KEYS + (MISMATCH,) if k in rec})

    t0, c0 = time.perf_counter(), time.process_time()
    train(cfg, on_log=on_log)
    return _diffs(t0, stamps), _diffs(c0, cpu), parts


def _diffs(t0: float, stamps: list[float]) -> list[float]:
    return [b - a_ for a_, b in zip([t0] + stamps[:-1], stamps)]


def engine_summary(steps: list, cpu: list, parts: list) -> dict:
    """Medians over the steps after the first (warm-up) of one trainkit run."""
    warm = parts[1:] or parts

    def med(key: str) -> float:
        return round(statistics.median(p_[key] for p_ in warm), 3)

    # tokens_per_s is over the whole step; tokens * step_s / gen_s is over generation only
    gen_tps = statistics.median(p_["tokens_per_s"] * p_["step_s"] / p_["gen_s"] for p_ in warm)
    return {
        "s_per_step": statistics.median(steps[1:] or steps),
        "cpu_s_per_step": statistics.median(cpu[1:] or cpu),
        "steps_s": [round(x, 3) for x in steps],
        "gen_s": med("gen_s"),
        "gen_cpu_s": med("gen_cpu_s"),
        "exp_s": med("exp_s"),
        "train_s": med("train_s"),
        "sync_s": med("sync_s"),
        "gen_tokens_per_s": round(gen_tps, 1),
        "step_tokens_per_s": med("tokens_per_s"),
        "mean_completion_len": statistics.mean(p_["response_len"] for p_ in parts),
        "logprob_abs_diff_max": max((p_.get(MISMATCH, 0.0) for p_ in parts), default=None),
    }


def run_vllm_column(name: str, a, tmp: Path) -> dict | str:
    """trainkit's GRPO with ``rollout.engine=vllm``, run by this script in the vLLM venv.

    Returns the child's :func:`engine_summary`, or ``"skipped: <reason>"``.
    """
    py = Path(
        a.vllm_python or os.environ.get("TRAINKIT_VLLM_PYTHON") or ROOT / ".venv-vllm/bin/python"
    )
    if not py.exists():
        return f"skipped: no vLLM venv at {py} (build it with scripts/vllm_env.sh)"
    out = tmp / "vllm.json"
    cmd = [str(py), str(Path(__file__).resolve()), "--vllm-child", str(out), "--model", name]
    cmd += ["--steps", str(a.steps), "--n", str(a.n), "--max-new-tokens", str(a.max_new_tokens)]
    cmd += ["--lora-r", str(a.lora_r), "--threads", str(a.threads)]
    cmd += [] if a.merge_lora else ["--no-merge-lora"]
    env = dict(os.environ, VLLM_ENABLE_V1_MULTIPROCESSING="0", OMP_NUM_THREADS=str(a.threads))
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=3600)
    except subprocess.TimeoutExpired:
        return "skipped: vLLM run took over an hour"
    if p.returncode != 0 or not out.exists():
        lines = [x for x in p.stderr.splitlines() if x.strip()] or ["no output"]
        return f"skipped: vLLM run failed (exit {p.returncode}): {lines[-1][:300]}"
    return json.loads(out.read_text())


def run_trl(model_path: str, recs: list[dict], a, out: Path) -> tuple[list, list, list]:
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from trainkit.rlhf.rewards import math_closeness

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    ds = Dataset.from_list(
        [
            {"prompt": [{"role": "user", "content": r["prompt"]}], "answer": r["answer"]}
            for r in recs
        ]
    )

    def reward(prompts, completions, answer, **kw):
        texts = [c[0]["content"] if isinstance(c, list) else c for c in completions]
        return math_closeness(prompts, texts, answer=answer)

    stamps: list[float] = []
    cpu: list[float] = []
    lengths: list[float] = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kw):
            stamps.append(time.perf_counter())
            cpu.append(time.process_time())

        def on_log(self, args, state, control, logs=None, **kw):
            if logs and "completions/mean_length" in logs:
                lengths.append(float(logs["completions/mean_length"]))

    args = GRPOConfig(
        output_dir=str(out / "trl"),
        per_device_train_batch_size=a.n,
        num_generations=a.n,
        gradient_accumulation_steps=1,
        max_completion_length=a.max_new_tokens,
        learning_rate=1e-5,
        beta=0.0,
        num_iterations=1,
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_steps=a.steps,
        logging_steps=1,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
        disable_dropout=True,
        loss_type="dapo",
        scale_rewards="group",
        lr_scheduler_type="constant",
        warmup_steps=0,
        dataloader_num_workers=0,
        shuffle_dataset=False,
    )
    peft_cfg = LoraConfig(
        r=a.lora_r,
        lora_alpha=2 * a.lora_r,
        lora_dropout=0.0,
        target_modules=LORA_TARGETS,
        task_type="CAUSAL_LM",
    )
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=reward,
        args=args,
        train_dataset=ds,
        processing_class=tok,
        peft_config=peft_cfg,
        callbacks=[Clock()],
    )
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    return _diffs(t0, stamps), _diffs(c0, cpu), lengths


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny-llama instead of SmolLM2-135M")
    p.add_argument("--model", default=None)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per side")
    p.add_argument("--n", type=int, default=8, help="completions per prompt (one prompt/step)")
    p.add_argument("--max-new-tokens", type=int, default=32)
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument(
        "--no-merge-lora",
        dest="merge_lora",
        action="store_false",
        help="trainkit: keep LoRA unmerged while generating (default: merged, as "
        "in configs/rlhf/grpo_smollm2.yaml)",
    )
    p.add_argument("--only", choices=["trainkit", "trl"], default=None)
    p.add_argument(
        "--engines",
        default="hf",
        help="trainkit rollout engines to time, comma separated: hf (in this process), "
        "vllm (a subprocess of the vLLM venv)",
    )
    p.add_argument(
        "--vllm-python",
        default=None,
        help="python of the vLLM venv (default: $TRAINKIT_VLLM_PYTHON or .venv-vllm/bin/python)",
    )
    p.add_argument("--vllm-child", default=None, help=argparse.SUPPRESS)  # internal
    a = p.parse_args(argv)
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    if not engines or set(engines) - {"hf", "vllm"}:
        p.error(f"--engines: a comma-separated subset of hf,vllm, got {a.engines!r}")
    a.steps = a.steps or (6 if a.quick else 5)
    import torch

    torch.set_num_threads(a.threads)
    from trainkit.llm.models import resolve

    name = a.model or ("tiny-llama" if a.quick else "smollm2-135m-instruct")
    path = resolve(name)
    recs = prompts_for(a.steps)
    if a.vllm_child:  # inside the vLLM venv: one trainkit run with vLLM rollouts
        with tempfile.TemporaryDirectory() as tmp:
            summary = engine_summary(*run_trainkit(path, recs, a, Path(tmp) / "tk", "vllm"))
        Path(a.vllm_child).write_text(json.dumps(summary))
        return 0
    result = {
        "model": name,
        "n": a.n,
        "max_new_tokens": a.max_new_tokens,
        "lora_r": a.lora_r,
        "steps": a.steps,
        "threads": a.threads,
        "merge_lora": a.merge_lora,
    }
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        eng: dict = {}
        if a.only in (None, "trainkit") and "hf" in engines:
            eng["hf"] = hf = engine_summary(*run_trainkit(path, recs, a, tmp / "tk"))
            result["trainkit_steps_s"] = hf["steps_s"]
            result["trainkit_s_per_step"] = hf["s_per_step"]
            result["trainkit_cpu_s_per_step"] = hf["cpu_s_per_step"]
            result["trainkit_parts_median_s"] = {k: hf[k] for k in ("gen_s", "exp_s", "train_s")}
            result["trainkit_mean_completion_len"] = hf["mean_completion_len"]
        if a.only in (None, "trainkit") and "vllm" in engines:
            eng["vllm"] = run_vllm_column(name, a, tmp)
        if eng:
            result["rollout_engines"] = eng
        if isinstance(eng.get("hf"), dict) and isinstance(eng.get("vllm"), dict):
            hf, vl = eng["hf"], eng["vllm"]
            result["hf_over_vllm_s_per_step"] = hf["s_per_step"] / vl["s_per_step"]
            result["hf_over_vllm_cpu_s_per_step"] = hf["cpu_s_per_step"] / vl["cpu_s_per_step"]
            result["hf_over_vllm_gen_s"] = hf["gen_s"] / vl["gen_s"]
            result["hf_over_vllm_gen_cpu_s"] = hf["gen_cpu_s"] / vl["gen_cpu_s"]
            result["vllm_over_hf_gen_tokens_per_s"] = (
                vl["gen_tokens_per_s"] / hf["gen_tokens_per_s"]
            )
        if a.only in (None, "trl"):
            trl_steps, trl_cpu, trl_len = run_trl(path, recs, a, tmp / "trl")
            result["trl_cpu_s_per_step"] = statistics.median(trl_cpu[1:] or trl_cpu)
            result["trl_mean_completion_len"] = statistics.mean(trl_len) if trl_len else None
            result["trl_steps_s"] = [round(x, 3) for x in trl_steps]
            result["trl_s_per_step"] = statistics.median(trl_steps[1:] or trl_steps)
    if "trainkit_s_per_step" in result and "trl_s_per_step" in result:
        result["speedup"] = result["trl_s_per_step"] / result["trainkit_s_per_step"]
        # CPU seconds of this process: robust when other jobs share the cores
        result["speedup_cpu_time"] = (
            result["trl_cpu_s_per_step"] / result["trainkit_cpu_s_per_step"]
        )
        # completions differ in length between the two runs (different random streams);
        # seconds per generated token is the length-fair comparison
        if result.get("trl_mean_completion_len"):
            tk_tok = result["trainkit_s_per_step"] / result["trainkit_mean_completion_len"]
            trl_tok = result["trl_s_per_step"] / result["trl_mean_completion_len"]
            result["speedup_per_token"] = trl_tok / tk_tok
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
