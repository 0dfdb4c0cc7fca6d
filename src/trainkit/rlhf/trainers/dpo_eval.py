"""Evaluation of the DPO recipe (:mod:`trainkit.rlhf.trainers.dpo`): held-out preference
accuracy and margin of the implicit reward, and greedy generations checked by a
verifiable rule (``eval.rule``)."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from trainkit.rlhf.trainers.pairs import batch_logps, chat_prompt, collate


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


def evaluate(
    model: Any,
    encoded: list[dict],
    ref_lp: list[tuple[float, float]] | None,
    pad_id: int,
    cfg: Any,
) -> tuple[dict, list[tuple[float, float]]]:
    """Held-out preference accuracy (ties 1/2) and mean implicit-reward margin.

    Args:
        ref_lp: reference log-probs per pair; ``None`` means "the policy is the
            reference" (before training): they are computed and returned.

    Returns:
        ``(metrics, ref_lp)``.
    """
    import torch

    was = model.training
    model.eval()
    pol = []
    with torch.no_grad():
        for i in range(0, len(encoded), cfg.eval.batch_size):
            chunk = encoded[i : i + cfg.eval.batch_size]
            lp = batch_logps(model, collate(chunk, pad_id), cfg.train.average_logps).float().cpu()
            pol += [(float(lp[j]), float(lp[len(chunk) + j])) for j in range(len(chunk))]
    model.train(was)
    if ref_lp is None:
        ref_lp = pol
    if not pol:
        return {"accuracy": float("nan"), "margin": float("nan"), "n": 0}, ref_lp
    p, r = torch.tensor(pol), torch.tensor(ref_lp)
    rewards = cfg.train.beta * (p - r)  # [n, 2]: chosen, rejected
    c, j = rewards[:, 0], rewards[:, 1]
    acc = ((c > j).float() + 0.5 * (c == j).float()).mean().item()
    return {
        "accuracy": acc,
        "margin": (c - j).mean().item(),
        "chosen": c.mean().item(),
        "rejected": j.mean().item(),
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
