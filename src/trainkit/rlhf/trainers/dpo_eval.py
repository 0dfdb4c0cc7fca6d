"""Evaluation of the DPO recipe (:mod:`trainkit.rlhf.trainers.dpo`): held-out preference
accuracy and margin of the implicit reward, the log-probability ranking of the pairs by
the model itself, and greedy generations checked by a verifiable rule (``eval.rule``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from trainkit.rlhf.trainers.pairs import IGNORE, batch_logps, chat_prompt, collate


# ----------------------------------------------------------------- verifiable rules
def _number_only(gen: str, rec: dict) -> bool:
    return re.fullmatch(r"\s*-?\d+(\.\d+)?\s*", gen) is not None


def _match_chosen(gen: str, rec: dict) -> bool:
    return gen.strip() == rec["chosen"].strip()


def _not_rejected_prefix(gen: str, rec: dict) -> bool:
    return not gen.strip().startswith(rec["rejected"].strip()[:8])


#: name -> ``rule(generation, record) -> bool`` (the preferred behaviour is followed).
RULES: dict[str, Callable[[str, dict], bool]] = {
    "number_only": _number_only,
    "match_chosen": _match_chosen,
    "not_rejected_prefix": _not_rejected_prefix,
}


def logp_accuracy(pairs: list[tuple[float, float]]) -> float:
    """Fraction of pairs whose chosen response has the higher log-prob (ties count 1/2).

    ``mean_i [logp_c,i > logp_r,i] + 1/2 [logp_c,i == logp_r,i]`` over ``pairs`` of
    ``(logp_chosen, logp_rejected)``; NaN when there are none. With the untrained
    model's summed log-probs this is the base model's preference accuracy: the honest
    "before" of DPO, whose implicit-reward accuracy is 1/2 by construction at step 0.
    """
    if not pairs:
        return float("nan")
    return sum(1.0 if c > r else 0.5 if c == r else 0.0 for c, r in pairs) / len(pairs)


def _pair_logps(model: Any, encoded: list[dict], pad_id: int, cfg: Any):
    """``(summed, per_token_mean)`` per-pair ``(chosen, rejected)`` log-probs of the
    responses."""
    import torch

    was = model.training
    model.eval()
    summed, means = [], []
    with torch.no_grad():
        for i in range(0, len(encoded), cfg.eval.batch_size):
            chunk = encoded[i : i + cfg.eval.batch_size]
            batch = collate(chunk, pad_id)
            lp = batch_logps(model, batch, average=False).float().cpu()  # [2B]
            mean = lp / (batch["labels"] != IGNORE).sum(1).clamp(min=1)  # per response token
            B = len(chunk)
            summed += [(float(lp[j]), float(lp[B + j])) for j in range(B)]
            means += [(float(mean[j]), float(mean[B + j])) for j in range(B)]
    model.train(was)
    return summed, means


def evaluate(
    model: Any,
    encoded: list[dict],
    ref_lp: list[tuple[float, float]] | None,
    pad_id: int,
    cfg: Any,
) -> tuple[dict, list[tuple[float, float]]]:
    """Held-out preference accuracy (ties 1/2), mean implicit-reward margin, and the
    model's own preference accuracy (:func:`logp_accuracy`) by summed log-probs
    (``logp_accuracy``) and by per-token mean log-probs (``mean_logp_accuracy``: free of
    the sum's preference for shorter responses).

    Args:
        ref_lp: reference log-probs per pair; ``None`` means "the policy is the
            reference" (before training): they are computed and returned, and the
            log-prob accuracies are named ``base_logp_accuracy`` and
            ``base_mean_logp_accuracy``.

    Returns:
        ``(metrics, ref_lp)``.
    """
    import torch

    summed, means = _pair_logps(model, encoded, pad_id, cfg)
    pol = means if cfg.train.average_logps else summed  # what the implicit reward uses
    pre = "base_" if ref_lp is None else ""
    if ref_lp is None:
        ref_lp = pol
    ranks = {
        f"{pre}logp_accuracy": logp_accuracy(summed),
        f"{pre}mean_logp_accuracy": logp_accuracy(means),
    }
    if not pol:
        nan = float("nan")
        return {"accuracy": nan, "margin": nan, **ranks, "n": 0}, ref_lp
    p, r = torch.tensor(pol), torch.tensor(ref_lp)
    rewards = cfg.train.beta * (p - r)  # [n, 2]: chosen, rejected
    c, j = rewards[:, 0], rewards[:, 1]
    acc = ((c > j).float() + 0.5 * (c == j).float()).mean().item()
    return {
        "accuracy": acc,
        "margin": (c - j).mean().item(),
        "chosen": c.mean().item(),
        "rejected": j.mean().item(),
        **ranks,
        "n": len(pol),
    }, ref_lp


def generate_eval(model: Any, tok: Any, recs: list[dict], cfg: Any) -> dict:
    """Greedy generations on held-out prompts; the fraction that follows ``eval.rule``."""
    import torch

    rule = RULES[cfg.eval.rule]
    recs = recs[: cfg.eval.num_prompts]
    if not recs:
        return {"follow_rate": float("nan"), "samples": []}
    was = model.training
    model.eval()
    dev = next(model.parameters()).device
    old_side = tok.padding_side
    tok.padding_side = "left"
    gens: list[str] = []
    try:
        for i in range(0, len(recs), cfg.eval.batch_size):
            prompts = [chat_prompt(tok, r["prompt"]) for r in recs[i : i + cfg.eval.batch_size]]
            enc = tok(prompts, add_special_tokens=False, padding=True, return_tensors="pt")
            with torch.no_grad():
                out = model.generate(
                    input_ids=enc["input_ids"].to(dev),
                    attention_mask=enc["attention_mask"].to(dev),
                    do_sample=False,
                    max_new_tokens=cfg.eval.max_new_tokens,
                    pad_token_id=tok.pad_token_id,
                    eos_token_id=tok.eos_token_id,
                )
            new = out[:, enc["input_ids"].shape[1] :]
            gens += tok.batch_decode(new, skip_special_tokens=True)
    finally:
        tok.padding_side = old_side
        model.train(was)
    ok = [rule(g, r) for g, r in zip(gens, recs)]
    return {
        "follow_rate": sum(ok) / len(ok),
        "samples": [
            {"prompt": r["prompt"], "generation": g, "follows": o}
            for r, g, o in zip(recs[:8], gens[:8], ok[:8])
        ],
    }
