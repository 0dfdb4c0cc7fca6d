"""The safe formula parser: a formula string -> a SymPy expression, without ``eval``.

The string is parsed by Python's :func:`ast.parse` (a parser, it executes nothing) and
the syntax tree is walked with a whitelist, building the SymPy expression node by
node. Allowed: numbers, ``+ - * / ** ^`` (``^`` means power), unary ``+``/``-``,
calls of whitelisted functions by plain name, whitelisted constants (``pi``, ``e``)
and variable names (letters, digits, ``_``; no leading underscore). Anything else
(attribute access, subscripts, keywords, strings, lambdas, comparisons, dunders,
huge numbers) raises :class:`~trainkit.common.errors.UserError` with one line.
Users import :func:`parse_formula` from :mod:`trainkit.kan.formula`.
"""

from __future__ import annotations

import ast
import math
import re
import warnings
from collections.abc import Sequence
from typing import Any

from trainkit.common.errors import UserError

MAX_FORMULA_LEN = 1000
"""Longest accepted formula string (characters)."""

MAX_ABS_CONSTANT = 1e300
"""Largest magnitude a numeric constant may reach while the formula is built."""

_NAME_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,31}$")

# name the user writes -> SymPy attribute name (resolved lazily).
_FUNCTIONS: dict[str, str] = {
    "sin": "sin",
    "cos": "cos",
    "tan": "tan",
    "cot": "cot",
    "sec": "sec",
    "csc": "csc",
    "asin": "asin",
    "acos": "acos",
    "atan": "atan",
    "arcsin": "asin",
    "arccos": "acos",
    "arctan": "atan",
    "sinh": "sinh",
    "cosh": "cosh",
    "tanh": "tanh",
    "asinh": "asinh",
    "acosh": "acosh",
    "atanh": "atanh",
    "arcsinh": "asinh",
    "arccosh": "acosh",
    "arctanh": "atanh",
    "exp": "exp",
    "log": "log",
    "ln": "log",
    "sqrt": "sqrt",
    "abs": "Abs",
    "Abs": "Abs",
    "sign": "sign",
    "sgn": "sign",
    "erf": "erf",
    "besselj": "besselj",
    "j0": "_j0",
    "j1": "_j1",
    "min": "Min",
    "max": "Max",
    "atan2": "atan2",
    "arctan2": "atan2",
}
# expected argument counts (a tuple of allowed counts).
_ARITY: dict[str, tuple[int, ...]] = {
    "log": (1, 2),
    "ln": (1,),
    "besselj": (2,),
    "min": (2,),
    "max": (2,),
    "atan2": (2,),
    "arctan2": (2,),
}
_CONSTANTS = {"pi": "pi", "e": "E"}


def require_sympy():
    """The ``sympy`` module, imported on first use (a missing extra: one line naming
    ``trainkit[kan]``)."""
    from trainkit.common.errors import require

    return require("sympy", "kan")


def shorten(text: str, n: int = 60) -> str:
    """At most ``n`` printable characters of ``text`` (``...`` when cut), for messages."""
    text = "".join(c if c.isprintable() else " " if c in "\t\n\r" else "?" for c in text[: n + 1])
    return text if len(text) <= n else text[: n - 3] + "..."


