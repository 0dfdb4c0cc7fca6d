"""Reward-model training: ``trainkit rlhf rm --config configs/rlhf/rm_tiny.yaml``.

A pairwise (Bradley-Terry) reward model as in OpenRLHF (Hu et al. 2024, arXiv 2405.11143)
and InstructGPT: a transformer backbone plus a scalar head
(:class:`trainkit.llm.value_head.ValueHeadModel`) scores the *last non-pad token* of
``chat_template(prompt) + response``; the loss is ``-log sigmoid(r_c - r_r - m)``
(:func:`trainkit.rlhf.losses.pairwise_rm_loss`) on ``{"prompt","chosen","rejected"}``
records. The recipe reads top to bottom: build, loop, log, evaluate, save.

Outputs in ``output_dir``: ``config.yaml``, ``metrics.jsonl``, ``summary.json`` and
``model/``, a ``<Arch>ForSequenceClassification`` folder (num_labels=1) that
``transformers.AutoModelForSequenceClassification`` loads. With
``train.normalize_reward`` the mean and std of the rewards over the training set are
recorded in ``model/config.json`` (``reward_mean``, ``reward_std``,
``normalize_reward``) and :func:`score_texts` returns ``(r - mean) / std``.

Departures from OpenRLHF: the scoring text has no trailing EOS token (so the score sits
on the last response token, which is also what HF ``*ForSequenceClassification`` picks
when ``pad_token == eos_token``); sequences longer than ``data.max_len`` are truncated on
the left, keeping the response end that is scored.
"""

from __future__ import annotations

import json
import sys
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainkit.common.errors import UserError
from trainkit.llm.lora import LoraSection, peft_config
from trainkit.llm.optim import make_optimizer
from trainkit.llm.sections import ModelSection, OptimSection, TrainFields
from trainkit.rlhf.trainers.pairs import (
    chat_prompt,
    check_lora_targets,
    load_split,
)
from trainkit.rlhf.trainers.pairs import read_pairs as read_pairs  # re-exported


# ----------------------------------------------------------------------------- config
@dataclass
class DataSection:
    """The ``data`` section: preference pairs ``{prompt, chosen, rejected}`` (jsonl, json,
    parquet; strings or message lists, or chosen/rejected sharing an implicit prompt).

    Attributes:
        eval_fraction: with ``path`` set and no ``eval_path``: fraction in [0, 1) of the pairs
            held out for eval (at least one; seeded by ``train.seed``); 0: no held-out pairs.
    """

    path: str = field(
        default="",
        metadata={
            "help": "jsonl of {prompt, chosen, rejected}; empty: generate the built-in "
            "format-following preference data into output_dir"
        },
    )
    eval_path: str = field(
        default="", metadata={"help": "held-out jsonl; empty: hold out eval_fraction of path"}
    )
    eval_fraction: float = 0.1
    max_len: int = field(
        default=256,
        metadata={
            "help": "tokens per sequence (rm: left-truncated; dpo: prompt cut from the left to max_prompt_len, responses cut at the right)"
        },
    )
    limit: int = field(default=0, metadata={"help": "use only the first N train pairs (0: all)"})
    generate_n: int = field(default=600, metadata={"help": "pairs generated when path is empty"})
    generate_heldout: int = field(default=100, metadata={"help": "held-out pairs generated"})
    task: str = field(
        default="arithmetic_number_only",
        metadata={"help": "built-in task of the generated pairs (trainkit.rlhf.tasks.PRESETS)"},
    )
    kind: Literal["format", "answer", "mixed"] = field(
        default="format",
        metadata={
            "help": "generated preference: format (bare number over a wordy reply), answer "
            "(right over wrong number) or mixed"
        },
    )
    input_key: str = field(
        default="prompt", metadata={"help": "record key of the prompt (OpenRLHF's name)"}
    )
    chosen_key: str = field(default="chosen", metadata={"help": "record key of the chosen answer"})
    rejected_key: str = field(
        default="rejected", metadata={"help": "record key of the rejected answer"}
    )


