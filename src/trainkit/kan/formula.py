"""Safe formula strings -> SymPy expressions -> torch callables.

User formulas such as ``"exp(sin(pi*x1) + x2**2)"`` or ``"x*y"`` (the KAN paper's
toy functions, arXiv 2404.19756 section 3) are parsed **without** ``eval``, by walking
Python's syntax tree against a whitelist (:mod:`trainkit.kan.formula_parser`, whose
:func:`parse_formula` this module re-exports). Here: the expression compiled into torch
closures, LaTeX, rounding of constants, and equivalence of two formulas.

SymPy is imported lazily inside the functions, so importing this module is cheap.

Public API:
    parse_formula(text, variables=None) -> (expr, var_names)
    to_callable(expr, var_names=None) -> f(x: [N, n_var]) -> [N, 1]
    to_latex(expr), round_constants(expr, digits), equivalent(a, b, digits=3)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch

from trainkit.common.errors import UserError
from trainkit.kan.formula_parser import (
    MAX_ABS_CONSTANT,
    MAX_FORMULA_LEN,
    natural_key,
    parse_formula,
    require_sympy,
    shorten,
)

__all__ = [
    "MAX_ABS_CONSTANT",
    "MAX_FORMULA_LEN",
    "equivalent",
    "parse_formula",
    "round_constants",
    "to_callable",
    "to_latex",
]


# --------------------------------------------------------------------------------------
# SymPy -> torch


def _torch_table() -> dict[Any, Callable]:
    sp = require_sympy()
    return {
        sp.sin: torch.sin,
        sp.cos: torch.cos,
        sp.tan: torch.tan,
        sp.cot: lambda u: 1 / torch.tan(u),
        sp.sec: lambda u: 1 / torch.cos(u),
        sp.csc: lambda u: 1 / torch.sin(u),
        sp.asin: torch.asin,
        sp.acos: torch.acos,
        sp.atan: torch.atan,
        sp.sinh: torch.sinh,
        sp.cosh: torch.cosh,
        sp.tanh: torch.tanh,
        sp.asinh: torch.asinh,
        sp.acosh: torch.acosh,
        sp.atanh: torch.atanh,
        sp.exp: torch.exp,
        sp.log: torch.log,
        sp.Abs: torch.abs,
        sp.sign: torch.sign,
        sp.erf: torch.erf,
    }


def _compile(node, index: dict[str, int], table) -> Callable[[list], Any]:
    """Return ``g(cols) -> tensor or float`` evaluating SymPy ``node``."""
    sp = require_sympy()
    if node.is_Symbol:
        if node.name not in index:
            raise UserError(f"formula variable '{node.name}' is not among the inputs {list(index)}")
        i = index[node.name]
        return lambda cols: cols[i]
    if node.is_number:
        v = complex(node.evalf(17))
        if v.imag != 0 or not math.isfinite(v.real):
            raise UserError(
                f"formula constant {shorten(str(node), 40)} is not a finite real number"
            )
        val = v.real
        return lambda cols: val
    args = [_compile(a, index, table) for a in node.args]
    if node.is_Add:

        def add(cols):
            out = args[0](cols)
            for g in args[1:]:
                out = out + g(cols)
            return out

        return add
    if node.is_Mul:

        def mul(cols):
            out = args[0](cols)
            for g in args[1:]:
                out = out * g(cols)
            return out

        return mul
    if node.is_Pow:
        gb, ge = args
        e = node.args[1]
        if e.is_number:
            ev = float(e)
            if ev == -1:
                return lambda cols: 1 / gb(cols)
            if ev == 0.5:
                return lambda cols: torch.sqrt(gb(cols))
            if ev == -0.5:
                return lambda cols: torch.rsqrt(gb(cols))
            return lambda cols: torch.pow(gb(cols), ev)
        return lambda cols: torch.pow(gb(cols), ge(cols))
    func = node.func
    if func in table:
        fn = table[func]
        (g,) = args
        return lambda cols: fn(g(cols))
    if func is sp.besselj:
        order = node.args[0]
        if order == 0:
            return lambda cols: torch.special.bessel_j0(args[1](cols))
        if order == 1:
            return lambda cols: torch.special.bessel_j1(args[1](cols))
        raise UserError(f"besselj of order {order} has no torch implementation (only 0 and 1)")
    if func is sp.atan2:
        return lambda cols: torch.atan2(args[0](cols), args[1](cols))
    if func in (sp.Min, sp.Max):
        op = torch.minimum if func is sp.Min else torch.maximum

        def minmax(cols):
            out = args[0](cols)
            for g in args[1:]:
                out = op(out, g(cols))
            return out

        return minmax
    raise UserError(f"cannot evaluate '{func}' with torch (in {shorten(str(node), 40)})")


def to_callable(
    expr, var_names: Sequence[str] | None = None
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Turn a SymPy expression into a torch function of a column matrix.

    No code is generated or executed: the expression tree is compiled into nested
    closures over torch ops once, then reused for every call.

    Args:
        expr: a SymPy expression (or a formula string, parsed by :func:`parse_formula`).
        var_names: input column order; default: the expression's free symbols in
            natural order (``x2`` before ``x10``). Symbols are matched by name.

    Returns:
        ``f(x)`` mapping ``x: Tensor[N, n_var]`` to ``Tensor[N, 1]`` with x's dtype and
        device (constants are folded to Python floats). Differentiable.
    """
    if isinstance(expr, str):
        expr, parsed = parse_formula(expr, var_names)
        var_names = parsed if var_names is None else var_names
    if var_names is None:
        var_names = sorted((s.name for s in expr.free_symbols), key=natural_key)
    names = [str(v) for v in var_names]
    index = {n: i for i, n in enumerate(names)}
    g = _compile(expr, index, _torch_table())
    n_var = len(names)

    def f(x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != n_var:
            raise ValueError(
                f"expected input of shape [N, {n_var}] ({', '.join(names)}), got {tuple(x.shape)}"
            )
        cols = [x[:, i] for i in range(n_var)]
        out = g(cols)
        if not torch.is_tensor(out):
            out = torch.full((x.shape[0],), float(out), dtype=x.dtype, device=x.device)
        return out.reshape(x.shape[0], 1)

    f.var_names = names  # type: ignore[attr-defined]
    f.expr = expr  # type: ignore[attr-defined]
    return f


# --------------------------------------------------------------------------------------
# Presentation and comparison


def _as_expr(expr):
    if isinstance(expr, str):
        return parse_formula(expr)[0]
    return expr


def to_latex(expr) -> str:
    """LaTeX of a SymPy expression (or formula string), e.g. ``e^{x_{2}^{2} + ...}``."""
    return require_sympy().latex(_as_expr(expr))


def round_constants(expr, digits: int = 4):
    """Round every floating constant of ``expr`` to ``digits`` decimals.

    Floats that round to an integer become SymPy Integers (``x**2.0`` -> ``x**2``,
    ``1.0*x`` -> ``x``), and floats that round to zero vanish. Integers, rationals
    and symbolic constants (``pi``) are kept as they are.
    """
    sp = require_sympy()
    expr = _as_expr(expr)
    repl = {}
    for f in expr.atoms(sp.Float):
        v = float(f)
        if not math.isfinite(v):  # inf/nan (or beyond float range) stay as they are
            continue
        r = round(v, digits)
        repl[f] = sp.Integer(int(r)) if r == int(r) else sp.Float(r)
    return expr.xreplace(repl) if repl else expr


def _plain(expr):
    """Parse strings; rename symbols to plain ones (assumptions such as real=True ignored)."""
    sp = require_sympy()
    expr = _as_expr(expr)
    return expr.xreplace({s: sp.Symbol(s.name) for s in expr.free_symbols})


def _evalf_numbers(node):
    """Replace every non-integer numeric subtree (``pi``, ``sqrt(2)``, ``1/2``) by a Float."""
    sp = require_sympy()
    if node.is_Integer or node.is_Symbol:
        return node
    if node.is_number:
        return sp.Float(node.evalf(17))
    if not node.args:
        return node
    return node.func(*[_evalf_numbers(a) for a in node.args])


def _expanded(expr):
    """``expand`` with ``exp(a + b) -> exp(a) exp(b)``, so constant factors and offsets
    of a learned formula fold into single numbers; None if it could blow up."""
    sp = require_sympy()
    if any(p.exp.is_Integer and abs(p.exp) > 16 and p.base.is_Add for p in expr.atoms(sp.Pow)):
        return None
    return _evalf_numbers(sp.expand(expr, power_exp=True, power_base=False, log=False))


def equivalent(expr_a, expr_b, digits: int = 3) -> bool:
    """True if two formulas agree after rounding every constant to ``digits`` decimals.

    ``pi`` and other exact constants are evaluated first, so ``sin(pi*x)`` and
    ``sin(3.1416*x)`` are equivalent at ``digits=3``. Symbols are matched by name.
    The comparison is symbolic: the rounded difference must simplify to 0. Both
    formulas are compared as given and after expansion (``exp(u + b) -> exp(b) exp(u)``,
    products and powers multiplied out), so that a learned
    ``1.6487*exp(0.5*(2*sin(3.1416*x1) + 2*x2**2 - 1.0))`` matches ``exp(sin(pi*x1) + x2**2)``.

    Args:
        expr_a, expr_b: SymPy expressions or formula strings.
        digits: decimals kept for every constant.
    """
    sp = require_sympy()
    a0, b0 = _evalf_numbers(_plain(expr_a)), _evalf_numbers(_plain(expr_b))
    a, b = round_constants(a0, digits), round_constants(b0, digits)
    if a == b or sp.expand(a - b) == 0:
        return True
    ea, eb = _expanded(a0), _expanded(b0)
    if ea is not None and eb is not None:
        ra, rb = round_constants(ea, digits), round_constants(eb, digits)
        if ra == rb or sp.expand(ra - rb) == 0:
            return True
    try:
        diff = sp.simplify(a - b)
    except Exception:  # pragma: no cover - SymPy internals
        return False
    return bool(diff == 0) or (diff.is_number and abs(complex(diff.evalf())) < 10.0 ** (-digits))
