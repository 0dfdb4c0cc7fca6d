"""Verifiable tasks for the RL and preference demos: arithmetic with exact answers.

* :func:`make_arithmetic` draws problems such as ``What is 3 + 5?`` deterministically
  from a seed. Whether a problem belongs to the train or the held-out split depends only
  on its expression (a hash), so the two splits never share a problem, whatever the
  seed or the sizes. Difficulty knobs: operand range, number of operands, operators,
  word-problem phrasing.
* Prompts ask for the answer in a fixed format: a final line ``Answer: <number>``
  (``style="answer_line"``, checked by :func:`trainkit.rlhf.rewards.format_reward`) or the
  bare number (``style="number_only"``).
* :func:`preference_pairs` / :func:`write_preference_data` build ``{"prompt", "chosen",
  "rejected"}`` pairs from these problems: chosen is the correct bare number; rejected is
  a wordy reply (``kind="format"``), a wrong number (``kind="answer"``) or either
  (``kind="mixed"``).

The default task (single-digit sums) is meant to be within reach of a 135M-parameter
instruct model, so that sampled answers sometimes earn reward.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from trainkit.common.errors import UserError
from trainkit.common.io import atomic_write_text

ANSWER_INSTRUCTION = "Finish your reply with a line of the form 'Answer: <number>'."
NUMBER_INSTRUCTION = "Reply with only the final number."


@dataclass(frozen=True)
class ArithmeticSpec:
    """Difficulty of an arithmetic task.

    Attributes:
        low: smallest operand.
        high: largest operand (inclusive).
        n_operands: operands per problem (>= 2).
        ops: operators to draw from, a subset of ``"+-*"``.
        words: phrase two-operand ``+``/``-`` problems as short word problems.
        style: ``"answer_line"`` or ``"number_only"`` (what the prompt asks for).
        heldout_fraction: share of all distinct problems reserved for held-out.
    """

    low: int = 0
    high: int = 9
    n_operands: int = 2
    ops: str = "+"
    words: bool = False
    style: str = "answer_line"
    heldout_fraction: float = 0.2

    def validate(self) -> None:
        if self.high < self.low:
            raise UserError(f"arithmetic task: high ({self.high}) < low ({self.low})")
        if self.n_operands < 2:
            raise UserError(f"arithmetic task: n_operands must be >= 2, got {self.n_operands}")
        if not self.ops or set(self.ops) - set("+-*"):
            raise UserError(f"arithmetic task: ops must use only + - *, got {self.ops!r}")
        if self.style not in ("answer_line", "number_only"):
            raise UserError(
                f"arithmetic task: style must be answer_line or number_only, got {self.style!r}"
            )
        if not 0.0 < self.heldout_fraction < 1.0:
            raise UserError(
                f"arithmetic task: heldout_fraction must be in (0, 1), got {self.heldout_fraction}"
            )


#: built-in task names (``data.path`` in RL configs) -> difficulty.
PRESETS: dict[str, ArithmeticSpec] = {
    "arithmetic": ArithmeticSpec(),
    "arithmetic_easy": ArithmeticSpec(),
    "arithmetic_small": ArithmeticSpec(low=0, high=19),
    "arithmetic_medium": ArithmeticSpec(low=0, high=50, ops="+-"),
    "arithmetic_hard": ArithmeticSpec(low=0, high=99, n_operands=3, ops="+-*"),
    "arithmetic_words": ArithmeticSpec(low=1, high=20, ops="+-", words=True),
    "arithmetic_number_only": ArithmeticSpec(style="number_only"),
}


def evaluate_expression(operands: list[int], ops: list[str]) -> int:
    """Exact value of ``o0 op0 o1 op1 o2 ...`` with ``*`` before ``+``/``-`` (no eval)."""
    terms, signs = [operands[0]], []
    for op, x in zip(ops, operands[1:]):
        if op == "*":
            terms[-1] *= x
        else:
            signs.append(op)
            terms.append(x)
    total = terms[0]
    for s, x in zip(signs, terms[1:]):
        total = total + x if s == "+" else total - x
    return total


_NAMES = ["Tom", "Ana", "Li", "Sara", "Omar", "Mia"]
_ITEMS = ["apples", "books", "coins", "stamps", "marbles", "pens"]


def _phrase(operands: list[int], ops: list[str], spec: ArithmeticSpec, h: int) -> str:
    expr = " ".join([str(operands[0])] + [f"{o} {x}" for o, x in zip(ops, operands[1:])])
    if spec.words and len(operands) == 2 and ops[0] in "+-":
        who, what = _NAMES[h % len(_NAMES)], _ITEMS[(h // 7) % len(_ITEMS)]
        a, b = operands
        if ops[0] == "+":
            q = f"{who} has {a} {what} and gets {b} more. How many {what} does {who} have now?"
        else:
            q = f"{who} has {a} {what} and gives away {b}. How many {what} are left?"
    else:
        q = f"What is {expr}?"
    return q + " " + (ANSWER_INSTRUCTION if spec.style == "answer_line" else NUMBER_INSTRUCTION)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def _is_heldout(expr: str, frac: float) -> bool:
    return (_hash("split:" + expr) % 10_000) < int(round(frac * 10_000))


def _space_size(spec: ArithmeticSpec) -> int:
    return (spec.high - spec.low + 1) ** spec.n_operands * len(spec.ops) ** (spec.n_operands - 1)


def _draw(rng: random.Random, spec: ArithmeticSpec) -> tuple[list[int], list[str]]:
    if spec.words and spec.n_operands == 2 and "-" in spec.ops:
        # keep word-problem differences non-negative ("how many are left")
        a, b = rng.randint(spec.low, spec.high), rng.randint(spec.low, spec.high)
        op = rng.choice(spec.ops)
        return ([max(a, b), min(a, b)] if op == "-" else [a, b]), [op]
    operands = [rng.randint(spec.low, spec.high) for _ in range(spec.n_operands)]
    return operands, [rng.choice(spec.ops) for _ in range(spec.n_operands - 1)]


def make_arithmetic(
    n: int,
    seed: int = 0,
    split: str = "train",
    spec: ArithmeticSpec | None = None,
    unique: bool | None = None,
) -> list[dict]:
    """Draw ``n`` arithmetic records of one split.

    Args:
        n: number of records.
        seed: sampling seed (same seed, same records).
        split: ``"train"`` or ``"heldout"``.
        spec: difficulty (default: single-digit sums, ``Answer:`` line).
        unique: no repeated problem (default: True for held-out; train repeats problems
            when the space is smaller than ``n``).

    Returns:
        ``[{"prompt": str, "answer": int, "expression": str}, ...]``; ``answer`` and
        ``expression`` are passed to rewards as labels.
    """
    spec = spec or ArithmeticSpec()
    spec.validate()
    if split not in ("train", "heldout"):
        raise UserError(f"split must be 'train' or 'heldout', got {split!r}")
    unique = (split == "heldout") if unique is None else unique
    want_held = split == "heldout"
    rng = random.Random(f"arithmetic:{seed}:{split}")
    out, seen = [], set()
    misses = 0  # consecutive draws that could not be used
    while len(out) < n:
        misses += 1
        if misses > 20_000:
            if unique and out:
                break  # the split has fewer distinct problems than asked for
            raise UserError(
                f"arithmetic task: cannot draw {n} {split} problems from a space "
                f"of {_space_size(spec)} (widen the operand range)"
            )
        operands, ops = _draw(rng, spec)
        expr = " ".join([str(operands[0])] + [f"{o} {x}" for o, x in zip(ops, operands[1:])])
        if _is_heldout(expr, spec.heldout_fraction) != want_held:
            continue
        if unique and expr in seen:
            continue
        seen.add(expr)
        misses = 0
        ans = evaluate_expression(operands, ops)
        out.append(
            {"prompt": _phrase(operands, ops, spec, _hash(expr)), "answer": ans, "expression": expr}
        )
    return out


def parse_task(name: str) -> ArithmeticSpec:
    """A preset name, optionally with overrides: ``"arithmetic:high=20,n_operands=3"``."""
    base, _, rest = name.partition(":")
    if base not in PRESETS:
        raise UserError(f"unknown task '{base}'; built-in tasks: {', '.join(PRESETS)}")
    spec = asdict(PRESETS[base])
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, val = item.partition("=")
        if not eq or key not in spec:
            raise UserError(f"task '{name}': bad option '{item}'; options: {', '.join(spec)}")
        cur = spec[key]
        try:
            if isinstance(cur, bool):
                if val.lower() not in ("true", "false", "1", "0"):
                    raise ValueError(val)
                spec[key] = val.lower() in ("true", "1")
            else:
                spec[key] = type(cur)(val)
        except ValueError:
            raise UserError(
                f"task '{name}': option {key} expects {type(cur).__name__}, got {val!r}"
            ) from None
    out = ArithmeticSpec(**spec)
    out.validate()
    return out


def load_task(
    name: str = "arithmetic", seed: int = 0, n_train: int = 2000, n_heldout: int = 100
) -> tuple[list[dict], list[dict]]:
    """``(train, heldout)`` prompt records of a built-in task (see :data:`PRESETS`)."""
    spec = parse_task(name)
    return (
        make_arithmetic(n_train, seed, "train", spec),
        make_arithmetic(n_heldout, seed, "heldout", spec),
    )


# ------------------------------------------------------------------ preference pairs

_WORDY = [
    "Sure! Let's work it out step by step. We need to compute {expr}. "
    "Doing the arithmetic carefully, the result is {x}.",
    "Great question! To find the answer, I will calculate {expr}, which gives {x}. "
    "I hope this helps!",
    "Let me think about this. {expr} equals {x}. So the final answer is {x}.",
    "The problem asks for {expr}. Adding everything up, we get {x}.",
]


def _wrong(ans: int, rng: random.Random) -> int:
    return ans + rng.choice([-3, -2, -1, 1, 2, 3])


def preference_pairs(records: list[dict], seed: int = 0, kind: str = "format") -> list[dict]:
    """Preference pairs from verifiable records.

    Args:
        records: from :func:`make_arithmetic` (``number_only`` prompts fit best).
        seed: seed of the rejected answers.
        kind: ``"format"``: chosen = the correct bare number, rejected = a wordy reply
            (with the correct number half the time, a wrong one otherwise);
            ``"answer"``: chosen = correct number, rejected = a wrong number;
            ``"mixed"``: either, per pair.

    Returns:
        ``[{"prompt", "chosen", "rejected"}, ...]``.
    """
    if kind not in ("format", "answer", "mixed"):
        raise UserError(f"preference kind must be format, answer or mixed, got {kind!r}")
    rng = random.Random(f"pairs:{seed}:{kind}")
    out = []
    for r in records:
        ans = int(r["answer"])
        k = kind if kind != "mixed" else rng.choice(["format", "answer"])
        if k == "format":
            x = ans if rng.random() < 0.5 else _wrong(ans, rng)
            rejected = rng.choice(_WORDY).format(expr=r["expression"], x=x)
        else:
            rejected = str(_wrong(ans, rng))
        out.append({"prompt": r["prompt"], "chosen": str(ans), "rejected": rejected})
    return out


def _jsonl(rows: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)


def write_preference_data(
    folder: str | Path,
    n: int = 1000,
    seed: int = 0,
    n_heldout: int = 100,
    kind: str = "format",
    task: str = "arithmetic_number_only",
) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``heldout.jsonl`` preference pairs (atomically).

    The held-out pairs come from held-out problems only.

    Returns:
        ``(train_path, heldout_path)``.
    """
    spec = parse_task(task)
    folder = Path(folder)
    train = preference_pairs(make_arithmetic(n, seed, "train", spec), seed, kind)
    held = preference_pairs(make_arithmetic(n_heldout, seed, "heldout", spec), seed + 1, kind)
    tp = atomic_write_text(folder / "train.jsonl", _jsonl(train))
    hp = atomic_write_text(folder / "heldout.jsonl", _jsonl(held))
    return tp, hp


