"""Reward functions for online RL: rule-based (verifiable), combined, and remote.

A reward is any callable ``f(prompts, completions, **labels) -> list[float]``: one float
per completion, ``labels`` being per-sample lists from the dataset (e.g. ``answer``).
It is named in a config as ``"module:function"``, ``"path/to/file.py:function"`` or a
built-in name (:data:`BUILTINS`); see :func:`load_reward`.

Failures are loud but local: :func:`score` calls the reward on the batch, and when that
raises, once per sample; a sample whose reward raises or is NaN/inf is marked invalid
with its error recorded and counted (:class:`RewardResult`), and the run stops with a
:class:`RewardError` only when more than ``max_invalid_fraction`` of a batch failed.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

from trainkit.common.errors import UserError

log = logging.getLogger(__name__)

RewardFn = Callable[..., Sequence[float]]


class RewardError(UserError):
    """A reward function failed on too many samples, or could not be loaded."""


# ------------------------------------------------------------------ answer extraction

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

    A component that raises makes the whole call raise (and :func:`score` then isolates
    the failing samples); NaN from any component propagates into the sum.
    """
    parts = [(f, float(w)) for f, w in parts]
    if not parts:
        raise UserError("combine: no reward functions given")

    def combined(prompts: Sequence[str], completions: Sequence[str], **labels: Any) -> list[float]:
        total = [0.0] * len(completions)
        for f, w in parts:
            vals = _check_len(f(prompts, completions, **labels), len(completions), f)
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


# ------------------------------------------------------------------------- loading


