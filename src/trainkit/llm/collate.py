"""From validated records to model batches: tokenise with loss masks, pad, sample.

* :func:`tokenize_records` turns :class:`~trainkit.llm.data.Record` s into samples with
  ``labels`` aligned to ``input_ids`` (``-100`` = no loss), applying the length policy.
* Chat records use the tokenizer's own chat template. The assistant spans are found by
  rendering the conversation up to each assistant turn (with the generation prompt) and
  up to its end, checking both renders are text prefixes of the full render, and mapping
  those character spans onto the tokens of the full render (offsets of a fast tokenizer,
  or prefix token counts otherwise). So exactly the assistant content and its end-of-turn
  token (e.g. ``<|im_end|>``) are labelled; the template's role headers and the newline
  after the end-of-turn are not.
* :func:`pad_batch` / :func:`pad_preference` pad on the right; :class:`ResumableSampler`
  gives deterministic shuffled index batches whose position (epoch, index) is saved in
  checkpoints so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import random
from typing import Any

from trainkit.common.errors import UserError

IGNORE_INDEX = -100


# --------------------------------------------------------------------------- tokenisation


def has_chat_template(tokenizer: Any) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def _render(tok: Any, msgs: list[dict], gen: bool, where: str, tools: Any = None) -> str:
    extra = {"tools": tools} if tools else {}
    try:
        out = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen, **extra)
    except Exception as e:  # jinja errors such as "roles must alternate"
        raise UserError(
            f"{where}: the tokenizer's chat template rejected this record ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(out, str):
        raise UserError(f"{where}: the chat template did not render to text")
    return out


def assistant_char_spans(
    tok: Any, msgs: list[dict], where: str, tools: Any = None
) -> tuple[str, list[tuple[int, int]]]:
    """Render ``msgs`` (with the ``tools`` schemas, if any) and find each assistant turn
    as a character span of the render.

    Returns:
        ``(text, spans)``: the full render and ``[(start, end), ...]`` per assistant turn,
        from the first content character to the end of that turn's render.
    """
    full = _render(tok, msgs, False, where, tools)
    spans = []
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        upto = full if i == len(msgs) - 1 else _render(tok, msgs[: i + 1], False, where, tools)
        start = None
        for gen in (True, False):
            try:
                pre = _render(tok, msgs[:i], gen, where, tools) if i > 0 else ""
            except UserError:
                continue
            if upto.startswith(pre) and len(pre) <= len(upto):
                start = len(pre)
                break
        if start is None or not full.startswith(upto):
            raise UserError(
                f"{where}: the tokenizer's chat template does not render turn {i} as a "
                "prefix of the conversation; cannot locate the assistant tokens"
            )
        spans.append((start, len(upto)))
    return full, spans


def _ids(tok: Any, text: str, special: bool) -> list[int]:
    return list(tok(text, add_special_tokens=special)["input_ids"])


def _span_tokens(
    tok: Any, text: str, spans: list[tuple[int, int]]
) -> tuple[list[int], list[list[int]]]:
    """Token ids of ``text`` and, per char span, the indices of the tokens inside it."""
    try:
        enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offs = list(enc["input_ids"]), list(enc["offset_mapping"])
    except (NotImplementedError, ValueError, TypeError, KeyError):
        offs = None
    if offs is None:  # slow tokenizer: count the tokens of each prefix
        ids = _ids(tok, text, False)
        out = []
        for a, b in spans:
            lo, hi = len(_ids(tok, text[:a], False)), len(_ids(tok, text[:b], False))
            out.append(list(range(lo, hi)))
        return ids, out
    return ids, [
        [t for t, (s, e) in enumerate(offs) if e > s and s < b and e > a] for a, b in spans
    ]


def _trim_turn(idx: list[int], ids: list[int], tok: Any) -> list[int]:
    """Keep a turn's tokens up to its last EOS (end-of-turn); else drop trailing whitespace."""
    eos = getattr(tok, "eos_token_id", None)
    last = [k for k, t in enumerate(idx) if ids[t] == eos]
    if last:
        return idx[: last[-1] + 1]
    while idx and not tok.decode([ids[idx[-1]]]).strip():
        idx = idx[:-1]
    return idx


