"""Samples for the tiny retrieval base (:mod:`trainkit.longctx.tinybase`): passkey and
multi-key kv retrieval in random-letter or real-text (stdlib prose) filler, encoded with the
64-token character vocabulary as chat turns with answer-only labels, and padded batches.

The format (:class:`SampleFormat`: key alphabet, key echo, follow-up questions, filler
source; ``tinybase.TinyTrainSection`` carries it) is the one the base was trained on;
:func:`trainkit.longctx.tinybase.eval_section` reads it back from a saved model, so
evaluation and the extension fine-tune use the same samples.
"""

from __future__ import annotations

import functools
import random
from typing import Any, Protocol

from trainkit.common.errors import UserError
from trainkit.longctx.haystack import Meter, filler_text, stdlib_paragraphs
from trainkit.longctx.tasks import make_sample

#: random filler alphabet: letters and spaces, no digits (answers are digits)
FILLER = "abcdefghijklmnopqrstuvwxyz "
#: single-token kv keys (``train.key_alphabet=symbols``): never in the filler or the format
KEY_SYMBOLS = "!-()/_=+*[]%"
#: between context and question (not "\n\n": tokenizers saved before the chartok fix made it <unk>)
SEP = " ; "


class SampleFormat(Protocol):
    """The sample fields :func:`sample_ids` and :func:`make_batch` read (the ``train``
    section of the tiny base, ``trainkit.longctx.tinybase.TinyTrainSection``, has them)."""

    tasks: list[str]  # "passkey" and/or "kv", taken in turn
    source: str  # random | prose | a make_sample source (stdlib, bio, repeat)
    n_keys: list[int]  # kv pairs per sample: uniform in [min, max]
    kv_echo: bool
    key_len: int
    kv_queries: int
    key_alphabet: str  # letters | symbols