def write_task_data(
    folder: str | Path,
    task: str = "arithmetic",
    seed: int = 0,
    n_train: int = 2000,
    n_heldout: int = 100,
) -> tuple[Path, Path]:
    """Write RL prompt records ``{"prompt", "answer", "expression"}`` as two jsonl files."""
    train, held = load_task(task, seed, n_train, n_heldout)
    folder = Path(folder)
    return (
        atomic_write_text(folder / "train.jsonl", _jsonl(train)),
        atomic_write_text(folder / "heldout.jsonl", _jsonl(held)),
    )


# ------------------------------------------------------------------ query scoring

_QUESTION_RE = re.compile(r"What is (-?\d+(?: [-+*] -?\d+)+)\?")


def score_arithmetic_queries(queries: list[str]) -> list[float]:
    """Rule scorer for the reward server: 1.0 when a query's answer is exactly right.

    A query is ``prompt + completion`` (chat-template text allowed). The first ``What is
    <expression>?`` (as written by :func:`make_arithmetic`) names the problem; the answer
    is extracted (:func:`trainkit.rlhf.rewards.extract_answer`) from the text after the
    prompt's instruction, or after the question when there is none. A query without a
    recognisable question scores 0.0.
    """
    from trainkit.rlhf.rewards import extract_answer

    out = []
    for q in queries:
        m = _QUESTION_RE.search(q)
        if m is None:
            out.append(0.0)
            continue
        toks = m.group(1).split()
        want = evaluate_expression([int(x) for x in toks[::2]], toks[1::2])
        rest = q[m.end() :]
        for instr in (ANSWER_INSTRUCTION, NUMBER_INSTRUCTION):
            j = rest.find(instr)
            if j >= 0:
                rest = rest[j + len(instr) :]
                break
        pred = extract_answer(rest)
        out.append(1.0 if pred is not None and pred == want else 0.0)
    return out