def tokenize_chat(
    tok: Any, msgs: list[dict], where: str, train_from: int = 0, tools: Any = None
) -> dict:
    """``{"input_ids", "labels"}`` for a conversation; labels on assistant turns only,
    and only on those at message index >= ``train_from`` (the completion after a prompt)."""
    text, spans = assistant_char_spans(tok, msgs, where, tools)
    ids, per_turn = _span_tokens(tok, text, spans)
    labels = [IGNORE_INDEX] * len(ids)
    turns = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
    for i, idx in zip(turns, per_turn):
        if i < train_from:
            continue
        for t in _trim_turn(idx, ids, tok):
            labels[t] = ids[t]
    return {"input_ids": ids, "labels": labels}


def _eos(tok: Any) -> list[int]:
    if getattr(tok, "eos_token_id", None) is None:
        raise UserError("the tokenizer has no eos token; set data.add_eos=false")
    return [tok.eos_token_id]


def tokenize_prompt_response(
    tok: Any, prompt: str | list, response: str, where: str, cfg: Any, template: bool
) -> dict:
    """Labels on the response (and its end-of-turn / EOS) only.

    ``prompt`` is a string, or a message list (always rendered with the chat template).
    """
    if isinstance(prompt, list):
        if not has_chat_template(tok):
            raise UserError(
                f"{where}: a conversational prompt needs a tokenizer with a chat template"
            )
        msgs = prompt + [{"role": "assistant", "content": response}]
        return tokenize_chat(tok, msgs, where, train_from=len(prompt))
    if template:
        return tokenize_chat(
            tok,
            [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}],
            where,
        )
    filled = getattr(cfg, "input_template", None)
    p = _ids(tok, filled.replace("{}", prompt) if filled else prompt + cfg.separator, True)
    r = _ids(tok, response, False) + (_eos(tok) if cfg.add_eos else [])
    return {"input_ids": p + r, "labels": [IGNORE_INDEX] * len(p) + r}


def tokenize_text(tok: Any, text: str, cfg: Any) -> dict:
    ids = _ids(tok, text, True) + (_eos(tok) if cfg.add_eos else [])
    return {"input_ids": ids, "labels": list(ids)}


def _fit(s: dict, max_length: int, policy: str, where: str) -> tuple[dict | None, bool]:
    """Apply the length policy: ``(sample or None if dropped, truncated?)``."""
    n = len(s["input_ids"])
    if n > max_length:
        if policy == "error":
            raise UserError(
                f"{where}: sample has {n} tokens > data.max_length={max_length} "
                "(or set data.truncation to right, left or drop)"
            )
        if policy == "drop":
            return None, False
        sl = slice(0, max_length) if policy == "right" else slice(n - max_length, n)
        s = {k: v[sl] for k, v in s.items()}
    if all(x == IGNORE_INDEX for x in s["labels"]):
        return None, False
    return s, n > max_length


def _use_template(tok: Any, fmt: str, cfg: Any, first: str) -> bool:
    have = has_chat_template(tok)
    if fmt == "chat" or cfg.chat_template == "always":
        if not have:
            what = "chat data" if fmt == "chat" else "data.chat_template=always"
            raise UserError(
                f"{first}: {what} needs a tokenizer with a chat template, and this model's tokenizer "
                "has none; use an instruct/chat model, or format=prompt_response/text with "
                "data.chat_template=never"
            )
        return True
    return have and cfg.chat_template == "auto"


