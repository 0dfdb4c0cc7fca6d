"""``trainkit longctx extend``: the context-extension recipe of arXiv 2404.19553.

Steps (one config, ``configs/longctx/<name>.yaml``):

1. load the base model: 4-bit NF4 + LoRA (QLoRA) by default, through
   :func:`trainkit.llm.models.load_model`; ``model.full_finetune: true`` trains every
   weight in float32 instead (the tiny CPU model);
2. apply the RoPE rule (:func:`trainkit.longctx.rope.apply_rope`; the paper's is ``theta``,
   500K -> 200M for 8K -> 80K) to the config and rebuild the rotary tables in place;
3. LoRA with the paper's defaults: r=32, alpha=16 on q/k/v/o, ``embed_tokens`` trained fully;
4. train with gradient checkpointing and the chunked loss
   (:class:`trainkit.llm.loss.CausalLMLoss`: the ``[T, vocab]`` logits never exist at once),
   loss on assistant turns only, no packing, linear LR decay (the paper), until
   ``train.max_steps`` or ``train.max_seconds``;
5. merge the adapter into a full-precision copy of the base (never into NF4 weights) and
   save an HF folder that plain ``AutoModelForCausalLM.from_pretrained`` loads, with the
   rule in ``config.rope_parameters`` and ``config.trainkit_longctx``, plus
   ``trainkit_extend.json`` (steps, seconds, losses).

Data: ``data.path`` (JSONL of ``{"messages": [...]}`` from ``trainkit longctx make-data``,
or any :class:`trainkit.llm.data.DataConfig` source), or ``data.synthetic: random``:
random-filler passkey/kv samples made on the fly (:mod:`trainkit.longctx.tinydata`,
the tiny experiment), lengths uniform in ``[data.min_length, data.max_length]``.

Departures from the paper: one process (no multi-GPU); no teacher data unless given in
``data.path``; a time budget as well as a step budget.
"""

from __future__ import annotations

import json
import random
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainkit.common.errors import UserError
from trainkit.common.io import atomic_dir, atomic_write_json, copy_into
from trainkit.common.trackers import TrackerName, check_installed
from trainkit.llm.data import DataConfig
from trainkit.llm.lora import LoraSection
from trainkit.llm.sections import OptimSection, QuantModelSection
from trainkit.llm.train_control import SafetyFields


@dataclass
class ExtendModelSection(QuantModelSection):
    """The ``model:`` section of ``longctx extend``: the base model and how it is loaded.

    Attributes:
        dtype: torch dtype of the loaded (non-quantised) weights and of the full-precision base
            copy the adapter is merged into; ``auto`` = bfloat16 on a bf16 GPU, else float32.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant) to
            save memory on long sequences; ``configs/longctx/tiny_8x.yaml`` turns it off.
        quantization: bitsandbytes base quantization: nf4 (4-bit QLoRA) or int8, the base
            frozen and trained through LoRA; null: full precision; unused with
            ``model.full_finetune``.
    """

    full_finetune: bool = field(default=False, metadata={"help": "train every weight (no LoRA)"})


@dataclass
class RopeSection:
    """The ``rope:`` section: the RoPE extension rule applied before training.

    Attributes:
        method: rule (:func:`trainkit.longctx.rope.apply_rope`): ``theta`` raises rope_theta
            (the paper: 500K -> 200M), ``linear`` position interpolation, ``dynamic`` NTK,
            ``yarn``, ``llama3``; ``none`` leaves RoPE unchanged. All but theta/none need factor.
    """

    method: Literal["theta", "linear", "dynamic", "yarn", "llama3", "none"] = "theta"
    factor: float | None = field(
        default=None, metadata={"help": "extension ratio (target / original)"}
    )
    theta: float | None = field(default=None, metadata={"help": "new rope_theta for method theta"})
    original_max_position: int | None = field(
        default=None,
        metadata={"help": "pretraining length (default: the config's max_position_embeddings)"},
    )


