"""Datasets for LLM training: load, validate every record, tokenise, split, pack.

Pipeline (:func:`build_datasets`)::

    file(s) --read_records--> validated records --split--> train / eval records
            --tokenize_records--> samples (+ stats) --pack (optional, SFT)--> rows

Files are read by :mod:`trainkit.llm.data_files` (:func:`read_raw`, re-exported here).
Every record is read and validated before anything is tokenised, so a bad line stops
the run with one :class:`~trainkit.common.errors.UserError` naming the file, the line
(or row) and the field -- a run never trains on half-parsed data.

Formats (field names are configurable in :class:`DataConfig`):

* ``chat``: ``{"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}``,
  rendered with the tokenizer's own chat template; loss on assistant turns only (the
  assistant content and its end-of-turn token).
* ``prompt_response``: ``{"prompt": str, "response": str}``; rendered as a user/assistant
  chat when the tokenizer has a template (``chat_template: auto``) or as plain
  ``prompt + separator + response + eos``; loss on the response.
* ``text``: ``{"text": str}``; plain language-model loss on every token.
* ``preference``: ``{"prompt": str, "chosen": str, "rejected": str}`` (the prompt may be a
  message list, the answers conversational; see :func:`_preference`); two sequences that
  share the prompt tokens, each with labels on its response only (DPO / reward models).
  Over-long pairs are cut at the right end (answers first), so the prompt stays shared.

Samples are dicts of Python int lists. SFT samples: ``input_ids [T]`` and ``labels [T]``
(aligned with ``input_ids``, not shifted -- the Hugging Face convention; ``-100`` means
"no loss"). Preference samples: ``chosen_input_ids``, ``chosen_labels``,
``rejected_input_ids``, ``rejected_labels`` and ``prompt_length``.
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from trainkit.common.errors import UserError
from trainkit.llm.collate import IGNORE_INDEX, tokenize_records
from trainkit.llm.data_files import read_raw

__all__ = [
    "IGNORE_INDEX",
    "DataConfig",
    "Datasets",
    "Record",
    "build_datasets",
    "load_records",
    "read_raw",
    "tokenize_records",
    "validate_record",
]
FORMATS = ("chat", "prompt_response", "text", "preference")


@dataclass
class DataConfig:
    """The ``data`` section of every LLM recipe.

    Attributes:
        format: record format: chat, prompt_response, text or preference; auto (default)
            picks it from the first record's keys (messages, chosen+rejected, prompt+response, text).
        messages_field: record key of the chat message list (format chat).
        prompt_field: record key of the prompt (formats prompt_response and preference).
        response_field: record key of the response (format prompt_response).
        text_field: record key of the plain text (format text).
        chosen_field: record key of the preferred answer (format preference).
        rejected_field: record key of the dispreferred answer (format preference).
        roles: allowed message roles; a message with any other role is a data error.
        add_eos: append the tokenizer's EOS token to a response rendered without chat template
            (prompt_response, preference) and to text samples; templated turns unaffected.
        max_length: tokens per sample (each side of a preference pair), and the row length
            when packing; longer samples follow ``truncation``. Must be >= 2.
        eval_path: held-out file or datasets folder (same format as ``path``); null: none,
            or ``eval_fraction``. Exclusive with ``eval_fraction``.
        eval_split: split of ``eval_path`` to read when it is a saved DatasetDict.
        eval_fraction: fraction in [0, 1) of the records held out for eval (at least one); the
            default 0 holds out none. Exclusive with ``eval_path``.
        packing: SFT only: pack several samples into rows of ``max_length`` tokens
            (best-fit, no attention across samples); not allowed for preference data.
        seed: seed of the shuffle that picks the ``eval_fraction`` held-out records.
    """

    path: str = field(
        default="", metadata={"help": "jsonl / json / parquet file or datasets folder"}
    )
    format: Literal["auto", "chat", "prompt_response", "text", "preference"] = "auto"
    split: str = field(default="train", metadata={"help": "split of a saved DatasetDict"})
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    response_field: str = "response"
    text_field: str = "text"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    roles: list[str] = field(default_factory=lambda: ["system", "user", "assistant"])
    chat_template: Literal["auto", "always", "never"] = field(
        default="auto", metadata={"help": "render prompt/response with the model's template"}
    )
    separator: str = field(
        default="\n", metadata={"help": "prompt/response joiner without template"}
    )
    add_eos: bool = True
    max_length: int = 1024
    truncation: Literal["right", "left", "drop", "error"] = field(
        default="right",
        metadata={"help": "over-long samples: cut at the right/left end, drop, or stop"},
    )
    eval_path: str | None = None
    eval_split: str = "test"
    eval_fraction: float = 0.0
    max_samples: int | None = field(default=None, metadata={"help": "use only the first N records"})
    packing: bool = False
    seed: int = 0

    def validate(self) -> None:
        if self.max_length < 2:
            raise UserError(f"data.max_length must be >= 2, got {self.max_length}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise UserError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.eval_fraction > 0 and self.eval_path:
            raise UserError("data.eval_fraction and data.eval_path are exclusive; set one of them")
        if self.max_samples is not None and self.max_samples < 1:
            raise UserError(f"data.max_samples must be >= 1 or null, got {self.max_samples}")


@dataclass
class Record:
    """A validated record: ``where`` says where it came from, ``data`` is normalised."""

    where: str
    data: dict


# --------------------------------------------------------------------------- validation


def _tname(v: Any) -> str:
    return (
        "null"
        if v is None
        else {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
            type(v), type(v).__name__
        )
    )


def detect_format(obj: Any, cfg: DataConfig) -> str:
    """The format a record's keys suggest (used for ``format: auto``)."""
    if not isinstance(obj, dict):
        raise UserError(f"a record must be a JSON object, got {_tname(obj)}")
    keys = obj.keys()
    if cfg.messages_field in keys:
        return "chat"
    if cfg.chosen_field in keys and cfg.rejected_field in keys:
        return "preference"
    if cfg.prompt_field in keys and cfg.response_field in keys:
        return "prompt_response"
    if cfg.text_field in keys:
        return "text"
    raise UserError(
        f"cannot tell the data format from keys {sorted(map(str, keys))}; expected "
        f"'{cfg.messages_field}' (chat), '{cfg.prompt_field}'+'{cfg.response_field}', "
        f"'{cfg.text_field}', or '{cfg.prompt_field}'+'{cfg.chosen_field}'+'{cfg.rejected_field}'; "
        "or set data.format and the data.*_field names"
    )


