"""Rule-based (verifiable) rewards: exact answer extraction, ``math_exact``,
``math_closeness``, ``format_reward``, ``length_penalty``, :func:`combine`, and the
built-in names of :data:`BUILTINS` that :func:`trainkit.rlhf.rewards.load_reward` resolves.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from fractions import Fraction
from typing import Any

from trainkit.common.errors import UserError
from trainkit.rlhf.reward_scoring import RewardError, RewardFn, check_reward_values

_NUM = r"[-−+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:/\d+)?"
_NUM_RE = re.compile(_NUM)
_ANSWER_RE = re.compile(
    r"(?:final\s+answer|answer)\s*(?:is)?\s*[:=]?\s*\**\s*\$?\s*(" + _NUM + r")", re.IGNORECASE
)
_HASH_RE = re.compile(r"####\s*\$?\s*(" + _NUM + r")")


def _boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{...}`` (nested braces allowed), or None."""
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    i = start + len("\\boxed{")
    depth = 1
    for j in range(i, len(text)):
        if text[j] == "{":
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return text[i:j]
    return None


def parse_number(text: str) -> Fraction | None:
    """Exact value of a number written as ``-1,234``, ``3.50``, ``7/2`` or ``\\frac{7}{2}``.

    Returns None when ``text`` holds no single number. Fractions keep comparisons exact
    (``0.1 + 0.2`` issues cannot arise): ``"3.0" == "3"``, ``"1/2" == "0.5"``.
    """
    s = text.strip().strip("$ .").replace("−", "-").replace(" ", "")
    m = re.fullmatch(r"\\[dt]?frac\{(-?\d+)\}\{(\d+)\}", s)
    if m:
        return Fraction(int(m.group(1)), int(m.group(2))) if int(m.group(2)) else None
    s = s.removeprefix("\\text{").removesuffix("}") if s.startswith("\\text{") else s
    if not re.fullmatch(_NUM, s):
        return None
    s = s.replace(",", "").lstrip("+")
    try:
        if "/" in s:
            num, den = s.split("/")
            return Fraction(Fraction(num), int(den)) if int(den) else None
        return Fraction(s)
    except (ValueError, ZeroDivisionError):
        return None


def extract_answer(text: str) -> Fraction | None:
    """The final numeric answer of a completion, exactly.

    Looks, in order, for the last ``\\boxed{N}``, the last ``Answer: N`` (also "answer is
    N", "Final answer = N"), the last ``#### N`` (GSM8K), and finally the last number in
    the text. Thousands separators (``1,234``) and negative numbers are handled.

    Args:
        text: a model completion.

    Returns:
        the answer as a :class:`fractions.Fraction`, or None when there is none.
    """
    if not isinstance(text, str):
        return None
    b = _boxed(text)
    if b is not None:
        return parse_number(b)
    for rx in (_ANSWER_RE, _HASH_RE):
        found = rx.findall(text)
        if found:
            return parse_number(found[-1])
    nums = _NUM_RE.findall(text)
    return parse_number(nums[-1]) if nums else None


def _as_fraction(x: Any) -> Fraction | None:
    if isinstance(x, Fraction):
        return x
    if isinstance(x, bool):
        return None
    if isinstance(x, int):
        return Fraction(x)
    if isinstance(x, float):
        return Fraction(x).limit_denominator(10**9) if math.isfinite(x) else None
    if isinstance(x, str):
        return parse_number(x)
    return None


def _labels(name: str, value: Any, n: int) -> list:
    if value is None:
        raise RewardError(f"this reward needs the label '{name}' in each data row")
    vals = list(value)
    if len(vals) != n:
        raise RewardError(f"label '{name}' has {len(vals)} values for {n} completions")
    return vals


# ------------------------------------------------------------------------- built-ins