@dataclass
class ExtendLoraSection(LoraSection):
    """LoRA defaults of the paper (sec. 2): r=32, alpha=16, q/k/v/o, embeddings trained.

    Attributes:
        enabled: not read by this recipe: LoRA is used unless ``model.full_finetune`` is true.
        r: adapter rank (the paper: 32).
        alpha: LoRA alpha; the update is scaled by ``alpha / r`` (the paper: 16, i.e. 0.5).
        dropout: dropout on the adapter input, in [0, 1); 0 as in the paper.
        target_modules: module names that get adapters (the attention projections q/k/v/o).
        modules_to_save: modules trained fully (not through LoRA) and saved; ``embed_tokens``
            as in the paper (kept tied to ``lm_head``).
    """

    enabled: bool = True
    r: int = 32
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"]
    )
    modules_to_save: list[str] = field(default_factory=lambda: ["embed_tokens"])


@dataclass
class ExtendDataSection(DataConfig):
    """The ``data:`` section: ``data.path`` records (any LLM data source) or synthetic samples.

    Attributes:
        format: record format of ``data.path``: ``auto`` (guessed from the first record's
            keys), ``chat``, ``prompt_response``, ``text`` or ``preference``.
        messages_field: record key of the chat message list (``chat`` format).
        prompt_field: record key of the prompt (``prompt_response`` / ``preference``).
        response_field: record key of the response (``prompt_response`` format).
        text_field: record key of the plain text (``text`` format, loss on every token).
        chosen_field: record key of the preferred response (``preference`` format).
        rejected_field: record key of the rejected response (``preference`` format).
        roles: message roles allowed in chat records; other roles are an error.
        add_eos: append the tokenizer's EOS token to prompt/response and text samples.
        max_length: longest sample in tokens (longer ``data.path`` samples follow
            ``data.truncation``); synthetic samples are ``min_length`` .. ``max_length`` tokens.
        eval_path: held-out file loaded as an eval split; this recipe does not evaluate it.
        eval_split: split of a saved DatasetDict read from ``eval_path``.
        eval_fraction: fraction of ``data.path`` records held out of training, in [0, 1)
            (not evaluated by this recipe); 0 = train on all.
        packing: pack several samples into rows of ``max_length`` tokens; off by default (the
            paper does not pack).
        seed: seed of the ``eval_fraction`` split (batch order and synthetic samples use the
            top-level ``seed``).
        tasks: synthetic tasks (``data.synthetic: random``), used in turn: ``passkey``, ``kv``.
        n_keys: ``[lo, hi]`` range the key-value pair count of a synthetic kv sample is drawn
            from uniformly.
        min_length: shortest synthetic sample in tokens; lengths are uniform in
            ``[min_length, max_length]``.
    """

    synthetic: Literal["", "random"] = field(
        default="",
        metadata={
            "help": "'random': passkey/kv samples made on the fly (no data.path), in the "
            "format and filler (random letters or stdlib prose) the tiny base was trained on"
        },
    )
    tasks: list[str] = field(default_factory=lambda: ["passkey", "kv"])
    n_keys: list[int] = field(default_factory=lambda: [2, 4])
    min_length: int = 256


@dataclass
class ExtendTrainSection(SafetyFields):
    """The ``train:`` section: step and time budgets, batching, the chunked loss, checkpoints (in ``output_dir/checkpoints`` until the final model replaces the folder)
    and the NaN/inf policy.

    Attributes:
        max_steps: optimiser steps to run and length of the LR schedule; 0 or less = no step
            limit (then ``max_seconds`` must be > 0).
        max_seconds: wall-clock budget in seconds, checked before each step; 0 = none.
        batch_size: samples per optimiser step (padded batch, no gradient accumulation).
        loss_chunk: tokens per chunk of the chunked cross-entropy (only ``[chunk, vocab]``
            logits exist at once); smaller saves memory.
        threads: torch CPU threads (``torch.set_num_threads``); 0 = torch default.
        log_every: print a JSON log line (loss, lr, seconds) every N steps and at step 1.
        report_to: trackers (tensorboard, wandb, mlflow, trackio) that get each step's loss,
            lr and tokens, as ``output_dir/metrics.jsonl`` (kept in the final folder).
    """

    max_steps: int = 1000
    max_seconds: float = 0.0  # 0 = no time budget
    batch_size: int = 1
    loss_chunk: int = 1024
    threads: int = 0  # 0 = torch default
    log_every: int = 10
    report_to: list[TrackerName] = field(default_factory=list)

    def validate(self) -> None:
        check_installed(self.report_to)
        super().validate()


