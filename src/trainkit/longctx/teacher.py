"""``trainkit longctx make-teacher-data``: whole-document QA written by a teacher LLM.

The paper's data (arXiv 2404.19553 sec. 2): a strong LLM reads pieces of long books and
papers and writes questions about them; each training sample is the *whole* document plus
one question, the answer in the assistant turn (loss on assistant turns only). Here:

1. Documents: ``docs.source`` is a ``.txt``/``.md`` file, a folder of them (one document
   each, sorted), ``stdlib`` (consecutive stdlib docstring paragraphs) or ``bio``
   (generated biographies); built-ins make ``docs.n_docs`` documents of ``docs.doc_length``.
2. Chunks: paragraphs packed into chunks of at most ``docs.chunk_tokens`` units of
   ``docs.tokenizer`` (empty = characters, ``char`` = the char model's tokens, else a
   model's tokenizer); an oversized paragraph is cut at word boundaries.
3. Prompts: single-detail, one chunk -> ``qa_per_chunk`` pairs; multi-detail, two chunks
   half a document apart in one prompt -> questions that need both (``multi_per_doc``).
4. Replies: an optional ```json fence is stripped (else, if the whole text is not JSON, the
   JSON value starting at the first ``[`` is read, text after it ignored), then validated
   (a non-empty list of objects with non-empty string ``question`` and ``answer``; a bare
   object or ``{"key": [...]}`` is accepted too). An unparsable or invalid reply, or a
   transport failure, is re-asked up to ``teacher.retries`` times (one budget per prompt,
   backoff only after transport failures), then the prompt is dropped and counted.
5. Output: ``{"messages": [user: document + "\\n\\n" + question, assistant: answer],
   "meta": {...}}`` as in :mod:`trainkit.longctx.tasks`, short samples mixed in to
   ``short_ratio`` (:func:`trainkit.longctx.data.short_records`), shuffled by seed, written
   atomically, with the counts in ``<out stem>.counts.json`` beside it.

Not verified: answers are the teacher's. ``meta.answer_in_source`` only records whether
the answer text occurs (case-insensitively) in the chunk(s) the teacher saw.
"""

from __future__ import annotations

import json
import random
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainkit.common.errors import UserError
from trainkit.common.io import atomic_write_json, atomic_write_text
from trainkit.longctx.data import DataSection, make_meter, n_short_for, short_records, to_jsonl
from trainkit.longctx.documents import chunk_document, load_documents
from trainkit.longctx.haystack import Meter
from trainkit.longctx.teacher_clients import HttpTeacher, LocalTeacher, TeacherError

COUNT_KEYS = (
    "jobs", "requests", "ok", "retried", "dropped_unparsable", "dropped_invalid",
    "failed_connection", "failed_timeout", "skipped", "qa_samples", "short_samples",
    "samples_written",
)  # fmt: skip
SYSTEM = "You write reading-comprehension questions with short, exact answers. Reply in JSON only."
_FORMAT = 'Reply with a JSON array only, no other text: [{"question": "...", "answer": "..."}]'
_FENCE = re.compile(r"```(?:json)?\s*(.*?)```", re.DOTALL | re.IGNORECASE)


