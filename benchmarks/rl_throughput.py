"""GRPO throughput: trainkit vs TRL's GRPOTrainer, the same work on both sides.

    python benchmarks/rl_throughput.py --threads 1      # SmolLM2-135M-Instruct, 3 reps
    python benchmarks/rl_throughput.py --quick          # tiny-llama, for a fast check
    python benchmarks/rl_throughput.py --engines hf,vllm   # + trainkit with vLLM rollouts
    python benchmarks/rl_throughput.py --modes sync,async  # benchmarks/rl_async.py

Equal on both sides, read back from each side's own config objects into ``settings``
(``settings.equal`` must hold, else exit 1):

* the saved model folder (``trainkit.llm.models.resolve``), float32, the torch thread
  count (``--threads``), seed 0, no progress bar;
* the built-in ``arithmetic`` task's chat-formatted prompts in the same order, one
  prompt and ``n`` completions per step, the graded ``math_closeness`` reward;
* every completion exactly ``max_new_tokens`` tokens: EOS (the same id set: the
  tokenizer's and the generation config's) cannot be sampled before the cap
  (trainkit ``rollout.min_new_tokens``, TRL ``generation_kwargs={"min_new_tokens": ...}``);
  each side's logged mean length of every step must equal ``max_new_tokens``, else exit 1;
* temperature 1, top-p 1, no top-k;
* LoRA r (alpha 2r, no dropout, q/k/v/o/gate/up/down);
* ``torch.optim.AdamW`` (lr 1e-5, betas 0.9/0.999, eps 1e-8, no weight decay, not fused),
  constant LR, no warm-up, grad-norm clip 1.0;
* GRPO with group-normalised advantages, beta (KL) 0, token-mean loss, one policy update
  per generation batch, the whole batch in one forward/backward;
* gradient checkpointing, ``--gradient-checkpointing off|on`` (default off; TRL's own
  default is on; TRL's real state is checked on the model after training).

Not equal, by design: the sampled tokens (different random streams) and the
implementation, which is what is measured.

A step is the wall time between consecutive optimizer steps, generation included; CPU
seconds are this process's (the fair figure when other jobs share the cores; use
``--threads 1``). The runs alternate trainkit, TRL, trainkit, TRL, ... (``--reps``, 3 by
default), each a fresh model, trainer and optimizer in this one process. Per run: the
median over the steps after the first (warm-up). Per side (``trainkit``, ``trl``) the JSON
gives the median and [min, max] over runs of wall and CPU seconds per step and per
generated token (``n * max_new_tokens`` per step), and every run's steps; ``speedup`` the
TRL / trainkit ratios of each, median and range of the per-rep ratios (rep i pairs two
adjacent runs); ``speedup_cpu_per_token`` is the headline. Prints one JSON object.

``--engines hf,vllm`` also runs trainkit's GRPO with ``rollout.engine=vllm`` (same model,
prompts, seed, steps, batch, tokens, threads, reps) in a subprocess of the vLLM virtual
environment (``.venv-vllm``, built by ``scripts/vllm_env.sh``; TRL lives only in ``.venv``
and vLLM only there, so no single interpreter runs all three). ``rollout_engines`` in the
JSON has, per engine, over the warm steps of all its runs: step wall/CPU seconds,
generation wall/CPU seconds, generated tokens per generation (wall) second, weight-sync
seconds (vLLM gets the merged policy after every update) and the logged engine-vs-trainer
log-prob mismatch (vLLM's log-probs come after its ``min_tokens`` EOS mask, so they include
``-log(1 - p_eos)``); ``hf_over_vllm_*`` are the ratios. Without that venv (or when the run
fails) the vllm entry is ``"skipped: <reason>"``.

Where trainkit saves time (same algorithm, same numbers up to float rounding): its decoding
loop folds LoRA into the weights while generating (``rollout.merge_lora``), prefills each
prompt once for its n samples, takes the behaviour log-probs from the sampling logits, and
encodes each prompt once in the training forward/backward (``train.share_prompt``, which
gradient checkpointing turns off).
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
PART_KEYS = tuple("gen_s gen_cpu_s exp_s train_s sync_s step_s tokens_per_s response_len".split())
LR = 1e-5


def prompts_for(n_steps: int) -> list[dict]:
    from trainkit.rlhf.tasks import load_task

    train, _ = load_task("arithmetic", seed=0, n_train=max(n_steps, 1))
    return train[:n_steps]


def _adamw(betas, eps: float, weight_decay: float, fused: bool) -> str:
    b = tuple(float(x) for x in betas)
    return f"torch.optim.AdamW(betas={b}, eps={eps}, weight_decay={weight_decay}, fused={fused})"


def trainkit_settings(cfg, model: str) -> dict:
    """The settings trainkit ran with, read from its resolved config (flat, as TRL's)."""
    import torch

    o, r, lo, al = cfg.optim, cfg.rollout, cfg.lora, cfg.algo
    return {
        "model": model,
        "dtype": cfg.model.dtype,
        "threads": torch.get_num_threads(),
        "gradient_checkpointing": cfg.model.gradient_checkpointing,
        "n": r.n,
        "prompts_per_step": r.prompts_per_step,
        "max_new_tokens": r.max_new_tokens,
        "min_new_tokens": r.min_new_tokens,
        "temperature": r.temperature,
        "top_p": r.top_p,
        "top_k": 0,  # trainkit has no top-k
        "lora": f"r={lo.r} alpha={float(lo.alpha)} dropout={lo.dropout}",
        "lora_targets": sorted(lo.target_modules),
        "lr": o.lr,
        "lr_schedule": f"{o.schedule}, {o.warmup_steps} warm-up steps",
        # trainkit.llm.optim.make_optimizer: torch's AdamW (not fused) with optim.betas/eps
        "optimizer": _adamw(o.betas, o.eps, o.weight_decay, False),
        "max_grad_norm": o.max_grad_norm,
        "kl_beta": al.kl_coef,
        "loss": "token_mean" if al.loss_agg in ("auto", "token_mean") else al.loss_agg,
        "updates_per_batch": al.ppo_epochs * al.mini_batches,
        "rows_per_backward": cfg.train.micro_batch_size,
        "steps": cfg.train.max_steps,
        "seed": cfg.train.seed,
    }


def trl_settings(args, peft_cfg, model, name: str) -> dict:
    """The settings TRL ran with, read from its GRPOConfig, LoraConfig and model."""
    import torch

    optim = str(getattr(args.optim, "value", args.optim))
    sched = str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type))
    adamw = _adamw(
        (args.adam_beta1, args.adam_beta2), args.adam_epsilon, args.weight_decay, "fused" in optim
    )
    return {
        "model": name,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "gradient_checkpointing": bool(args.gradient_checkpointing),
        "n": args.num_generations,
        "prompts_per_step": args.per_device_train_batch_size // args.num_generations,
        "max_new_tokens": args.max_completion_length,
        "min_new_tokens": (args.generation_kwargs or {}).get("min_new_tokens", 0),
        "temperature": args.temperature,
        "top_p": args.top_p,
        "top_k": args.top_k or 0,
        "lora": f"r={peft_cfg.r} alpha={float(peft_cfg.lora_alpha)} dropout={peft_cfg.lora_dropout}",
        "lora_targets": sorted(peft_cfg.target_modules),
        "lr": args.learning_rate,
        "lr_schedule": f"{sched}, {args.warmup_steps} warm-up steps",
        "optimizer": adamw if optim.startswith("adamw_torch") else optim,
        "max_grad_norm": args.max_grad_norm,
        "kl_beta": args.beta,
        "loss": "token_mean" if args.loss_type == "dapo" else args.loss_type,
        "updates_per_batch": args.num_iterations,
        "rows_per_backward": args.per_device_train_batch_size * args.gradient_accumulation_steps,
        "steps": args.max_steps,
        "seed": args.seed,
    }