@dataclass
class TrainSection(TrainFields):
    """The ``train`` section: steps, batching, loss, logging, checkpoints, NaN policy.

    Attributes:
        max_steps: optimizer steps (>= 0; 0: only evaluate and save the untrained model).
        seed: seeds Python, NumPy and torch, the held-out split, generated data and the
            batch order (pairs reshuffled every epoch).
        log_every: write train metrics (loss, acc, margin, grad_norm, lr) every N steps
            and at the last step.
        loss: sigmoid: ``-log sigmoid(r_c - r_r - margin)`` (OpenRLHF PairWiseLoss); logexp:
            ``log(1 + exp(r_r - r_c))`` (OpenRLHF LogExpLoss; ignores ``margin``).
        progress: show a progress bar.
    """

    max_steps: int = 200
    batch_size: int = field(default=8, metadata={"help": "preference pairs per step"})
    log_every: int = 10
    loss: Literal["sigmoid", "logexp"] = "sigmoid"
    margin: float = field(default=0.0, metadata={"help": "m in -log sigmoid(r_c - r_r - m)"})
    normalize_reward: bool = field(
        default=False,
        metadata={
            "help": "record train-set reward mean/std in the saved config and normalise scores"
        },
    )


@dataclass
class EvalSection:
    """The ``eval`` section: held-out pairwise accuracy, margin and loss.

    Attributes:
        batch_size: pairs per forward pass when evaluating (and when computing the
            ``normalize_reward`` statistics).
    """

    every: int = field(default=0, metadata={"help": "held-out eval every N steps (0: end only)"})
    batch_size: int = 16
    max_pairs: int = field(default=0, metadata={"help": "cap on held-out pairs (0: all)"})


@dataclass
class RMConfig:
    """Config of ``trainkit rlhf rm``: a pairwise (Bradley-Terry) reward model.

    Attributes:
        output_dir: run folder: config.yaml, metrics.jsonl, summary.json, model/ (a
            ``*ForSequenceClassification`` folder) and data/ when the pairs are generated.
    """

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=1e-4, schedule="constant"))
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    output_dir: str = "runs/rm"

    def validate(self) -> None:
        if self.train.max_steps < 0 or self.train.batch_size < 1:
            raise UserError("train.max_steps must be >= 0 and train.batch_size >= 1")
        if not 0.0 <= self.data.eval_fraction < 1.0:
            raise UserError(f"data.eval_fraction must be in [0, 1), got {self.data.eval_fraction}")


def encode_texts(tok: Any, texts: list[str], max_len: int) -> dict:
    """Tokenise full texts for scoring: right-padded, left-truncated to ``max_len``.

    Returns ``{"input_ids", "attention_mask"}``, each ``[batch, T]``.
    """
    old = tok.truncation_side
    tok.truncation_side = "left"
    try:
        enc = tok(
            texts,
            add_special_tokens=False,
            padding=True,
            truncation=True,
            max_length=max_len,
            return_tensors="pt",
        )
    finally:
        tok.truncation_side = old
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"]}


def pair_texts(tok: Any, pairs: list[dict]) -> list[str]:
    """``[chosen_0..chosen_{B-1}, rejected_0..rejected_{B-1}]`` full texts (2B)."""
    heads = [chat_prompt(tok, r["prompt"]) for r in pairs]
    return [h + r["chosen"] for h, r in zip(heads, pairs)] + [
        h + r["rejected"] for h, r in zip(heads, pairs)
    ]


# --------------------------------------------------------------------------- model
def build_model(cfg: RMConfig):
    """``(ValueHeadModel, tokenizer)``; the backbone is LoRA-wrapped when enabled."""
    from trainkit.llm.models import load_tokenizer
    from trainkit.llm.value_head import ValueHeadModel

    tok = load_tokenizer(cfg.model.name)
    model = ValueHeadModel.from_pretrained(cfg.model.name, dtype=cfg.model.dtype)
    if cfg.lora.enabled:
        from peft import get_peft_model

        check_lora_targets(model.backbone, cfg.lora)
        model.backbone = get_peft_model(model.backbone, peft_config(cfg.lora, task_type=None))
        for p in model.score_head.parameters():
            p.requires_grad_(True)
    if cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    return model, tok


def batch_scores(model: Any, tok: Any, texts: list[str], max_len: int) -> Any:
    """Scores ``[len(texts)]`` of full texts (grad flows when enabled)."""
    dev = next(model.parameters()).device
    enc = encode_texts(tok, texts, max_len)
    return model.score(enc["input_ids"].to(dev), enc["attention_mask"].to(dev))


