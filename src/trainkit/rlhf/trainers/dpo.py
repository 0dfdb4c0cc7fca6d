"""DPO, IPO and cDPO training: ``trainkit rlhf dpo --config configs/rlhf/dpo_tiny.yaml``.

Direct preference optimisation (Rafailov et al. 2023) as in OpenRLHF (Hu et al. 2024,
arXiv 2405.11143): with sequence log-probs ``logp(y|x) = sum_t log pi(y_t | x, y_<t)``
over response tokens (``train.average_logps`` for the mean) and
``delta = (logp_c - logp_r) - (logp_ref_c - logp_ref_r)``, minimise
:func:`trainkit.rlhf.losses.dpo_loss` (``loss_type: sigmoid`` with ``label_smoothing``
``eps`` = cDPO, ``ipo`` = IPO). The implicit rewards are ``beta * (logp - logp_ref)``.

Reference policy, by config:

* ``lora.enabled``: the reference is the same model with its adapters disabled
  (``peft``'s ``disable_adapter()`` context): no second copy of the weights;
* otherwise a frozen deep copy of the initial model;
* ``train.ref: precompute``: reference log-probs of every train pair are computed once
  before training (one no-grad pass) and the reference is dropped, saving its memory.

Evaluation before and after training on the held-out pairs: preference accuracy (the
implicit reward ranks chosen over rejected; a tie counts 1/2, so the untrained policy,
equal to its reference, scores exactly 0.5 by construction) and mean margin; the model's
own ranking by summed log-probs, ``sum log p(chosen) > sum log p(rejected)`` (ties 1/2):
``eval/base_logp_accuracy`` for the untrained model, the summary's "before" accuracy,
and ``eval/logp_accuracy`` for the trained policy (``*mean_logp_accuracy``: the same by
per-token means, free of the sum's bias towards short responses); and greedy generations
on held-out prompts scored by a verifiable rule (``eval.rule``): the fraction that
follow the preferred behaviour.

Departures from OpenRLHF: no sample packing or ring attention; chosen and rejected are
concatenated into one ``[2B, T]`` forward pass as there, but the prompt is rendered with
the model's chat template and each response ends with the EOS token.
"""

from __future__ import annotations

import copy
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainkit.common.errors import UserError
from trainkit.llm.lora import LoraSection
from trainkit.llm.optim import make_optimizer
from trainkit.llm.sections import ModelSection, OptimSection, TrainFields
from trainkit.rlhf.trainers.dpo_eval import RULES, evaluate, generate_eval
from trainkit.rlhf.trainers.pairs import (
    batch_logps,
    collate,
    encode_pair,
    load_split,
)
from trainkit.rlhf.trainers.rm import DataSection as _RMData


# ----------------------------------------------------------------------------- config
@dataclass
class DataSection(_RMData):
    """The ``data`` section: the reward-model data keys plus a prompt length limit.

    Attributes:
        eval_fraction: with ``path`` set and no ``eval_path``: fraction in [0, 1) of the pairs
            held out for eval (at least one; seeded by ``train.seed``); 0: no held-out pairs.
    """

    max_prompt_len: int = field(default=192, metadata={"help": "prompt tokens (left-truncated)"})


@dataclass
class TrainSection(TrainFields):
    """The ``train`` section: steps, batching, the DPO/IPO/cDPO loss, the reference,
    checkpoints and the NaN/inf policy.

    Attributes:
        max_steps: optimizer steps; a step whose gradient norm is NaN/inf is not applied.
        seed: seeds Python, NumPy and torch, the held-out split, generated data and the
            batch order (pairs reshuffled every epoch).
        log_every: write train metrics (loss, reward_acc, margin, logps, grad_norm, lr) at
            step 1, every N steps and at the last step.
        beta: DPO inverse temperature (KL strength, > 0); implicit reward is
            ``beta * (logp - logp_ref)``; IPO target margin is ``1 / (2 beta)``.
        loss_type: sigmoid: DPO, or cDPO with ``label_smoothing > 0`` (Rafailov et al. 2023);
            or ipo: ``(delta - 1 / (2 beta))^2`` (Azar et al. 2023).
        progress: show progress bars.
    """

    batch_size: int = field(default=8, metadata={"help": "preference pairs per step"})
    log_every: int = 5
    beta: float = 0.1
    label_smoothing: float = field(default=0.0, metadata={"help": "cDPO eps (0: DPO)"})
    loss_type: Literal["sigmoid", "ipo"] = "sigmoid"
    average_logps: bool = field(
        default=False, metadata={"help": "mean instead of sum of response-token log-probs"}
    )
    ref: Literal["model", "precompute"] = field(
        default="model",
        metadata={
            "help": "reference: a frozen model (adapter-disabled base with LoRA) or log-probs "
            "precomputed once"
        },
    )
    save: Literal["auto", "merged", "none"] = field(
        default="auto",
        metadata={"help": "auto: adapter with LoRA, full model otherwise; merged: plain HF folder"},
    )