def tokenize_records(records: list, fmt: str, tok: Any, cfg: Any) -> tuple[list[dict], dict]:
    """Tokenise validated records and apply ``cfg.max_length`` / ``cfg.truncation``.

    Returns:
        ``(samples, stats)``; ``stats`` has ``records, kept, truncated, dropped, tokens,
        label_tokens, max_tokens`` (``tokens`` counts the kept samples' tokens).
    """
    stats = {
        "records": len(records),
        "kept": 0,
        "truncated": 0,
        "dropped": 0,
        "tokens": 0,
        "label_tokens": 0,
        "max_tokens": 0,
    }
    if not records:
        return [], stats
    template = _use_template(tok, fmt, cfg, records[0].where)
    out = []
    for rec in records:
        d, w = rec.data, rec.where
        if fmt == "preference":
            pair = [
                tokenize_prompt_response(tok, d["prompt"], d[k], w, cfg, template)
                for k in ("chosen", "rejected")
            ]
            policy = cfg.truncation if cfg.truncation in ("drop", "error") else "right"
            fitted = [_fit(s, cfg.max_length, policy, w) for s in pair]
            if any(s is None for s, _ in fitted):
                stats["dropped"] += 1
                continue
            (c, tc), (r, tr) = fitted
            stats["truncated"] += int(tc or tr)
            plen = 0
            first_c = next(i for i, x in enumerate(c["labels"]) if x != IGNORE_INDEX)
            first_r = next(i for i, x in enumerate(r["labels"]) if x != IGNORE_INDEX)
            while plen < min(first_c, first_r) and c["input_ids"][plen] == r["input_ids"][plen]:
                plen += 1
            sample = {
                "chosen_input_ids": c["input_ids"],
                "chosen_labels": c["labels"],
                "rejected_input_ids": r["input_ids"],
                "rejected_labels": r["labels"],
                "prompt_length": plen,
            }
            toks = [c, r]
        else:
            if "messages" in d:  # chat, or conversational prompt-completion
                if not has_chat_template(tok):
                    raise UserError(
                        f"{w}: conversational data needs a tokenizer with a chat template"
                    )
                s = tokenize_chat(tok, d["messages"], w, d.get("train_from", 0), d.get("tools"))
            elif fmt == "prompt_response":
                s = tokenize_prompt_response(tok, d["prompt"], d["response"], w, cfg, template)
            else:
                s = tokenize_text(tok, d["text"], cfg)
            sample, trunc = _fit(s, cfg.max_length, cfg.truncation, w)
            if sample is None:
                stats["dropped"] += 1
                continue
            stats["truncated"] += int(trunc)
            toks = [sample]
        stats["kept"] += 1
        for s in toks:
            stats["tokens"] += len(s["input_ids"])
            stats["label_tokens"] += sum(x != IGNORE_INDEX for x in s["labels"])
            stats["max_tokens"] = max(stats["max_tokens"], len(s["input_ids"]))
        out.append(sample)
    return out, stats


def summarize_stats(stats: dict) -> str:
    """One log line from :func:`tokenize_records` stats (plus packing stats when present)."""
    line = (
        f"{stats['kept']}/{stats['records']} samples kept ({stats['truncated']} truncated, "
        f"{stats['dropped']} dropped), {stats['tokens']} tokens, {stats['label_tokens']} with loss, "
        f"longest {stats['max_tokens']}"
    )
    if "packing" in stats:
        pk = stats["packing"]
        line += f"; packed into {pk['rows']} rows ({pk['fill']:.0%} full)"
    return line


# --------------------------------------------------------------------------- collators


def _pad(seqs: list[list[int]], value: int, length: int):
    import torch

    return torch.tensor([list(s) + [value] * (length - len(s)) for s in seqs], dtype=torch.long)