@dataclass
class ExtendConfig:
    """Config of ``trainkit longctx extend`` (arXiv 2404.19553; see the module docstring).

    Attributes:
        seed: seed of torch (``torch.manual_seed``), the batch order and the synthetic samples.
        output_dir: folder the trained HF model (LoRA merged), tokenizer and
            ``trainkit_extend.json`` are written to, atomically.
    """

    model: ExtendModelSection = field(
        default_factory=lambda: ExtendModelSection(
            name="smollm2-135m-instruct",
            dtype="float32",
            gradient_checkpointing=True,
            quantization="nf4",
        )
    )
    rope: RopeSection = field(default_factory=RopeSection)
    lora: ExtendLoraSection = field(default_factory=ExtendLoraSection)
    data: ExtendDataSection = field(default_factory=ExtendDataSection)
    optim: OptimSection = field(  # linear decay to 0: the paper
        default_factory=lambda: OptimSection(lr=5e-5, schedule="linear")
    )
    train: ExtendTrainSection = field(default_factory=ExtendTrainSection)
    seed: int = 0
    output_dir: str = "runs/longctx/extended"

    def check(self) -> None:
        """Checks run before training (not at load time: defaults have no data)."""
        if not self.data.synthetic and not self.data.path:
            raise UserError(
                "no training data: set data.path (JSONL from `trainkit longctx make-data`) "
                "or data.synthetic=random"
            )
        if self.train.max_steps < 1 and self.train.max_seconds <= 0:
            raise UserError("set train.max_steps >= 1 or train.max_seconds > 0")
        if self.rope.method not in ("none", "theta") and self.rope.factor is None:
            raise UserError(f"rope.method={self.rope.method} needs rope.factor")


def apply_rope_inplace(model: Any, rope: RopeSection) -> dict | None:
    """Write the rule into ``model.config`` and rebuild every ``rotary_emb`` module from it.

    Returns ``config.trainkit_longctx`` (``None`` for ``method: none``).
    """
    if rope.method == "none":
        return None
    from trainkit.longctx.rope import apply_rope

    cfg = model.config
    new = apply_rope(
        cfg,
        rope.method,
        factor=rope.factor,
        theta=rope.theta,
        original_max_position=rope.original_max_position,
    )
    for k in ("rope_parameters", "max_position_embeddings", "trainkit_longctx"):
        setattr(cfg, k, getattr(new, k))
    for name, mod in list(model.named_modules()):
        if name.endswith("rotary_emb"):
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            new_mod = type(mod)(config=cfg)
            dev = next((b.device for b in mod.buffers()), None)
            setattr(
                parent, name.rsplit(".", 1)[-1], new_mod.to(dev) if dev is not None else new_mod
            )
    return cfg.trainkit_longctx


def load_for_extension(cfg: ExtendConfig):
    """``(model, tokenizer)`` ready to train: base (NF4 + LoRA by default), RoPE rule applied."""
    from trainkit.llm.models import load_model

    m = cfg.model
    if m.full_finetune:
        model, tok = load_model(
            m.name, dtype=m.dtype, gradient_checkpointing=m.gradient_checkpointing
        )
    else:
        from trainkit.llm.lora import peft_config

        lcfg = peft_config(cfg.lora)
        if hasattr(lcfg, "ensure_weight_tying"):  # embed_tokens trained and tied to lm_head
            lcfg.ensure_weight_tying = True
        model, tok = load_model(
            m.name,
            quantization=m.quantization,
            dtype=m.dtype,
            lora=lcfg,
            gradient_checkpointing=m.gradient_checkpointing,
        )
    apply_rope_inplace(model, cfg.rope)
    model.train()
    return model, tok


