"""Demo section "preference learning": a reward model and DPO on generated pairs.

``run_pref(out_dir, quick)`` trains a pairwise reward model and a DPO policy on the
built-in format-following preference data (arithmetic prompts asking for the bare
number; chosen = the bare number, rejected = a wordy reply) and reports held-out RM
accuracy, DPO preference accuracy (before: the base model's log-prob ranking) and reward
margins, the share of greedy generations that follow the preferred format, and a PNG of
the DPO margin curve.

``quick``: ``tiny-llama`` warm-started by the caller on both reply formats (``model``;
seconds); full: the real SmolLM2-135M-Instruct, LoRA for DPO (minutes on 2 CPU cores).
"""

from __future__ import annotations

import json
from pathlib import Path

from trainkit.demo import Section

ESTIMATE_S = {"quick": 60, "full": 400}


def _configs(out_dir: Path, quick: bool, model: str | None = None):
    from trainkit.config import load_config
    from trainkit.rlhf.trainers.dpo import DPOConfig
    from trainkit.rlhf.trainers.rm import RMConfig

    root = Path(__file__).resolve().parents[3] / "configs" / "rlhf"
    size = "tiny" if quick else "smollm2"
    common = ["train.progress=false"] + ([f"model.name={model}"] if model else [])
    rm_file, dpo_file = root / f"rm_{size}.yaml", root / f"dpo_{size}.yaml"
    rm = load_config(
        RMConfig,
        rm_file if rm_file.is_file() else None,
        common
        + [f"output_dir={out_dir / 'rm'}"]
        + ([] if rm_file.is_file() else [f"model.name={_model(quick)}"]),
    )
    dpo = load_config(
        DPOConfig,
        dpo_file if dpo_file.is_file() else None,
        common
        + [f"output_dir={out_dir / 'dpo'}", "train.save=none", "train.log_every=1"]
        + (["eval.num_prompts=16"] if quick else ["eval.every=0"])
        + ([] if dpo_file.is_file() else [f"model.name={_model(quick)}"]),
    )
    return rm, dpo, f"configs/rlhf/rm_{size}.yaml", f"configs/rlhf/dpo_{size}.yaml"


def _model(quick: bool) -> str:
    return "tiny-llama" if quick else "smollm2-135m-instruct"


