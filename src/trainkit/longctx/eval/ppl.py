"""Short-context perplexity on held-out real text.

The text is the docstrings of the stdlib modules held out from every haystack
(:func:`trainkit.longctx.haystack.is_heldout`), concatenated in order, tokenized and cut
into ``windows`` non-overlapping windows of ``length`` tokens. With ``N`` predicted
tokens and ``log p`` the model's log-probability of each next token,

    ppl = exp(-(1/N) sum log p(x_t | x_<t)).

Checks that extension kept short-context ability (the paper's MMLU check, sec. 3).
"""

from __future__ import annotations

import math
from typing import Any

from trainkit.common.errors import UserError
from trainkit.longctx.haystack import stdlib_paragraphs


def heldout_windows(tokenizer: Any, length: int = 256, windows: int = 16) -> list[list[int]]:
    """``windows`` lists of ``length`` token ids from the held-out text."""
    text = "\n\n".join(p for _, p in stdlib_paragraphs("heldout"))
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    n = min(windows, len(ids) // length)
    if n == 0:
        raise UserError(f"held-out text has {len(ids)} tokens, fewer than ppl length {length}")
    return [ids[i * length : (i + 1) * length] for i in range(n)]


def perplexity(
    model: Any, tokenizer: Any, length: int = 256, windows: int = 16, batch_size: int = 4
) -> dict:
    """``{"ppl", "nll", "tokens", "length", "windows"}`` of ``model`` on held-out text."""
    import torch
    import torch.nn.functional as F

    wins = heldout_windows(tokenizer, length, windows)
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, len(wins), batch_size):
            ids = torch.tensor(wins[i : i + batch_size], device=model.device)  # [b, length]
            logits = model(input_ids=ids).logits[:, :-1].float()  # [b, length-1, vocab]
            nll = F.cross_entropy(
                logits.reshape(-1, logits.shape[-1]), ids[:, 1:].reshape(-1), reduction="sum"
            )
            total += float(nll)
            count += ids[:, 1:].numel()
    mean = total / count
    return {
        "ppl": math.exp(mean),
        "nll": mean,
        "tokens": count,
        "length": length,
        "windows": len(wins),
    }