def batches(cfg: ExtendConfig, tok: Any, model: Any = None):
    """Endless generator of padded batches (``input_ids, attention_mask, labels``)."""
    import torch

    d, bs = cfg.data, cfg.train.batch_size
    rng = random.Random(f"extend:{cfg.seed}")
    if d.synthetic == "random":
        from trainkit.longctx import tinybase, tinydata

        fmt = tinybase.eval_section(model) if model is not None else tinybase.TinyTrainSection()
        t = tinybase.TinyTrainSection(
            tasks=list(d.tasks),
            n_keys=list(d.n_keys),
            source="prose" if fmt.source == "prose" else "random",  # the base's filler
            kv_echo=fmt.kv_echo,
            key_len=fmt.key_len,
            key_alphabet=fmt.key_alphabet,
        )
        i = 0
        while True:
            ids, att, lab = tinydata.make_batch(
                tok,
                rng,
                t,
                d.max_length,
                cfg.seed + 1,
                10**8 + i * bs,
                bs,
                min_length=min(d.min_length, d.max_length),
            )
            i += 1
            yield {"input_ids": ids, "attention_mask": att, "labels": lab}
    from trainkit.llm.collate import pad_batch
    from trainkit.llm.data import build_datasets

    ds = build_datasets(d, tok)
    order: list[int] = []
    while True:
        if len(order) < bs:
            extra = list(range(len(ds.train)))
            rng.shuffle(extra)
            order += extra
        pick, order = order[:bs], order[bs:]
        b = pad_batch([ds.train[j] for j in pick], tok.pad_token_id)
        yield {k: v if isinstance(v, torch.Tensor) else torch.tensor(v) for k, v in b.items()}


def train_loop(model: Any, tok: Any, cfg: ExtendConfig, log=print) -> dict:
    """Train ``model`` in place.

    Checkpoints (``train.save_every``, ``output_dir/checkpoints``), ``train.resume``, the
    NaN/inf policy and Ctrl-C follow :mod:`trainkit.llm.train_control`. The batches are a
    seeded stream, so a resumed run replays it up to the saved step; the time budget
    continues from the saved seconds.

    Returns:
        ``{"steps", "seconds", "tokens", "losses", "nonfinite_skipped", "interrupted"}``
        (with ``"message"`` when interrupted: a checkpoint was saved, nothing else).
    """
    import torch

    from trainkit.common.logging import MetricsLogger
    from trainkit.config import to_dict
    from trainkit.llm.loss import CausalLMLoss
    from trainkit.llm.optim import make_optimizer
    from trainkit.llm.train_control import TrainControl

    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    torch.manual_seed(cfg.seed)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise UserError("nothing to train: no parameter requires grad")
    steps_cap = t.max_steps if t.max_steps > 0 else 10**9
    opt, sched = make_optimizer(params, cfg.optim, steps_cap)
    loss_mod = CausalLMLoss(model, chunk_size=t.loss_chunk)
    dev = next(model.parameters()).device
    gen = batches(cfg, tok, model)
    ctl = TrainControl(cfg.output_dir, "extend", t, cfg.train.resume, model, opt, sched)
    state = ctl.restore() or {}
    step, tokens = int(state.get("step", 0)), int(state.get("tokens", 0))
    if sched.last_epoch != step:  # a checkpoint saved before extend kept its LR scheduler
        sched.last_epoch = step - 1
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "step() before optimizer.step()"
            sched.step()
    losses: list[float] = list(state.get("losses", []))
    for _ in range(step):  # replay the seeded stream to the saved position
        next(gen)
    t0 = time.time() - float(state.get("seconds", 0.0))
    metrics = MetricsLogger(cfg.output_dir, report_to=t.report_to, config=to_dict(cfg), lazy=True)
    with ctl, metrics:
        while step < steps_cap:
            if t.max_seconds > 0 and time.time() - t0 >= t.max_seconds:
                break
            b = {k: v.to(dev) for k, v in next(gen).items()}
            lr = sched.get_last_lr()[0]  # cfg.optim.lr * lr_factor(step, ...)
            loss_sum, n = loss_mod(**b)
            loss = loss_sum / n.clamp(min=1)
            ctl.update(step + 1, loss, params, cfg.optim.max_grad_norm)
            sched.step()
            step += 1
            tokens += (
                int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
            )
            losses.append(round(float(loss.detach()), 5))
            metrics.log(step, loss=losses[-1], lr=lr, tokens=tokens)
            if log and (step % max(1, t.log_every) == 0 or step == 1):
                log(
                    {
                        "step": step,
                        "loss": losses[-1],
                        "lr": lr,
                        "seconds": round(time.time() - t0, 1),
                    }
                )
            extra = {"seconds": time.time() - t0, "tokens": tokens, "losses": losses}
            if ctl.end_step(step, {}, extra, last=step >= steps_cap):
                break
    out = {
        "steps": step,
        "seconds": round(time.time() - t0, 2),
        "tokens": tokens,
        "losses": losses,
        "nonfinite_skipped": ctl.guard.skipped,
        "interrupted": ctl.interrupted,
    }
    if ctl.interrupted:
        out["message"] = ctl.message(step)
    return out


