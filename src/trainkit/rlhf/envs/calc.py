"""A safe arithmetic evaluator for the calculator tool (no ``eval``).

The expression is parsed with :mod:`ast` and only number literals, ``+ - * / // % **``,
unary ``+``/``-`` and parentheses are evaluated; names, calls, attributes and every other
node are refused. Sizes are bounded so a model cannot hang the trainer: at most
``MAX_CHARS`` characters, exponents up to ``MAX_EXPONENT``, and intermediate integers of
at most ``MAX_DIGITS`` digits.
"""

from __future__ import annotations

import ast
import math
import operator

MAX_CHARS = 200
MAX_EXPONENT = 64
MAX_DIGITS = 60

_BIN = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


class CalcError(ValueError):
    """The expression is not plain arithmetic, or its value is out of bounds."""


def _check(x: int | float) -> int | float:
    if isinstance(x, int) and abs(x) >= 10**MAX_DIGITS:
        raise CalcError(f"result has more than {MAX_DIGITS} digits")
    if isinstance(x, float) and not math.isfinite(x):
        raise CalcError("result is not finite")
    return x


def _eval(node: ast.AST) -> int | float:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return _check(node.value)
    if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
        return _UNARY[type(node.op)](_eval(node.operand))
    if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
        a, b = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(b) > MAX_EXPONENT:
            raise CalcError(f"exponent {b} is larger than {MAX_EXPONENT}")
        try:
            return _check(_BIN[type(node.op)](a, b))
        except ZeroDivisionError:
            raise CalcError("division by zero") from None
        except OverflowError:
            raise CalcError("result is too large") from None
    raise CalcError(f"not allowed in an arithmetic expression: {type(node).__name__}")


def calculate(expression: str) -> int | float:
    """The value of an arithmetic expression such as ``"347 * 86"`` or ``"(2+3)**2/4"``.

    ``^`` is read as ``**`` (a common way to write powers); ``,`` and ``_`` inside
    numbers are dropped (``"1,234"`` is 1234). Integer results stay exact integers; a
    float result that is a whole number is returned as ``int``.

    Raises:
        CalcError: for anything but arithmetic on numbers, or out-of-bounds sizes.
    """
    if not isinstance(expression, str) or not expression.strip():
        raise CalcError("empty expression")
    if len(expression) > MAX_CHARS:
        raise CalcError(f"expression longer than {MAX_CHARS} characters")
    text = expression.replace("^", "**").replace(",", "").replace("_", "")
    try:
        tree = ast.parse(text.strip(), mode="eval")
    except SyntaxError:
        raise CalcError(f"cannot parse {expression!r}") from None
    value = _eval(tree)
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    return value


def format_number(x: int | float) -> str:
    """``12`` -> ``"12"``, ``0.5`` -> ``"0.5"``, ``1/3`` -> ``"0.3333333333"`` (10 decimals)."""
    if isinstance(x, int):
        return str(x)
    return f"{x:.10f}".rstrip("0").rstrip(".")
