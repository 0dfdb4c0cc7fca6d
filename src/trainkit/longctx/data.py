"""``trainkit longctx make-data``: synthetic long-context SFT data as JSONL.

For each task in ``data.tasks``, each length in ``data.lengths`` and ``samples_per_task``
samples, one record from :func:`trainkit.longctx.tasks.make_sample` (depth from
``data.depths`` in turn, or uniform when empty). Then short samples are mixed in so
that they make up ``data.short_ratio`` of the file, to keep short-context ability (the
paper mixes RedPajama text and LongAlpaca chats, arXiv 2404.19553 sec. 2):

* plain text ``{"text": ...}`` - a few consecutive stdlib paragraphs (LM loss);
* short chat ``{"messages": [...]}`` - the same retrieval tasks at ``short_length``.

Records are shuffled with the seed and written atomically, one JSON object per line.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field
from typing import Literal

from trainkit.common.errors import UserError
from trainkit.common.io import atomic_write_text
from trainkit.longctx.haystack import Meter, stdlib_paragraphs
from trainkit.longctx.tasks import TASKS, make_sample


@dataclass
class DataSection:
    tasks: list[str] = field(
        default_factory=lambda: ["passkey", "needle", "kv", "single_qa", "multi_qa", "summary"],
        metadata={"help": "tasks to generate (see trainkit.longctx.tasks)"},
    )
    lengths: list[int] = field(
        default_factory=lambda: [1024, 2048], metadata={"help": "target lengths of the user turn"}
    )
    depths: list[float] = field(
        default_factory=list, metadata={"help": "answer depths used in turn; empty = uniform"}
    )
    samples_per_task: int = field(default=8, metadata={"help": "samples per task and length"})
    source: Literal["stdlib", "bio", "repeat"] = field(
        default="stdlib", metadata={"help": "haystack of passkey/needle/kv"}
    )
    n_keys: int = field(default=4, metadata={"help": "key-value pairs per kv sample"})
    tokenizer: str = field(
        default="",
        metadata={
            "help": "measure lengths in tokens of this model/tokenizer ('char' = 64-token char "
            "tokenizer); empty = characters"
        },
    )
    short_ratio: float = field(
        default=0.0, metadata={"help": "fraction of short samples, in [0, 1)"}
    )
    short_length: int = field(default=256, metadata={"help": "length of short chat samples"})

    def validate(self) -> None:
        bad = [t for t in self.tasks if t not in TASKS]
        if bad:
            raise UserError(
                f"data.tasks: unknown task(s) {bad}; expected some of {', '.join(TASKS)}"
            )
        if not 0.0 <= self.short_ratio < 1.0:
            raise UserError(f"data.short_ratio must be in [0, 1), got {self.short_ratio}")
        if any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise UserError(f"data.depths must be in [0, 1], got {self.depths}")
        if any(n <= 0 for n in self.lengths) or self.samples_per_task < 0:
            raise UserError("data.lengths must be positive and data.samples_per_task >= 0")


@dataclass
class MakeDataConfig:
    """Config of ``trainkit longctx make-data``: synthetic long-context SFT data as JSONL.

    Attributes:
        seed: seed of the samples (haystacks, keys, depths), the short mix and the shuffle;
            the same seed writes the same file.
    """

    data: DataSection = field(default_factory=DataSection)
    seed: int = 0
    out: str = field(default="data/longctx/train.jsonl", metadata={"help": "output JSONL file"})


def make_meter(tokenizer: str) -> Meter:
    """``""`` -> characters, ``"char"`` -> the 64-token char tokenizer, else a model's tokenizer."""
    if not tokenizer:
        return Meter()
    if tokenizer == "char":
        from trainkit.longctx.chartok import char_tokenizer

        return Meter(char_tokenizer())
    from trainkit.llm.models import load_tokenizer

    return Meter(load_tokenizer(tokenizer))


def _options(task: str, d: DataSection) -> dict:
    if task in ("passkey", "needle"):
        return {"source": d.source}
    if task == "kv":
        return {"source": d.source, "n_keys": d.n_keys}
    return {}


def n_short_for(short_ratio: float, n_long: int) -> int:
    """How many short records make them ``short_ratio`` of the file next to ``n_long``."""
    return round(short_ratio / (1.0 - short_ratio) * n_long)


def short_records(
    n: int, rng: random.Random, meter: Meter, d: DataSection, *, seed: int, start_index: int
) -> list[dict]:
    """``n`` short samples, alternating plain text (3 consecutive stdlib paragraphs) and a
    short chat (a task of ``d.tasks`` at ``d.short_length``, indices from ``start_index``).

    Also used by :mod:`trainkit.longctx.teacher` to mix short samples into teacher data.
    """
    pars = [p for _, p in stdlib_paragraphs()]
    out = []
    i = start_index
    for k in range(n):
        if k % 2 == 0:
            start = rng.randrange(len(pars))
            text = " ".join(pars[start : start + 3])
            out.append(
                {
                    "text": text,
                    "meta": {"task": "short_text", "length": meter(text), "unit": meter.unit},
                }
            )
        else:
            task = d.tasks[(k // 2) % len(d.tasks)]
            rec = make_sample(
                task,
                seed=seed,
                index=i,
                length=d.short_length,
                depth=round(rng.random(), 4),
                meter=meter,
                **_options(task, d),
            )
            rec["meta"]["short"] = True
            out.append(rec)
            i += 1
    return out


def generate(cfg: MakeDataConfig, meter: Meter | None = None) -> list[dict]:
    """All records of ``cfg`` (long, then short, shuffled by ``cfg.seed``)."""
    d = cfg.data
    meter = meter or make_meter(d.tokenizer)
    rng = random.Random(f"trainkit-longctx-mix:{cfg.seed}")
    long_recs = []
    i = 0
    for task in d.tasks:
        for length in d.lengths:
            for _ in range(d.samples_per_task):
                depth = d.depths[i % len(d.depths)] if d.depths else round(rng.random(), 4)
                long_recs.append(
                    make_sample(
                        task,
                        seed=cfg.seed,
                        index=i,
                        length=length,
                        depth=depth,
                        meter=meter,
                        **_options(task, d),
                    )
                )
                i += 1
    n_short = n_short_for(d.short_ratio, len(long_recs))
    short_recs = short_records(n_short, rng, meter, d, seed=cfg.seed, start_index=i)
    out = long_recs + short_recs
    rng.shuffle(out)
    return out


def to_jsonl(records: list[dict]) -> str:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)


def run(cfg: MakeDataConfig, args=None) -> int:
    """CLI entry: generate and write ``cfg.out`` atomically; print a one-line summary."""
    recs = generate(cfg)
    atomic_write_text(cfg.out, to_jsonl(recs))
    counts: dict[str, int] = {}
    for r in recs:
        counts[r["meta"]["task"]] = counts.get(r["meta"]["task"], 0) + 1
    print(json.dumps({"out": cfg.out, "records": len(recs), "by_task": counts}))
    return 0