def _check_text(v: str, where: str, key: str) -> str:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape such as "\ud800"
        raise UserError(
            f"{where}: field '{key}' holds an invalid unicode escape (lone surrogate)"
        ) from None
    return v


def _string(obj: dict, key: str, where: str, nonempty: bool = True) -> str:
    if key not in obj:
        raise UserError(f"{where}: missing field '{key}'")
    v = obj[key]
    if not isinstance(v, str):
        raise UserError(f"{where}: field '{key}' must be a string, got {_tname(v)}")
    if nonempty and not v:
        raise UserError(f"{where}: field '{key}' is an empty string")
    return _check_text(v, where, key)


def _messages(
    obj: dict, key: str, where: str, roles: list[str], need_assistant: bool
) -> list[dict]:
    if key not in obj:
        raise UserError(f"{where}: missing field '{key}'")
    msgs = obj[key]
    if not isinstance(msgs, list):
        raise UserError(f"{where}: field '{key}' must be a list of messages, got {_tname(msgs)}")
    if not msgs:
        raise UserError(f"{where}: field '{key}' is an empty list")
    out = []
    for j, m in enumerate(msgs):
        f = f"{key}[{j}]"
        if not isinstance(m, dict):
            raise UserError(
                f"{where}: field '{f}' must be an object with role and content, got {_tname(m)}"
            )
        role = m.get("role")
        if not isinstance(role, str) or role not in roles:
            got = "missing" if "role" not in m else repr(role)
            raise UserError(
                f"{where}: field '{f}.role' must be one of {', '.join(roles)}; got {got}"
            )
        if "content" not in m:
            raise UserError(f"{where}: missing field '{f}.content'")
        if not isinstance(m["content"], str):
            raise UserError(
                f"{where}: field '{f}.content' must be a string, got {_tname(m['content'])}"
            )
        out.append({"role": role, "content": _check_text(m["content"], where, f"{f}.content")})
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise UserError(f"{where}: field '{key}' has no assistant turn (nothing to learn from)")
    return out