def math_exact(
    prompts: Sequence[str],
    completions: Sequence[str],
    answer: Sequence[Any] | None = None,
    **labels: Any,
) -> list[float]:
    """1.0 when the extracted final answer equals ``answer`` exactly, else 0.0.

    Args:
        prompts: ``[n]`` (unused).
        completions: ``[n]`` model outputs.
        answer: ``[n]`` reference answers (int, str such as ``"1,234"`` or ``"7/2"``).
    """
    refs = _labels("answer", answer, len(completions))
    out = []
    for c, ref in zip(completions, refs):
        pred, want = extract_answer(c), _as_fraction(ref)
        if want is None:
            raise ValueError(f"reference answer {ref!r} is not a number")
        out.append(1.0 if pred is not None and pred == want else 0.0)
    return out


def math_closeness(
    prompts: Sequence[str],
    completions: Sequence[str],
    answer: Sequence[Any] | None = None,
    **labels: Any,
) -> list[float]:
    """Graded answer reward: ``max(0, 1 - |pred - ans| / max(1, |ans|))``; no answer -> 0.

    Exact answers get 1.0; an answer off by 10% of the reference gets 0.9. Gives a weak
    model a learning signal before it is ever exactly right.
    """
    refs = _labels("answer", answer, len(completions))
    out = []
    for c, ref in zip(completions, refs):
        pred, want = extract_answer(c), _as_fraction(ref)
        if want is None:
            raise ValueError(f"reference answer {ref!r} is not a number")
        if pred is None:
            out.append(0.0)
            continue
        err = abs(pred - want) / max(Fraction(1), abs(want))
        out.append(float(max(Fraction(0), 1 - err)))
    return out


ANSWER_LINE = r"Answer:\s*-?\d[\d,]*(?:\.\d+)?\s*$"


def format_reward(
    pattern: str = ANSWER_LINE, flags: int = re.IGNORECASE | re.MULTILINE, fullmatch: bool = False
) -> RewardFn:
    """A reward that is 1.0 when the completion matches ``pattern`` (``re.search``), else 0.

    The default checks that a line ends with ``Answer: <number>`` (the format the
    arithmetic tasks ask for).
    """
    try:
        rx = re.compile(pattern, flags)
    except re.error as e:
        raise UserError(f"format reward: bad regular expression {pattern!r}: {e}") from None

    def fmt(prompts: Sequence[str], completions: Sequence[str], **labels: Any) -> list[float]:
        m = rx.fullmatch if fullmatch else rx.search
        return [1.0 if m(c.strip()) else 0.0 for c in completions]

    fmt.__name__ = "format_reward"
    return fmt


def length_penalty(target: int = 200, coef: float = 1.0) -> RewardFn:
    """``-coef * min(1, max(0, len(c) - target) / target)``: 0 up to ``target`` characters,
    falling linearly to ``-coef`` at twice the target."""
    if target <= 0:
        raise UserError(f"length_penalty: target must be > 0, got {target}")

    def pen(prompts: Sequence[str], completions: Sequence[str], **labels: Any) -> list[float]:
        return [-coef * min(1.0, max(0, len(c) - target) / target) for c in completions]

    pen.__name__ = "length_penalty"
    return pen


def combine(parts: Sequence[tuple[RewardFn, float]]) -> RewardFn:
    """Weighted sum ``sum_k w_k f_k(prompts, completions, **labels)``.

    A component that raises makes the whole call raise (and
    :func:`trainkit.rlhf.reward_scoring.score` then isolates
    the failing samples); NaN from any component propagates into the sum.
    """
    parts = [(f, float(w)) for f, w in parts]
    if not parts:
        raise UserError("combine: no reward functions given")

    def combined(prompts: Sequence[str], completions: Sequence[str], **labels: Any) -> list[float]:
        total = [0.0] * len(completions)
        for f, w in parts:
            vals = check_reward_values(f(prompts, completions, **labels), len(completions), f)
            total = [a + w * float(b) for a, b in zip(total, vals)]
        return total

    combined.__name__ = "combined"
    return combined


def _code_tests() -> RewardFn:
    from trainkit.rlhf.sandbox import code_tests_reward

    return code_tests_reward()


BUILTINS: dict[str, Callable[[], RewardFn]] = {
    "math_exact": lambda: math_exact,
    "math_closeness": lambda: math_closeness,
    "format": format_reward,
    "length_penalty": length_penalty,
    "code_tests": _code_tests,
}
