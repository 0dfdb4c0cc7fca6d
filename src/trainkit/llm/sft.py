"""The SFT recipe: ``trainkit rlhf sft --config configs/rlhf/sft_smollm2.yaml``.

Read top to bottom: build (strategy, model, data, optimizer, schedule), resume, loop
(micro-batches -> token-normalised backward -> clip + step -> log -> eval -> checkpoint),
save. The config dataclasses are in :mod:`trainkit.llm.sft_config` (importable from here).

Reliability: a step whose loss or gradient norm is NaN/inf is never applied
(``train.nonfinite=skip`` drops it, counts it and warns, stopping after
``train.max_nonfinite`` in a row; ``stop`` stops at the first), and the first Ctrl-C
finishes the current step, saves a checkpoint and returns with ``interrupted=True``
(the CLI exits with 130); ``train.resume=true`` then continues exactly.

Loss normalisation: one optimizer step sees ``train.batch_size`` sequences split over
``world_size`` ranks and ``accum`` micro-batches per rank. Each micro-batch's loss *sum*
is scaled by ``world_size / T`` where ``T`` is the number of target tokens of the whole
step (all micro-batches, all ranks; one all-reduce before the first backward). FSDP
averages gradients over ranks, so the update is the gradient of the token-level mean
over the step, whatever the micro-batch size and rank count (OpenRLHF and TRL average
per micro-batch instead, which weights short sequences more).
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from trainkit.common.errors import UserError
from trainkit.llm.data import DataConfig
from trainkit.llm.optim import lr_factor  # re-exported: the SFT schedule
from trainkit.llm.sft_config import ModelSection, OptimSection, SFTConfig, TrainSection

__all__ = [
    "ModelSection",
    "OptimSection",
    "SFTConfig",
    "TrainSection",
    "evaluate",
    "lr_factor",
    "run",
    "train",
]


def _check(cfg: SFTConfig, world: int) -> int:
    t = cfg.train
    if t.max_steps < 1:
        raise UserError(f"train.max_steps must be >= 1, got {t.max_steps}")
    per = t.micro_batch_size * world
    if t.micro_batch_size < 1 or t.batch_size % per:
        raise UserError(
            f"train.batch_size ({t.batch_size}) must be a multiple of "
            f"train.micro_batch_size ({t.micro_batch_size}) x world size ({world})"
        )
    if t.max_nonfinite < 1:
        raise UserError(f"train.max_nonfinite must be >= 1, got {t.max_nonfinite}")
    if cfg.model.quantization and not cfg.lora.enabled:
        raise UserError("model.quantization needs lora.enabled=true (a quantised base is frozen)")
    return t.batch_size // per


def _to(batch: dict, device) -> dict:
    return {k: v.to(device) for k, v in batch.items()}


def _target_count(batch: dict) -> int:
    from trainkit.llm.loss import IGNORE_INDEX

    return int((batch["labels"][:, 1:] != IGNORE_INDEX).sum())


def _input_count(batch: dict) -> int:
    """Real (non-padding) input tokens of a collated batch; packed rows count in full."""
    if "attention_mask" in batch:
        return int(batch["attention_mask"].sum())
    return int(batch["input_ids"].numel())


def evaluate(module, strategy, samples: list[dict], batch_size: int, pad_id: int) -> float:
    """Token-level mean loss over ``samples``, sharded over ranks; collective."""
    import torch

    from trainkit.llm.collate import IGNORE_INDEX, collate

    world, rank = strategy.world_size, strategy.rank
    per_round = batch_size * world
    rounds = -(-len(samples) // per_round)
    total = torch.zeros(2, dtype=torch.float64)
    was_training = module.training
    module.eval()
    with torch.no_grad():
        for r in range(rounds):
            chunk = samples[r * per_round : (r + 1) * per_round][
                rank * batch_size : (rank + 1) * batch_size
            ]
            if not chunk:  # every rank must run the same number of forwards under FSDP
                chunk = [{**samples[0], "labels": [IGNORE_INDEX] * len(samples[0]["labels"])}]
            with strategy.autocast():
                ls, n = module(**_to(collate(chunk, pad_id), strategy.device))
            total += torch.tensor([float(ls), float(n)], dtype=torch.float64)
    module.train(was_training)
    total = strategy.all_reduce_sum(total)
    return float(total[0] / total[1].clamp_min(1))


def train(cfg: SFTConfig, on_step: Callable[[int, dict], None] | None = None) -> dict:
    """Run SFT; returns ``{"output_dir", "records", "final_eval_loss", ...}``.

    ``on_step(step, record)`` is called after each logged step (tests use it to stop).
    """
    import torch
    from transformers.utils import logging as hf_logging

    from trainkit.common.logging import MetricsLogger, progress
    from trainkit.common.run import save_config
    from trainkit.common.seed import seed_everything
    from trainkit.config import to_dict
    from trainkit.llm.collate import ResumableSampler, collate, pad_token_id
    from trainkit.llm.data import build_datasets
    from trainkit.llm.demo_data import resolve_data_path
    from trainkit.llm.loss import CausalLMLoss
    from trainkit.llm.models import load_model
    from trainkit.llm.optim import make_optimizer
    from trainkit.llm.strategy import make_strategy
    from trainkit.llm.train_control import TrainControl

    # the weight-loading bar would put a second line before a one-line data/config error
    hf_logging.disable_progress_bar()
    strategy = make_strategy(cfg.train.strategy, cfg.train.mixed_precision, cfg.train.device)
    strategy.setup()
    accum = _check(cfg, strategy.world_size)
    out = Path(cfg.output_dir)
    seed_everything(cfg.train.seed)

    model, tok = load_model(
        cfg.model.name,
        quantization=cfg.model.quantization,
        lora=cfg.lora if cfg.lora.enabled else None,
        dtype=cfg.model.dtype,
        gradient_checkpointing=cfg.model.gradient_checkpointing,
    )
    eval_path = cfg.data.eval_path
    if cfg.data.path == "builtin:toy-chat" and not eval_path and not cfg.data.eval_fraction:
        eval_path = "builtin:toy-chat-eval"  # the built-in data brings its held-out split
    data_cfg = DataConfig(
        **{
            **cfg.data.__dict__,
            "path": resolve_data_path(cfg.data.path),
            "eval_path": resolve_data_path(eval_path),
        }
    )
    ds = build_datasets(data_cfg, tok)
    if ds.kind != "sft":
        raise UserError(
            f"{cfg.data.path}: SFT needs chat/prompt_response/text data, got {ds.format}"
        )
    pad_id = pad_token_id(tok)

    module = strategy.wrap(CausalLMLoss(model, cfg.train.loss_chunk_size))
    module.train()
    params = [p for p in module.parameters() if p.requires_grad]
    o = cfg.optim
    optimizer, scheduler = make_optimizer(params, o, cfg.train.max_steps)
    drop_last = len(ds.train) >= cfg.train.batch_size
    sampler = ResumableSampler(
        len(ds.train), cfg.train.batch_size, seed=cfg.train.seed, drop_last=drop_last
    )

    ctl = TrainControl(
        out,
        "sft",
        cfg.train,
        cfg.train.resume,
        module,
        optimizer,
        scheduler,
        strategy,
        save_last=True,
    )
    step = 0
    state = ctl.restore()
    if state is not None:
        sampler.load_state_dict(state["data"])
        step = int(state["step"])
    if strategy.is_main:
        out.mkdir(parents=True, exist_ok=True)
        for tmp in [*out.glob(".final.*"), *out.glob(".merged.*")]:  # a killed final save
            shutil.rmtree(tmp, ignore_errors=True)
        save_config(cfg, out / "config.yaml")
    logger = MetricsLogger(
        out if strategy.is_main else None,
        tensorboard=cfg.train.tensorboard,
        report_to=cfg.train.report_to,
        config=to_dict(cfg),
    )
    bar = progress(
        total=cfg.train.max_steps,
        initial=step,
        desc="sft",
        disable=not (cfg.train.progress and strategy.is_main),
    )
    per_rank = cfg.train.batch_size // strategy.world_size
    mbs = cfg.train.micro_batch_size
    t_start, start_step = time.perf_counter(), step
    eval_loss = initial_eval_loss = None
    interrupted = False
    with ctl:
        if ds.eval and step == 0:
            eval_loss = initial_eval_loss = evaluate(
                module, strategy, ds.eval, cfg.train.eval_batch_size, pad_id
            )
            logger.log(0, eval_loss=eval_loss)
        while step < cfg.train.max_steps:
            t0 = time.perf_counter()
            idx = sampler.next_batch()
            mine = idx[strategy.rank * per_rank : (strategy.rank + 1) * per_rank]
            micro = [
                collate([ds.train[i] for i in mine[j : j + mbs]], pad_id)
                for j in range(0, len(mine), mbs)
            ]
            assert len(micro) == accum
            counts = torch.tensor(
                [[_target_count(b), _input_count(b)] for b in micro], dtype=torch.float64
            ).sum(0)
            counts = strategy.all_reduce_sum(counts)
            n_targets, n_inputs = max(float(counts[0]), 1.0), float(counts[1])
            loss_sum = torch.zeros((), dtype=torch.float64)
            for b in micro:
                with strategy.autocast():
                    ls, _ = module(**_to(b, strategy.device))
                strategy.backward(ls * (strategy.world_size / n_targets))
                loss_sum += float(ls.detach())
            lr = scheduler.get_last_lr()[0]
            loss = float(strategy.all_reduce_sum(loss_sum)) / n_targets
            # clip, then let the guard veto the update: a NaN/inf never reaches the weights
            grad_norm = strategy.clip_grad_norm(module, o.max_grad_norm)
            apply = ctl.apply(step + 1, loss, grad_norm)
            if apply:
                optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()  # a skipped step still advances the schedule: lr depends on step
            step += 1
            dt = time.perf_counter() - t0
            rate = (time.perf_counter() - t_start) / max(1, step - start_step)
            rec = {
                "loss": loss,
                "lr": lr,
                "grad_norm": grad_norm,
                "tokens": int(n_inputs),
                "tokens_per_s": n_inputs / max(dt, 1e-9),
                "eta_s": round(rate * (cfg.train.max_steps - step), 1),
            }
            if not apply:
                rec["skipped"] = 1
            if ctl.guard.skipped:
                rec["nonfinite_skipped"] = ctl.guard.skipped
            last_step = step == cfg.train.max_steps
            if ds.eval and (
                (cfg.train.eval_every and step % cfg.train.eval_every == 0) or last_step
            ):
                eval_loss = evaluate(module, strategy, ds.eval, cfg.train.eval_batch_size, pad_id)
                rec["eval_loss"] = eval_loss
            rec = logger.log(step, **rec)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            # every rank agrees to stop (Ctrl-C may reach only some of them), then saves
            interrupted = ctl.end_step(step, sampler.state_dict(), last=last_step)
            if on_step is not None:
                on_step(step, rec)
            if interrupted:
                break
    bar.close()
    logger.close()
    if interrupted:
        strategy.barrier()
        result = {
            "output_dir": str(out),
            "final": None,
            "merged": None,
            "interrupted": True,
            "step": step,
            "checkpoint": ctl.last_checkpoint(),
            "records": [r for r in logger.records if r["step"] > 0],
            "initial_eval_loss": initial_eval_loss,
            "final_eval_loss": eval_loss,
            "nonfinite_skipped": ctl.guard.skipped,
            "data_stats": ds.stats,
            "world_size": strategy.world_size,
            "is_main": strategy.is_main,
        }
        strategy.teardown()
        return result

    final = out / "final"
    strategy.save_pretrained(module, final, tokenizer=tok)
    merged = None
    if cfg.lora.enabled and cfg.train.merge_lora and strategy.is_main:
        from trainkit.llm.merge import merge_adapter

        merged = merge_adapter(final, out / "merged")
    strategy.barrier()
    result = {
        "output_dir": str(out),
        "final": str(final),
        "merged": str(merged) if merged else None,
        "records": [r for r in logger.records if r["step"] > 0],
        "initial_eval_loss": initial_eval_loss,
        "final_eval_loss": eval_loss,
        "interrupted": False,
        "step": step,
        "nonfinite_skipped": ctl.guard.skipped,
        "data_stats": ds.stats,
        "world_size": strategy.world_size,
        "is_main": strategy.is_main,
    }
    strategy.teardown()
    return result


def run(cfg: SFTConfig, args: Any = None) -> int:
    """CLI entry: ``trainkit rlhf sft --config X.yaml key=value ...``.

    Returns:
        0 when training finished; 130 after a Ctrl-C (a checkpoint was saved).

    Raises:
        UserError: too many non-finite steps (one line, exit code 2).
    """
    from trainkit.common.guard import NonFiniteError

    try:
        res = train(cfg)
    except NonFiniteError as e:
        raise UserError(str(e)) from None
    recs = res["records"]
    if res["interrupted"]:
        if res["is_main"]:
            print(
                f"sft: interrupted after step {res['step']}; checkpoint {res['checkpoint']}; "
                "continue with train.resume=true",
                file=sys.stderr,
            )
        return 130
    if recs and res["is_main"]:
        last = recs[-1]
        msg = f"sft: {len(recs)} steps, loss {last['loss']:.4f}"
        if res["final_eval_loss"] is not None:
            msg += f", eval loss {res['final_eval_loss']:.4f}"
        print(f"{msg}; saved {res['final']}")
    return 0
