"""Synthetic regression data for KANs, in pykan's dataset-dict format."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from trainkit.common.errors import UserError


def _ranges(ranges, n_var: int) -> torch.Tensor:
    r = torch.as_tensor(ranges, dtype=torch.float64)
    if r.shape == (2,):
        r = r.expand(n_var, 2)
    if r.shape != (n_var, 2):
        raise UserError(
            f"create_dataset: ranges must be (lo, hi) or {n_var} such pairs, got {ranges!r}"
        )
    return r


def create_dataset(
    f: Callable[[torch.Tensor], torch.Tensor],
    n_var: int = 2,
    ranges: Sequence = (-1, 1),
    train_num: int = 1000,
    test_num: int = 1000,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
    device=None,
    normalize_input: bool = False,
    normalize_label: bool = False,
) -> dict:
    """Sample inputs uniformly in ``ranges`` and label them with ``f``.

    Args:
        f: maps ``[N, n_var]`` to ``[N]`` or ``[N, n_out]`` (evaluated in float64).
        n_var: input dimension.
        ranges: ``(lo, hi)`` for all variables, or one pair per variable.
        train_num, test_num: sizes.
        seed: a private generator's seed (global RNG untouched).
        normalize_input, normalize_label: standardise with the training statistics.

    Returns:
        ``{"train_input": [train_num, n_var], "train_label": [train_num, n_out],
        "test_input": [test_num, n_var], "test_label": [test_num, n_out]}``.
    """
    r = _ranges(ranges, n_var)
    gen = torch.Generator().manual_seed(seed)

    def sample(n):
        u = torch.rand(n, n_var, generator=gen, dtype=torch.float64)
        return r[:, 0] + (r[:, 1] - r[:, 0]) * u

    xtr, xte = sample(train_num), sample(test_num)
    ytr, yte = f(xtr), f(xte)
    if ytr.dim() == 1:
        ytr, yte = ytr[:, None], yte[:, None]
    if normalize_input:
        mu, sd = xtr.mean(0), xtr.std(0)
        xtr, xte = (xtr - mu) / sd, (xte - mu) / sd
    if normalize_label:
        mu, sd = ytr.mean(0), ytr.std(0)
        ytr, yte = (ytr - mu) / sd, (yte - mu) / sd
    cast = lambda t: t.to(dtype=dtype, device=device).contiguous()
    return {
        "train_input": cast(xtr),
        "train_label": cast(ytr),
        "test_input": cast(xte),
        "test_label": cast(yte),
    }