class _Builder:
    """Walks a Python AST with a whitelist and builds the SymPy expression."""

    def __init__(self, text: str, variables: Sequence[str] | None):
        self.sp = require_sympy()
        self.text = text
        self.fixed = list(variables) if variables is not None else None
        self.symbols: dict[str, Any] = {}

    def fail(self, what: str, node: ast.AST | None = None) -> UserError:
        where = (
            f" at column {node.col_offset + 1}"
            if node is not None and hasattr(node, "col_offset")
            else ""
        )
        return UserError(f"formula '{shorten(self.text)}': {what}{where}")

    def build(self, node: ast.AST):
        sp = self.sp
        if isinstance(node, ast.Expression):
            return self.build(node.body)
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self.fail(f"unsupported literal {shorten(repr(v), 30)}", node)
            if isinstance(v, float):
                if not math.isfinite(v) or abs(v) > MAX_ABS_CONSTANT:
                    raise self.fail("number out of range", node)
                return sp.Float(repr(v))
            if abs(v) > MAX_ABS_CONSTANT:
                raise self.fail("number out of range", node)
            return sp.Integer(v)
        if isinstance(node, ast.Name):
            return self.name(node)
        if isinstance(node, ast.UnaryOp):
            arg = self.build(node.operand)
            if isinstance(node.op, ast.USub):
                return -arg
            if isinstance(node.op, ast.UAdd):
                return arg
            raise self.fail(f"operator '{type(node.op).__name__}' is not allowed", node)
        if isinstance(node, ast.BinOp):
            left, right = self.build(node.left), self.build(node.right)
            op = node.op
            if isinstance(op, ast.Add):
                return left + right
            if isinstance(op, ast.Sub):
                return left - right
            if isinstance(op, ast.Mult):
                return left * right
            if isinstance(op, ast.Div):
                return left / right
            if isinstance(op, ast.Pow):
                return self.power(left, right, node)
            raise self.fail(f"operator '{type(op).__name__}' is not allowed", node)
        if isinstance(node, ast.Call):
            return self.call(node)
        raise self.fail(
            f"'{type(node).__name__}' is not allowed (only numbers, variables, "
            "+ - * / ** and whitelisted functions)",
            node,
        )

    def name(self, node: ast.Name):
        n = node.id
        if not _NAME_RE.match(n):
            raise self.fail(f"invalid name '{shorten(n, 30)}'", node)
        if self.fixed is not None and n in self.fixed:
            return self.symbol(n)
        if n in _CONSTANTS:
            return getattr(self.sp, _CONSTANTS[n])
        if n in _FUNCTIONS:
            raise self.fail(f"'{n}' is a function: call it as {n}(...)", node)
        if self.fixed is not None:
            raise self.fail(
                f"unknown symbol '{n}' (variables: {', '.join(self.fixed) or 'none'}; "
                f"constants: {', '.join(_CONSTANTS)})",
                node,
            )
        return self.symbol(n)

    def symbol(self, n: str):
        if n not in self.symbols:
            self.symbols[n] = self.sp.Symbol(n)
        return self.symbols[n]

    def power(self, base, exp, node):
        sp = self.sp
        # Guard against 9**9**9-style blow-ups: SymPy would evaluate them exactly.
        if base.is_number and exp.is_number and base.is_Number and exp.is_Number:
            b, e = abs(base), abs(exp)
            if b not in (0, 1) and e > 1:
                mag = float(e) * abs(float(sp.log(b, 10).evalf(15)))
                if not math.isfinite(mag) or mag > 300:
                    raise self.fail("number out of range", node)
        if exp.is_Number and abs(exp) > 1000:
            raise self.fail("exponent out of range", node)
        if base.is_Rational and abs(base) > 2**64 and not exp.is_Integer:
            # SymPy would try to factor the integer to simplify the root (slow).
            return sp.Pow(base, exp, evaluate=False)
        return sp.Pow(base, exp)

    def call(self, node: ast.Call):
        sp = self.sp
        if not isinstance(node.func, ast.Name):
            raise self.fail("only plain function names may be called", node)
        fname = node.func.id
        if fname not in _FUNCTIONS:
            raise self.fail(
                f"unknown function '{shorten(fname, 30)}' (allowed: "
                f"{', '.join(sorted(set(_FUNCTIONS)))})",
                node,
            )
        if node.keywords or any(isinstance(a, ast.Starred) for a in node.args):
            raise self.fail(f"{fname}(): keyword or starred arguments are not allowed", node)
        arity = _ARITY.get(fname, (1,))
        if len(node.args) not in arity:
            want = " or ".join(str(a) for a in arity)
            raise self.fail(f"{fname}() takes {want} argument(s), got {len(node.args)}", node)
        args = [self.build(a) for a in node.args]
        target = _FUNCTIONS[fname]
        if target == "_j0":
            return sp.besselj(0, args[0])
        if target == "_j1":
            return sp.besselj(1, args[0])
        if target == "sqrt":
            return self.power(args[0], sp.Rational(1, 2), node)
        return getattr(sp, target)(*args)