def trainkit_overrides(model_path: str, data: Path, a, out: Path, engine: str = "hf") -> list:
    """The ``key=value`` overrides of trainkit's GRPO config for one run."""
    gc, merge = str(a.gradient_checkpointing == "on").lower(), str(a.merge_lora).lower()
    over = [f"model.name={model_path}", "model.dtype=float32", f"model.gradient_checkpointing={gc}"]
    over += [f"data.path={data}", f"data.eval_path={data}", "data.reward=[math_closeness]"]
    over += ["data.accuracy_reward=", f"rollout.engine={engine}", "rollout.prompts_per_step=1"]
    over += [f"rollout.n={a.n}", f"rollout.max_new_tokens={a.max_new_tokens}"]
    over += [f"rollout.min_new_tokens={a.max_new_tokens}", "rollout.temperature=1.0"]
    over += ["rollout.top_p=1.0", f"rollout.merge_lora={merge}", "algo.estimator=grpo"]
    over += ["algo.kl_coef=0.0", "lora.enabled=true", f"lora.r={a.lora_r}", "lora.dropout=0.0"]
    over += [f"lora.alpha={2 * a.lora_r}", f"lora.target_modules=[{','.join(LORA_TARGETS)}]"]
    over += [f"optim.lr={LR}", "optim.weight_decay=0.0", "optim.max_grad_norm=1.0"]
    over += ["optim.warmup_steps=0", f"train.micro_batch_size={a.n}", "train.seed=0"]
    over += [f"train.max_steps={a.steps}", f"train.threads={a.threads}", "train.progress=false"]
    over += ["train.save_model=false", "train.save_every=0", "eval.every=0", "eval.n_prompts=0"]
    return over + [f"output_dir={out / 'run'}"]