def evaluate(model: Any, tok: Any, pairs: list[dict], max_len: int, batch_size: int) -> dict:
    """Held-out pairwise accuracy (ties count 1/2), mean margin and loss."""
    import torch
    import torch.nn.functional as F

    was = model.training
    model.eval()
    ch, rj = [], []
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            chunk = pairs[i : i + batch_size]
            s = batch_scores(model, tok, pair_texts(tok, chunk), max_len)
            ch.append(s[: len(chunk)])
            rj.append(s[len(chunk) :])
    model.train(was)
    if not ch:
        return {"accuracy": float("nan"), "margin": float("nan"), "loss": float("nan"), "n": 0}
    c, r = torch.cat(ch), torch.cat(rj)
    acc = ((c > r).float() + 0.5 * (c == r).float()).mean().item()
    return {
        "accuracy": acc,
        "margin": (c - r).mean().item(),
        "loss": -F.logsigmoid(c - r).mean().item(),
        "n": len(c),
    }


def reward_stats(
    model: Any, tok: Any, pairs: list[dict], max_len: int, batch_size: int
) -> tuple[float, float]:
    """Mean and std of the rewards of every chosen and rejected text in ``pairs``."""
    import torch

    model.eval()
    vals = []
    with torch.no_grad():
        for i in range(0, len(pairs), batch_size):
            vals.append(
                batch_scores(model, tok, pair_texts(tok, pairs[i : i + batch_size]), max_len)
            )
    v = torch.cat(vals)
    return v.mean().item(), max(v.std().item(), 1e-6) if len(v) > 1 else 1.0


# --------------------------------------------------------------------------- recipe
def train_rm(cfg: RMConfig, on_model: Callable[[Any], None] | None = None) -> dict:
    """Train a reward model; returns the summary (also written to ``summary.json``).

    Checkpoints, ``train.resume``, the NaN/inf policy and Ctrl-C follow
    :mod:`trainkit.llm.train_control`; after a Ctrl-C the summary is
    ``{"interrupted": True, "step", "message"}`` and no model is written.

    Args:
        cfg: the recipe config.
        on_model: called with the freshly built model before training (tests snapshot
            its parameters through it).
    """
    import torch

    from trainkit.common.io import atomic_write_json
    from trainkit.common.logging import MetricsLogger, progress
    from trainkit.common.run import save_config
    from trainkit.common.seed import seed_everything
    from trainkit.config import to_dict
    from trainkit.llm.train_control import EpochOrder, TrainControl
    from trainkit.rlhf.losses import pairwise_rm_loss, pairwise_rm_loss_logexp

    out = Path(cfg.output_dir)
    seed_everything(cfg.train.seed)
    model, tok = build_model(cfg)  # inputs first: a bad model or data leaves no run folder
    train, held = load_split(cfg.data, cfg.train.seed, out)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    if torch.cuda.is_available():
        model.cuda()
    if on_model is not None:
        on_model(model)
    params = [p for p in model.parameters() if p.requires_grad]
    opt, sched = make_optimizer(params, cfg.optim, cfg.train.max_steps)
    L, E, T = cfg.data.max_len, cfg.eval, cfg.train
    held_eval = held[: E.max_pairs] if E.max_pairs else held

    before = evaluate(model, tok, held_eval, L, E.batch_size)
    ctl = TrainControl(out, "rm", T, cfg.train.resume, model, opt, sched)
    state = ctl.restore()
    start = int(state["step"]) if state else 0
    order = EpochOrder(len(train), T.seed, state["data"] if state else None)
    log = MetricsLogger(out, report_to=T.report_to, config=to_dict(cfg))
    if not state:
        log.log(0, **{f"eval/{k}": v for k, v in before.items()})
    model.train()
    bar = progress(total=T.max_steps, initial=start, desc="rm", disable=not T.progress)
    step = start
    with ctl:
        for step in range(start + 1, T.max_steps + 1):
            idx = order.take(T.batch_size)  # reshuffled per epoch, no short batches
            pairs = [train[i] for i in idx]
            s = batch_scores(model, tok, pair_texts(tok, pairs), L)  # [2B]
            c, r = s[: len(pairs)], s[len(pairs) :]
            if T.loss == "logexp":
                loss = pairwise_rm_loss_logexp(c, r)
            else:
                loss = pairwise_rm_loss(c, r, T.margin or None)
            applied, gnorm = ctl.update(step, loss, params, cfg.optim.max_grad_norm)
            sched.step()
            bar.update(1)
            if step % T.log_every == 0 or step == T.max_steps or not applied:
                rec = log.log(
                    step,
                    loss=loss.item(),
                    acc=(c > r).float().mean().item(),
                    margin=(c - r).mean().item(),
                    chosen=c.mean().item(),
                    rejected=r.mean().item(),
                    grad_norm=float(gnorm),
                    lr=sched.get_last_lr()[0],
                    **({} if applied else {"skipped": 1}),
                    **({"nonfinite_skipped": ctl.guard.skipped} if ctl.guard.skipped else {}),
                )
                bar.set_postfix(loss=f"{loss.item():.3f}", acc=f"{rec['acc']:.2f}")
            if E.every and step % E.every == 0 and step < T.max_steps:
                ev = evaluate(model, tok, held_eval, L, E.batch_size)
                log.log(step, **{f"eval/{k}": v for k, v in ev.items()})
            if ctl.end_step(step, order.state(), last=step == T.max_steps):
                break
    bar.close()
    if ctl.interrupted:
        log.close()
        return {"interrupted": True, "step": step, "message": ctl.message(step)}
    after = evaluate(model, tok, held_eval, L, E.batch_size)
    log.log(T.max_steps, **{f"eval/{k}": v for k, v in after.items()})
    log.close()

    save_model = model
    if cfg.lora.enabled:
        save_model.backbone = model.backbone.merge_and_unload()
    bcfg = save_model.backbone.config
    if T.normalize_reward:
        mean, std = reward_stats(model, tok, train, L, E.batch_size)
        bcfg.normalize_reward, bcfg.reward_mean, bcfg.reward_std = True, mean, std
    else:
        bcfg.normalize_reward, bcfg.reward_mean, bcfg.reward_std = False, 0.0, 1.0
    save_model.save_pretrained(out / "model", tokenizer=tok)
    summary = {
        "interrupted": False,
        "heldout_accuracy_before": before["accuracy"],
        "heldout_accuracy": after["accuracy"],
        "heldout_margin": after["margin"],
        "heldout_loss": after["loss"],
        "n_train": len(train),
        "n_heldout": after["n"],
        "steps": T.max_steps,
        "nonfinite_skipped": ctl.guard.skipped,
        "reward_mean": bcfg.reward_mean,
        "reward_std": bcfg.reward_std,
        "model_dir": str(out / "model"),
        "config": asdict(cfg),
    }
    atomic_write_json(out / "summary.json", summary)
    return summary