def _preference(obj: dict, where: str, cfg: DataConfig) -> dict:
    """Normalise a pair to ``{"prompt": str | messages, "chosen": str, "rejected": str}``.

    Accepted: strings (``prompt``, ``chosen``, ``rejected``); a ``prompt`` message list with
    string answers; or conversational answers (TRL style ``chosen: [{"role": "assistant",
    ...}]`` after a prompt, or whole conversations without a prompt, HH style) whose last
    turn is the assistant answer and whose earlier turns agree.
    """
    pk, ck, rk = cfg.prompt_field, cfg.chosen_field, cfg.rejected_field
    for k in (ck, rk):
        if k not in obj:
            raise UserError(f"{where}: missing field '{k}'")
    conv = isinstance(obj[ck], list) or isinstance(obj[rk], list)
    prompt: Any = None
    if pk in obj and isinstance(obj[pk], list):
        prompt = _messages(obj, pk, where, cfg.roles, need_assistant=False)
    elif pk in obj or not conv:
        prompt = _string(obj, pk, where)
    if not conv:
        return {
            "prompt": prompt,
            "chosen": _string(obj, ck, where),
            "rejected": _string(obj, rk, where),
        }
    base = (
        []
        if prompt is None
        else ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt)
    )
    turns = {}
    for k in (ck, rk):
        msgs = _messages(obj, k, where, cfg.roles, need_assistant=True)
        if msgs[-1]["role"] != "assistant":
            raise UserError(f"{where}: field '{k}' must end with an assistant turn")
        turns[k] = (base + msgs[:-1], msgs[-1]["content"])
    if turns[ck][0] != turns[rk][0]:
        raise UserError(
            f"{where}: fields '{ck}' and '{rk}' differ before their last turn; "
            "a preference pair must share its prompt"
        )
    if not turns[ck][0]:
        raise UserError(
            f"{where}: missing field '{pk}' (and '{ck}' has no turns before the answer)"
        )
    return {"prompt": turns[ck][0], "chosen": turns[ck][1], "rejected": turns[rk][1]}


def validate_record(obj: Any, where: str, fmt: str, cfg: DataConfig) -> Record:
    """Check one raw record against ``fmt`` and return it normalised.

    Raises:
        UserError: ``"<file>:<line>: field '<name>' <problem>"``.
    """
    if not isinstance(obj, dict):
        raise UserError(f"{where}: a record must be a JSON object, got {_tname(obj)}")
    if fmt == "chat":
        return Record(
            where, {"messages": _messages(obj, cfg.messages_field, where, cfg.roles, True)}
        )
    if fmt == "prompt_response":
        return Record(
            where,
            {
                "prompt": _string(obj, cfg.prompt_field, where),
                "response": _string(obj, cfg.response_field, where),
            },
        )
    if fmt == "text":
        return Record(where, {"text": _string(obj, cfg.text_field, where)})
    if fmt == "preference":
        return Record(where, _preference(obj, where, cfg))
    raise UserError(f"unknown data format '{fmt}'; expected one of {', '.join(FORMATS)}")


def load_records(
    path: str, cfg: DataConfig, split: str | None = None, fmt: str | None = None
) -> tuple[list[Record], str]:
    """Read and validate every record of ``path``; returns ``(records, format)``.

    Raises:
        UserError: on an unreadable file, a bad JSON line, an empty dataset, a missing or
            mistyped field (the message names file, line and field).
    """
    raw = read_raw(path, cfg.split if split is None else split)
    if cfg.max_samples is not None:
        raw = raw[: cfg.max_samples]
    if not raw:
        raise UserError(f"{path}: the dataset is empty (no records)")
    fmt = fmt or cfg.format
    if fmt == "auto":
        try:
            fmt = detect_format(raw[0][1], cfg)
        except UserError as e:
            raise UserError(f"{raw[0][0]}: {e}") from None
    return [validate_record(obj, where, fmt, cfg) for where, obj in raw], fmt


