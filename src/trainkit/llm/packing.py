"""Sample packing for SFT: several samples per row, no attention across samples.

A packed row concatenates samples ``s_1 .. s_m`` (total length <= ``max_length``) with
``position_ids = [0..len(s_1)-1, 0..len(s_2)-1, ...]``. The label of each sample's first
token is set to ``-100``: after the causal shift it would be predicted from the previous
sample's last token, which the unpacked sample never does, so a packed row has exactly the
loss terms of its samples run one by one.

Attention: Hugging Face Llama / Qwen2 (transformers 5.x) detect a packed row from
``position_ids`` when ``attention_mask`` is ``None`` and no KV cache is used (pass
``use_cache=False``): SDPA / eager get a block-diagonal causal mask, flash-attention 2
gets ``cu_seqlens``. :func:`block_causal_mask` builds the same mask explicitly as a 4-D
additive tensor for models that do not.
"""

from __future__ import annotations

import bisect

from trainkit.llm.collate import IGNORE_INDEX


def pack_samples(samples: list[dict], max_length: int) -> tuple[list[dict], dict]:
    """Pack SFT samples into rows of at most ``max_length`` tokens (best-fit decreasing).

    Deterministic: ties keep the input order. Rows come out in the order they were opened.

    Args:
        samples: ``{"input_ids": [T_i], "labels": [T_i]}`` with ``T_i <= max_length``.
        max_length: row capacity in tokens.

    Returns:
        ``(rows, stats)``: rows with ``input_ids``, ``labels``, ``position_ids`` (each
        ``[sum T_i]``); stats ``{"samples", "rows", "fill"}`` where ``fill`` is the
        fraction of the ``rows * max_length`` token slots in use.
    """
    order = sorted(range(len(samples)), key=lambda i: (-len(samples[i]["input_ids"]), i))
    bins: list[list[int]] = []
    free: list[tuple[int, int]] = []  # sorted (space left, bin number)
    for i in order:
        n = len(samples[i]["input_ids"])
        if n > max_length:
            raise ValueError(f"sample {i} has {n} tokens > max_length {max_length}; truncate first")
        k = bisect.bisect_left(free, (n, -1))
        if k < len(free):
            space, b = free.pop(k)
        else:
            space, b = max_length, len(bins)
            bins.append([])
        bins[b].append(i)
        bisect.insort(free, (space - n, b))
    rows = []
    tokens = 0
    for members in bins:
        row = {"input_ids": [], "labels": [], "position_ids": []}
        for i in members:
            s = samples[i]
            n = len(s["input_ids"])
            row["input_ids"] += list(s["input_ids"])
            row["labels"] += [IGNORE_INDEX] + list(s["labels"][1:])
            row["position_ids"] += list(range(n))
            tokens += n
        rows.append(row)
    fill = tokens / (len(rows) * max_length) if rows else 0.0
    return rows, {"samples": len(samples), "rows": len(rows), "fill": round(fill, 4)}


def segment_ids(position_ids):
    """Which packed sample each token belongs to: a new segment wherever positions do not step by 1.

    Args:
        position_ids: ``[B, L]`` long tensor.

    Returns:
        ``[B, L]`` long tensor, 0 for the first segment of each row, then 1, 2, ...
    """
    import torch

    step = torch.diff(position_ids, dim=-1, prepend=position_ids[:, :1] - 1)
    return (step != 1).long().cumsum(-1)


def block_causal_mask(position_ids, dtype=None):
    """Explicit 4-D mask for packed rows: causal within a segment, nothing across.

    Args:
        position_ids: ``[B, L]`` positions restarting at 0 at every packed sample.
        dtype: float dtype of the additive mask (default ``torch.float32``).

    Returns:
        ``[B, 1, L, L]`` additive mask: 0 where query ``q`` may attend key ``k``
        (same segment and ``k <= q``), the dtype's minimum elsewhere. Pass it as
        ``attention_mask`` to HF models (eager and SDPA accept 4-D masks as given).
    """
    import torch

    dtype = dtype or torch.float32
    seg = segment_ids(position_ids)
    L = position_ids.shape[-1]
    causal = torch.ones(L, L, dtype=torch.bool, device=position_ids.device).tril()
    allowed = (seg[:, :, None] == seg[:, None, :]) & causal
    mask = torch.zeros(allowed.shape, dtype=dtype, device=position_ids.device)
    mask.masked_fill_(~allowed, torch.finfo(dtype).min)
    return mask[:, None]