def run(cfg: RMConfig, args: Any = None) -> int:
    """CLI entry of ``trainkit rlhf rm``: 0 when done, 130 after a Ctrl-C (checkpoint saved)."""
    s = train_rm(cfg)
    if s["interrupted"]:
        print(s["message"], file=sys.stderr)
        return 130
    print(
        f"held-out pairwise accuracy {s['heldout_accuracy_before']:.3f} -> "
        f"{s['heldout_accuracy']:.3f} on {s['n_heldout']} pairs; model: {s['model_dir']}"
    )
    return 0


# --------------------------------------------------------------------------- scoring
def score_texts(
    model_dir: str | Path, *, batch_size: int = 16, max_len: int = 1024, device: str | None = None
) -> Callable[[list[str]], list[float]]:
    """Load a saved reward model; return ``score(texts) -> rewards`` (thread-safe).

    Each text is a full ``chat_template(prompt) + response`` string (what the RM was
    trained on, e.g. a decoded rollout). With ``normalize_reward`` in the saved config
    the rewards are ``(r - reward_mean) / reward_std``.

    Args:
        model_dir: a folder written by :func:`train_rm` (or any ``ValueHeadModel`` save).
        batch_size: texts per forward pass.
        max_len: tokens per text (left-truncated).
        device: ``"cpu"``, ``"cuda"``...; default CUDA when available.
    """
    import torch

    from trainkit.llm.models import load_tokenizer
    from trainkit.llm.value_head import ValueHeadModel

    path = Path(model_dir)
    if not (path / "config.json").is_file():
        raise UserError(f"reward model folder {path} has no config.json")
    meta = json.loads((path / "config.json").read_text())
    mean = float(meta.get("reward_mean", 0.0)) if meta.get("normalize_reward") else 0.0
    std = float(meta.get("reward_std", 1.0)) if meta.get("normalize_reward") else 1.0
    tok = load_tokenizer(path)
    model = ValueHeadModel.from_pretrained(path)
    dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
    model.to(dev).eval()
    lock = threading.Lock()

    def score(texts: list[str]) -> list[float]:
        out: list[float] = []
        with lock, torch.no_grad():
            for i in range(0, len(texts), batch_size):
                s = batch_scores(model, tok, list(texts[i : i + batch_size]), max_len)
                out += [(float(v) - mean) / std for v in s.float().cpu()]
        return out  # NaN/inf pass through: the server answers null for those

    score.normalized = bool(meta.get("normalize_reward"))  # type: ignore[attr-defined]
    return score