def _target_len(n: int, multiple: int | None) -> int:
    return n if not multiple else -(-n // multiple) * multiple


def pad_batch(samples: list[dict], pad_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """Pad SFT samples (or packed rows) on the right.

    Returns:
        ``input_ids [B, L]``, ``labels [B, L]`` (``-100`` on padding) and either
        ``attention_mask [B, L]`` (1 = real token) for plain samples, or, for packed rows
        (samples with ``position_ids``), ``position_ids [B, L]`` whose padding tail starts
        a new run at 0 so it forms its own segment, and no attention mask: HF Llama/Qwen2
        then build a block-diagonal causal mask from the position ids (call the model
        with ``use_cache=False``), or use :func:`trainkit.llm.packing.block_causal_mask`.
    """
    import torch

    if not samples:
        raise ValueError("pad_batch needs at least one sample")
    L = _target_len(max(len(s["input_ids"]) for s in samples), pad_to_multiple_of)
    out = {
        "input_ids": _pad([s["input_ids"] for s in samples], pad_id, L),
        "labels": _pad([s["labels"] for s in samples], IGNORE_INDEX, L),
    }
    if "position_ids" in samples[0]:
        out["position_ids"] = torch.tensor(
            [list(s["position_ids"]) + list(range(L - len(s["position_ids"]))) for s in samples],
            dtype=torch.long,
        )
    else:
        out["attention_mask"] = _pad([[1] * len(s["input_ids"]) for s in samples], 0, L)
    return out


def pad_preference(pairs: list[dict], pad_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """Pad preference pairs; chosen and rejected share one length so they can be concatenated.

    Returns:
        ``chosen_input_ids / chosen_attention_mask / chosen_labels [B, L]``, the same for
        ``rejected_*``, and ``prompt_lengths [B]``.
    """
    import torch

    L = _target_len(
        max(max(len(p["chosen_input_ids"]), len(p["rejected_input_ids"])) for p in pairs),
        pad_to_multiple_of,
    )
    out = {}
    for side in ("chosen", "rejected"):
        ids = [p[f"{side}_input_ids"] for p in pairs]
        out[f"{side}_input_ids"] = _pad(ids, pad_id, L)
        out[f"{side}_attention_mask"] = _pad([[1] * len(x) for x in ids], 0, L)
        out[f"{side}_labels"] = _pad([p[f"{side}_labels"] for p in pairs], IGNORE_INDEX, L)
    out["prompt_lengths"] = torch.tensor([p["prompt_length"] for p in pairs], dtype=torch.long)
    return out


def collate(samples: list[dict], pad_id: int, pad_to_multiple_of: int | None = None) -> dict:
    """:func:`pad_preference` for preference pairs, :func:`pad_batch` otherwise."""
    if samples and "chosen_input_ids" in samples[0]:
        return pad_preference(samples, pad_id, pad_to_multiple_of)
    return pad_batch(samples, pad_id, pad_to_multiple_of)


def pad_token_id(tok: Any) -> int:
    """The tokenizer's pad id, else its eos id (labels mask the padding either way)."""
    for name in ("pad_token_id", "eos_token_id"):
        v = getattr(tok, name, None)
        if v is not None:
            return int(v)
    raise UserError("the tokenizer has neither a pad nor an eos token")


# --------------------------------------------------------------------------- sampling


class ResumableSampler:
    """Shuffled index batches, reshuffled every epoch, deterministic by ``seed``.

    The position is ``(epoch, index)``: the epoch number and how many indices of that
    epoch's permutation were already handed out. ``state_dict()`` after step N and
    ``load_state_dict()`` in a fresh process give exactly the batches N+1, N+2, ...
    of the uninterrupted run. Iteration is endless; stop on ``max_steps``.
    """

    def __init__(
        self, n: int, batch_size: int, seed: int = 0, shuffle: bool = True, drop_last: bool = False
    ):
        if n < 1 or batch_size < 1:
            raise UserError(
                f"sampler needs n >= 1 and batch_size >= 1, got n={n}, batch_size={batch_size}"
            )
        if drop_last and batch_size > n:
            raise UserError(
                f"batch_size {batch_size} is larger than the dataset ({n}) with drop_last"
            )
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.shuffle, self.drop_last = shuffle, drop_last
        self.epoch, self.index = 0, 0
        self._perm_epoch, self._perm = -1, []

    def permutation(self, epoch: int) -> list[int]:
        order = list(range(self.n))
        if self.shuffle:
            random.Random(self.seed * 1_000_003 + epoch).shuffle(order)
        return order

    def __len__(self) -> int:
        """Batches per epoch."""
        return self.n // self.batch_size if self.drop_last else -(-self.n // self.batch_size)

    def next_batch(self) -> list[int]:
        left = self.n - self.index
        if left <= 0 or (self.drop_last and left < self.batch_size):
            self.epoch, self.index = self.epoch + 1, 0
        if self._perm_epoch != self.epoch:
            self._perm, self._perm_epoch = self.permutation(self.epoch), self.epoch
        batch = self._perm[self.index : self.index + self.batch_size]
        self.index += len(batch)
        return batch

    def __iter__(self):
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "index": self.index,
            "seed": self.seed,
            "n": self.n,
            "batch_size": self.batch_size,
        }

    def load_state_dict(self, state: dict) -> None:
        for k in ("n", "seed", "batch_size"):
            if state.get(k) != getattr(self, k):
                raise UserError(
                    f"cannot resume the data position: {k} was {state.get(k)}, "
                    f"now {getattr(self, k)} (the dataset or batch settings changed)"
                )
        self.epoch, self.index = int(state["epoch"]), int(state["index"])


class Batches:
    """Endless collated batches over ``samples`` in :class:`ResumableSampler` order."""

    def __init__(
        self,
        samples: list[dict],
        batch_size: int,
        pad_id: int,
        seed: int = 0,
        shuffle: bool = True,
        drop_last: bool = False,
        pad_to_multiple_of: int | None = None,
    ):
        self.samples, self.pad_id, self.multiple = samples, pad_id, pad_to_multiple_of
        self.sampler = ResumableSampler(len(samples), batch_size, seed, shuffle, drop_last)

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        return collate(
            [self.samples[i] for i in self.sampler.next_batch()], self.pad_id, self.multiple
        )

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)


def eval_batches(samples: list[dict], batch_size: int, pad_id: int):
    """The held-out samples in order, once, as collated batches."""
    for i in range(0, len(samples), batch_size):
        yield collate(samples[i : i + batch_size], pad_id)
