"""Long documents for teacher data (:mod:`trainkit.longctx.teacher`) and their chunks.

A document is ``(doc_id, text)``: a ``.txt``/``.md`` file, every such file of a folder
(sorted), or a built-in document of a given length: consecutive standard-library
docstring paragraphs (``stdlib``) or generated biographies (``bio``), paragraphs
separated by blank lines. Chunks are whole paragraphs packed up to a size in the units
of a :class:`~trainkit.longctx.haystack.Meter`, with their character offsets (depths).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from trainkit.common.errors import UserError
from trainkit.longctx import bio
from trainkit.longctx.haystack import Meter, stdlib_paragraphs


def load_documents(d: Any, meter: Meter, seed: int) -> list[tuple[str, str]]:
    """``[(doc_id, text), ...]`` from ``d.source`` (a ``teacher.DocsSection``: ``source``,
    ``n_docs`` and ``doc_length`` in ``meter`` units for the built-ins)."""
    rng = random.Random(f"trainkit-teacher-docs:{seed}")
    if d.source in ("stdlib", "bio"):
        pars = [p for _, p in stdlib_paragraphs()]
        docs = []
        for k in range(d.n_docs):
            buf: list[str] = []
            total, j, used = 0, rng.randrange(len(pars)), set()
            while total < d.doc_length:
                if d.source == "stdlib":
                    p = pars[j % len(pars)]
                else:
                    p = bio.make_person(rng, used).paragraph()
                buf.append(p)
                total, j = total + meter(p) + 1, j + 1
            docs.append((f"{d.source}-{k}", meter.prefix("\n\n".join(buf), d.doc_length)))
        return docs
    p = Path(d.source).expanduser()
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in (".txt", ".md") and f.is_file())
    elif p.is_file():
        files = [p]
    else:
        raise UserError(f"docs.source {d.source!r}: expected stdlib, bio, or a file/folder")
    docs = []
    for f in files:
        try:
            text = f.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read document {f}: {e}") from None
        if text:
            docs.append((f.name, text))
    if not docs:
        raise UserError(f"docs.source {d.source!r}: no non-empty .txt/.md document")
    return docs


def pieces(text: str, size: int, meter: Meter) -> list[tuple[int, str, int]]:
    """``[(char_offset, piece, units), ...]``: the blank-line separated paragraphs of
    ``text`` (trimmed), a paragraph over ``size`` units cut at word boundaries."""
    out = []
    for m in re.finditer(r"\S(?:.*?\S)?(?=\s*\n\s*\n|\s*\Z)", text, re.DOTALL):
        off, par = m.start(), m.group()
        while meter(par) > size:
            head = meter.prefix(par, size) or par[:size]
            out.append((off, head, meter(head)))
            rest = par[len(head) :]
            off += len(head) + len(rest) - len(rest.lstrip())
            par = rest.lstrip()
        if par:
            out.append((off, par, meter(par)))
    return out


def chunk_document(text: str, size: int, meter: Meter) -> list[tuple[int, str]]:
    """``[(char_offset, chunk), ...]``: :func:`pieces` packed greedily, joined by blank
    lines, into chunks of at most ``size`` units (2 units counted per joint)."""
    cur: list[tuple[int, str, int]] = []
    chunks: list[tuple[int, str]] = []
    for piece in pieces(text, size, meter):
        if cur and sum(n for *_, n in cur) + 2 * len(cur) + piece[2] > size:
            chunks.append((cur[0][0], "\n\n".join(t for _, t, _ in cur)))
            cur = []
        cur.append(piece)
    if cur:
        chunks.append((cur[0][0], "\n\n".join(t for _, t, _ in cur)))
    return chunks
