"""Demo section of the RLHF part: preference learning, then GRPO with a verifiable reward.

Quick mode (a few minutes at most): the random ``tiny-llama`` is warm-started on the task
format with the SFT recipe (prompt -> bare number), then trained with GRPO on single-digit
sums with a graded closeness reward. Full mode: GRPO with LoRA on the real
SmolLM2-135M-Instruct (``configs/rlhf/grpo_smollm2.yaml``, 20 steps), where held-out greedy
exact-answer accuracy is the headline. The preference half (reward model + DPO) runs on
``tiny-llama`` in both modes, so the full demo stays under 20 minutes on 2 cores.
"""

from __future__ import annotations

import json
from pathlib import Path

from trainkit.demo import Section

ESTIMATE_S = {"quick": 150, "full": 600}
CONFIGS = Path(__file__).resolve().parents[3] / "configs" / "rlhf"
TASK = "arithmetic_number_only"


def _warm_start(out: Path) -> str:
    """SFT the tiny model on ``prompt -> answer`` pairs of the task; returns the model folder."""
    from trainkit.common.io import atomic_write_text
    from trainkit.config import load_config
    from trainkit.llm.sft import SFTConfig, train
    from trainkit.rlhf.tasks import load_task

    recs, _ = load_task(TASK, seed=0)
    data = out / "sft_data.jsonl"
    atomic_write_text(
        data,
        "".join(
            json.dumps({"prompt": r["prompt"], "response": str(r["answer"])}) + "\n" for r in recs
        ),
    )
    cfg = load_config(
        SFTConfig,
        None,
        [
            "model.name=tiny-llama",
            f"data.path={data}",
            "data.format=prompt_response",
            "data.chat_template=never",
            "data.separator=''",
            "data.max_length=64",
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
    ax.legend(fontsize=7)
    ax.set_title("GRPO on arithmetic with a verifiable reward")
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png


def run_grpo(out_dir: Path, quick: bool) -> Section:
    from trainkit.rlhf.trainers.ppo import train

    out_dir = Path(out_dir)
    model = _warm_start(out_dir) if quick else None
    cfg, cmd = _grpo_config(out_dir / "grpo", quick, model)
    s = train(cfg)
    png = plot_curves(out_dir / "grpo" / "metrics.jsonl", out_dir / "grpo_curves.png")
    a, b = s["first_eval"], s["last_eval"]
    headline = {
        "GRPO held-out mean reward": f"{a['eval_reward']:.3f} -> {b['eval_reward']:.3f} "
        f"({s['steps']} steps, {s['seconds']:.0f} s)",
    }
    if "eval_accuracy" in a:
        headline["GRPO held-out exact accuracy"] = (
            f"{100 * a['eval_accuracy']:.0f}% -> {100 * b['eval_accuracy']:.0f}%"
        )
    text = (
        f"Model: `{cfg.model.name}`{' (LoRA r' + str(cfg.lora.r) + ')' if cfg.lora.enabled else ''}"
        f"; task `{cfg.data.path}`; rewards {list(cfg.data.reward)}; "
        f"{cfg.rollout.n} samples per prompt, {cfg.rollout.max_new_tokens} new tokens."
    )
    return Section(
        title="GRPO",
        headline=headline,
        markdown=text,
        images=[("GRPO reward and accuracy", png.name)],
        command=f"trainkit rlhf grpo --config {cmd}",
    )


def run(out_dir: Path, quick: bool) -> Section:
    """The RLHF section of the demo report: preference learning, then GRPO."""
    from trainkit.rlhf.demo_pref import run_pref

    out_dir = Path(out_dir)
    pref = run_pref(out_dir / "pref", True)
    grpo = run_grpo(out_dir / "grpo_run", quick)
    images = [(c, f"pref/{p}") for c, p in pref.images] + [
        (c, f"grpo_run/{p}") for c, p in grpo.images
    ]
    return Section(
        title="RLHF: reward model, DPO and GRPO",
        headline={**pref.headline, **grpo.headline},
        markdown=f"**Preference learning.** {pref.markdown}\n\n**GRPO.** {grpo.markdown}",
        images=images,
        command=f"{pref.command}\n{grpo.command}",
    )