def load_reward(ref: str | RewardFn) -> RewardFn:
    """Resolve a reward reference.

    Args:
        ref: a callable (returned as is), a built-in name (``math_exact``,
            ``math_closeness``, ``format``, ``length_penalty``, ``code_tests``),
            ``"package.module:func"``
            or ``"path/to/file.py:func"``; ``"http(s)://host:port/path"`` is a
            :class:`RemoteReward` (bearer token from ``$TRAINKIT_RM_TOKEN``);
            ``"sandbox:<module:func or file.py:func>"`` runs the reward per sample in
            :class:`trainkit.rlhf.sandbox.SandboxedReward`.

    Raises:
        RewardError: with one line naming what could not be found.
    """
    if callable(ref):
        return ref
    if not isinstance(ref, str) or not ref.strip():
        raise RewardError(f"reward must be a name or 'module:function', got {ref!r}")
    if ref in BUILTINS:
        return BUILTINS[ref]()
    if ref.startswith(("http://", "https://")):
        import os

        return RemoteReward(ref, token=os.environ.get("TRAINKIT_RM_TOKEN") or None)
    if ref.startswith("sandbox:"):
        from trainkit.rlhf.sandbox import SandboxedReward

        return SandboxedReward(ref[len("sandbox:") :])
    if ":" not in ref:
        raise RewardError(
            f"reward '{ref}' is not a built-in ({', '.join(BUILTINS)}) "
            "nor of the form 'module:function' or 'file.py:function'"
        )
    target, _, name = ref.rpartition(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise RewardError(f"reward file not found: {path}")
        modname = f"_trainkit_reward_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(modname, path)
        if spec is None or spec.loader is None:
            raise RewardError(f"cannot load reward file {path}")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[modname] = mod
        try:
            spec.loader.exec_module(mod)
        except Exception as e:
            sys.modules.pop(modname, None)
            raise RewardError(
                f"{path}: importing the reward file failed: {type(e).__name__}: {e}"
            ) from None
    else:
        try:
            mod = importlib.import_module(target)
        except ImportError as e:
            raise RewardError(f"reward module '{target}' cannot be imported: {e}") from None
    fn = getattr(mod, name, None)
    if fn is None or not callable(fn):
        raise RewardError(f"reward '{ref}': '{name}' is not a callable in {target}")
    return fn


# ------------------------------------------------------------------------- scoring


def _check_len(vals: Any, n: int, fn: Any) -> list:
    try:
        vals = list(vals)
    except TypeError:
        raise TypeError(
            f"reward {getattr(fn, '__name__', fn)} returned "
            f"{type(vals).__name__}, expected a list of floats"
        ) from None
    if len(vals) != n:
        raise ValueError(
            f"reward {getattr(fn, '__name__', fn)} returned {len(vals)} values for {n} completions"
        )
    return vals


@dataclass
class RewardResult:
    """Rewards of one batch, with per-sample validity.

    Attributes:
        rewards: ``[n]`` floats; an invalid sample holds ``fill`` (default 0.0).
        valid: ``[n]`` bools; False where the reward raised or was NaN/inf.
        errors: ``[n]`` error text (None when valid).
    """

    rewards: list[float]
    valid: list[bool]
    errors: list[str | None] = field(default_factory=list)

    @property
    def n_invalid(self) -> int:
        return sum(not v for v in self.valid)

    @property
    def n_nan(self) -> int:
        return sum(1 for e in self.errors if e is not None and e.startswith("non-finite"))

    @property
    def n_raised(self) -> int:
        return self.n_invalid - self.n_nan

    def stats(self) -> dict[str, float]:
        """Counts for the metrics log: ``reward_invalid``, ``reward_nan``, ``reward_raised``."""
        return {
            "reward_invalid": self.n_invalid,
            "reward_nan": self.n_nan,
            "reward_raised": self.n_raised,
        }


def _to_float(v: Any) -> float:
    if hasattr(v, "item"):
        v = v.item()
    return float(v)


def score(
    fn: RewardFn,
    prompts: Sequence[str],
    completions: Sequence[str],
    labels: dict[str, Sequence[Any]] | None = None,
    max_invalid_fraction: float = 0.5,
    fill: float = 0.0,
) -> RewardResult:
    """Call a reward on a batch, isolating failures to the samples that caused them.

    The batch is scored in one call; if that raises, each sample is scored alone. Every
    invalid sample is logged with its error (a warning per batch) and counted.

    Args:
        fn: the reward callable.
        prompts: ``[n]``.
        completions: ``[n]``.
        labels: per-sample label lists, each of length ``n``.
        max_invalid_fraction: raise :class:`RewardError` when more than this share of
            the batch is invalid (``1.0`` never raises).
        fill: the reward value stored for invalid samples.

    Returns:
        :class:`RewardResult`.
    """
    n = len(completions)
    labels = dict(labels or {})
    if len(prompts) != n:
        raise ValueError(f"{len(prompts)} prompts for {n} completions")
    for k, v in labels.items():
        if not hasattr(v, "__len__") or len(v) != n:
            raise ValueError(
                f"label '{k}' must hold one value per completion ({n}), got "
                f"{len(v) if hasattr(v, '__len__') else type(v).__name__}"
            )
    name = getattr(fn, "__name__", repr(fn))
    raw: list[Any] = [None] * n
    errs: list[str | None] = [None] * n
    try:
        raw = _check_len(fn(list(prompts), list(completions), **labels), n, fn)
    except Exception as batch_err:  # isolate the failing samples
        log.debug("reward %s failed on the batch (%s); scoring one by one", name, batch_err)
        for i in range(n):
            one = {k: [v[i]] for k, v in labels.items()}
            try:
                raw[i] = _check_len(fn([prompts[i]], [completions[i]], **one), 1, fn)[0]
            except Exception as e:
                errs[i] = f"{type(e).__name__}: {e}"
    # a reward that knows why a sample failed (e.g. SandboxedReward) says so in last_errors
    known = getattr(fn, "last_errors", None)
    known = known if isinstance(known, list) and len(known) == n else [None] * n
    rewards, valid = [], []
    for i in range(n):
        val = fill
        if errs[i] is None:
            try:
                val = _to_float(raw[i])
                if not math.isfinite(val):
                    errs[i] = known[i] or f"non-finite reward {val}"
                    val = fill
            except (TypeError, ValueError) as e:
                errs[i] = f"{type(e).__name__}: reward value {raw[i]!r} is not a number ({e})"
                val = fill
        rewards.append(val)
        valid.append(errs[i] is None)
    res = RewardResult(rewards, valid, errs)
    if res.n_invalid:
        first = next(e for e in errs if e is not None)
        log.warning(
            "reward %s: %d of %d samples invalid (%d raised, %d non-finite); first: %s",
            name,
            res.n_invalid,
            n,
            res.n_raised,
            res.n_nan,
            first,
        )
        if n and res.n_invalid / n > max_invalid_fraction:
            raise RewardError(
                f"reward {name} failed on {res.n_invalid} of {n} samples "
                f"(limit {max_invalid_fraction:.0%}); first error: {first}"
            )
    return res


# ------------------------------------------------------------------------- remote


class RemoteReward:
    """A reward model served over HTTP (see :mod:`trainkit.rlhf.serve`).

    POSTs ``{"query": [prompt + completion, ...], "prompts": [...], "labels": {...}}`` and
    reads ``{"rewards": [...]}`` (the OpenRLHF remote-RM protocol). Connection errors,
    timeouts, 429 and 5xx are retried ``retries`` times with exponential backoff; other
    4xx fail at once.

    Args:
        url: e.g. ``http://127.0.0.1:5000/get_reward``.
        timeout: seconds per request.
        retries: extra attempts after the first.
        token: bearer token, if the server requires one.
        backoff: first retry delay in seconds (doubles each retry).
        batch_size: split large batches into requests of at most this many queries.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        retries: int = 3,
        token: str | None = None,
        backoff: float = 0.5,
        batch_size: int = 256,
    ):
        if not url.startswith(("http://", "https://")):
            raise UserError(f"remote reward url must start with http:// or https://, got {url!r}")
        self.url, self.timeout, self.retries = url, float(timeout), int(retries)
        self.token, self.backoff, self.batch_size = token, float(backoff), int(batch_size)
        self.__name__ = f"RemoteReward({url})"

    def _post(self, payload: dict) -> list[float]:
        import urllib.error
        import urllib.request

        body = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    out = json.loads(resp.read().decode("utf-8"))
                rewards = out["rewards"] if isinstance(out, dict) else None
                if not isinstance(rewards, list):
                    raise ValueError(f"reply has no 'rewards' list: {str(out)[:200]}")
                return rewards
            except urllib.error.HTTPError as e:
                detail = e.read()[:200].decode("utf-8", "replace")
                last = RuntimeError(f"{self.url}: HTTP {e.code}: {detail}")
                if e.code not in (429, 500, 502, 503, 504):
                    raise last from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = RuntimeError(f"{self.url}: {getattr(e, 'reason', e)}")
        raise RuntimeError(f"remote reward failed after {self.retries + 1} attempts: {last}")

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **labels: Any
    ) -> list[float]:
        out: list[float] = []
        for s in range(0, len(completions), self.batch_size):
            e = s + self.batch_size
            payload = {
                "query": [p + c for p, c in zip(prompts[s:e], completions[s:e])],
                "prompts": list(prompts[s:e]),
            }
            lab = {k: list(v[s:e]) for k, v in labels.items()}
            if lab:
                payload["labels"] = lab
            got = self._post(payload)
            out += _check_len(got, len(payload["query"]), self)
        return out