def plot_margins(metrics_file: Path, png: Path) -> Path:
    """Plot the DPO train margin (and held-out margin points) per step as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from trainkit.common.io import atomic_path

    recs = [json.loads(x) for x in metrics_file.read_text().splitlines() if x.strip()]
    tr = [
        (r["step"], r["margin"], r["chosen_reward"], r["rejected_reward"])
        for r in recs
        if "margin" in r
    ]
    ev = [(r["step"], r["eval/margin"]) for r in recs if "eval/margin" in r]
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
    if tr:
        s, m, c, j = zip(*tr)
        ax.plot(s, m, label="train margin (r_c - r_r)", color="C0")
        ax.plot(s, c, label="chosen reward", color="C2", lw=0.8, ls="--")
        ax.plot(s, j, label="rejected reward", color="C3", lw=0.8, ls="--")
    if ev:
        s, m = zip(*ev)
        ax.plot(s, m, "o", color="C1", label="held-out margin")
    ax.axhline(0.0, color="#999", lw=0.5)
    ax.set_xlabel("DPO step")
    ax.set_ylabel("implicit reward  beta * log(pi / pi_ref)")
    ax.set_title("DPO reward margins")
    ax.legend(fontsize=7)
    fig.tight_layout()
    with atomic_path(png) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return png


def run_pref(out_dir: Path, quick: bool, model: str | None = None) -> Section:
    """Train the RM and DPO recipes (from ``model`` when given); return the section."""
    from trainkit.rlhf.trainers.dpo import train_dpo
    from trainkit.rlhf.trainers.rm import train_rm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rm_cfg, dpo_cfg, rm_path, dpo_path = _configs(out_dir, quick, model)
    rm = train_rm(rm_cfg)
    dpo = train_dpo(dpo_cfg)
    png = plot_margins(out_dir / "dpo" / "metrics.jsonl", out_dir / "dpo_margins.png")

    def pct(x):
        return "n/a" if x is None else f"{100 * x:.0f}%"

    rm_acc = "RM held-out pairwise accuracy"
    dpo_acc = "DPO held-out preference accuracy (implicit reward)"
    mean_lp = "held-out pairs ranked by the policy's per-token mean log-prob (before -> after)"
    follow = "greedy answers in the preferred format (before -> after DPO)"
    headline = {
        rm_acc: f"{pct(rm['heldout_accuracy_before'])} -> {pct(rm['heldout_accuracy'])} "
        f"({rm['n_heldout']} pairs)",
        dpo_acc: f"{pct(dpo['heldout_accuracy'])} (base log-probs, summed: "
        f"{pct(dpo['heldout_accuracy_before'])}, favouring the shorter reply)",
        mean_lp: f"{pct(dpo['base_mean_logp_accuracy'])} -> "
        f"{pct(dpo['heldout_mean_logp_accuracy'])}",
        "DPO held-out reward margin": f"{dpo['heldout_margin']:.3f}",
    }
    if quick:  # a 40-step warm start of a tiny model: its greedy replies are not answers
        headline["greedy answers in the preferred format (not a learning figure here)"] = (
            f"{pct(dpo['follow_rate_before'])} before, {pct(dpo['follow_rate'])} after"
        )
    else:
        headline[follow] = f"{pct(dpo['follow_rate_before'])} -> {pct(dpo['follow_rate'])}"
    before = {x["prompt"]: x for x in dpo.get("samples_before") or []}
    after = dpo.get("samples_after") or []
    who = "the warm-started tiny model" if quick else f"`{dpo_cfg.model.name}`"
    lines = [
        f"Models: {who} for the RM (full fine-tune, scalar head) and for DPO"
        f"{' (LoRA; reference = the adapter-disabled base)' if dpo_cfg.lora.enabled else ''}. "
        "Data: arithmetic prompts asking for the bare number; chosen = the bare number, "
        "rejected = a wordy reply (trainkit.rlhf.tasks). Accuracies count ties as 1/2. "
        "'Before' is the untrained model's own ranking (its implicit-reward accuracy would "
        "be 50% by construction: the policy equals its reference at step 0). The per-token "
        "mean log-prob does not favour the shorter reply the way the sum does.",
    ]
    if not quick:
        lines[0] += (
            " DPO learns the format it is shown, not the sums: its bare numbers after training"
            " are often wrong (GRPO's exact-answer reward, next, is what improves those)."
        )
    if quick:
        lines[0] += (
            " The tiny model learns the preference (the RM's ranking, the policy's own "
            "log-probs); its greedy replies stay malformed before and after DPO, so they "
            "show nothing here (the full demo's SmolLM2 answers do)."
        )
    if after:
        lines += [
            "",
            "Greedy answers to held-out prompts, before and after DPO:",
            "",
            "| prompt | before | after | preferred format after |",
            "|---|---|---|---|",
        ]

        def cell(text):
            return text.replace("|", "/").replace("\n", " ").strip()[:60] or "(empty)"

        for x in after[:5]:
            b = before.get(x["prompt"], {}).get("generation", "")
            lines.append(
                f"| {cell(x['prompt'])} | {cell(b)} | {cell(x['generation'])} | "
                f"{'yes' if x['follows'] else 'no'} |"
            )
    return Section(
        title="RLHF: reward model and DPO",
        headline=headline,
        markdown="\n".join(lines),
        images=[
            (
                "DPO: implicit rewards beta * log(pi / pi_ref) of the chosen and rejected "
                "replies and their margin per step (train), held-out margin as points",
                png.name,
            )
        ],
        command=(f"trainkit rlhf rm --config {rm_path}\ntrainkit rlhf dpo --config {dpo_path}"),
        better={rm_acc: "higher", mean_lp: "higher", follow: "higher"},
    )