def run_trainkit(model_path: str, recs: list[dict], a, out: Path, engine: str = "hf") -> tuple:
    """One fresh trainkit GRPO run. Returns ``(step wall s, step CPU s, parts, settings)``."""
    from trainkit.common.io import atomic_write_text
    from trainkit.config import load_config
    from trainkit.rlhf.trainers.ppo import GRPOConfig, train

    data = out / "prompts.jsonl"
    atomic_write_text(
        data,
        "".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"]}) + "\n" for r in recs),
    )
    over = trainkit_overrides(model_path, data, a, out, engine)
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
    return _diffs(t0, stamps), _diffs(c0, cpu), parts, trainkit_settings(cfg, a.model_name)


def _diffs(t0: float, stamps: list[float]) -> list[float]:
    return [b - a_ for a_, b in zip([t0] + stamps[:-1], stamps)]


def engine_summary(steps: list, cpu: list, parts: list, warmup: int = 1) -> dict:
    """Medians over the steps after the first ``warmup`` ones (of one trainkit run, or of
    several runs' warm steps concatenated with ``warmup=0``)."""
    warm = parts[warmup:] or parts

    def med(key: str) -> float:
        return round(statistics.median(p_[key] for p_ in warm), 3)

    # tokens_per_s is over the whole step; tokens * step_s / gen_s is over generation only
    gen_tps = statistics.median(p_["tokens_per_s"] * p_["step_s"] / p_["gen_s"] for p_ in warm)
    return {
        "s_per_step": statistics.median(steps[warmup:] or steps),
        "cpu_s_per_step": statistics.median(cpu[warmup:] or cpu),
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


def pooled_summary(runs: list[tuple]) -> dict:
    """:func:`engine_summary` over the warm steps (all but the first) of several runs."""
    steps, cpu, parts = [], [], []
    for s, c, p, *_ in runs:
        steps += s[1:] or s
        cpu += c[1:] or c
        parts += p[1:] or p
    return engine_summary(steps, cpu, parts, warmup=0)


def run_vllm_column(name: str, a, tmp: Path) -> dict | str:
    """trainkit's GRPO with ``rollout.engine=vllm``, run by this script in the vLLM venv.

    Returns the child's :func:`pooled_summary`, or ``"skipped: <reason>"``.
    """
    py = Path(
        a.vllm_python or os.environ.get("TRAINKIT_VLLM_PYTHON") or ROOT / ".venv-vllm/bin/python"
    )
    if not py.exists():
        return f"skipped: no vLLM venv at {py} (build it with scripts/vllm_env.sh)"
    out = tmp / "vllm.json"
    cmd = [str(py), str(Path(__file__).resolve()), "--vllm-child", str(out), "--model", name]
    cmd += ["--steps", str(a.steps), "--n", str(a.n), "--max-new-tokens", str(a.max_new_tokens)]
    cmd += ["--lora-r", str(a.lora_r), "--threads", str(a.threads), "--reps", str(a.reps)]
    cmd += ["--gradient-checkpointing", a.gradient_checkpointing]
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


def trl_config(a, out: Path) -> tuple:
    """TRL's ``(GRPOConfig, LoraConfig)`` for one run: trainkit's settings in TRL's terms."""
    from peft import LoraConfig
    from trl import GRPOConfig

    n, tokens = a.n, a.max_new_tokens
    batch = dict(per_device_train_batch_size=n, num_generations=n, gradient_accumulation_steps=1)
    # no EOS before the cap: every completion is exactly max_new_tokens long
    sample = dict(max_completion_length=tokens, generation_kwargs={"min_new_tokens": tokens})
    sample.update(temperature=1.0, top_p=1.0, top_k=0, seed=0, shuffle_dataset=False)
    # torch AdamW, not fused (TRL's default here is adamw_torch_fused)
    optim = dict(optim="adamw_torch", learning_rate=LR, adam_beta1=0.9, adam_beta2=0.999)
    optim.update(adam_epsilon=1e-8, weight_decay=0.0, max_grad_norm=1.0, warmup_steps=0)
    optim.update(lr_scheduler_type="constant")
    loss = dict(beta=0.0, num_iterations=1, loss_type="dapo", scale_rewards="group")
    run = dict(max_steps=a.steps, logging_steps=1, report_to=[], save_strategy="no")
    run.update(use_cpu=True, bf16=False, disable_dropout=True, dataloader_num_workers=0)
    args = GRPOConfig(
        output_dir=str(out / "trl"),
        # TRL's default is on; transformers 5 checkpoints non-reentrant, as trainkit does
        gradient_checkpointing=a.gradient_checkpointing == "on",
        **batch,
        **sample,
        **optim,
        **loss,
        **run,
    )
    lora = dict(r=a.lora_r, lora_alpha=2 * a.lora_r, lora_dropout=0.0, task_type="CAUSAL_LM")
    peft_cfg = LoraConfig(target_modules=LORA_TARGETS, **lora)
    return args, peft_cfg


def run_trl(model_path: str, recs: list[dict], a, out: Path) -> tuple:
    """One fresh TRL GRPOTrainer run. Returns ``(step wall s, step CPU s, mean lengths,
    settings)``; the lengths are TRL's logged ``completions/mean_length`` per step."""
    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from transformers.trainer_callback import ProgressCallback
    from trl import GRPOTrainer

    from trainkit.rlhf.rewards import math_closeness

    tok = AutoTokenizer.from_pretrained(model_path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32)
    chats = [[{"role": "user", "content": r["prompt"]}] for r in recs]
    ds = Dataset.from_list([{"prompt": c, "answer": r["answer"]} for c, r in zip(chats, recs)])

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

    args, peft_cfg = trl_config(a, out)
    kw = dict(train_dataset=ds, processing_class=tok, peft_config=peft_cfg, callbacks=[Clock()])
    trainer = GRPOTrainer(model=model, reward_funcs=reward, args=args, **kw)
    trainer.remove_callback(ProgressCallback)  # no bar, no log dicts on stdout (as trainkit)
    t0, c0 = time.perf_counter(), time.process_time()
    trainer.train()
    settings = trl_settings(args, peft_cfg, trainer.model, a.model_name)
    # what the model really did, not only what was asked
    active = any(getattr(m, "gradient_checkpointing", False) is True for m in model.modules())
    if active != settings["gradient_checkpointing"]:
        raise RuntimeError(f"TRL gradient checkpointing is {active}, asked {not active}")
    return _diffs(t0, stamps), _diffs(c0, cpu), lengths, settings


def rep_summary(steps: list, cpu: list, lengths: list, n: int) -> dict:
    """One run: medians over the steps after the first, per step and per generated token."""
    s, c = statistics.median(steps[1:] or steps), statistics.median(cpu[1:] or cpu)
    mean_len = statistics.mean(lengths) if lengths else float("nan")
    tokens = n * mean_len  # generated tokens per step
    return {
        "s_per_step": s,
        "cpu_s_per_step": c,
        "s_per_token": s / tokens,
        "cpu_s_per_token": c / tokens,
        "mean_completion_len": mean_len,
        "completion_lens": lengths,
        "steps_s": [round(x, 3) for x in steps],
        "cpu_steps_s": [round(x, 3) for x in cpu],
    }


def spread(values: list[float]) -> dict:
    return {"median": statistics.median(values), "range": [min(values), max(values)]}


METRICS = ("s_per_step", "cpu_s_per_step", "s_per_token", "cpu_s_per_token")


def side_summary(reps: list[dict]) -> dict:
    out = {k: spread([r[k] for r in reps]) for k in METRICS}
    out["mean_completion_len"] = statistics.mean(r["mean_completion_len"] for r in reps)
    return {**out, "reps": reps}


def speedups(tk: list[dict], trl: list[dict]) -> dict:
    """TRL / trainkit per metric: median and range of the per-rep ratios."""
    return {k: spread([b[k] / a_[k] for a_, b in zip(tk, trl)]) for k in METRICS}


def summarise(result: dict, tk_reps: list, trl_reps: list, settings: dict, a) -> bool:
    """Fill ``result`` with each side's reps, the settings check and the speedups.

    Returns False when the sides did not do the same work: a run with fewer steps than
    asked, a step whose mean completion length is not ``max_new_tokens``, or a setting
    that differs.
    """
    lens_ok = steps_ok = True
    for side, reps in (("trainkit", tk_reps), ("trl", trl_reps)):
        if reps:
            result[side] = side_summary(reps)
            # forced lengths: every step of every run generated n * max_new_tokens tokens
            lens_ok &= all(set(r["completion_lens"]) == {float(a.max_new_tokens)} for r in reps)
            steps_ok &= all(len(r["steps_s"]) == len(r["completion_lens"]) == a.steps for r in reps)
    result["lengths_equal"], result["steps_complete"] = lens_ok, steps_ok
    ok = lens_ok and steps_ok
    if len(settings) == 2:
        tk, trl = settings["trainkit"], settings["trl"]
        differ = {k: [tk[k], trl.get(k)] for k in tk if tk[k] != trl.get(k)}
        settings.update(equal=not differ, differ=differ)
        ok &= not differ
    result["settings"] = settings
    if tk_reps and trl_reps:
        result["speedup"] = speedups(tk_reps, trl_reps)
        # the headline: TRL's CPU seconds per generated token over trainkit's
        result["speedup_cpu_per_token"] = result["speedup"]["cpu_s_per_token"]["median"]
    return ok


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if any(x == "--modes" or x.startswith("--modes=") for x in argv):
        return modes_main(argv)
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny-llama instead of SmolLM2-135M")
    p.add_argument("--model", default=None)
    p.add_argument("--steps", type=int, default=None, help="optimizer steps per run")
    p.add_argument("--reps", type=int, default=3, help="runs per side, interleaved")
    p.add_argument("--n", type=int, default=8, help="completions per prompt (one prompt/step)")
    p.add_argument("--max-new-tokens", type=int, default=32, help="every completion's length")
    p.add_argument("--lora-r", type=int, default=16)
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", "2")))
    p.add_argument("--gradient-checkpointing", choices=["off", "on"], default="off")
    p.add_argument(  # default merged, as in configs/rlhf/grpo_smollm2.yaml
        "--no-merge-lora",
        dest="merge_lora",
        action="store_false",
        help="trainkit: keep LoRA unmerged while generating",
    )
    p.add_argument("--only", choices=["trainkit", "trl"], default=None)
    p.add_argument("--engines", default="hf", help="trainkit rollout engines, e.g. hf,vllm")
    p.add_argument("--vllm-python", help="default: $TRAINKIT_VLLM_PYTHON, .venv-vllm/bin/python")
    p.add_argument("--vllm-child", default=None, help=argparse.SUPPRESS)  # internal
    a = p.parse_args(argv)
    engines = [e.strip() for e in a.engines.split(",") if e.strip()]
    if not engines or set(engines) - {"hf", "vllm"}:
        p.error(f"--engines: a comma-separated subset of hf,vllm, got {a.engines!r}")
    if a.reps < 1:
        p.error("--reps must be >= 1")
    a.steps = a.steps or (6 if a.quick else 5)
    import torch

    torch.set_num_threads(a.threads)
    from trainkit.llm.models import resolve

    a.model_name = name = a.model or ("tiny-llama" if a.quick else "smollm2-135m-instruct")
    path = resolve(name)
    recs = prompts_for(a.steps)
    if a.vllm_child:  # inside the vLLM venv: a.reps trainkit runs with vLLM rollouts
        with tempfile.TemporaryDirectory() as tmp:
            runs = [
                run_trainkit(path, recs, a, Path(tmp) / f"tk{i}", "vllm") for i in range(a.reps)
            ]
        Path(a.vllm_child).write_text(json.dumps(pooled_summary(runs)))
        return 0
    tk = a.only in (None, "trainkit")
    use = {"trainkit": tk and "hf" in engines, "trl": a.only != "trainkit"}
    sides = [s for s, on in use.items() if on]  # trainkit (HF rollouts) and TRL alternate
    result: dict = {"model": name, "steps": a.steps, "warmup_steps": 1, "reps": a.reps}
    result["order"] = [s for _ in range(a.reps) for s in sides]
    tk_runs: list[tuple] = []
    trl_reps: list[dict] = []
    settings: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for i in range(a.reps):
            if "trainkit" in sides:
                tk_runs.append(run_trainkit(path, recs, a, tmp / f"tk{i}"))
                settings["trainkit"] = tk_runs[-1][3]
            if "trl" in sides:
                steps, cpu, lens, settings["trl"] = run_trl(path, recs, a, tmp / f"trl{i}")
                trl_reps.append(rep_summary(steps, cpu, lens, a.n))
        eng: dict = {}
        if tk_runs:
            eng["hf"] = pooled_summary(tk_runs)
        if tk and "vllm" in engines:
            eng["vllm"] = run_vllm_column(name, a, tmp)
    if eng:
        result["rollout_engines"] = eng
    if isinstance(eng.get("hf"), dict) and isinstance(eng.get("vllm"), dict):
        hf, vl = eng["hf"], eng["vllm"]
        for k in ("s_per_step", "cpu_s_per_step", "gen_s", "gen_cpu_s"):
            result[f"hf_over_vllm_{k}"] = hf[k] / vl[k]
        result["vllm_over_hf_gen_tokens_per_s"] = vl["gen_tokens_per_s"] / hf["gen_tokens_per_s"]
    tk_reps = [rep_summary(s, c, [x["response_len"] for x in p_], a.n) for s, c, p_, _ in tk_runs]
    ok = summarise(result, tk_reps, trl_reps, settings, a)
    print(json.dumps(result))
    if not ok:
        why = "see lengths_equal, steps_complete, settings.differ and each rep"
        print(f"rl_throughput: the two sides did not do the same work: {why}", file=sys.stderr)
    return 0 if ok else 1


def modes_main(argv: list[str]) -> int:
    """``--modes sync,async``: benchmarks/rl_async.py (the other flags go to it)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--modes", required=True)
    a, rest = p.parse_known_args(argv)
    if {m.strip() for m in a.modes.split(",")} != {"sync", "async"}:
        print("rl_throughput: --modes takes sync,async", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import rl_async

    return rl_async.main(rest)


if __name__ == "__main__":
    sys.exit(main())
