"""The RoPE frequency rules as pure functions, and the choice of a new base ``theta``.

:mod:`trainkit.longctx.rope` explains the rules, holds the one table of them
(:data:`~trainkit.longctx.rope.RULES`) and writes them into HF configs; this file is the
arithmetic. Every frequency function returns ``inv_freq [head_dim // 2]`` (float32).

The ``theta`` rule of "Extending Llama-3's Context Ten-Fold Overnight" (Zhang et al. 2024, arXiv
2404.19553) only raises the base (500K -> 200M for 8K -> 80K); the paper does not say how
the value was picked. Two bounds, both pure arithmetic on ``w_i = theta ** (-2 i / d)``:
:func:`suggest_theta` (NTK-aware: the slowest pair only, a lower bound) and
:func:`theta_in_range` (every pair that turned less than once in pretraining stays within
the angles it saw). docs/papers.md compares them with the paper's choice.
"""

from __future__ import annotations

import math

import torch

from trainkit.common.errors import UserError


def check_head_dim(head_dim: int) -> None:
    """UserError unless ``head_dim`` (the rotary dimension ``d``) is even and >= 2."""
    if head_dim < 2 or head_dim % 2:
        raise UserError(f"RoPE head_dim must be an even integer >= 2, got {head_dim}")


def default_inv_freq(head_dim: int, theta: float) -> torch.Tensor:
    """Plain RoPE frequencies ``w_i = theta ** (-2i/d)`` (Su et al. 2021, eq. 15).

    Also the ``theta`` rule: pass the raised base.

    Args:
        head_dim: rotary dimension ``d`` (even).
        theta: the base.

    Returns:
        ``[d/2]`` inverse frequencies, ``w_0 = 1`` down to ``theta ** (-(d-2)/d)``.
    """
    check_head_dim(head_dim)
    exponents = torch.arange(0, head_dim, 2, dtype=torch.int64).to(torch.float32) / head_dim
    return 1.0 / (theta**exponents)


def linear_inv_freq(head_dim: int, theta: float, factor: float) -> torch.Tensor:
    """Position interpolation: ``w_i / s`` (Chen et al. 2023, arXiv 2306.15595, eq. 4).

    Dividing positions by ``s`` is the same as dividing every frequency by ``s``.

    Returns:
        ``[d/2]`` inverse frequencies.
    """
    return default_inv_freq(head_dim, theta) / factor


def dynamic_inv_freq(
    head_dim: int,
    theta: float,
    factor: float,
    original_max_position: int,
    seq_len: int | None = None,
) -> torch.Tensor:
    """Dynamic NTK-aware scaling: a larger base once the sequence outgrows ``L``.

    ``theta' = theta * (s * n / L - (s - 1)) ** (d / (d - 2))`` with ``n = max(seq_len, L)``
    (the rule transformers implements as ``rope_type="dynamic"``; NTK-aware scaling by
    bloc97, made dynamic by emozilla, 2023). At ``n <= L`` the frequencies are unchanged.

    Args:
        head_dim: rotary dimension ``d``.
        theta: the pretrained base.
        factor: ``s``.
        original_max_position: ``L``, the pretraining length.
        seq_len: current length ``n`` (``None`` means ``L``).

    Returns:
        ``[d/2]`` inverse frequencies.
    """
    check_head_dim(head_dim)
    n = original_max_position if seq_len is None else max(int(seq_len), original_max_position)
    scaled = theta * ((factor * n / original_max_position) - (factor - 1)) ** (
        head_dim / (head_dim - 2)
    )
    return default_inv_freq(head_dim, scaled)


def yarn_attention_scale(factor: float) -> float:
    """YaRN's temperature: ``sqrt(1/t) = 0.1 ln(s) + 1`` (Peng et al. 2023, eq. 22).

    It multiplies ``cos`` and ``sin``, so both ``q`` and ``k`` — the attention logits
    are scaled by its square. ``1.0`` for ``s <= 1``.
    """
    return 1.0 if factor <= 1 else 0.1 * math.log(factor) + 1.0


