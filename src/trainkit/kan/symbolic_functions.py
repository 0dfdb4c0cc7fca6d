"""The named functions of the symbolic library (KAN paper, arXiv 2404.19756, section 2.5.1,
step 3): the ``f`` that :mod:`trainkit.kan.affine_fit` fits as ``c * f(a * x + b) + d``.

Each entry has a guarded torch function (never NaN/inf for finite inputs, finite
gradients), its derivative, a SymPy form, a complexity (the simplicity cost of the
ranking in :mod:`trainkit.kan.symbolic_lib`) and a ``kind``, the search strategy of
:mod:`trainkit.kan.affine_fit`. Guards: denominators keep ``|u| >= EPS = 1e-4``
(``1/x <= 1e4``), ``log``/``1/sqrt`` clamp ``u >= EPS``, ``sqrt`` ``u >= 1e-12``,
``x^1.5`` ``u >= 0``, ``arcsin/arccos/arctanh`` ``|u| <= 1 - 1e-6``, ``tan``
``|cos u| >= EPS``, ``exp`` ``u <= 80``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from trainkit.common.errors import UserError

EPS = 1e-4
"""Distance kept from singular points (poles, log/1-over-sqrt at 0, tan poles)."""
SQRT_EPS = 1e-12
ARC_EPS = 1e-6
EXP_MAX = 80.0


# --------------------------------------------------------------------------------------
# Guarded torch implementations. u: any shape; output: same shape and dtype.


def _away_from_zero(u: torch.Tensor, eps: float = EPS) -> torch.Tensor:
    """``u`` with ``|u| >= eps`` (sign kept, 0 -> +eps)."""
    sign = torch.where(u < 0, -1.0, 1.0).to(u.dtype)
    return torch.where(u.abs() < eps, sign * eps, u)


def _inv_pow(p: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda u: _away_from_zero(u) ** (-p)


_sqrt = lambda u: torch.sqrt(torch.clamp(u, min=SQRT_EPS))
_pow15 = lambda u: torch.clamp(u, min=0.0) ** 1.5
_rsqrt = lambda u: torch.rsqrt(torch.clamp(u, min=EPS))
_log = lambda u: torch.log(torch.clamp(u, min=EPS))
_exp = lambda u: torch.exp(torch.clamp(u, max=EXP_MAX))
_tan = lambda u: torch.sin(u) / _away_from_zero(torch.cos(u))
_gaussian = lambda u: torch.exp(-(u * u))


def _arc(fn):
    return lambda u: fn(torch.clamp(u, -1.0 + ARC_EPS, 1.0 - ARC_EPS))


# Derivatives f'(u) of the guarded functions (0 where a guard clamps), used by the
# Levenberg-Marquardt refinement; cheaper than autograd.
_d_sqrt = lambda u: torch.where(u > SQRT_EPS, 0.5 * torch.rsqrt(torch.clamp(u, min=SQRT_EPS)), 0.0)
_d_rsqrt = lambda u: torch.where(u > EPS, -0.5 * torch.clamp(u, min=EPS) ** -1.5, 0.0)
_d_log = lambda u: torch.where(u > EPS, 1.0 / torch.clamp(u, min=EPS), 0.0)
_d_exp = lambda u: torch.where(u < EXP_MAX, torch.exp(torch.clamp(u, max=EXP_MAX)), 0.0)
_d_tan = lambda u: _away_from_zero(torch.cos(u)) ** -2


def _d_inv_pow(p: int) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda u: -p * _away_from_zero(u) ** (-p - 1)


def _d_arc(kind: str) -> Callable[[torch.Tensor], torch.Tensor]:
    lim = 1.0 - ARC_EPS

    def d(u):
        uc = torch.clamp(u, -lim, lim)
        if kind == "atanh":
            g = 1.0 / (1.0 - uc * uc)
        else:
            g = torch.rsqrt(1.0 - uc * uc) * (-1.0 if kind == "acos" else 1.0)
        return torch.where(u.abs() < lim, g, 0.0)

    return d


@dataclass(frozen=True)
class SymbolicFunction:
    """One library entry.

    Attributes:
        name: library name, e.g. ``"sin"``, ``"x^2"``.
        torch_fn: guarded elementwise torch function ``u -> f(u)`` (any shape).
        sympy_fn: ``(sympy_module, u) -> SymPy expression`` (the unguarded math).
        complexity: simplicity cost used by :func:`trainkit.kan.symbolic_lib.suggest` (``x``
            is 1, ``0`` is 0).
        kind: search strategy, one of ``zero, linear, shift, scale, periodic, step, general``
            (see :mod:`trainkit.kan.affine_fit`). User functions should use ``general``.
        reflect: True when ``f(-u)`` is an affine function of ``f(u)`` (odd or even
            functions, ``arccos``), so the sign of ``a`` need not be searched.
        phase: for ``periodic`` functions, ``f(u) = sin(u + phase)``.
        deriv: optional ``u -> f'(u)`` of the guarded function (else autograd).
    """

    name: str
    torch_fn: Callable[[torch.Tensor], torch.Tensor] = field(repr=False)
    sympy_fn: Callable[[Any, Any], Any] = field(repr=False)
    complexity: int = 3
    kind: str = "general"
    reflect: bool = False
    phase: float = 0.0
    deriv: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)

    def __call__(self, u: torch.Tensor) -> torch.Tensor:
        return self.torch_fn(u)

    def sympy(self, u):
        """SymPy form ``f(u)`` for a SymPy expression ``u``."""
        import sympy

        return self.sympy_fn(sympy, u)

    def __reduce_ex__(self, protocol):
        # Library entries hold lambdas: pickle them by name so models that store
        # them (fixed symbolic edges) stay picklable.
        if LIBRARY.get(self.name) is self:
            return (get_function, (self.name,))
        return super().__reduce_ex__(protocol)


def _lib_entries() -> list[SymbolicFunction]:
    S = SymbolicFunction
    return [
        S(
            "0",
            lambda u: u * 0.0,
            lambda sp, u: sp.Integer(0),
            0,
            "zero",
            True,
            deriv=torch.zeros_like,
        ),
        S("x", lambda u: u, lambda sp, u: u, 1, "linear", True, deriv=torch.ones_like),
        S("x^2", lambda u: u * u, lambda sp, u: u**2, 2, "shift", True, deriv=lambda u: 2 * u),
        S("x^3", lambda u: u**3, lambda sp, u: u**3, 3, "shift", True, deriv=lambda u: 3 * u * u),
        S("x^4", lambda u: u**4, lambda sp, u: u**4, 3, "shift", True, deriv=lambda u: 4 * u**3),
        S("x^5", lambda u: u**5, lambda sp, u: u**5, 4, "shift", True, deriv=lambda u: 5 * u**4),
        S("1/x", _inv_pow(1), lambda sp, u: 1 / u, 2, "shift", True, deriv=_d_inv_pow(1)),
        S("1/x^2", _inv_pow(2), lambda sp, u: u**-2, 2, "shift", True, deriv=_d_inv_pow(2)),
        S("1/x^3", _inv_pow(3), lambda sp, u: u**-3, 3, "shift", True, deriv=_d_inv_pow(3)),
        S("1/x^4", _inv_pow(4), lambda sp, u: u**-4, 4, "shift", True, deriv=_d_inv_pow(4)),
        S("sqrt", _sqrt, lambda sp, u: sp.sqrt(u), 2, "shift", False, deriv=_d_sqrt),
        S(
            "x^1.5",
            _pow15,
            lambda sp, u: u ** sp.Rational(3, 2),
            4,
            "shift",
            False,
            deriv=lambda u: 1.5 * torch.sqrt(torch.clamp(u, min=0.0)),
        ),
        S("1/sqrt(x)", _rsqrt, lambda sp, u: 1 / sp.sqrt(u), 2, "shift", False, deriv=_d_rsqrt),
        S("exp", _exp, lambda sp, u: sp.exp(u), 2, "scale", False, deriv=_d_exp),
        S("log", _log, lambda sp, u: sp.log(u), 2, "shift", False, deriv=_d_log),
        S("abs", torch.abs, lambda sp, u: sp.Abs(u), 3, "shift", True, deriv=torch.sign),
        S("sgn", torch.sign, lambda sp, u: sp.sign(u), 3, "step", True, deriv=torch.zeros_like),
        S("sin", torch.sin, lambda sp, u: sp.sin(u), 2, "periodic", True, 0.0, deriv=torch.cos),
        S(
            "cos",
            torch.cos,
            lambda sp, u: sp.cos(u),
            2,
            "periodic",
            True,
            math.pi / 2,
            deriv=lambda u: -torch.sin(u),
        ),
        S("tan", _tan, lambda sp, u: sp.tan(u), 3, "general", True, deriv=_d_tan),
        S(
            "tanh",
            torch.tanh,
            lambda sp, u: sp.tanh(u),
            3,
            "general",
            True,
            deriv=lambda u: 1 - torch.tanh(u) ** 2,
        ),
        S(
            "arcsin",
            _arc(torch.asin),
            lambda sp, u: sp.asin(u),
            4,
            "general",
            True,
            deriv=_d_arc("asin"),
        ),
        S(
            "arccos",
            _arc(torch.acos),
            lambda sp, u: sp.acos(u),
            4,
            "general",
            True,
            deriv=_d_arc("acos"),
        ),
        S(
            "arctan",
            torch.atan,
            lambda sp, u: sp.atan(u),
            4,
            "general",
            True,
            deriv=lambda u: 1 / (1 + u * u),
        ),
        S(
            "arctanh",
            _arc(torch.atanh),
            lambda sp, u: sp.atanh(u),
            4,
            "general",
            True,
            deriv=_d_arc("atanh"),
        ),
        S(
            "gaussian",
            _gaussian,
            lambda sp, u: sp.exp(-(u**2)),
            3,
            "general",
            True,
            deriv=lambda u: -2 * u * torch.exp(-(u * u)),
        ),
    ]


LIBRARY: dict[str, SymbolicFunction] = {f.name: f for f in _lib_entries()}
"""The default library, name -> entry (insertion order is the display order)."""

_ALIASES = {
    "sign": "sgn",
    "x^0.5": "sqrt",
    "x^-1": "1/x",
    "x^-2": "1/x^2",
    "asin": "arcsin",
    "acos": "arccos",
    "atan": "arctan",
    "atanh": "arctanh",
    "zero": "0",
    "x^1": "x",
    "id": "x",
}


def get_function(name: str | SymbolicFunction) -> SymbolicFunction:
    """Look up a library entry by name (or alias such as ``"sign"``, ``"asin"``)."""
    if isinstance(name, SymbolicFunction):
        return name
    key = _ALIASES.get(name, name)
    if key not in LIBRARY:
        raise UserError(
            f"unknown symbolic function '{name}' (expected one of: {', '.join(LIBRARY)})"
        )
    return LIBRARY[key]


def resolve_lib(lib: None | Iterable | Mapping) -> list[SymbolicFunction]:
    """``None`` -> the whole library; names or entries -> those entries."""
    if lib is None:
        return list(LIBRARY.values())
    if isinstance(lib, Mapping):
        lib = lib.values()
    if isinstance(lib, str):
        lib = [lib]
    out = [get_function(f) for f in lib]
    if not out:
        raise UserError("symbolic library is empty")
    return out
