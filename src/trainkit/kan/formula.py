"""Safe formula strings -> SymPy expressions -> torch callables.

User formulas such as ``"exp(sin(pi*x1) + x2**2)"`` or ``"x*y"`` (the KAN paper's
toy functions, arXiv 2404.19756 section 3) are parsed **without** ``eval``: the
string is parsed by Python's :func:`ast.parse` (a parser, it executes nothing) and
the syntax tree is walked with a whitelist, building the SymPy expression node by
node. Allowed: numbers, ``+ - * / ** ^`` (``^`` means power), unary ``+``/``-``,
calls of whitelisted functions by plain name, whitelisted constants (``pi``, ``e``)
and variable names (letters, digits, ``_``; no leading underscore). Anything else
(attribute access, subscripts, keywords, strings, lambdas, comparisons, dunders,
huge numbers) raises :class:`~trainkit.common.errors.UserError` with one line.

SymPy is imported lazily inside the functions, so importing this module is cheap.

Public API:
    parse_formula(text, variables=None) -> (expr, var_names)
    to_callable(expr, var_names=None) -> f(x: [N, n_var]) -> [N, 1]
    to_latex(expr), round_constants(expr, digits), equivalent(a, b, digits=3)
"""

from __future__ import annotations

import ast
import math
import re
import warnings
from collections.abc import Callable, Sequence
from typing import Any

import torch

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


def _sympy():
    from trainkit.common.errors import require

    return require("sympy", "kan")


def _short(text: str, n: int = 60) -> str:
    text = "".join(c if c.isprintable() else " " if c in "\t\n\r" else "?" for c in text[: n + 1])
    return text if len(text) <= n else text[: n - 3] + "..."


class _Builder:
    """Walks a Python AST with a whitelist and builds the SymPy expression."""

    def __init__(self, text: str, variables: Sequence[str] | None):
        self.sp = _sympy()
        self.text = text
        self.fixed = list(variables) if variables is not None else None
        self.symbols: dict[str, Any] = {}

    def fail(self, what: str, node: ast.AST | None = None) -> UserError:
        where = (
            f" at column {node.col_offset + 1}"
            if node is not None and hasattr(node, "col_offset")
            else ""
        )
        return UserError(f"formula '{_short(self.text)}': {what}{where}")

    def build(self, node: ast.AST):
        sp = self.sp
        if isinstance(node, ast.Expression):
            return self.build(node.body)
        if isinstance(node, ast.Constant):
            v = node.value
            if isinstance(v, bool) or not isinstance(v, (int, float)):
                raise self.fail(f"unsupported literal {_short(repr(v), 30)}", node)
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
            raise self.fail(f"invalid name '{_short(n, 30)}'", node)
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
                f"unknown function '{_short(fname, 30)}' (allowed: "
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


def _natural_key(name: str):
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
                    f"invalid variable name '{_short(v, 30)}' (letters, digits, _; "
                    "not a function name)"
                )
        if len(set(variables)) != len(variables):
            raise UserError(f"duplicate variable names in {variables}")
    if len(text) > MAX_FORMULA_LEN:
        raise UserError(f"formula is too long ({len(text)} characters, at most {MAX_FORMULA_LEN})")
    if not text.strip():
        raise UserError("formula is empty")
    if any(not c.isprintable() and c not in " \t\n\r" for c in text):
        raise UserError(f"formula '{_short(text)}': contains a control character")
    if "__" in text:
        raise UserError(f"formula '{_short(text)}': '__' is not allowed")
    src = text.strip().replace("^", "**")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tree = ast.parse(src, mode="eval")
    except SyntaxError as e:
        col = f" at column {e.offset}" if e.offset else ""
        raise UserError(f"formula '{_short(text)}': syntax error{col}: {e.msg}") from None
    except (ValueError, RecursionError, MemoryError) as e:
        raise UserError(f"formula '{_short(text)}': cannot parse ({type(e).__name__})") from None
    builder = _Builder(text, variables)
    try:
        expr = builder.build(tree)
    except UserError:
        raise
    except RecursionError:
        raise UserError(f"formula '{_short(text)}': nested too deeply") from None
    except Exception as e:  # SymPy can reject odd combinations (e.g. besselj(x, x))
        msg = _short(str(e).splitlines()[0] if str(e) else type(e).__name__, 80)
        raise UserError(f"formula '{_short(text)}': invalid expression ({msg})") from None
    _check_constants(expr, text)
    if variables is not None:
        names = list(variables)
    else:
        names = sorted(builder.symbols, key=_natural_key)
    return expr, names


def _check_constants(expr, text: str) -> None:
    sp = _sympy()
    if expr.has(sp.zoo, sp.oo, -sp.oo, sp.nan):
        raise UserError(
            f"formula '{_short(text)}': contains an undefined or infinite value (division by zero?)"
        )
    if expr.has(sp.I):
        raise UserError(
            f"formula '{_short(text)}': contains a complex constant "
            "(e.g. sqrt of a negative number)"
        )
    for a in expr.atoms(sp.Number):
        if abs(a) > MAX_ABS_CONSTANT:
            raise UserError(f"formula '{_short(text)}': number out of range")
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
                    f"formula '{_short(text)}': constant {_short(str(node), 30)} "
                    "is undefined or out of range"
                )
            if abs(v.imag) > 1e-12 * max(1.0, abs(v.real)):
                raise UserError(
                    f"formula '{_short(text)}': constant {_short(str(node), 30)} is complex"
                )
        else:
            stack.extend(node.args)


# --------------------------------------------------------------------------------------
# SymPy -> torch


def _torch_table() -> dict[Any, Callable]:
    sp = _sympy()
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
    sp = _sympy()
    if node.is_Symbol:
        if node.name not in index:
            raise UserError(f"formula variable '{node.name}' is not among the inputs {list(index)}")
        i = index[node.name]
        return lambda cols: cols[i]
    if node.is_number:
        v = complex(node.evalf(17))
        if v.imag != 0 or not math.isfinite(v.real):
            raise UserError(f"formula constant {_short(str(node), 40)} is not a finite real number")
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
    raise UserError(f"cannot evaluate '{func}' with torch (in {_short(str(node), 40)})")


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
        var_names = sorted((s.name for s in expr.free_symbols), key=_natural_key)
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
    return _sympy().latex(_as_expr(expr))


def round_constants(expr, digits: int = 4):
    """Round every floating constant of ``expr`` to ``digits`` decimals.

    Floats that round to an integer become SymPy Integers (``x**2.0`` -> ``x**2``,
    ``1.0*x`` -> ``x``), and floats that round to zero vanish. Integers, rationals
    and symbolic constants (``pi``) are kept as they are.
    """
    sp = _sympy()
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
    sp = _sympy()
    expr = _as_expr(expr)
    return expr.xreplace({s: sp.Symbol(s.name) for s in expr.free_symbols})


def _evalf_numbers(node):
    """Replace every non-integer numeric subtree (``pi``, ``sqrt(2)``, ``1/2``) by a Float."""
    sp = _sympy()
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
    sp = _sympy()
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
    sp = _sympy()
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
