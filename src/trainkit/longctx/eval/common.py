"""Shared evaluation loop: prompt, greedy decoding, scoring, grid summaries.

A retrieval task is evaluated on a grid of context lengths x answer depths with
``samples`` haystacks per cell (made by :func:`trainkit.longctx.tasks.make_sample`;
the sample index depends only on the seed, length, depth and sample number, so a cell is
the same whatever else is on the grid). The model answers by greedy decoding.
"""

from __future__ import annotations

from typing import Any

from trainkit.longctx.eval.scoring import score
from trainkit.longctx.haystack import Meter
from trainkit.longctx.tasks import make_sample


def prompt_ids(tokenizer: Any, user_text: str) -> list[int]:
    """Token ids of one user turn: the chat template with the generation prompt when the
    tokenizer has one, else ``user_text + "\\n"`` (base models)."""
    if getattr(tokenizer, "chat_template", None):
        out = tokenizer.apply_chat_template(
            [{"role": "user", "content": user_text}], add_generation_prompt=True, tokenize=True
        )
        if hasattr(out, "keys") and "input_ids" in out:
            out = out["input_ids"]
        return list(out)
    return list(tokenizer(user_text + "\n")["input_ids"])


def greedy_answer(model: Any, tokenizer: Any, user_text: str, max_new_tokens: int) -> str:
    """Greedy continuation of the prompt, special tokens removed, stripped."""
    import torch

    ids = torch.tensor([prompt_ids(tokenizer, user_text)], device=model.device)
    with torch.inference_mode():
        out = model.generate(
            ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def cell_index(length: int, depth: float, s: int) -> int:
    """Sample index of grid cell ``(length, depth)``, sample ``s``."""
    return (int(length) * 1001 + int(round(depth * 1000))) * 1000 + s


def summarize(rows: list[dict], lengths: list[int], depths: list[float]) -> dict:
    """``{"accuracy", "by_length", "by_depth", "grid", "n"}`` from per-sample rows.

    ``accuracy`` is the mean over grid cells (each cell the mean of its samples);
    ``grid[str(length)][str(depth)]`` is a cell's mean.
    """
    grid: dict[str, dict[str, float]] = {}
    for L in lengths:
        grid[str(L)] = {}
        for d in depths:
            vals = [r["score"] for r in rows if r["length_target"] == L and r["depth_target"] == d]
            grid[str(L)][str(d)] = sum(vals) / len(vals) if vals else float("nan")
    cells = [v for row in grid.values() for v in row.values() if v == v]
    by_length = {str(L): sum(grid[str(L)].values()) / len(depths) for L in lengths}
    by_depth = {str(d): sum(grid[str(L)][str(d)] for L in lengths) / len(lengths) for d in depths}
    return {
        "accuracy": sum(cells) / len(cells) if cells else float("nan"),
        "by_length": by_length,
        "by_depth": by_depth,
        "grid": grid,
        "n": len(rows),
    }


def run_grid(
    model: Any,
    tokenizer: Any,
    task: str,
    lengths: list[int],
    depths: list[float],
    *,
    seed: int,
    samples: int = 1,
    meter: Meter | None = None,
    scorer: str = "contains",
    max_new_tokens: int = 0,
    options: dict | None = None,
) -> tuple[dict, list[dict]]:
    """Evaluate ``task`` on the grid; returns ``(summary, rows)`` (see :func:`summarize`).

    ``max_new_tokens=0`` means the answer's token count plus 8.
    """
    meter = meter or Meter(tokenizer)
    rows = []
    for L in lengths:
        for d in depths:
            for s in range(samples):
                rec = make_sample(
                    task,
                    seed=seed,
                    index=cell_index(L, d, s),
                    length=L,
                    depth=d,
                    meter=meter,
                    **(options or {}),
                )
                answer = rec["meta"]["answer"]
                n_new = (
                    max_new_tokens
                    or len(tokenizer(answer, add_special_tokens=False)["input_ids"]) + 8
                )
                pred = greedy_answer(model, tokenizer, rec["messages"][0]["content"], n_new)
                rows.append(
                    {
                        "task": task,
                        "length_target": L,
                        "depth_target": d,
                        "sample": s,
                        "length": rec["meta"]["length"],
                        "depth": rec["meta"]["depth"],
                        "answer": answer,
                        "prediction": pred,
                        "score": score(pred, answer, scorer),
                    }
                )
    return summarize(rows, lengths, depths), rows
