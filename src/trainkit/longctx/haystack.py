"""Haystacks of real text, length meters and needle insertion at a depth.

The text is the Python standard library's own documentation: the docstrings of the
top-level modules under ``sysconfig.get_paths()["stdlib"]`` (about 0.9 MB of English
prose on CPython 3.11), read with :mod:`ast` — no download, no random filler. The pool is
sorted, so a seed gives the same haystack on the same Python version.

Lengths are measured by a :class:`Meter`: characters, or tokens of a tokenizer.
:func:`compose` builds a context of a target length with insertions (needles) placed at
given depth fractions; the depth recorded is the fraction of the haystack (the context
without the insertions) that precedes an insertion, as in needle-in-a-haystack tests.
"""

from __future__ import annotations

import ast
import bisect
import functools
import random
import re
import sysconfig
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainkit.common.errors import UserError

_WS = re.compile(r"\s+")


def _prose(par: str) -> bool:
    """Keep paragraphs that read as English sentences (not code, tables or lists)."""
    if ">>>" in par or "::" in par or par.count("|") > 2 or par.count("=") > 2:
        return False
    letters = sum(c.isalpha() or c == " " for c in par)
    return letters / len(par) > 0.85 and par.rstrip().endswith((".", "?", "!"))


def is_heldout(module: str) -> bool:
    """About one module in ten (by CRC32 of its name) is held out for perplexity."""
    return zlib.crc32(module.encode()) % 10 == 0


def stdlib_paragraphs(split: str = "train", root: str | None = None) -> tuple[tuple[str, str], ...]:
    """``((module, paragraph), ...)`` from docstrings of the standard library's modules.

    Paragraphs of 60-700 characters that look like prose, whitespace collapsed,
    de-duplicated, in sorted file order. ``split`` is ``"train"`` (haystacks and training
    data), ``"heldout"`` (modules where :func:`is_heldout`; for perplexity) or ``"all"``.
    ``root`` overrides the stdlib folder.
    """
    pars = _all_paragraphs(root)
    if split == "all":
        return pars
    if split not in ("train", "heldout"):
        raise UserError(f"stdlib split must be train, heldout or all, got {split!r}")
    want = split == "heldout"
    return tuple((m, p) for m, p in pars if is_heldout(m) == want)


@functools.lru_cache(maxsize=2)
def _all_paragraphs(root: str | None = None) -> tuple[tuple[str, str], ...]:
    folder = Path(root or sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    out = []
    for path in sorted(folder.glob("*.py")):
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, OSError, ValueError):
            continue
        for node in ast.walk(tree):
            if not isinstance(
                node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)
            ):
                continue
            doc = ast.get_docstring(node)
            if not doc:
                continue
            for block in re.split(r"\n\s*\n", doc):
                if any(line.startswith((" ", "\t")) for line in block.splitlines()):
                    continue  # indented = code sample or argument table
                par = _WS.sub(" ", block).strip()
                if 60 <= len(par) <= 700 and par not in seen and par.isascii() and _prose(par):
                    seen.add(par)
                    out.append((path.stem, par))
    if len(out) < 50:
        raise UserError(
            f"too little prose found under {folder} for haystacks ({len(out)} paragraphs)"
        )
    return tuple(out)


class Meter:
    """Length in characters (``tokenizer=None``) or in tokens of ``tokenizer``.

    Token counts use ``tokenizer(text, add_special_tokens=False)``; prefixes are cut
    with offset mappings when the tokenizer is fast, else by a proportional estimate.
    """

    def __init__(self, tokenizer: Any = None):
        self.tokenizer = tokenizer
        self.unit = "chars" if tokenizer is None else "tokens"

    def __call__(self, text: str) -> int:
        if self.tokenizer is None:
            return len(text)
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def prefix(self, text: str, n: int) -> str:
        """The longest prefix of ``text`` ending at a word boundary with at most ``n`` units."""
        if n <= 0:
            return ""
        if self.tokenizer is None:
            cut = text[:n]
        else:
            try:
                enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
                offs = enc["offset_mapping"]
                cut = text if n >= len(offs) else text[: offs[n - 1][1]]
            except (NotImplementedError, TypeError, KeyError, ValueError):
                total = self(text)
                cut = text[: int(len(text) * min(1.0, n / max(total, 1)))]
        if len(cut) < len(text) and " " in cut and not text[len(cut)].isspace():
            cut = cut[: cut.rfind(" ")]
        return cut.rstrip()