@dataclass
class EvalSection:
    """The ``eval`` section: held-out preference accuracy and rule-checked generations.

    Attributes:
        batch_size: pairs per forward pass when evaluating or precomputing reference
            log-probs, and prompts per batch when generating.
        generate: before and after training, generate greedily on held-out prompts and
            report the fraction that follows ``rule`` (follow_rate).
        num_prompts: held-out prompts used for the generation eval (the first N).
        max_new_tokens: new tokens per greedy generation.
    """

    every: int = field(default=0, metadata={"help": "held-out eval every N steps (0: end only)"})
    batch_size: int = 16
    max_pairs: int = field(default=0, metadata={"help": "cap on held-out pairs (0: all)"})
    generate: bool = True
    num_prompts: int = 32
    max_new_tokens: int = 24
    rule: str = field(
        default="number_only",
        metadata={"help": "generation rule: number_only, match_chosen, not_rejected_prefix"},
    )


@dataclass
class DPOConfig:
    """Config of ``trainkit rlhf dpo``: DPO / IPO / cDPO on preference pairs.

    Attributes:
        output_dir: run folder: config.yaml, metrics.jsonl, summary.json, adapter/ or model/
            (per ``train.save``) and data/ when the pairs are generated.
    """

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=5e-6, schedule="constant"))
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    output_dir: str = "runs/dpo"

    def validate(self) -> None:
        if self.train.beta <= 0:
            raise UserError(f"train.beta must be > 0, got {self.train.beta}")
        if not 0.0 <= self.train.label_smoothing < 0.5:
            raise UserError(
                f"train.label_smoothing must be in [0, 0.5), got {self.train.label_smoothing}"
            )
        if self.eval.rule not in RULES:
            raise UserError(f"eval.rule must be one of {', '.join(RULES)}, got {self.eval.rule!r}")


# --------------------------------------------------------------------------- recipe
class Reference:
    """Reference log-probs: a frozen copy, the adapter-disabled base, or a table."""

    def __init__(self, model: Any, mode: str, lora: bool, average: bool):
        self.model, self.mode, self.lora, self.average = model, mode, lora, average
        self.frozen = None
        self.table: dict[int, tuple[float, float]] = {}
        if mode == "model" and not lora:
            self.frozen = copy.deepcopy(model).eval()
            for p in self.frozen.parameters():
                p.requires_grad_(False)

    def _compute(self, batch: dict):
        import torch

        with torch.no_grad():
            if self.frozen is not None:
                return batch_logps(self.frozen, batch, self.average)
            was = self.model.training
            self.model.eval()
            try:
                if self.lora:
                    with self.model.disable_adapter():
                        return batch_logps(self.model, batch, self.average)
                return batch_logps(self.model, batch, self.average)
            finally:
                self.model.train(was)

    def precompute(
        self, encoded: list[dict], pad_id: int, batch_size: int, desc: str, show: bool
    ) -> None:
        """Fill the table for every pair (policy must still equal the reference)."""
        from trainkit.common.logging import progress

        for i in progress(range(0, len(encoded), batch_size), desc=desc, disable=not show):
            chunk = encoded[i : i + batch_size]
            lp = self._compute(collate(chunk, pad_id)).float().cpu()
            for j in range(len(chunk)):
                self.table[i + j] = (float(lp[j]), float(lp[len(chunk) + j]))

    def logps(self, idx: list[int], batch: dict):
        """Reference log-probs ``[2B]`` of the pairs ``idx`` (collated as ``batch``)."""
        import torch

        if self.mode == "precompute":
            vals = [self.table[i][0] for i in idx] + [self.table[i][1] for i in idx]
            return torch.tensor(vals, dtype=torch.float32)
        return self._compute(batch)


