"""RoPE context-extension rules: inverse frequencies, attention scaling, HF configs.

Rotary position embedding (RoPE, Su et al. 2021, arXiv 2104.09864) rotates each pair
``i`` of a head's ``d`` channels by angle ``m * w_i`` at position ``m``, with

    w_i = theta ** (-2 i / d),   i = 0 .. d/2 - 1,        wavelength  lambda_i = 2 pi / w_i.

A model pretrained on ``L`` tokens has only seen angles ``m * w_i`` for ``m < L``. Every
rule below changes ``w`` so that a longer context ``L' = s * L`` (``s`` = ``factor``) maps
to angles the model can cope with:

* ``theta``   - raise the base ``theta`` (the method of "Extending Llama-3's Context
  Ten-Fold Overnight", Zhang et al. 2024, arXiv 2404.19553: 500K -> 200M for 8K -> 80K).
* ``linear``  - position interpolation, ``w_i / s`` (Chen et al. 2023, arXiv 2306.15595).
* ``dynamic`` - dynamic NTK-aware scaling: the base grows with the current length
  (bloc97 / emozilla, 2023; the formula of transformers' ``dynamic`` rope_type).
* ``yarn``    - NTK-by-parts interpolation plus attention temperature
  ``0.1 ln s + 1`` (Peng et al. 2023, arXiv 2309.00071).
* ``llama3``  - the Llama-3.1 rule: low frequencies divided by ``s``, high ones kept,
  a smooth blend between (Meta, Llama 3.1 reference code, 2024).

:func:`apply_rope` writes the rule into a transformers 5.x config
(``config.rope_parameters``) so that the extended model reloads with plain
``AutoConfig`` / ``AutoModelForCausalLM``; what trainkit did is also kept in
``config.trainkit_longctx`` (method, factor, original length, base theta).

:data:`RULES` is the one table of these rules (name -> frequency function, saved
``rope_type``, required arguments, source); :func:`rope_frequencies`, :func:`apply_rope`,
:func:`config_frequencies`, the ``rope.method`` / ``rope_method`` config checks and the
table in docs/papers.md all follow it (tests/longctx/test_rope_rules.py checks they agree).
The frequency functions themselves are in :mod:`trainkit.longctx.rope_math` and re-exported
here.

Choosing the new base for ``theta``: :func:`suggest_theta` (NTK-aware: the slowest pair
only, a lower bound) and :func:`theta_in_range` (every pair that turned less than once in
pretraining stays within the angles it saw; what the paper's large bases do).

All frequency functions return ``inv_freq`` of shape ``[head_dim // 2]`` (float32) and,
where the rule has one, the attention scale multiplied into ``cos``/``sin``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from trainkit.common.errors import UserError
from trainkit.common.markdown import table, yes_no
from trainkit.longctx.rope_math import (
    default_inv_freq,
    dynamic_inv_freq,
    linear_inv_freq,
    llama3_inv_freq,
    suggest_theta,
    theta_in_range,
    yarn_attention_scale,
    yarn_inv_freq,
)

__all__ = [  # the frequency functions live in rope_math; callers find them here
    "METHODS",
    "RULES",
    "RopeRule",
    "apply_rope",
    "config_frequencies",
    "default_inv_freq",
    "dynamic_inv_freq",
    "head_dim_of",
    "linear_inv_freq",
    "llama3_inv_freq",
    "markdown_table",
    "rope_frequencies",
    "rule",
    "suggest_theta",
    "target_length",
    "theta_in_range",
    "yarn_attention_scale",
    "yarn_inv_freq",
]


# ---- the one table of rules ------------------------------------------------------------
# Each rule is three small functions: its frequencies from the call's arguments, the
# transformers ``rope_parameters`` it is saved as, and its frequencies read back from those.
def _theta_freqs(d, theta, factor, orig, seq_len, new_theta, **options):
    if new_theta is None and factor == 1.0:
        return default_inv_freq(d, theta), 1.0
    if new_theta is None:
        if orig is None:
            raise UserError(
                "rope method 'theta' needs new_theta, or factor and original_max_position"
            )
        new_theta = suggest_theta(target_length(orig, factor), d, theta, orig)
    return default_inv_freq(d, new_theta), 1.0


def _yarn_params(factor, theta, orig, o):
    return {
        "rope_type": "yarn",
        "factor": float(factor),
        "rope_theta": theta,
        "original_max_position_embeddings": orig,
        "beta_fast": float(o["beta_fast"]),
        "beta_slow": float(o["beta_slow"]),
    }


def _llama3_params(factor, theta, orig, o):
    return {
        "rope_type": "llama3",
        "factor": float(factor),
        "rope_theta": theta,
        "original_max_position_embeddings": orig,
        "low_freq_factor": float(o["low_freq_factor"]),
        "high_freq_factor": float(o["high_freq_factor"]),
    }


def _yarn_from_config(d, p, max_pos, seq_len):
    b_fast, b_slow = p.get("beta_fast") or 32.0, p.get("beta_slow") or 1.0
    orig = p["original_max_position_embeddings"]
    return yarn_inv_freq(
        d, p["rope_theta"], p["factor"], orig, b_fast, b_slow, p.get("truncate", True)
    )


def _llama3_from_config(d, p, max_pos, seq_len):
    orig, lo, hi = (
        p[k] for k in ("original_max_position_embeddings", "low_freq_factor", "high_freq_factor")
    )
    return llama3_inv_freq(d, p["rope_theta"], p["factor"], orig, lo, hi), 1.0


@dataclass(frozen=True)
class RopeRule:
    """One row of :data:`RULES`.

    Attributes:
        rope_type: the ``rope_parameters["rope_type"]`` the rule is saved as.
        needs_factor: ``factor`` (``s``) is required; the ``theta`` rule takes a new base
            instead (``theta=``, or ``factor`` for :func:`suggest_theta`).
        needs_original: the rule reads the pretraining length ``L``.
        keeps_length: the saved ``max_position_embeddings`` stays ``L`` (the rule scales
            with the current length at run time) instead of becoming ``round(s L)``.
        frequencies: ``(d, theta, factor, L, seq_len, new_theta, **options) -> (inv_freq
            [d/2], attention scale)``, used by :func:`rope_frequencies`.
        hf_params: ``(factor, base theta, L, options) -> rope_parameters``; the ``theta``
            rule's entry is filled in by :func:`apply_rope`, which computes the new base.
        from_config: ``(d, rope_parameters, max_position_embeddings, seq_len) -> (inv_freq,
            scale)``, used by :func:`config_frequencies`.
        summary, paper: the rule in words and its source (docs/papers.md shows the table).
    """

    rope_type: str
    needs_factor: bool
    needs_original: bool
    keeps_length: bool
    frequencies: Callable[..., tuple[torch.Tensor, float]]
    hf_params: Callable[..., dict[str, Any]]
    from_config: Callable[..., tuple[torch.Tensor, float]]
    summary: str
    paper: str


def _scaled_params(rope_type):
    return lambda factor, theta, orig, o: {
        "rope_type": rope_type,
        "factor": float(factor),
        "rope_theta": theta,
    }


RULES: dict[str, RopeRule] = {
    "theta": RopeRule(
        rope_type="default",
        needs_factor=False,
        needs_original=False,
        keeps_length=False,
        frequencies=_theta_freqs,
        hf_params=lambda factor, theta, orig, o: {"rope_type": "default", "rope_theta": theta},
        from_config=lambda d, p, max_pos, seq_len: (default_inv_freq(d, p["rope_theta"]), 1.0),
        summary="raise the base theta (given, or suggest_theta for the factor)",
        paper="Zhang et al. 2024, arXiv 2404.19553 (Llama-3 8K -> 80K: 500K -> 200M)",
    ),
    "linear": RopeRule(
        rope_type="linear",
        needs_factor=True,
        needs_original=False,
        keeps_length=False,
        frequencies=lambda d, theta, factor, orig, seq_len, new_theta, **o: (
            linear_inv_freq(d, theta, factor),
            1.0,
        ),
        hf_params=_scaled_params("linear"),
        from_config=lambda d, p, max_pos, seq_len: (
            linear_inv_freq(d, p["rope_theta"], p["factor"]),
            1.0,
        ),
        summary="position interpolation: every frequency / s",
        paper="Chen et al. 2023, arXiv 2306.15595",
    ),
    "dynamic": RopeRule(
        rope_type="dynamic",
        needs_factor=True,
        needs_original=True,
        keeps_length=True,
        frequencies=lambda d, theta, factor, orig, seq_len, new_theta, **o: (
            dynamic_inv_freq(d, theta, factor, orig, seq_len),
            1.0,
        ),
        hf_params=_scaled_params("dynamic"),
        from_config=lambda d, p, max_pos, seq_len: (
            dynamic_inv_freq(d, p["rope_theta"], p["factor"], max_pos, seq_len),
            1.0,
        ),
        summary="NTK-aware base that grows with the current length beyond L",
        paper="bloc97 / emozilla 2023 (transformers' dynamic rope_type)",
    ),
    "yarn": RopeRule(
        rope_type="yarn",
        needs_factor=True,
        needs_original=True,
        keeps_length=False,
        frequencies=lambda d, theta, factor, orig, seq_len, new_theta, **o: yarn_inv_freq(
            d, theta, factor, orig, **o
        ),
        hf_params=_yarn_params,
        from_config=_yarn_from_config,
        summary="NTK-by-parts ramp between kept and interpolated pairs, attention x (0.1 ln s + 1)",
        paper="Peng et al. 2023, arXiv 2309.00071",
    ),
    "llama3": RopeRule(
        rope_type="llama3",
        needs_factor=True,
        needs_original=True,
        keeps_length=False,
        frequencies=lambda d, theta, factor, orig, seq_len, new_theta, **o: (
            llama3_inv_freq(d, theta, factor, orig, **o),
            1.0,
        ),
        hf_params=_llama3_params,
        from_config=_llama3_from_config,
        summary="low frequencies / s, high ones kept, a smooth blend between",
        paper="Llama 3.1 (Meta 2024, arXiv 2407.21783; reference apply_scaling)",
    ),
}

#: rule names, in table order (``rope.method`` of ``longctx extend`` adds ``none``)
METHODS: tuple[str, ...] = tuple(RULES)


def rule(method: str) -> RopeRule:
    """The row of ``method``; a one-line UserError naming the valid ones otherwise."""
    if method not in RULES:
        raise UserError(f"unknown rope method '{method}'; expected one of {', '.join(METHODS)}")
    return RULES[method]


def markdown_table() -> str:
    """:data:`RULES` as Markdown (docs/papers.md holds this text verbatim; a test checks it)."""
    return table(
        [
            "`rope.method`",
            "transformers `rope_type`",
            "needs `rope.factor`",
            "what it does",
            "source",
        ],
        (
            [f"`{n}`", f"`{r.rope_type}`", yes_no(r.needs_factor), r.summary, r.paper]
            for n, r in RULES.items()
        ),
    )


def rope_frequencies(
    method: str,
    head_dim: int,
    theta: float,
    *,
    factor: float = 1.0,
    original_max_position: int | None = None,
    seq_len: int | None = None,
    new_theta: float | None = None,
    **options: Any,
) -> tuple[torch.Tensor, float]:
    """``(inv_freq [d/2], attention_scale)`` of any rule, by name (see :data:`RULES`).

    ``theta`` is the pretrained base; the ``theta`` rule uses ``new_theta`` (or
    :func:`suggest_theta` for ``factor``). ``options`` go to the rule's function
    (``beta_fast``, ``beta_slow``, ``low_freq_factor``, ``high_freq_factor``, ``truncate``).
    """
    if method == "default":
        return default_inv_freq(head_dim, theta), 1.0
    r = rule(method)
    if r.needs_original and original_max_position is None:
        raise UserError(f"rope method '{method}' needs original_max_position")
    return r.frequencies(
        head_dim, theta, factor, original_max_position, seq_len, new_theta, **options
    )


def target_length(original_max_position: int, factor: float) -> int:
    """The extended context ``round(L * s)`` that every rule and the saved config use.

    One rounding for all callers (``int()`` would make ``3000 * 2.3`` 6899, not 6900).
    """
    return int(round(original_max_position * factor))


def head_dim_of(config: Any) -> int:
    """Rotary dimension of an HF config (``head_dim`` or ``hidden_size // heads``)."""
    hd = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    prf = (config.rope_parameters or {}).get("partial_rotary_factor", 1.0) or 1.0
    return int(hd * prf)


def apply_rope(
    config: Any,
    method: str,
    *,
    factor: float | None = None,
    theta: float | None = None,
    original_max_position: int | None = None,
    beta_fast: float = 32.0,
    beta_slow: float = 1.0,
    low_freq_factor: float = 1.0,
    high_freq_factor: float = 4.0,
) -> Any:
    """A copy of HF ``config`` extended by ``method`` (``config`` itself is not changed).

    Writes ``config.rope_parameters`` in the transformers 5.x schema for the rule, sets
    ``max_position_embeddings`` to ``original * factor`` (except ``dynamic``, whose
    transformers implementation reads ``max_position_embeddings`` as the pretraining
    length and scales beyond it), and records
    ``config.trainkit_longctx = {method, factor, original_max_position_embeddings,
    base_rope_theta, rope_theta, target_max_position_embeddings}``, saved in config.json.

    Args:
        config: a transformers config with RoPE (e.g. ``LlamaConfig``) whose
            ``rope_type`` is ``"default"`` (a base model).
        method: one of ``theta``, ``linear``, ``dynamic``, ``yarn``, ``llama3``.
        factor: extension ratio ``s``; required except for ``theta`` given ``theta``.
        theta: new base for the ``theta`` rule (default: :func:`suggest_theta`).
        original_max_position: pretraining length ``L`` (default: the config's
            ``max_position_embeddings``).
        beta_fast, beta_slow: YaRN ramp bounds (rotations within ``L``).
        low_freq_factor, high_freq_factor: Llama-3.1 rule bounds.

    Returns:
        The updated config copy.

    Raises:
        UserError: unknown method, missing/invalid factor, or an already-scaled config.
    """
    r = rule(method)
    cfg = copy.deepcopy(config)
    if hasattr(cfg, "standardize_rope_params"):
        cfg.standardize_rope_params()
    params = dict(getattr(cfg, "rope_parameters", None) or {})
    if "rope_theta" not in params:
        raise UserError(f"config of type {type(cfg).__name__} has no rope_parameters.rope_theta")
    if params.get("rope_type", "default") != "default":
        raise UserError(
            f"config already uses rope_type '{params['rope_type']}'; apply_rope expects "
            "a base model with rope_type 'default'"
        )
    base_theta = float(params["rope_theta"])
    orig = int(original_max_position or cfg.max_position_embeddings)
    if factor is not None and (not isinstance(factor, (int, float)) or factor < 1):
        raise UserError(f"rope factor must be a number >= 1, got {factor!r}")
    if r.needs_factor and factor is None:
        raise UserError(f"rope method '{method}' needs factor (the extension ratio, e.g. 8)")
    if not r.needs_factor and factor is None and theta is None:
        raise UserError(f"rope method '{method}' needs theta (the new base) or factor")
    if theta is not None and r.needs_factor:
        takes = "/".join(n for n, x in RULES.items() if not x.needs_factor)
        raise UserError(f"theta= is only used by method '{takes}', not '{method}'")
    target = target_length(orig, factor) if factor is not None else orig
    extra = {k: v for k, v in params.items() if k == "partial_rotary_factor"}

    opts = {
        "beta_fast": beta_fast,
        "beta_slow": beta_slow,
        "low_freq_factor": low_freq_factor,
        "high_freq_factor": high_freq_factor,
    }
    new_base = base_theta
    if not r.needs_factor:  # the theta rule: a new base instead of a factor
        new_base = (
            float(theta)
            if theta is not None
            else suggest_theta(target, head_dim_of(cfg), base_theta, orig)
        )
    new = r.hf_params(factor, new_base, orig, opts)
    new.update(extra)
    cfg.rope_parameters = new
    cfg.max_position_embeddings = orig if r.keeps_length else target
    cfg.trainkit_longctx = {
        "method": method,
        "factor": float(factor) if factor is not None else None,
        "original_max_position_embeddings": orig,
        "target_max_position_embeddings": target,
        "base_rope_theta": base_theta,
        "rope_theta": new["rope_theta"],
    }
    return cfg


def config_frequencies(config: Any, seq_len: int | None = None) -> tuple[torch.Tensor, float]:
    """Recompute ``(inv_freq, attention_scale)`` from a config written by :func:`apply_rope`
    with trainkit's own functions (used to cross-check transformers)."""
    p = config.rope_parameters
    rt = p.get("rope_type", "default")
    by_type = {x.rope_type: x for x in RULES.values()}
    if rt not in by_type:
        raise UserError(f"rope_type '{rt}' is not one trainkit computes")
    return by_type[rt].from_config(head_dim_of(config), p, config.max_position_embeddings, seq_len)
