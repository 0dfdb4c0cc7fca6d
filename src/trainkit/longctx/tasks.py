"""Synthetic long-context samples, one function per task, deterministic by seed.

Every task returns a record::

    {"messages": [{"role": "user", "content": CONTEXT + "\\n\\n" + QUESTION},
                  {"role": "assistant", "content": ANSWER}],
     "meta": {"task", "answer", "depth", "depths", "target_depth", "length",
              "target_length", "unit", "source", "seed", "index"}}

``length`` is the user turn's length in ``unit`` (characters, or tokens of the
tokenizer given to :class:`~trainkit.longctx.haystack.Meter`); ``depth`` is the fraction
of the context before the (first) answer-bearing insertion.

Tasks (the paper's data, sec. 2 of arXiv 2404.19553, plus the usual retrieval probes):

* ``passkey``   - one pass key hidden in text (Mohtashami & Jaggi 2023, arXiv 2305.16300).
* ``needle``    - "the special magic number for <town> is <7 digits>" (needle in a haystack).
* ``kv``        - several "key -> value" lines; asked for one of them (multi-key retrieval).
* ``single_qa`` - one fact of one person among many generated biographies.
* ``multi_qa``  - compare or combine facts of two people placed far apart.
* ``summary``   - summarise one person's biography (all of its dated facts, in order).
* ``topics``    - sections on several stdlib modules; name the first (LongChat topics).

Haystack ``source``: ``stdlib`` (real text, :mod:`trainkit.longctx.haystack`), ``bio``
(other people's biographies) or ``repeat`` (the classic "The grass is green..." filler).
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any

from trainkit.common.errors import UserError
from trainkit.longctx import bio
from trainkit.longctx.haystack import Meter, Placed, compose, stdlib_paragraphs

REPEAT_FILLER = (
    "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
)


def sample_rng(seed: int, task: str, index: int) -> random.Random:
    """The generator of sample ``index`` of ``task`` (string seeds hash with SHA-512: stable)."""
    return random.Random(f"trainkit-longctx:{seed}:{task}:{index}")


def _pool(
    source: str, rng: random.Random, avoid: set[str] | None = None, n_people: int = 64
) -> tuple[list[str], str]:
    """Filler paragraphs for ``source`` and the separator between them (``n_people``
    distractor biographies for ``bio``)."""
    if source == "stdlib":
        return [p for _, p in stdlib_paragraphs()], " "
    if source == "repeat":
        return [REPEAT_FILLER], " "
    if source == "bio":
        used = set(avoid or ())
        return [bio.make_person(rng, used).paragraph() for _ in range(n_people)], "\n\n"
    raise UserError(f"unknown haystack source '{source}'; expected stdlib, bio or repeat")


def _digits(rng: random.Random, n: int) -> str:
    return str(rng.randint(10 ** (n - 1), 10**n - 1))


def _record(
    task: str,
    placed: Placed,
    question: str,
    answer: str,
    meter: Meter,
    *,
    target_len: int,
    target_depth: float,
    source: str,
    seed: int,
    index: int,
    extra: dict | None = None,
) -> dict:
    user = placed.text + "\n\n" + question
    meta = {
        "task": task,
        "answer": answer,
        "depth": round(placed.depths[0], 4) if placed.depths else 0.0,
        "depths": [round(d, 4) for d in placed.depths],
        "target_depth": target_depth,
        "length": meter(user),
        "target_length": target_len,
        "unit": meter.unit,
        "source": source,
        "seed": seed,
        "index": index,
    }
    meta.update(extra or {})
    return {
        "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": answer}],
        "meta": meta,
    }


def _budget(target_len: int, question: str, meter: Meter) -> int:
    return target_len - meter("\n\n" + question)


def passkey(rng, meter, target_len, depth, *, source="stdlib", digits=5, **_) -> tuple:
    key = _digits(rng, digits)
    needle = f"The pass key is {key}. Remember it. {key} is the pass key."
    q = "What is the pass key? Answer with the number only."
    pool, sep = _pool(source, rng)
    placed = compose(rng, pool, _budget(target_len, q, meter), [(depth, needle)], meter, sep=sep)
    return placed, q, key, {"needle": needle}


def needle(rng, meter, target_len, depth, *, source="stdlib", digits=7, **_) -> tuple:
    town = bio._word(rng, 2) + "ville"
    value = _digits(rng, digits)
    text = f"The special magic number for {town} is {value}."
    q = f"What is the special magic number for {town}? Answer with the number only."
    pool, sep = _pool(source, rng)
    placed = compose(rng, pool, _budget(target_len, q, meter), [(depth, text)], meter, sep=sep)
    return placed, q, value, {"needle": text}


def kv(rng, meter, target_len, depth, *, source="stdlib", n_keys=4, digits=5, **_) -> tuple:
    """``n_keys`` pairs at random depths; the asked one at ``depth``."""
    keys: list[str] = []
    while len(keys) < n_keys:
        k = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(4))
        if k not in keys:
            keys.append(k)
    values = [_digits(rng, digits) for _ in keys]
    lines = [f"The value of key {k} is {v}." for k, v in zip(keys, values)]
    depths = [depth] + [rng.random() for _ in keys[1:]]
    q = f"What is the value of key {keys[0]}? Answer with the number only."
    pool, sep = _pool(source, rng)
    placed = compose(
        rng, pool, _budget(target_len, q, meter), list(zip(depths, lines)), meter, sep=sep
    )
    return placed, q, values[0], {"keys": dict(zip(keys, values)), "needle": lines[0]}


def _bio_context(rng, meter, target_len, targets: list[tuple[float, bio.Person]], q: str) -> Placed:
    avoid = {p.name for _, p in targets}
    # enough distinct people that the haystack never repeats one (~250 chars, <= 5 chars/token)
    n_people = 8 + target_len * (5 if meter.unit == "tokens" else 1) // 200
    pool, sep = _pool("bio", rng, avoid, n_people)
    return compose(
        rng,
        pool,
        _budget(target_len, q, meter),
        [(d, p.paragraph()) for d, p in targets],
        meter,
        sep=sep,
    )


def single_qa(rng, meter, target_len, depth, **_) -> tuple:
    used: set[str] = set()
    person = bio.make_person(rng, used)
    key = rng.choice(sorted(bio.SINGLE_QUESTIONS))
    template, get = bio.SINGLE_QUESTIONS[key]
    q = template.format(name=person.name, company=person.company) + " Answer briefly."
    placed = _bio_context(rng, meter, target_len, [(depth, person)], q)
    fact = next(s for _, k, s in person.events if k == bio.ANSWER_EVENT[key])
    return placed, q, get(person), {"person": person.name, "fact": fact}


def multi_qa(rng, meter, target_len, depth, *, gap=0.5, **_) -> tuple:
    """Two people, the second ``gap`` of the context after the first (wrapping)."""
    used: set[str] = set()
    a, b = bio.make_person(rng, used), bio.make_person(rng, used)
    while b.born == a.born:
        b = bio.make_person(rng, used)
    d2 = depth + gap if depth + gap <= 1.0 else depth - gap
    kind = rng.choice(("earlier", "years_apart", "award_gap"))
    if kind == "earlier":
        q = f"Who was born earlier, {a.name} or {b.name}? Answer with the name only."
        ans = a.name if a.born < b.born else b.name
    elif kind == "years_apart":
        q = f"How many years apart were {a.name} and {b.name} born? Answer with the number only."
        ans = str(abs(a.born - b.born))
    else:
        q = (
            f"How many years passed between the award of {a.name} and the award of {b.name}? "
            "Answer with the number only."
        )
        ans = str(abs(a.year("award") - b.year("award")))
    placed = _bio_context(rng, meter, target_len, [(depth, a), (max(0.0, d2), b)], q)
    return (
        placed,
        q,
        ans,
        {"people": [a.name, b.name], "kind": kind, "facts": [a.paragraph(), b.paragraph()]},
    )


def summary(rng, meter, target_len, depth, **_) -> tuple:
    used: set[str] = set()
    person = bio.make_person(rng, used)
    q = f"Summarize the life of {person.name} in one sentence, with every date."
    placed = _bio_context(rng, meter, target_len, [(depth, person)], q)
    return placed, q, person.summary(), {"person": person.name}


def topics(rng, meter, target_len, depth=0.0, *, paragraphs_per_topic=2, **_) -> tuple:
    """Sections "Topic: the <module> module." + paragraphs; ask for the first topic."""
    by_mod: dict[str, list[str]] = {}
    for mod, par in stdlib_paragraphs():
        by_mod.setdefault(mod, []).append(par)
    mods = sorted(m for m, ps in by_mod.items() if len(ps) >= paragraphs_per_topic)
    rng.shuffle(mods)
    q = "What was the first topic? Answer with the module name only."
    budget = _budget(target_len, q, meter)
    sections: list[str] = []
    names: list[str] = []
    for m in mods:
        start = rng.randrange(len(by_mod[m]) - paragraphs_per_topic + 1)
        sec = f"Topic: the {m} module. " + " ".join(by_mod[m][start : start + paragraphs_per_topic])
        if sections and meter("\n\n".join(sections + [sec])) > budget:
            break
        sections.append(sec)
        names.append(m)
    room = budget - meter("\n\n".join(sections) + "\n\n")
    if len(sections) < len(mods) and room > 0:  # fill the rest with part of one more topic
        m = mods[len(sections)]
        part = meter.prefix(f"Topic: the {m} module. " + " ".join(by_mod[m]), room)
        if part.startswith(f"Topic: the {m} module."):
            names.append(m)
        sections.append(part)
    text = "\n\n".join(s for s in sections if s)
    if meter(text) > budget:
        text = meter.prefix(text, budget)
    placed = Placed(text=text, depths=[0.0], starts=[0], length=meter(text))
    return placed, q, mods[0], {"topics": names}


TASKS: dict[str, Callable[..., tuple]] = {
    "passkey": passkey,
    "needle": needle,
    "kv": kv,
    "single_qa": single_qa,
    "multi_qa": multi_qa,
    "summary": summary,
    "topics": topics,
}


def make_sample(
    task: str,
    *,
    seed: int,
    index: int,
    length: int,
    depth: float,
    meter: Meter | None = None,
    **options: Any,
) -> dict:
    """One record of ``task`` (see the module docstring), reproducible from its arguments.

    Args:
        task: a key of :data:`TASKS`.
        seed: dataset seed.
        index: sample number (each ``(seed, task, index)`` has its own generator).
        length: target length of the user turn, in the meter's unit.
        depth: where the answer goes, in [0, 1] (ignored by ``topics``: always 0).
        meter: length unit (characters when ``None``).
        options: task options (``source``, ``n_keys``, ``digits``, ``gap``, ...).
    """
    if task not in TASKS:
        raise UserError(f"unknown long-context task '{task}'; expected one of {', '.join(TASKS)}")
    if not 0.0 <= depth <= 1.0:
        raise UserError(f"depth must be in [0, 1], got {depth}")
    meter = meter or Meter()
    rng = sample_rng(seed, task, index)
    placed, q, answer, extra = TASKS[task](rng, meter, length, depth, **options)
    source = options.get(
        "source", "bio" if task in ("single_qa", "multi_qa", "summary") else "stdlib"
    )
    return _record(
        task,
        placed,
        q,
        answer,
        meter,
        target_len=length,
        target_depth=depth,
        source=source,
        seed=seed,
        index=index,
        extra=extra,
    )