def build_policy(cfg: DPOConfig):
    """``(model, tokenizer)``: the policy, LoRA-wrapped when enabled."""
    from trainkit.llm.models import load_model

    model, tok = load_model(
        cfg.model.name,
        dtype=cfg.model.dtype,
        lora=cfg.lora if cfg.lora.enabled else None,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
    )
    return model, tok


def save_policy(model: Any, tok: Any, cfg: DPOConfig, out: Path) -> str | None:
    """Save per ``train.save``; returns the folder or ``None``."""
    from trainkit.common.io import atomic_dir

    mode = cfg.train.save
    if mode == "none":
        return None
    if cfg.lora.enabled and mode == "auto":
        from trainkit.llm.lora import save_adapter

        return str(save_adapter(model, out / "adapter", tokenizer=tok))
    if cfg.lora.enabled:
        model = model.merge_and_unload()
    with atomic_dir(out / "model") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return str(out / "model")


def train_dpo(cfg: DPOConfig, on_model: Callable[[Any], None] | None = None) -> dict:
    """Train with DPO/IPO/cDPO; returns the summary (also in ``summary.json``).

    Checkpoints, ``train.resume``, the NaN/inf policy and Ctrl-C follow
    :mod:`trainkit.llm.train_control` (after a Ctrl-C: ``{"interrupted": True, ...}``,
    nothing saved but the checkpoint). On resume, whatever needs the initial policy (the
    "before" evaluation, the frozen or precomputed reference) is built before the
    checkpoint is loaded.

    Args:
        cfg: the recipe config.
        on_model: called with the freshly built policy before training (tests snapshot
            its parameters through it).
    """
    import torch

    from trainkit.common.io import atomic_write_json
    from trainkit.common.logging import MetricsLogger, progress
    from trainkit.common.run import save_config
    from trainkit.common.seed import seed_everything
    from trainkit.config import to_dict
    from trainkit.llm.train_control import EpochOrder, TrainControl
    from trainkit.rlhf.losses import dpo_loss

    out = Path(cfg.output_dir)
    seed_everything(cfg.train.seed)
    model, tok = build_policy(cfg)  # inputs first: a bad model or data leaves no run folder
    train, held = load_split(cfg.data, cfg.train.seed, out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    held = held[: cfg.eval.max_pairs] if cfg.eval.max_pairs else held
    if torch.cuda.is_available():
        model.cuda()
    if on_model is not None:
        on_model(model)
    D, T, E = cfg.data, cfg.train, cfg.eval
    enc_train = [encode_pair(tok, r, D.max_prompt_len, D.max_len) for r in train]
    enc_held = [encode_pair(tok, r, D.max_prompt_len, D.max_len) for r in held]
    pad = tok.pad_token_id

    before, held_ref = evaluate(model, enc_held, None, pad, cfg)
    gen_before = generate_eval(model, tok, held, cfg) if E.generate else None
    ref = Reference(model, T.ref, cfg.lora.enabled, T.average_logps)
    if T.ref == "precompute":
        ref.precompute(enc_train, pad, E.batch_size, "ref logps", T.progress)

    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = make_optimizer(params, cfg.optim, T.max_steps)
    ctl = TrainControl(out, "dpo", T, cfg.train.resume, model, opt, sched)
    state = ctl.restore()
    start = int(state["step"]) if state else 0
    order = EpochOrder(len(enc_train), T.seed, state["data"] if state else None)
    log = MetricsLogger(out, report_to=T.report_to, config=to_dict(cfg))
    if not state:
        log.log(
            0,
            **{f"eval/{k}": v for k, v in before.items()},
            **({"eval/follow_rate": gen_before["follow_rate"]} if gen_before else {}),
        )
    model.train()
    bar = progress(total=T.max_steps, initial=start, desc="dpo", disable=not T.progress)
    step = start
    with ctl:
        for step in range(start + 1, T.max_steps + 1):
            idx = order.take(T.batch_size)  # reshuffled per epoch, no short batches
            batch = collate([enc_train[i] for i in idx], pad)
            ref_lp = ref.logps(idx, batch)
            pol_lp = batch_logps(model, batch, T.average_logps)  # [2B]
            B = len(idx)
            ref_lp = ref_lp.to(pol_lp.device, pol_lp.dtype)
            loss, cr, rr = dpo_loss(
                pol_lp[:B],
                pol_lp[B:],
                ref_lp[:B],
                ref_lp[B:],
                beta=T.beta,
                label_smoothing=T.label_smoothing,
                loss_type=T.loss_type,
            )
            applied, gnorm = ctl.update(step, loss, params, cfg.optim.max_grad_norm)
            sched.step()
            bar.update(1)
            if step == 1 or step % T.log_every == 0 or step == T.max_steps or not applied:
                log.log(
                    step,
                    loss=loss.item(),
                    reward_acc=(cr > rr).float().mean().item(),
                    chosen_reward=cr.mean().item(),
                    rejected_reward=rr.mean().item(),
                    margin=(cr - rr).mean().item(),
                    logp_chosen=pol_lp[:B].mean().item(),
                    logp_rejected=pol_lp[B:].mean().item(),
                    grad_norm=float(gnorm),
                    lr=sched.get_last_lr()[0],
                    **({} if applied else {"skipped": 1}),
                    **({"nonfinite_skipped": ctl.guard.skipped} if ctl.guard.skipped else {}),
                )
                bar.set_postfix(loss=f"{loss.item():.4f}", margin=f"{(cr - rr).mean().item():.3f}")
            if E.every and step % E.every == 0 and step < T.max_steps:
                ev, _ = evaluate(model, enc_held, held_ref, pad, cfg)
                log.log(step, **{f"eval/{k}": v for k, v in ev.items()})
            if ctl.end_step(step, order.state(), last=step == T.max_steps):
                break
    bar.close()
    if ctl.interrupted:
        log.close()
        return {"interrupted": True, "step": step, "message": ctl.message(step)}
    after, _ = evaluate(model, enc_held, held_ref, pad, cfg)
    gen_after = generate_eval(model, tok, held, cfg) if E.generate else None
    log.log(
        T.max_steps,
        **{f"eval/{k}": v for k, v in after.items()},
        **({"eval/follow_rate": gen_after["follow_rate"]} if gen_after else {}),
    )
    log.close()
    saved = save_policy(model, tok, cfg, out)
    summary = {
        "interrupted": False,
        # "before": the base model's own ranking (its implicit-reward accuracy is 1/2)
        "heldout_accuracy_before": before["base_logp_accuracy"],
        "heldout_accuracy": after["accuracy"],
        "base_logp_accuracy": before["base_logp_accuracy"],
        "heldout_logp_accuracy": after["logp_accuracy"],
        "base_mean_logp_accuracy": before["base_mean_logp_accuracy"],
        "heldout_mean_logp_accuracy": after["mean_logp_accuracy"],
        "heldout_margin": after["margin"],
        "n_train": len(train),
        "n_heldout": after["n"],
        "follow_rate_before": gen_before["follow_rate"] if gen_before else None,
        "follow_rate": gen_after["follow_rate"] if gen_after else None,
        "samples_before": gen_before["samples"] if gen_before else [],
        "samples_after": gen_after["samples"] if gen_after else [],
        "steps": T.max_steps,
        "nonfinite_skipped": ctl.guard.skipped,
        "saved": saved,
        "config": asdict(cfg),
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


def run(cfg: DPOConfig, args: Any = None) -> int:
    """CLI entry of ``trainkit rlhf dpo``: 0 when done, 130 after a Ctrl-C."""
    s = train_dpo(cfg)
    if s["interrupted"]:
        print(s["message"], file=sys.stderr)
        return 130
    msg = (
        f"held-out preference accuracy {s['heldout_accuracy_before']:.3f} (base model "
        f"log-probs) -> {s['heldout_accuracy']:.3f} (implicit reward) on {s['n_heldout']} pairs"
    )
    if s["follow_rate"] is not None:
        msg += (
            f"; greedy generations following '{cfg.eval.rule}' "
            f"{s['follow_rate_before']:.3f} -> {s['follow_rate']:.3f}"
        )
    print(msg + (f"; saved: {s['saved']}" if s["saved"] else ""))
    return 0