@dataclass
class TeacherSection:
    url: str = field(default="", metadata={"help": "OpenAI-compatible base URL (.../v1)"})
    model: str = field(default="", metadata={"help": "model name sent to the endpoint"})
    key_env: str = field(
        default="OPENAI_API_KEY", metadata={"help": "env var with the API key (Bearer)"}
    )
    local: str = field(
        default="", metadata={"help": "local teacher: model folder or built-in name (no url)"}
    )
    retries: int = field(default=2, metadata={"help": "extra attempts per prompt"})
    timeout: float = field(default=120.0, metadata={"help": "seconds per HTTP request"})
    backoff: float = field(default=1.0, metadata={"help": "first delay after a transport error"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    prefill: str = field(
        default="", metadata={"help": "local teacher only: text its reply is forced to start with"}
    )
    max_tokens: int = field(default=1024, metadata={"help": "reply length limit"})
    max_consecutive_failures: int = field(
        default=3,
        metadata={"help": "stop after this many prompts in a row fail in transport; 0 = never"},
    )

    def validate(self) -> None:
        if self.retries < 0 or self.timeout <= 0 or self.backoff < 0 or self.max_tokens <= 0:
            raise UserError("teacher: retries >= 0, timeout > 0, backoff >= 0, max_tokens > 0")


@dataclass
class DocsSection:
    source: str = field(
        default="stdlib", metadata={"help": "stdlib, bio, or a .txt/.md file or folder"}
    )
    n_docs: int = field(default=4, metadata={"help": "documents made by stdlib/bio"})
    doc_length: int = field(default=16384, metadata={"help": "stdlib/bio document length"})
    chunk_tokens: int = field(default=4096, metadata={"help": "chunk size in tokenizer units"})
    tokenizer: str = field(
        default="", metadata={"help": "length unit: '' = chars, 'char' = char model, or a model"}
    )
    qa_per_chunk: int = field(default=2, metadata={"help": "QA pairs asked per prompt"})
    multi_per_doc: int = field(default=1, metadata={"help": "two-chunk prompts per document"})

    def validate(self) -> None:
        if min(self.n_docs, self.doc_length, self.chunk_tokens, self.qa_per_chunk) <= 0:
            raise UserError("docs: n_docs, doc_length, chunk_tokens, qa_per_chunk must be > 0")
        if self.multi_per_doc < 0:
            raise UserError("docs.multi_per_doc must be >= 0")


@dataclass
class TeacherDataConfig:
    """Config of ``trainkit longctx make-teacher-data`` (teacher-written long-document QA).

    Attributes:
        short_ratio: fraction of short samples (plain text and short chat) in [0, 1).
        short_length: length of the short chat samples (``docs.tokenizer`` units).
        seed: seed of the built-in documents, chunk pairs, the short mix and the shuffle.
        out: output JSONL file; the counts go to ``<out stem>.counts.json``.
    """

    teacher: TeacherSection = field(default_factory=TeacherSection)
    docs: DocsSection = field(default_factory=DocsSection)
    short_ratio: float = 0.0
    short_length: int = 256
    seed: int = 0
    out: str = "data/longctx/teacher.jsonl"

    def validate(self) -> None:
        if not 0.0 <= self.short_ratio < 1.0:
            raise UserError(f"short_ratio must be in [0, 1), got {self.short_ratio}")


def prompt(chunks: list[str], n: int) -> list[dict]:
    """Chat messages asking for ``n`` QA pairs about one chunk, or across two chunks."""
    if len(chunks) == 1:
        body = (
            f'Passage:\n"""\n{chunks[0]}\n"""\n\nWrite {n} question-answer pairs about specific '
            "details stated in the passage. Each question must be answerable from the passage "
            "alone and name what it asks about (it will be asked after a much longer text)."
        )
    else:
        body = (
            f'Part A:\n"""\n{chunks[0]}\n"""\n\nPart B:\n"""\n{chunks[1]}\n"""\n\nWrite {n} '
            "question-answer pairs where each question needs details from both Part A and "
            "Part B (compare, combine or relate them) and names what it asks about."
        )
    body += " Keep each answer short.\n" + _FORMAT
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": body}]


def parse_pairs(text: str | None) -> tuple[list[dict] | None, str]:
    """``(pairs, "ok")`` or ``(None, "dropped_unparsable" | "dropped_invalid")``."""
    if text is None:
        return None, "dropped_unparsable"
    m = _FENCE.search(text)
    body = m.group(1) if m else text
    try:
        obj = json.loads(body)
    except ValueError:  # prose around the array: the JSON value that starts at the first "["
        try:
            obj = json.JSONDecoder().raw_decode(body, body.index("["))[0]
        except ValueError:
            return None, "dropped_unparsable"
    if isinstance(obj, dict):
        lists = [v for v in obj.values() if isinstance(v, list)]
        obj = [obj] if "question" in obj else (lists[0] if len(lists) == 1 else obj)
    if not isinstance(obj, list) or not obj:
        return None, "dropped_invalid"
    pairs = []
    for it in obj:
        q, a = (it.get("question"), it.get("answer")) if isinstance(it, dict) else (None, None)
        if not (isinstance(q, str) and q.strip() and isinstance(a, str) and a.strip()):
            return None, "dropped_invalid"
        pairs.append({"question": q.strip(), "answer": a.strip()})
    return pairs, "ok"


def ask(teacher, messages: list[dict], cfg: TeacherSection, counts: dict) -> tuple[list, str]:
    """Ask until a valid reply or ``1 + cfg.retries`` requests; count and return the outcome
    (``"ok"`` with the pairs, else a count key with ``[]``)."""
    outcome = "dropped_unparsable"
    for attempt in range(cfg.retries + 1):
        counts["requests"] += 1
        counts["retried"] += int(attempt > 0)
        try:
            pairs, outcome = parse_pairs(teacher(messages))
        except TeacherError as e:
            outcome = "failed_timeout" if e.kind == "timeout" else "failed_connection"
            counts["last_error"] = str(e)
            if attempt < cfg.retries:
                time.sleep(cfg.backoff * 2**attempt)
            continue
        if pairs:
            counts["ok"] += 1
            return pairs, "ok"
    counts[outcome] += 1
    return [], outcome


def build_teacher(t: TeacherSection, seed: int):
    if bool(t.url) == bool(t.local):
        raise UserError("give exactly one teacher: --teacher-url URL or --teacher-local MODEL")
    if t.local:
        return LocalTeacher(t.local, t.temperature, t.max_tokens, seed, t.prefill)
    if t.prefill:
        raise UserError("teacher.prefill works only with --teacher-local")
    if not t.model:
        raise UserError("--teacher-model is required with --teacher-url")
    return HttpTeacher(t.url, t.model, t.key_env, t.timeout, t.temperature, t.max_tokens)


def generate(cfg: TeacherDataConfig, teacher=None, meter: Meter | None = None):
    """``(records, counts)``: every QA conversation (plus short samples), shuffled."""
    d = cfg.docs
    meter = meter or make_meter(d.tokenizer)
    teacher = teacher or build_teacher(cfg.teacher, cfg.seed)
    rng = random.Random(f"trainkit-teacher-mix:{cfg.seed}")
    docs = load_documents(d, meter, cfg.seed)
    jobs = []  # (doc number, [chunk numbers]); each doc's chunk list kept in `chunked`
    chunked = [chunk_document(text, d.chunk_tokens, meter) for _, text in docs]
    for di, chunks in enumerate(chunked):
        jobs += [(di, [ci]) for ci in range(len(chunks))]
        half = (len(chunks) + 1) // 2
        firsts = list(range(len(chunks) - half)) if len(chunks) > 1 else []
        rng.shuffle(firsts)
        jobs += [(di, [i, i + half]) for i in sorted(firsts[: d.multi_per_doc])]
    counts = {k: 0 for k in COUNT_KEYS}
    counts["jobs"] = len(jobs)
    records, streak = [], 0
    for n, (di, cis) in enumerate(jobs):
        limit = cfg.teacher.max_consecutive_failures
        if limit and streak >= limit:
            counts["skipped"] += 1
            continue
        msgs = prompt([chunked[di][c][1] for c in cis], d.qa_per_chunk)
        pairs, outcome = ask(teacher, msgs, cfg.teacher, counts)
        streak = streak + 1 if outcome.startswith("failed") else 0
        print(f"teacher: prompt {n + 1}/{len(jobs)}: {outcome}", file=sys.stderr)
        doc_id, text = docs[di]
        seen = " ".join(chunked[di][c][1] for c in cis).lower()
        for p in pairs[: d.qa_per_chunk]:
            user = text + "\n\n" + p["question"]
            depths = [round(chunked[di][c][0] / max(len(text), 1), 4) for c in cis]
            meta = {
                "task": "teacher_single" if len(cis) == 1 else "teacher_multi",
                "answer": p["answer"], "question": p["question"], "doc": doc_id, "chunks": cis,
                "depth": depths[0], "depths": depths, "length": meter(user), "unit": meter.unit,
                "source": d.source, "seed": cfg.seed, "index": len(records),
                "teacher": teacher.name, "answer_in_source": p["answer"].lower() in seen,
            }  # fmt: skip
            msgs = [
                {"role": "user", "content": user},
                {"role": "assistant", "content": p["answer"]},
            ]
            records.append({"messages": msgs, "meta": meta})
    counts["qa_samples"] = len(records)
    short_cfg = DataSection(short_length=cfg.short_length)
    n_short = n_short_for(cfg.short_ratio, len(records)) if records else 0
    records += short_records(n_short, rng, meter, short_cfg, seed=cfg.seed, start_index=0)
    counts["short_samples"] = n_short
    rng.shuffle(records)
    return records, counts


def counts_path(out: str | Path) -> Path:
    out = Path(out)
    return out.with_name(out.stem + ".counts.json")


def run(cfg: TeacherDataConfig, args=None) -> int:
    """CLI entry: ask the teacher, write ``cfg.out`` and the counts atomically.

    Raises ``UserError`` (exit 2, no output file) when no QA pair came back at all.
    """
    records, counts = generate(cfg)
    last = counts.pop("last_error", "")
    if counts["qa_samples"]:
        atomic_write_text(cfg.out, to_jsonl(records))
        counts["samples_written"] = len(records)
    atomic_write_json(counts_path(cfg.out), {**counts, "out": str(cfg.out), "last_error": last})
    summary = ", ".join(f"{k}={v}" for k, v in counts.items() if v)
    if not counts["qa_samples"]:
        why = f"; last transport error: {last}" if last else ""
        raise UserError(f"teacher produced no usable QA pairs ({summary}){why}; nothing written")
    print(json.dumps({"out": cfg.out, **counts}))
    return 0