def random_sample(
    rng: random.Random,
    task: str,
    length: int,
    depth: float,
    n_keys: int = 4,
    kv_echo: bool = False,
    key_len: int = 4,
    key_alphabet: str = "letters",
    others: list | None = None,
    prose: bool = False,
) -> tuple[str, str, str]:
    """``(context, question, answer)`` with random-letter filler, ``length`` characters in
    all (context + `SEP` + question), the asked fact starting at ``depth`` of the context.

    passkey: " pass key: NNNNN. " once, asked "pass key?"; kv: ``n_keys`` pairs
    " abcd: NNNNN. " at random places (fewer when they would fill over half of ``length``),
    one of them asked "abcd?". With ``kv_echo`` the kv answer repeats the key,
    "abcd: NNNNN", which makes the lookup an induction-head copy (find the earlier
    "abcd: " and continue it). ``key_alphabet="symbols"`` makes each key one symbol of
    :data:`KEY_SYMBOLS` right before its value (" %NNNNN. ", asked "%?"): multi-key retrieval where matching the
    key is one token, as in the associative-recall tasks of the state-space-model papers.
    A kv sample appends ``(question, answer)`` of its other keys, in random order, to
    ``others`` when that list is given. ``prose``: the filler is real text
    (:func:`prose_filler`) instead of random letters.
    """

    def digits() -> str:
        return str(rng.randint(10_000, 99_999))

    if task == "passkey":
        ans = digits()
        facts, q = [f" pass key: {ans}. "], "pass key?"
    elif task == "kv":
        # at most as many pairs as fit in half of the length (short curriculum stages)
        if key_alphabet not in ("letters", "symbols"):
            raise UserError(f"key_alphabet must be letters or symbols, got '{key_alphabet}'")
        symbols = key_alphabet == "symbols"
        klen = 1 if symbols else key_len
        n_keys = max(1, min(n_keys, (length // 2) // (klen + 10)))
        keys: list[str] = []
        while len(keys) < n_keys:
            if symbols:
                k = rng.choice(KEY_SYMBOLS)
            else:
                k = "".join(rng.choice(FILLER[:-1]) for _ in range(key_len))
            if k not in keys:
                keys.append(k)
        vals = [digits() for _ in keys]
        sep = "" if symbols else ": "  # symbol keys sit right before their value
        ans = f"{keys[0]}{sep}{vals[0]}" if kv_echo else vals[0]
        facts, q = [f" {k}{sep}{v}. " for k, v in zip(keys, vals)], f"{keys[0]}?"
        rest = [(f"{k}?", f"{k}{sep}{v}" if kv_echo else v) for k, v in zip(keys, vals)][1:]
    else:
        raise UserError(f"random filler supports tasks passkey and kv, not '{task}'")
    budget = length - len(q) - len(SEP)
    n_fill = budget - sum(len(f) for f in facts)
    if n_fill < 0:
        raise UserError(f"length {length} is too short for a {task} sample")
    filler = prose_filler(rng, n_fill) if prose else "".join(rng.choices(FILLER, k=n_fill))
    # insertion points in the filler: the asked fact at depth, the others at random
    points = [round(depth * n_fill)] + [rng.randint(0, n_fill) for _ in facts[1:]]
    order = sorted(range(len(facts)), key=lambda i: (points[i], i))
    parts, prev = [], 0
    for i in order:
        parts += [filler[prev : points[i]], facts[i]]
        prev = points[i]
    parts.append(filler[prev:])
    if others is not None and task == "kv":
        rng.shuffle(rest)  # after the sample is drawn: asking more keys changes nothing else
        others.extend(rest)
    return "".join(parts), q, ans


#: characters real-text filler keeps; the rest (digits, key symbols, ';') become spaces
PROSE_KEEP = frozenset("abcdefghijklmnopqrstuvwxyz .,'\"")


@functools.lru_cache(maxsize=1)
def _prose_pool() -> tuple[str, ...]:
    return tuple(p for _, p in stdlib_paragraphs("train"))


def prose_filler(rng: random.Random, n: int) -> str:
    """``n`` characters of consecutive stdlib docstring paragraphs from a random start
    (training split of :func:`trainkit.longctx.haystack.stdlib_paragraphs`), lower-cased,
    every character outside :data:`PROSE_KEEP` replaced by a space."""
    text = filler_text(rng, _prose_pool(), n, Meter()).lower()
    return "".join(c if c in PROSE_KEEP else " " for c in text).ljust(n)[:n]


def sample_ids(
    tok: Any,
    t: SampleFormat,
    task: str,
    length: int,
    depth: float,
    seed: int,
    index: int,
    n_keys: int,
) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)`` of one sample: chat prompt + answer + ``<|end|>``, labels
    -100 on the prompt. Random filler is encoded character by character (the chat
    template's tokens, as :func:`trainkit.longctx.eval.common.prompt_ids` gives them)."""
    if t.source in ("random", "prose"):
        from trainkit.longctx.chartok import vocab

        v = vocab()
        rng = random.Random(f"tiny-random:{seed}:{task}:{index}")
        others: list | None = [] if task == "kv" and t.kv_queries > 1 else None
        ctx, q, ans = random_sample(
            rng,
            task,
            length,
            depth,
            n_keys,
            t.kv_echo,
            t.key_len,
            t.key_alphabet,
            others,
            prose=t.source == "prose",
        )
        ids: list[int] = []
        labels: list[int] = []
        turns = [(ctx + SEP + q, ans)] + (others or [])[: t.kv_queries - 1]
        for text, a in turns:
            turn = [v["<|user|>"]] + [v[c] for c in text] + [v["<|end|>"], v["<|assistant|>"]]
            answer = [v[c] for c in a] + [v["<|end|>"]]
            ids += turn + answer
            labels += [-100] * len(turn) + answer
        return ids, labels
    opts: dict[str, Any] = {"source": t.source}
    if task == "kv":
        opts["n_keys"] = n_keys
    rec = make_sample(
        task, seed=seed, index=index, length=length, depth=depth, meter=Meter(), **opts
    )
    return encode_sample(tok, rec)


def encode_sample(tok: Any, rec: dict) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)``: chat prompt + answer + ``<|end|>``; labels -100 on the prompt."""
    from trainkit.longctx.eval.common import prompt_ids

    prompt = prompt_ids(tok, rec["messages"][0]["content"])
    answer = tok(rec["messages"][1]["content"], add_special_tokens=False)["input_ids"] + [
        tok.eos_token_id
    ]
    return prompt + answer, [-100] * len(prompt) + answer


def pad_batch(seqs: list[tuple[list[int], list[int]]], pad_id: int):
    """Right-pad ``(ids, labels)`` pairs to ``(input_ids, attention_mask, labels)`` ``[B, T]``."""
    import torch

    B, T = len(seqs), max(len(s[0]) for s in seqs)
    ids = torch.full((B, T), pad_id, dtype=torch.long)
    lab = torch.full((B, T), -100, dtype=torch.long)
    att = torch.zeros((B, T), dtype=torch.long)
    for i, (x, y) in enumerate(seqs):
        ids[i, : len(x)] = torch.tensor(x)
        lab[i, : len(y)] = torch.tensor(y)
        att[i, : len(x)] = 1
    return ids, att, lab


def make_batch(
    tok: Any,
    rng: random.Random,
    t: SampleFormat,
    length: int,
    seed: int,
    index0: int,
    batch: int,
    min_length: int | None = None,
):
    """A right-padded batch ``(input_ids, attention_mask, labels)`` of shape ``[batch, T]``;
    sample lengths uniform in ``[min_length, length]`` (default: ``length``), depths uniform."""
    seqs = []
    for b in range(batch):
        task = t.tasks[(index0 + b) % len(t.tasks)]
        n_keys = rng.randint(min(t.n_keys), max(t.n_keys))
        L = length if min_length is None else rng.randint(min_length, length)
        seqs.append(sample_ids(tok, t, task, L, round(rng.random(), 4), seed, index0 + b, n_keys))
    return pad_batch(seqs, tok.pad_token_id)