# --------------------------------------------------------------------------- building


@dataclass
class Datasets:
    """What :func:`build_datasets` returns.

    Attributes:
        train: SFT samples / packed rows / preference pairs.
        eval: the held-out split in the same form, or ``None``.
        format: the data format that was used.
        stats: ``{"train": {...}, "eval": {...}}`` counts (records, kept, truncated,
            dropped, tokens, label_tokens, and rows/fill when packed).
    """

    train: list[dict]
    eval: list[dict] | None
    format: str
    stats: dict = dataclasses.field(default_factory=dict)

    @property
    def kind(self) -> str:
        return "preference" if self.format == "preference" else "sft"


def split_records(
    records: list[Record], fraction: float, seed: int
) -> tuple[list[Record], list[Record]]:
    """Deterministically hold out ``round(fraction * n)`` (at least 1) records."""
    n = len(records)
    k = max(1, round(fraction * n))
    if k >= n:
        raise UserError(f"data.eval_fraction={fraction} leaves no training records out of {n}")
    order = list(range(n))
    random.Random(seed).shuffle(order)
    held = set(order[:k])
    return (
        [r for i, r in enumerate(records) if i not in held],
        [r for i, r in enumerate(records) if i in held],
    )


def build_datasets(cfg: DataConfig, tokenizer: Any) -> Datasets:
    """Load, validate, split, tokenise and (optionally) pack ``cfg.path``.

    Every record of the train and eval files is validated before any is tokenised.
    """
    from trainkit.llm.packing import pack_samples

    train_recs, fmt = load_records(cfg.path, cfg)
    eval_recs = None
    if cfg.eval_path:
        eval_recs, _ = load_records(cfg.eval_path, cfg, split=cfg.eval_split, fmt=fmt)
    elif cfg.eval_fraction > 0:
        train_recs, eval_recs = split_records(train_recs, cfg.eval_fraction, cfg.seed)
    if cfg.packing and fmt == "preference":
        raise UserError("data.packing=true is for SFT formats; preference pairs are not packed")
    train, st = tokenize_records(train_recs, fmt, tokenizer, cfg)
    if not train:
        raise UserError(
            f"{cfg.path}: no sample is left after length filtering "
            f"(dropped {st['dropped']} of {st['records']}; data.max_length={cfg.max_length})"
        )
    stats = {"train": st}
    ev = None
    if eval_recs is not None:
        ev, stats["eval"] = tokenize_records(eval_recs, fmt, tokenizer, cfg)
        if not ev:
            raise UserError(
                f"{cfg.eval_path or cfg.path}: no eval sample left after length filtering"
            )
    if cfg.packing:
        train, stats["train"]["packing"] = pack_samples(train, cfg.max_length)
        if ev is not None:
            ev, stats["eval"]["packing"] = pack_samples(ev, cfg.max_length)
    return Datasets(train, ev, fmt, stats)


@dataclass
class DataCheckConfig:
    """Config of ``trainkit llm data-check``: validate and tokenise a dataset, print stats."""

    model: str = field(default="smollm2-135m-instruct", metadata={"help": "whose tokenizer to use"})
    data: DataConfig = field(default_factory=DataConfig)
    stats_out: str | None = field(default=None, metadata={"help": "also write the stats as JSON"})


def check(cfg: DataCheckConfig, args: Any = None) -> int:
    """Run the whole data pipeline without training; a bad record exits with code 2."""
    from trainkit.common.io import atomic_write_json
    from trainkit.llm.collate import summarize_stats
    from trainkit.llm.models import load_tokenizer

    ds = build_datasets(cfg.data, load_tokenizer(cfg.model))
    print(f"{cfg.data.path}: format {ds.format}")
    for split, st in ds.stats.items():
        print(f"{split}: {summarize_stats(st)}")
    if cfg.stats_out:
        atomic_write_json(cfg.stats_out, {"format": ds.format, **ds.stats})
    return 0
