"""Datasets for LLM training: load, validate every record, tokenise, split, pack.

Pipeline (:func:`build_datasets`)::

    file(s) --read_records--> validated records --split--> train / eval records
            --tokenize_records--> samples (+ stats) --pack (optional, SFT)--> rows

Files are read by :mod:`trainkit.llm.data_files` (:func:`read_raw`, re-exported here).
Every record is read and validated before anything is tokenised, so a bad line stops
the run with one :class:`~trainkit.common.errors.UserError` naming the file, the line
(or row) and the field -- a run never trains on half-parsed data.

Formats (field names are configurable in :class:`DataConfig`; the TRL layouts and their
detection are in :mod:`trainkit.llm.data_formats`):

* ``chat``: ``{"messages": [{"role", "content", "tool_calls"?}, ...], "tools"?: [...]}``
  (TRL's conversational language modelling), rendered with the tokenizer's own chat
  template; loss on assistant turns only (the assistant content and its end-of-turn).
* ``prompt_response``: ``{"prompt": str, "response" | "completion": str}``; rendered as a
  user/assistant chat when the tokenizer has a template (``chat_template: auto``) or as
  plain ``prompt + separator + response + eos`` (``input_template`` fills the prompt in
  instead); loss on the response. Conversational prompt-completion (message lists) is
  rendered as one conversation with loss on the completion's assistant turns only.
* ``text``: ``{"text": str}``; plain language-model loss on every token.
* ``preference``: ``{"prompt", "chosen", "rejected"}``, strings or message lists, or
  ``chosen``/``rejected`` alone sharing their prompt (implicit prompt); two sequences that
  share the prompt tokens, each with labels on its response only (DPO / reward models).
  Over-long pairs are cut at the right end (answers first), so the prompt stays shared.

OpenRLHF's data options are accepted as aliases: ``input_key`` (= ``prompt_field``),
``output_key`` (= ``response_field``), ``chosen_key``, ``rejected_key``,
``apply_chat_template`` (true = ``chat_template: always``, false = ``never``) and
``input_template`` (``"User: {}\nAssistant: "``: the prompt is put in place of ``{}``).

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
from trainkit.llm.data_formats import (
    DEFAULT_ROLES,
    FORMATS,
    Record,
    detect_format,
    validate_record,
)

__all__ = [
    "FORMATS",
    "IGNORE_INDEX",
    "DataConfig",
    "Datasets",
    "Record",
    "build_datasets",
    "detect_format",
    "load_records",
    "read_raw",
    "tokenize_records",
    "validate_record",
]


@dataclass
class DataConfig:
    """The ``data`` section of every LLM recipe.

    Attributes:
        format: record format: chat, prompt_response, text or preference; auto (default)
            picks it from the first record's keys (messages, chosen+rejected, prompt+response, text).
        messages_field: record key of the chat message list (format chat).
        prompt_field: record key of the prompt (formats prompt_response and preference).
        response_field: record key of the response (format prompt_response).
        completion_field: the other name of the response (TRL's prompt-completion).
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
        input_key: OpenRLHF's name of ``prompt_field`` (overrides it when set).
        output_key: OpenRLHF's name of ``response_field`` (overrides it when set).
        chosen_key: OpenRLHF's name of ``chosen_field`` (overrides it when set).
        rejected_key: OpenRLHF's name of ``rejected_field`` (overrides it when set).
        apply_chat_template: OpenRLHF's switch: true = ``chat_template: always``, false =
            ``never`` (overrides ``chat_template`` when set).
        input_template: OpenRLHF's prompt template, e.g. ``"User: {}\nAssistant: "``: a
            string prompt rendered without chat template becomes the template with the
            prompt in place of ``{}``, followed directly by the response (no separator).
    """

    path: str = field(
        default="", metadata={"help": "jsonl / json / parquet file or datasets folder"}
    )
    format: Literal["auto", "chat", "prompt_response", "text", "preference"] = "auto"
    split: str = field(default="train", metadata={"help": "split of a saved DatasetDict"})
    messages_field: str = "messages"
    prompt_field: str = "prompt"
    response_field: str = "response"
    completion_field: str = "completion"
    text_field: str = "text"
    chosen_field: str = "chosen"
    rejected_field: str = "rejected"
    roles: list[str] = field(default_factory=lambda: list(DEFAULT_ROLES))
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
    input_key: str | None = None
    output_key: str | None = None
    chosen_key: str | None = None
    rejected_key: str | None = None
    apply_chat_template: bool | None = None
    input_template: str | None = None

    def __post_init__(self) -> None:
        self.apply_aliases()

    def apply_aliases(self) -> None:
        """Copy the OpenRLHF-named options set onto trainkit's own (idempotent)."""
        for alias, name in (
            ("input_key", "prompt_field"),
            ("output_key", "response_field"),
            ("chosen_key", "chosen_field"),
            ("rejected_key", "rejected_field"),
        ):
            if getattr(self, alias):
                setattr(self, name, getattr(self, alias))
        if self.apply_chat_template is not None:
            self.chat_template = "always" if self.apply_chat_template else "never"

    def validate(self) -> None:
        self.apply_aliases()
        if self.input_template is not None and "{}" not in self.input_template:
            raise UserError(
                f"data.input_template must contain '{{}}' (where the prompt goes), "
                f"got {self.input_template!r}"
            )
        if self.max_length < 2:
            raise UserError(f"data.max_length must be >= 2, got {self.max_length}")
        if not 0.0 <= self.eval_fraction < 1.0:
            raise UserError(f"data.eval_fraction must be in [0, 1), got {self.eval_fraction}")
        if self.eval_fraction > 0 and self.eval_path:
            raise UserError("data.eval_fraction and data.eval_path are exclusive; set one of them")
        if self.max_samples is not None and self.max_samples < 1:
            raise UserError(f"data.max_samples must be >= 1 or null, got {self.max_samples}")


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
        if fmt == "prompt_only":  # the message names the first record's file and line
            validate_record(raw[0][1], raw[0][0], fmt, cfg)
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