def _boundaries(text: str) -> tuple[list[int], list[int]]:
    """Sentence starts and word starts of ``text`` (character offsets, 0 and len included)."""
    sents = [0] + [m.end() for m in re.finditer(r"[.!?]\s+", text)] + [len(text)]
    words = [0] + [m.end() for m in re.finditer(r"\s+", text)] + [len(text)]
    return sents, words


def _nearest(points: list[int], x: float) -> int:
    i = bisect.bisect_left(points, x)
    cands = points[max(0, i - 1) : i + 1] or points[-1:]
    return min(cands, key=lambda p: abs(p - x))


@dataclass
class Placed:
    """Result of :func:`compose`: the context and where each insertion landed."""

    text: str
    depths: list[float]  # per insertion, fraction of the filler's units before it
    starts: list[int]  # per insertion, character offset in ``text``
    length: int  # units of ``text``


def filler_text(
    rng: random.Random, pool: tuple[str, ...] | list[str], budget: int, meter: Meter, sep: str = " "
) -> str:
    """Consecutive paragraphs of ``pool`` from a random start, cut to ``budget`` units."""
    if budget <= 0:
        return ""
    i = rng.randrange(len(pool))
    parts: list[str] = []
    # characters per unit, to avoid measuring every paragraph with a tokenizer
    used = 0
    while True:
        parts.append(pool[i % len(pool)])
        i += 1
        used += len(parts[-1]) + len(sep)
        if meter.tokenizer is None and used >= budget:
            break
        if meter.tokenizer is not None and used >= budget * 2 and meter(sep.join(parts)) >= budget:
            break
        if i - len(parts) > 10 * len(pool):  # pragma: no cover - guard
            break
    return meter.prefix(sep.join(parts), budget)


def compose(
    rng: random.Random,
    pool: tuple[str, ...] | list[str],
    target_len: int,
    inserts: list[tuple[float, str]],
    meter: Meter,
    snap: float = 0.05,
    sep: str = " ",
) -> Placed:
    """A context of about ``target_len`` units: filler from ``pool`` plus ``inserts``.

    Each insertion ``(depth, text)`` goes to the sentence boundary of the filler nearest to
    ``depth`` of the way through it when one is within ``snap`` of the filler's length,
    else to the nearest word boundary. With ``sep="\n\n"`` the filler's paragraphs are
    kept whole: insertions go only between paragraphs (used for biographies).
    Filler units = target minus insertions.

    Returns:
        :class:`Placed` with the realised depths measured on the final text: units of
        haystack before the insertion / all haystack units.
    """
    if (
        not 0.0
        <= min((d for d, _ in inserts), default=0.0)
        <= max((d for d, _ in inserts), default=0.0)
        <= 1.0
    ):
        raise UserError(f"needle depths must be in [0, 1], got {[d for d, _ in inserts]}")
    ins_units = sum(meter(sep + t + sep) for _, t in inserts)
    filler = filler_text(rng, pool, max(0, target_len - ins_units), meter, sep=sep)
    sents, words = _boundaries(filler)
    if sep != " ":
        sents = words = [0] + [m.end() for m in re.finditer(re.escape(sep), filler)] + [len(filler)]
    n = len(filler)
    spots = []
    for k, (depth, text) in enumerate(inserts):
        x = depth * n
        pos = _nearest(sents, x)
        if abs(pos - x) > snap * max(n, 1):
            pos = _nearest(words, x)
        spots.append((pos, k, text))
    # build left to right; equal positions keep the given order
    spots.sort()
    pieces, starts, cursor, out_len = [], [0] * len(inserts), 0, 0
    for pos, k, text in spots:
        chunk = filler[cursor:pos].strip()
        if chunk:
            pieces.append(chunk)
            out_len += len(chunk) + len(sep)
        starts[k] = out_len
        pieces.append(text)
        out_len += len(text) + len(sep)
        cursor = pos
    tail = filler[cursor:].strip()
    if tail:
        pieces.append(tail)
    text = sep.join(pieces)
    total = meter(text)
    sizes = [meter(t + sep) for _, t in inserts]
    filler_total = max(total - sum(sizes), 1)
    depths = []
    for s in starts:
        before = sum(sizes[j] for j in range(len(inserts)) if starts[j] < s)
        depths.append(min(1.0, max(0.0, (meter(text[:s]) - before) / filler_total)))
    return Placed(text=text, depths=depths, starts=starts, length=total)
