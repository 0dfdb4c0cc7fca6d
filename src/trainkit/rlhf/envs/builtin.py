"""Built-in environments and the prompt tasks they play on.

* ``tool_math``: a numeric question answered with tools (default: the calculator); the
  final reply scores 1 when its answer (``Answer: N``, the last number, ...) is exact.
  Its task ``products`` asks for products of a 3-digit and a 2-digit number, beyond what
  SmolLM2-135M multiplies in its head.
* ``guess_number``: a feedback game for tests: guess a secret integer in ``[1, high]``
  from "higher" / "lower" replies; reward 1 when found, ``-0.1`` per turn beyond the first
  (so fewer turns is better) and 0 when the turns run out.

Tasks are ``data.path`` names like the arithmetic ones of :mod:`trainkit.rlhf.tasks`:
``products`` and ``guess_number``, each with a train and a held-out split that share no
problem (split by a hash of the problem, as the arithmetic tasks).
"""

from __future__ import annotations

import random
from fractions import Fraction

from trainkit.rlhf.envs.base import Step, ToolEnv

PRODUCTS_PROMPT = "What is {a} * {b}? Finish your reply with a line of the form 'Answer: <number>'."
GUESS_PROMPT = (
    "I am thinking of an integer from 1 to {high}. Guess it: reply with one number. "
    "I will say higher or lower."
)


class ToolMathEnv(ToolEnv):
    """``tool_math``: reward 1.0 for an exactly right final answer, else 0.0."""

    def score(self, reply: str) -> tuple[float, bool]:
        from trainkit.rlhf.reward_rules import extract_answer

        got = extract_answer(reply)
        ok = got is not None and got == Fraction(str(self.record["answer"]))
        return float(ok), ok


class GuessNumberEnv:
    """``guess_number``: the record holds ``secret`` and ``high``."""

    def __init__(self, record: dict, tools: dict, turn_penalty: float = 0.1):
        self.record, self.turn_penalty, self.turns = record, turn_penalty, 0

    def reset(self) -> list[dict]:
        from trainkit.llm.data_formats import prompt_messages

        return prompt_messages(self.record["prompt"], None)

    def step(self, reply: str) -> Step:
        import re

        self.turns += 1
        m = re.search(r"-?\d+", reply)
        secret = int(self.record["secret"])
        if m is None:
            return Step("Reply with one number.", 0.0, False, {})
        guess = int(m.group())
        if guess == secret:
            bonus = 1.0 - self.turn_penalty * (self.turns - 1)
            return Step(None, max(bonus, 0.0), True, {"correct": True})
        return Step("higher" if guess < secret else "lower", 0.0, False, {})


#: built-in environments (``env.name``)
ENVS = {"tool_math": ToolMathEnv, "guess_number": GuessNumberEnv}


def _held_out(key: str, frac: float = 0.2) -> bool:
    import hashlib

    h = int.from_bytes(hashlib.sha256(("split:" + key).encode()).digest()[:8], "big")
    return h % 10_000 < int(frac * 10_000)


def make_products(n: int, seed: int, split: str) -> list[dict]:
    """``n`` records ``{"prompt", "answer", "expression"}`` of ``a * b``, ``a`` in
    100..999 and ``b`` in 10..99, of the ``"train"`` or ``"heldout"`` split (disjoint)."""
    rng = random.Random(f"products:{seed}:{split}")
    out, seen = [], set()
    while len(out) < n:
        a, b = rng.randint(100, 999), rng.randint(10, 99)
        expr = f"{a} * {b}"
        if _held_out(expr) != (split == "heldout") or (split == "heldout" and expr in seen):
            continue
        seen.add(expr)
        out.append(
            {"prompt": PRODUCTS_PROMPT.format(a=a, b=b), "answer": a * b, "expression": expr}
        )
    return out


def make_guess(n: int, seed: int, split: str, high: int = 8) -> list[dict]:
    """``n`` records ``{"prompt", "secret", "high"}``: secrets 1..``high``, held-out split
    by a hash of ``(seed, index)`` so the two splits differ."""
    rng = random.Random(f"guess:{seed}:{split}")
    prompt = GUESS_PROMPT.format(high=high)
    return [{"prompt": prompt, "secret": rng.randint(1, high), "high": high} for _ in range(n)]


#: env tasks (``data.path``): name -> ``(train, held_out)`` maker
TASKS = {
    "products": lambda seed: (
        make_products(2000, seed, "train"),
        make_products(100, seed, "heldout"),
    ),
    "guess_number": lambda seed: (
        make_guess(512, seed, "train"),
        make_guess(64, seed + 1, "heldout"),
    ),
}