def save_extended(model: Any, tok: Any, cfg: ExtendConfig, out: str | Path) -> Path:
    """Save a plain HF folder: the model itself (full fine-tune) or the LoRA adapter merged
    into a full-precision copy of the base with the extended config."""
    m = cfg.model
    if m.full_finetune or not hasattr(model, "merge_and_unload"):
        with atomic_dir(out) as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            tok.save_pretrained(tmp)
            copy_into(out, tmp)  # metrics.jsonl and the trackers' runs stay with the model
        return Path(out)
    import tempfile

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from trainkit.llm.models import resolve, to_dtype

    config = model.get_base_model().config
    base_cfg = type(config).from_dict(config.to_dict())
    if hasattr(base_cfg, "quantization_config"):
        del base_cfg.quantization_config
    with tempfile.TemporaryDirectory() as adir:
        model.save_pretrained(adir, safe_serialization=True)
        base = AutoModelForCausalLM.from_pretrained(
            resolve(m.name), config=base_cfg, dtype=to_dtype(m.dtype)
        )
        merged = PeftModel.from_pretrained(base, adir).merge_and_unload()
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        copy_into(out, tmp)
    return Path(out)


def extend(cfg: ExtendConfig, log=print) -> tuple[Any, Any, dict]:
    """Load, apply the rule, train, save (see the module docstring).

    Returns:
        ``(model, tokenizer, report)``; ``report`` is also ``OUTPUT/trainkit_extend.json``.
    """
    cfg.check()
    log = log or (lambda _rec: None)
    model, tok = load_for_extension(cfg)
    from trainkit.llm.lora import trainable_parameters

    trainable, total = trainable_parameters(model)
    rec = model.config.to_dict().get("trainkit_longctx")
    log({"rope": rec, "trainable": trainable, "total": total})
    stats = train_loop(model, tok, cfg, log=log)
    if stats["interrupted"]:  # a checkpoint was saved; no model yet (train.resume=true continues)
        return model, tok, {"output_dir": str(cfg.output_dir), **stats}
    out = save_extended(model, tok, cfg, cfg.output_dir)
    from trainkit.config import to_dict

    report = {
        "output_dir": str(out),
        "rope": rec,
        "trainable_params": trainable,
        "total_params": total,
        **stats,
        "config": to_dict(cfg),
    }
    atomic_write_json(Path(out) / "trainkit_extend.json", report)
    return model, tok, report


def run(cfg: ExtendConfig, args: Any = None) -> int:
    """CLI entry of ``trainkit longctx extend``: 0 when done, 130 after a Ctrl-C."""
    _, _, report = extend(cfg, log=lambda r: print(json.dumps(r), flush=True))
    if report["interrupted"]:
        print(report["message"], file=sys.stderr)
        return 130
    keys = ("output_dir", "steps", "seconds")
    last = report["losses"][-1] if report["losses"] else None
    print(json.dumps({**{k: report[k] for k in keys}, "final_loss": last}))
    return 0
