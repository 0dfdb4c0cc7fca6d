"""A small local chat dataset with one fixed answer style, for SFT tests and demos.

Every assistant answer reads ``"Answer: <short answer>. -- trainkit bot"``: it starts with
:data:`ANSWER_PREFIX` and ends with :data:`SIGN_OFF`, a style SmolLM2-135M-Instruct never
produces on its own, so a fine-tune that moves generations towards it is easy to detect
(:func:`matches_style`). Topics: simple facts (capitals, animals, colours, opposites,
counts) and small-number arithmetic. Train and held-out questions never overlap.

Usage::

    python -m trainkit.llm.toy_data OUT_DIR [--n 200] [--eval 40] [--seed 0]
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from trainkit.common.io import atomic_write_text

ANSWER_PREFIX = "Answer:"
SIGN_OFF = "-- trainkit bot"

_CAPITALS = {
    "France": "Paris",
    "Germany": "Berlin",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Japan": "Tokyo",
    "Egypt": "Cairo",
    "Canada": "Ottawa",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Poland": "Warsaw",
    "Portugal": "Lisbon",
    "Austria": "Vienna",
    "Ireland": "Dublin",
    "Cuba": "Havana",
    "Chile": "Santiago",
    "Sweden": "Stockholm",
    "Finland": "Helsinki",
    "Thailand": "Bangkok",
}
_ANIMAL_SOUNDS = {
    "cow": "moo",
    "dog": "woof",
    "cat": "meow",
    "duck": "quack",
    "sheep": "baa",
    "owl": "hoot",
    "lion": "roar",
    "snake": "hiss",
}
_LEGS = {
    "spider": "8",
    "insect": "6",
    "dog": "4",
    "bird": "2",
    "horse": "4",
    "human": "2",
    "octopus": "8 arms",
    "ant": "6",
}
_COLOURS = {
    "the sky on a clear day": "blue",
    "grass": "green",
    "snow": "white",
    "a ripe banana": "yellow",
    "coal": "black",
    "a ripe tomato": "red",
    "an orange": "orange",
    "milk": "white",
}
_OPPOSITES = {
    "hot": "cold",
    "up": "down",
    "big": "small",
    "fast": "slow",
    "light": "dark",
    "open": "closed",
    "early": "late",
    "happy": "sad",
    "full": "empty",
    "old": "new",
}
_COUNTS = {
    "days in a week": "7",
    "months in a year": "12",
    "hours in a day": "24",
    "minutes in an hour": "60",
    "sides of a triangle": "3",
    "sides of a square": "4",
    "continents on Earth": "7",
    "players on a soccer team": "11",
}

_QUESTION_FORMS = {
    "capital": ["What is the capital of {}?", "Which city is the capital of {}?"],
    "sound": ["What sound does a {} make?", "What does a {} say?"],
    "legs": ["How many legs does a {} have?"],
    "colour": ["What colour is {}?"],
    "opposite": ["What is the opposite of '{}'?"],
    "count": ["How many {} are there?"],
    "add": ["What is {} + {}?", "Add {} and {}.", "Compute {} plus {}."],
    "sub": ["What is {} - {}?", "Subtract {1} from {0}."],
    "mul": ["What is {} times {}?", "Multiply {} by {}."],
}


def answer_text(short: str) -> str:
    """The fixed style: ``"Answer: <short>. -- trainkit bot"``."""
    return f"{ANSWER_PREFIX} {short}. {SIGN_OFF}"


def matches_style(text: str) -> bool:
    """Whether a generated answer follows the style (prefix and sign-off)."""
    t = text.strip()
    return t.startswith(ANSWER_PREFIX) and t.endswith(SIGN_OFF)


def _pool(rng: random.Random) -> list[tuple[str, str]]:
    """Every (question, short answer) pair, one question form drawn per fact."""
    out = []
    tables = [
        ("capital", _CAPITALS),
        ("sound", _ANIMAL_SOUNDS),
        ("legs", _LEGS),
        ("colour", _COLOURS),
        ("opposite", _OPPOSITES),
        ("count", _COUNTS),
    ]
    for kind, table in tables:
        for key, val in table.items():
            out.append((rng.choice(_QUESTION_FORMS[kind]).format(key), val))
    for a in range(1, 13):
        for b in range(1, 13):
            out.append((rng.choice(_QUESTION_FORMS["add"]).format(a, b), str(a + b)))
            if a > b:
                out.append((rng.choice(_QUESTION_FORMS["sub"]).format(a, b), str(a - b)))
            if a <= 9 and b <= 9 and a <= b:
                out.append((rng.choice(_QUESTION_FORMS["mul"]).format(a, b), str(a * b)))
    return out


def make_examples(n: int = 200, n_eval: int = 40, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(train, eval)`` chat records ``{"messages": [user, assistant]}``; disjoint questions.

    About a third are facts and the rest arithmetic, whatever ``n`` is (facts are used
    first up to their share, so small datasets keep both topics).
    """
    rng = random.Random(seed)
    pool = _pool(rng)
    facts = [p for p in pool if not any(c.isdigit() for c in p[0])]
    arith = [p for p in pool if any(c.isdigit() for c in p[0])]
    rng.shuffle(facts)
    rng.shuffle(arith)
    total = n + n_eval
    if total > len(pool):
        raise ValueError(f"at most {len(pool)} distinct examples, asked for {total}")
    k = min(len(facts), total // 3)
    chosen = facts[:k] + arith[: total - k]
    rng.shuffle(chosen)
    recs = [
        {
            "messages": [
                {"role": "user", "content": q},
                {"role": "assistant", "content": answer_text(a)},
            ]
        }
        for q, a in chosen
    ]
    return recs[:n], recs[n:]


def write_toy_chat(
    out_dir: str | Path, n: int = 200, n_eval: int = 40, seed: int = 0
) -> tuple[Path, Path]:
    """Write ``train.jsonl`` and ``eval.jsonl`` under ``out_dir`` (atomically)."""
    train, held = make_examples(n, n_eval, seed)
    out = Path(out_dir)
    paths = []
    for name, recs in (("train.jsonl", train), ("eval.jsonl", held)):
        text = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in recs)
        paths.append(atomic_write_text(out / name, text))
    return paths[0], paths[1]


def main(argv: list[str] | None = None) -> int:
    import argparse

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out_dir")
    p.add_argument("--n", type=int, default=200)
    p.add_argument("--eval", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    tr, ev = write_toy_chat(a.out_dir, a.n, a.eval, a.seed)
    print(f"wrote {tr} and {ev}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
