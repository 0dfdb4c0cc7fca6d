"""Built-in demo datasets, generated (no download), for SFT recipes and tests.

``builtin:style-chat``: chat examples whose assistant answers all follow one fixed style
-- they open with ``"Ahoy!"`` and close with ``"Arr!"`` around a short correct answer --
so an SFT run's effect is visible in held-out loss and in generations (the fraction of
answers that start with ``Ahoy``). Questions come from a few templates (capitals,
opposites, colours, small sums, animal sounds), shuffled with a fixed seed.
"""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

from trainkit.common.errors import UserError
from trainkit.common.io import atomic_write_text

STYLE_PREFIX = "Ahoy!"
STYLE_SUFFIX = "Arr!"

_CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
             ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Canada", "Ottawa"), ("Peru", "Lima"),
             ("Kenya", "Nairobi"), ("Norway", "Oslo"), ("Greece", "Athens"), ("Cuba", "Havana"),
             ("Poland", "Warsaw"), ("Chile", "Santiago"), ("Ireland", "Dublin"),
             ("Portugal", "Lisbon"), ("Austria", "Vienna"), ("Sweden", "Stockholm"),
             ("Russia", "Moscow"), ("China", "Beijing"), ("India", "New Delhi"),
             ("Thailand", "Bangkok"), ("Mexico", "Mexico City"), ("Finland", "Helsinki")]
_OPPOSITES = [("hot", "cold"), ("big", "small"), ("fast", "slow"), ("up", "down"),
              ("happy", "sad"), ("light", "dark"), ("old", "young"), ("open", "closed"),
              ("early", "late"), ("full", "empty"), ("hard", "soft"), ("wet", "dry"),
              ("strong", "weak"), ("loud", "quiet"), ("rich", "poor"), ("high", "low")]
_COLOURS = [("grass", "green"), ("the sky on a clear day", "blue"), ("snow", "white"),
            ("coal", "black"), ("a ripe banana", "yellow"), ("a ripe tomato", "red"),
            ("an orange", "orange"), ("a carrot", "orange"), ("milk", "white"),
            ("a lemon", "yellow"), ("blood", "red"), ("a crow", "black")]
_SOUNDS = [("dog", "barks"), ("cat", "meows"), ("cow", "moos"), ("duck", "quacks"),
           ("lion", "roars"), ("sheep", "bleats"), ("horse", "neighs"), ("owl", "hoots"),
           ("snake", "hisses"), ("pig", "oinks"), ("frog", "croaks"), ("bee", "buzzes")]


def _pairs(rng: random.Random) -> list[tuple[str, str]]:
    out = []
    for country, city in _CAPITALS:
        out.append((f"What is the capital of {country}?", f"The capital of {country} is {city}."))
    for a, b in _OPPOSITES:
        out.append((f"What is the opposite of '{a}'?", f"The opposite of '{a}' is '{b}'."))
    for thing, colour in _COLOURS:
        out.append((f"What colour is {thing}?", f"{thing[0].upper() + thing[1:]} is {colour}."))
    for animal, sound in _SOUNDS:
        out.append((f"What sound does a {animal} make?", f"A {animal} {sound}."))
    for _ in range(260):
        a, b = rng.randint(1, 20), rng.randint(1, 20)
        out.append((f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."))
    return out


def style_chat_records(n: int = 240, seed: int = 0) -> list[dict]:
    """``n`` chat records ``{"messages": [user, assistant]}`` in the fixed answer style."""
    rng = random.Random(seed)
    pairs = _pairs(rng)
    rng.shuffle(pairs)
    recs, seen = [], set()
    for q, a in pairs:
        if q in seen:
            continue
        seen.add(q)
        recs.append({"messages": [{"role": "user", "content": q},
                                  {"role": "assistant",
                                   "content": f"{STYLE_PREFIX} {a} {STYLE_SUFFIX}"}]})
        if len(recs) == n:
            break
    return recs


def write_style_chat(path: str | os.PathLike, n: int = 240, seed: int = 0) -> Path:
    """Write :func:`style_chat_records` as JSONL (atomically)."""
    text = "".join(json.dumps(r) + "\n" for r in style_chat_records(n, seed))
    return atomic_write_text(path, text)


BUILTIN_DATA = {"style-chat": write_style_chat}


def resolve_data_path(path: str) -> str:
    """``builtin:<name>`` -> a generated file in the cache; other paths unchanged."""
    if not path.startswith("builtin:"):
        return path
    name = path.split(":", 1)[1]
    if name not in BUILTIN_DATA:
        raise UserError(f"data.path '{path}': unknown built-in dataset; known: "
                        + ", ".join(f"builtin:{k}" for k in BUILTIN_DATA))
    from trainkit.llm.models import cache_dir

    out = cache_dir() / "data" / f"{name}.jsonl"
    if not out.is_file():
        BUILTIN_DATA[name](out)
    return str(out)
