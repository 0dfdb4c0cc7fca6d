"""Demo section of the RLHF part: preference learning, GRPO with a verifiable reward and
(full demo) multi-turn tool use.

Quick mode (a few minutes at most): nothing learns from a random model. ``tiny-llama`` is
first warm-started with the SFT recipe: for the preference half on replies in both formats
(the bare number and a wordy sentence), so that the RM and DPO have a preference to learn
and DPO's greedy answers can move; for GRPO on ``prompt -> bare number``, then GRPO on
single-digit sums with a graded closeness reward. Full mode: the real
SmolLM2-135M-Instruct for everything: the RM (``configs/rlhf/rm_smollm2.yaml``), DPO with
LoRA (``configs/rlhf/dpo_smollm2.yaml``), GRPO with LoRA
(``configs/rlhf/grpo_smollm2.yaml``, 20 steps; held-out greedy exact-answer accuracy is its
headline) and the calculator recipe with a short GRPO budget (:mod:`demo_tools`).
"""

from __future__ import annotations

import json
from pathlib import Path

from trainkit.demo import Section

ESTIMATE_S = {"quick": 150, "full": 900}
CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "rlhf"
TASK = "arithmetic_number_only"


def _warm_start(out: Path, both_formats: bool = False) -> str:
    """SFT the tiny model on the task's prompts; returns the model folder.

    Replies: the bare answer; with ``both_formats`` every other reply is a wordy sentence
    instead (the rejected side of the preference pairs), so the model has both formats."""
    from trainkit.common.io import atomic_write_text
    from trainkit.config import load_config
    from trainkit.llm.sft import SFTConfig, train
    from trainkit.rlhf.tasks import load_task, preference_pairs

    recs, _ = load_task(TASK, seed=0)
    replies = [str(r["answer"]) for r in recs]
    if both_formats:
        pairs = preference_pairs(recs, seed=1, kind="format")
        replies = [p["rejected"] if i % 2 else p["chosen"] for i, p in enumerate(pairs)]
    out.mkdir(parents=True, exist_ok=True)
    data = out / "sft_data.jsonl"
    atomic_write_text(
        data,
        "".join(
            json.dumps({"prompt": r["prompt"], "response": x}) + "\n" for r, x in zip(recs, replies)
        ),
    )
    # GRPO's tiny recipe reads raw prompts (data.chat_template=false); RM and DPO put the
    # prompt in the chat template, so the preference warm start learns that format
    fmt = (
        ["data.max_length=128"]
        if both_formats
        else ["data.chat_template=never", "data.separator=''", "data.max_length=64"]
    )
    cfg = load_config(
        SFTConfig,
        None,
        [
            "model.name=tiny-llama",
            f"data.path={data}",
            "data.format=prompt_response",
            *fmt,
            "train.max_steps=40",
            "train.batch_size=32",
            "train.micro_batch_size=32",
            "train.eval_every=0",
            "train.save_every=0",
            "optim.lr=3e-3",
            "optim.warmup_steps=0",
            "optim.schedule=constant",
            "train.progress=false",
            f"output_dir={out / 'sft'}",
        ],
    )
    res = train(cfg)
    return str(res["final"])


def _grpo_config(out: Path, quick: bool, model: str | None):
    from trainkit.config import load_config
    from trainkit.rlhf.trainers.rl_config import GRPOConfig

    if quick:
        return load_config(
            GRPOConfig,
            CONFIGS / "grpo_tiny.yaml",
            [
                f"model.name={model}",
                "rollout.n=8",
                "rollout.prompts_per_step=8",
                "rollout.max_new_tokens=4",
                "optim.lr=3e-3",
                "train.micro_batch_size=64",
                "train.max_steps=8",
                "eval.every=2",
                "eval.samples_per_prompt=8",
                "eval.n_prompts=25",
                "train.progress=false",
                "train.save_model=false",
                f"output_dir={out}",
            ],
        ), "configs/rlhf/grpo_tiny.yaml (after an SFT warm start)"
    return load_config(
        GRPOConfig,
        CONFIGS / "grpo_smollm2.yaml",
        [
            "train.max_steps=20",
            "eval.every=10",
            "eval.temperature=0.0",
            "eval.samples_per_prompt=1",
            "train.progress=false",
            "train.save_model=false",
            f"output_dir={out}",
        ],
    ), "configs/rlhf/grpo_smollm2.yaml train.max_steps=20"