def _yarn_pair_index(
    rotations: float, head_dim: int, theta: float, original_max_position: int
) -> float:
    """Pair index ``i`` whose wavelength fits ``rotations`` times into ``L``.

    Solves ``L / lambda_i = rotations`` for ``i``:
    ``i = d * ln(L / (2 pi r)) / (2 ln theta)``.
    """
    return (
        head_dim
        * math.log(original_max_position / (rotations * 2 * math.pi))
        / (2 * math.log(theta))
    )


def yarn_inv_freq(
    head_dim: int,
    theta: float,
    factor: float,
    original_max_position: int,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    truncate: bool = True,
) -> tuple[torch.Tensor, float]:
    """YaRN ("NTK-by-parts" + temperature), Peng et al. 2023, arXiv 2309.00071, sec. 3.2-3.4.

    Pairs that rotate more than ``beta_fast`` times within ``L`` keep their frequency
    (extrapolate), pairs that rotate less than ``beta_slow`` times are interpolated
    (``w_i / s``), and a linear ramp over the pair index blends the two:

        lo = floor(i(beta_fast)), hi = ceil(i(beta_slow))   (see :func:`_yarn_pair_index`)
        gamma_i = clamp((i - lo) / (hi - lo), 0, 1)
        w'_i = gamma_i * w_i / s + (1 - gamma_i) * w_i

    The ramp in pair-index space with floor/ceil is the form of the YaRN reference code
    (and transformers); ``truncate=False`` skips the rounding.

    Returns:
        ``([d/2] inverse frequencies, attention scale 0.1 ln s + 1)``.
    """
    base = default_inv_freq(head_dim, theta)
    lo = _yarn_pair_index(beta_fast, head_dim, theta, original_max_position)
    hi = _yarn_pair_index(beta_slow, head_dim, theta, original_max_position)
    if truncate:
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, head_dim - 1)
    if lo == hi:
        hi += 0.001  # a one-point ramp would divide by zero
    idx = torch.arange(head_dim // 2, dtype=torch.float32)
    gamma = torch.clamp((idx - lo) / (hi - lo), 0.0, 1.0)  # 0 = keep, 1 = interpolate
    inv = gamma * (base / factor) + (1.0 - gamma) * base
    return inv, yarn_attention_scale(factor)


def llama3_inv_freq(
    head_dim: int,
    theta: float,
    factor: float,
    original_max_position: int,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
) -> torch.Tensor:
    """The Llama-3.1 rule (Meta's reference ``apply_scaling``; Llama 3 herd paper, 2024).

    With ``lambda_i = 2 pi / w_i``, ``lambda_low = L / low_freq_factor`` and
    ``lambda_high = L / high_freq_factor`` (Llama-3.1: ``s=8, low=1, high=4, L=8192``):

        lambda_i < lambda_high            -> w_i            (high frequencies kept)
        lambda_i > lambda_low             -> w_i / s        (low frequencies interpolated)
        otherwise, mu = (L / lambda_i - low_freq_factor) / (high_freq_factor - low_freq_factor)
                                          -> (1 - mu) w_i / s + mu w_i

    Returns:
        ``[d/2]`` inverse frequencies.
    """
    if high_freq_factor <= low_freq_factor:
        raise UserError(
            f"llama3 rope: high_freq_factor ({high_freq_factor}) must exceed "
            f"low_freq_factor ({low_freq_factor})"
        )
    base = default_inv_freq(head_dim, theta)
    wavelen = 2 * math.pi / base
    low_wl = original_max_position / low_freq_factor
    high_wl = original_max_position / high_freq_factor
    mu = (original_max_position / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smooth = (1 - mu) * base / factor + mu * base
    out = torch.where(wavelen > low_wl, base / factor, base)
    medium = (wavelen >= high_wl) & (wavelen <= low_wl)
    return torch.where(medium, smooth, out)


def _stretch(name: str, target_len: int, original_len: int) -> float:
    """``s = target_len / original_len`` for the theta helpers; both lengths must be positive."""
    if original_len <= 0 or target_len <= 0:
        raise UserError(f"{name}: lengths must be positive, got {original_len} -> {target_len}")
    return target_len / original_len


def suggest_theta(target_len: int, head_dim: int, base_theta: float, original_len: int) -> float:
    """A base ``theta`` for extending ``original_len`` -> ``target_len`` by the ``theta`` rule.

    Rule (NTK-aware): keep the ratio of the *lowest* frequency's wavelength to the context
    length. That wavelength is ``2 pi theta^((d-2)/d)``; asking it to grow by
    ``s = target_len / original_len`` gives

        theta' = theta * s ** (d / (d - 2)).

    Positions at ``s * L`` then reach, on the slowest pair, the same fraction of a turn as
    ``L`` did before, while the fastest pair (``w_0 = 1``) is untouched. For
    Llama-3-8B (``d=128``, ``theta=5e5``, 8K -> 80K) this gives ~5.2e6; the paper chose the
    far larger 2e8, which also shrinks angles of mid frequencies — treat the result as a
    lower bound and raise it when fine-tuning is cheap. For ``s <= 1`` the base is returned.

    Args:
        target_len: wanted context length ``L'``.
        head_dim: rotary dimension ``d`` (even, > 2).
        base_theta: pretrained base ``theta``.
        original_len: pretraining context length ``L``.

    Returns:
        The suggested base (a float).
    """
    check_head_dim(head_dim)
    if head_dim <= 2:
        raise UserError("suggest_theta needs head_dim > 2")
    s = _stretch("suggest_theta", target_len, original_len)
    if s <= 1:
        return float(base_theta)
    return float(base_theta * s ** (head_dim / (head_dim - 2)))


def theta_in_range(target_len: int, head_dim: int, base_theta: float, original_len: int) -> float:
    """The smallest base ``theta`` that keeps every *partially seen* rotary pair in range.

    A pair ``i`` whose wavelength ``2 pi theta^(2i/d)`` exceeds ``original_len`` turns less
    than once in pretraining, so the model saw only the angles ``[0, L w_i]``. Raising the base
    to ``theta'`` keeps those angles at ``s L`` (``s = target_len / original_len``) when
    ``w'_i <= w_i / s``, i.e. ``theta' >= theta * s ** (d / (2 i))``; the first partially seen
    pair ``i_min`` sets the bound:

        theta' = theta * s ** (d / (2 i_min)).

    Pairs that turn at least once (short wavelengths) saw every angle and need nothing. Far
    above :func:`suggest_theta`, which only keeps the slowest pair: for Llama-3-8B 8K -> 80K
    it gives ~3.4e7 (``i_min`` = 35 of 64) where the paper chose 2e8; for the tiny CPU
    experiment (``d=32``, 1e4, 256 -> 2048) ~1.2e6, where theta x8 left kv retrieval at 0.65
    and 1e6 reached 0.95 with the same fine-tune (docs/RESULTS.md). For ``s <= 1`` the base
    is returned.
    """
    check_head_dim(head_dim)
    s = _stretch("theta_in_range", target_len, original_len)
    if s <= 1:
        return float(base_theta)
    half = head_dim // 2
    partial = [
        i for i in range(half) if 2 * math.pi * base_theta ** (2 * i / head_dim) > original_len
    ]
    if not partial:  # every pair turned at least once
        return float(base_theta)
    if partial[0] == 0:
        raise UserError(
            f"theta_in_range: original_len {original_len} is shorter than one turn of the "
            "fastest pair (2 pi)"
        )
    return float(base_theta * s ** (head_dim / (2 * partial[0])))