def natural_key(name: str):
    """Sort key ordering names naturally: ``x2`` before ``x10``."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def parse_formula(text: str, variables: Sequence[str] | None = None):
    """Parse a user formula string safely into a SymPy expression.

    Args:
        text: e.g. ``"exp(sin(pi*x1) + x2**2)"``; ``^`` is read as ``**``.
        variables: the allowed variable names in input-column order. When given,
            any other name (except the constants ``pi``, ``e``) is an error, and a
            name listed here shadows a constant of the same name. When None, every
            non-function, non-constant name is a variable, ordered naturally
            (``x2`` before ``x10``).

    Returns:
        ``(expr, var_names)``: the SymPy expression and the ordered variable names.

    Raises:
        UserError: syntax error, unknown function/symbol, forbidden construct,
            number out of range, an undefined (``1/0``) or complex-valued constant.
    """
    if not isinstance(text, str):
        raise UserError(f"formula must be a string, got {type(text).__name__}")
    if variables is not None:
        variables = [str(v) for v in variables]
        for v in variables:
            if not _NAME_RE.match(v) or v in _FUNCTIONS:
                raise UserError(
                    f"invalid variable name '{shorten(v, 30)}' (letters, digits, _; "
                    "not a function name)"
                )
        if len(set(variables)) != len(variables):
            raise UserError(f"duplicate variable names in {variables}")
    if len(text) > MAX_FORMULA_LEN:
        raise UserError(f"formula is too long ({len(text)} characters, at most {MAX_FORMULA_LEN})")
    if not text.strip():
        raise UserError("formula is empty")
    if any(not c.isprintable() and c not in " \t\n\r" for c in text):
        raise UserError(f"formula '{shorten(text)}': contains a control character")
    if "__" in text:
        raise UserError(f"formula '{shorten(text)}': '__' is not allowed")
    src = text.strip().replace("^", "**")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(src, mode="eval")
    except SyntaxError as e:
        col = f" at column {e.offset}" if e.offset else ""
        raise UserError(f"formula '{shorten(text)}': syntax error{col}: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise UserError(f"formula '{shorten(text)}': cannot parse ({type(e).__name__})") from None
    builder = _Builder(text, variables)
    try:
        expr = builder.build(tree)
    except UserError:
        raise
    except RecursionError:
        raise UserError(f"formula '{shorten(text)}': nested too deeply") from None
    except Exception as e:  # SymPy can reject odd combinations (e.g. besselj(x, x))
        msg = shorten(str(e).splitlines()[0] if str(e) else type(e).__name__, 80)
        raise UserError(f"formula '{shorten(text)}': invalid expression ({msg})") from None
    _check_constants(expr, text)
    if variables is not None:
        names = list(variables)
    else:
        names = sorted(builder.symbols, key=natural_key)
    return expr, names


def _check_constants(expr, text: str) -> None:
    sp = require_sympy()
    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise UserError(
            f"formula '{shorten(text)}': contains an undefined or infinite value (division by zero?)"
        )
    if expr.has(sp.I):
        raise UserError(
            f"formula '{shorten(text)}': contains a complex constant "
            "(e.g. sqrt of a negative number)"
        )
    for a in expr.atoms(sp.Number):
        if abs(a) > MAX_ABS_CONSTANT:
            raise UserError(f"formula '{shorten(text)}': number out of range")
    # Every maximal constant subexpression must be a finite real float.
    stack = [expr]
    while stack:
        node = stack.pop()
        if node.is_number:
            try:
                v = complex(node.evalf(15))
            except (TypeError, ValueError, OverflowError, ArithmeticError):
                v = complex(math.nan)
            if not (math.isfinite(v.real) and math.isfinite(v.imag)):
                raise UserError(
                    f"formula '{shorten(text)}': constant {shorten(str(node), 30)} "
                    "is undefined or out of range"
                )
            if abs(v.imag) > 1e-12 * max(1.0, abs(v.real)):
                raise UserError(
                    f"formula '{shorten(text)}': constant {shorten(str(node), 30)} is complex"
                )
        else:
            stack.extend(node.args)