def plot_curves(metrics: Path, png: Path) -> Path:
    """Train reward per step and held-out reward / accuracy at each evaluation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainkit.common.io import atomic_path

    recs = [json.loads(x) for x in metrics.read_text().splitlines() if x.strip()]
    tr = [(r["step"], r["reward"]) for r in recs if "reward" in r]
    ev = [(r["step"], r["eval_reward"], r.get("eval_accuracy")) for r in recs if "eval_reward" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if tr:
        ax.plot(*zip(*tr), color="C0", label="train reward (mean of the group samples)")
    if ev:
        s, r, a = zip(*ev)
        ax.plot(s, r, "o-", color="C1", label="held-out reward")
        if all(x is not None for x in a):
            ax.plot(s, a, "s--", color="C2", label="held-out exact accuracy")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward / exact accuracy")
    ax.legend(fontsize=7)
    ax.set_title("GRPO on arithmetic with a verifiable reward")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png


def run_grpo(out_dir: Path, quick: bool, threads: int | None = None) -> Section:
    from trainkit.rlhf.trainers.ppo import train

    out_dir = Path(out_dir)
    model = _warm_start(out_dir) if quick else None
    cfg, cmd = _grpo_config(out_dir / "grpo", quick, model)
    if threads:
        cfg.train.threads = threads
    s = train(cfg)
    png = plot_curves(out_dir / "grpo" / "metrics.jsonl", out_dir / "grpo_curves.png")
    a, b = s["first_eval"], s["last_eval"]
    reward = "GRPO held-out mean reward"
    headline = {
        reward: f"{a['eval_reward']:.3f} -> {b['eval_reward']:.3f} "
        f"({s['steps']} steps, {s['seconds']:.0f} s)",
    }
    better = {reward: "higher"}
    if "eval_accuracy" in a and not quick:  # tiny: a few percent sampled, mostly noise
        acc = "GRPO held-out exact accuracy"
        headline[acc] = f"{100 * a['eval_accuracy']:.0f}% -> {100 * b['eval_accuracy']:.0f}%"
        better[acc] = "higher"
    text = (
        f"Model: `{cfg.model.name}`{' (LoRA r' + str(cfg.lora.r) + ')' if cfg.lora.enabled else ''}"
        f"; task `{cfg.data.path}`; rewards {list(cfg.data.reward)}; "
        f"{cfg.rollout.n} samples per prompt, {cfg.rollout.max_new_tokens} new tokens."
    )
    if quick:
        text += (
            " The tiny model learns the graded closeness reward (answers nearer the sum); "
            "its exact accuracy stays at a few percent and is not reported."
        )
    return Section(
        title="GRPO",
        headline=headline,
        markdown=text,
        images=[
            (
                "GRPO: train reward per step (mean over the sampled group) and held-out reward"
                " / exact accuracy at each evaluation",
                png.name,
            )
        ],
        command=f"trainkit rlhf grpo --config {cmd}",
        better=better,
    )


def run(out_dir: Path, quick: bool) -> Section:
    """The RLHF section of the demo report: preference learning, GRPO and (full) tools."""
    import torch

    from trainkit.rlhf.demo_pref import run_pref

    out_dir = Path(out_dir)
    threads = torch.get_num_threads()  # every run here uses all of them (train.threads too)
    model = _warm_start(out_dir / "pref_warm", both_formats=True) if quick else None
    parts = [("pref", run_pref(out_dir / "pref", quick, model=model))]
    torch.set_num_threads(threads)
    parts.append(("grpo_run", run_grpo(out_dir / "grpo_run", quick, threads)))
    if not quick:
        from trainkit.rlhf.demo_tools import run_tools

        torch.set_num_threads(threads)
        parts.append(("tools", run_tools(out_dir / "tools", threads)))
    names = {"pref": "Preference learning", "grpo_run": "GRPO", "tools": "Multi-turn tool use"}
    base = (
        "the tiny model after an SFT warm start (2 minutes of CPU)"
        if quick
        else "SmolLM2-135M-Instruct"
    )
    return Section(
        title="RLHF: reward model, DPO, GRPO" + ("" if quick else " and tool use"),
        headline={k: v for _, p in parts for k, v in p.headline.items()},
        markdown="\n\n".join(f"**{names[d]}.** {p.markdown}" for d, p in parts),
        images=[(c, f"{d}/{rel}") for d, p in parts for c, rel in p.images],
        command="\n".join(p.command for _, p in parts),
        better={k: v for _, p in parts for k, v in p.better.items()},
        shows=(
            f"On {base}, each recipe moves what it optimises: the reward model learns to "
            "rank the preferred format, DPO shifts the policy's own answers to it, GRPO "
            "raises the held-out verifiable reward"
            + ("" if quick else ", and multi-turn GRPO teaches the model to call a tool")
            + "."
        ),
        not_shown=(
            "A tiny model's numbers say nothing about answer quality; the full demo "
            "(`make demo`) runs the same recipes on SmolLM2-135M-Instruct."
            if quick
            else "Chat quality or safety preferences: the preferences and rewards here are "
            "rule-checked (format, exact arithmetic); runs are short, single-seed and on CPU."
        ),
    )
