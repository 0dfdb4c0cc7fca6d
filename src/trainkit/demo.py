"""``trainkit demo``: run each part on the embedded defaults and write one report.

Each part provides ``trainkit.<part>.demo`` with ``ESTIMATE_S = {"quick": s, "full": s}``
and ``run(out_dir: Path, quick: bool) -> Section``. The report is ``report.md`` plus a
self-contained ``report.html`` (PNG plots inlined as base64) in the output folder.
"""

from __future__ import annotations

import base64
import html
import importlib
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from trainkit.common.errors import UserError
from trainkit.common.io import atomic_write_text
from trainkit.common.run import timestamp

KNOWN_PARTS = ("kan", "rlhf", "longctx")


@dataclass
class Section:
    """One part's contribution to the report.

    ``headline`` maps a metric name to its value as text; a value written
    ``before -> after`` names its direction in ``better`` (``"higher"`` or ``"lower"``),
    shown as an arrow after the name (the quick-demo test checks every such pair moved
    that way). ``images`` are ``(caption, path relative to the report folder)``; a caption
    says what the figure plots. ``markdown`` is free text; ``shows`` / ``not_shown`` say
    in a sentence or two what the section demonstrates and what it does not.
    """

    title: str
    headline: dict[str, str] = field(default_factory=dict)
    markdown: str = ""
    images: list[tuple[str, str]] = field(default_factory=list)
    command: str = ""
    seconds: float = 0.0
    better: dict[str, str] = field(default_factory=dict)
    shows: str = ""
    not_shown: str = ""

    def label(self, name: str) -> str:
        """The headline name as printed: with ``↑`` (higher is better) or ``↓``."""
        arrow = {"higher": " ↑", "lower": " ↓"}.get(self.better.get(name, ""), "")
        return name + arrow


def machine_info() -> str:
    import os

    try:
        import torch

        tv = torch.__version__
        dev = "cuda: " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    except ImportError:  # pragma: no cover
        tv, dev = "not installed", "cpu"
    return (
        f"{platform.node()} · {platform.platform()} · Python {platform.python_version()} · "
        f"torch {tv} · {os.cpu_count()} CPUs · device {dev}"
    )


def summary_rows(sections: list[Section]) -> list[list[str]]:
    """One row per section for the table that opens the report: title, headline (the
    first figure written ``before -> after``, else the first figure), time, command."""
    rows = []
    for s in sections:
        items = list(s.headline.items())
        pick = next(((k, v) for k, v in items if "->" in v), items[0] if items else None)
        head = f"{s.label(pick[0])}: {pick[1]}" if pick else ""
        rows.append(
            [s.title, head, f"{s.seconds:.0f} s", s.command.splitlines()[0] if s.command else ""]
        )
    return rows


SUMMARY_HEADER = ["section", "headline (before -> after)", "time", "reproduce"]

_NUM = r"(-?\d+(?:\.\d+)?(?:e[-+]?\d+)?)"
_PAIR = re.compile(_NUM + r"\s*%?\s*->\s*" + _NUM)


def improvement_failures(md: str) -> list[str]:
    """Check a report's headline figures: every ``before -> after`` value must carry a
    direction (``↑`` / ``↓`` after its name) and have moved that way, strictly; every
    section must have at least one such figure. Returns one line per failure (empty:
    all improved)."""
    out = []
    for block in re.split(r"^## ", md, flags=re.M)[1:]:
        title = block.splitlines()[0].strip()
        if title == "Summary":
            continue
        pairs = 0
        for name, value in re.findall(r"^\| (.+?) \| (.+?) \|$", block, flags=re.M):
            m = _PAIR.search(value)
            if not m or name in ("metric", "---"):
                continue
            pairs += 1
            before, after = float(m.group(1)), float(m.group(2))
            if name.endswith("↑"):
                ok = after > before
            elif name.endswith("↓"):
                ok = after < before
            else:
                out.append(f"{title}: '{name}' has no direction (↑ or ↓)")
                continue
            if not ok:
                out.append(f"{title}: '{name}' did not improve: {value}")
        if not pairs:
            out.append(f"{title}: no before -> after figure")
    return out


def _section_md(s: Section) -> str:
    lines = [f"## {s.title}", ""]
    if s.headline:
        lines += ["| metric | value |", "|---|---|"]
        lines += [f"| {s.label(k)} | {v} |" for k, v in s.headline.items()]
        lines.append("")
    if s.markdown:
        lines += [s.markdown.strip(), ""]
    if s.shows or s.not_shown:
        lines += [f"**What this shows.** {s.shows}", "", f"**What it does not.** {s.not_shown}", ""]
    for cap, rel in s.images:
        alt = cap.replace("[", "(").replace("]", ")")  # brackets would end the alt text
        lines += [f"![{alt}]({rel})", "", f"*{cap}*", ""]
    if s.command:
        lines += ["Reproduce:", "", "```", s.command, "```", ""]
    lines += [f"Time: {s.seconds:.0f} s", ""]
    return "\n".join(lines)


_SPANS = (  # (pattern on escaped text, replacement), applied in this order
    (re.compile(r"`([^`]+)`"), r"<code>\1</code>"),
    (re.compile(r"\*\*(?=\S)(.+?)(?<=\S)\*\*"), r"<strong>\1</strong>"),
    (re.compile(r"(?<![\w*])\*(?=\S)([^*]+?)(?<=\S)\*(?![\w*])"), r"<em>\1</em>"),
    (re.compile(r"\[([^\]]+)\]\((https?://[\w./#%?=:~+-]+|[\w./#-]+)\)"), r"<a href='\2'>\1</a>"),
)


def md_spans(text: str) -> str:
    """One line of Markdown as HTML: escaped, then `code`, **bold**, *emphasis* and
    [links](url); text inside backticks is not formatted further.

    ``md_spans("**Preference learning.** a < b, `x*y`")`` is
    ``"<strong>Preference learning.</strong> a &lt; b, <code>x*y</code>"``.
    """
    parts = re.split(r"(`[^`]+`)", html.escape(text, quote=False))
    out = []
    for part in parts:
        if part.startswith("`") and part.endswith("`") and len(part) > 1:
            out.append(_SPANS[0][0].sub(_SPANS[0][1], part))
            continue
        for pat, rep in _SPANS[1:]:
            part = pat.sub(rep, part)
        out.append(part)
    return "".join(out)


def _md_inline(text: str) -> str:
    """Tiny Markdown subset for the HTML report: paragraphs, code blocks, tables, lists,
    and the inline spans of :func:`md_spans`."""
    out, in_code, table = [], False, []

    def flush_table():
        if table:
            rows = [r.strip("|").split("|") for r in table if not set(r) <= set("|-: ")]
            out.append(
                "<table>"
                + "".join(
                    "<tr>" + "".join(f"<td>{md_spans(c.strip())}</td>" for c in r) + "</tr>"
                    for r in rows
                )
                + "</table>"
            )
            table.clear()

    for line in text.splitlines():
        if line.startswith("```"):
            flush_table()
            out.append("</pre>" if in_code else "<pre>")
            in_code = not in_code
        elif in_code:
            out.append(html.escape(line))
        elif line.startswith("|"):
            table.append(line)
        else:
            flush_table()
            if line.startswith(("- ", "* ")):
                if not out or out[-1] != "</ul>":
                    out.append("<ul>")
                else:
                    out.pop()  # continue the open list
                out += [f"<li>{md_spans(line[2:])}</li>", "</ul>"]
            elif line.strip():
                out.append(f"<p>{md_spans(line)}</p>")
    flush_table()
    return "\n".join(out)


def _section_html(s: Section, root: Path) -> str:
    parts = [f"<h2>{html.escape(s.title)}</h2>"]
    if s.headline:
        parts.append(
            "<table class='headline'>"
            + "".join(
                f"<tr><th>{html.escape(s.label(k))}</th><td>{html.escape(v)}</td></tr>"
                for k, v in s.headline.items()
            )
            + "</table>"
        )
    if s.markdown:
        parts.append(_md_inline(s.markdown))
    if s.shows or s.not_shown:
        parts.append(
            _md_inline(f"**What this shows.** {s.shows}\n\n**What it does not.** {s.not_shown}")
        )
    for cap, rel in s.images:
        data = base64.b64encode((root / rel).read_bytes()).decode("ascii")
        parts.append(
            f"<figure><img alt='{html.escape(cap)}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{html.escape(cap)}</figcaption></figure>"
        )
    if s.command:
        parts.append(f"<p>Reproduce:</p><pre>{html.escape(s.command)}</pre>")
    parts.append(f"<p class='time'>Time: {s.seconds:.0f} s</p>")
    return "\n".join(parts)


CSS = """body{font-family:sans-serif;max-width:1000px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%;border:1px solid #ddd}table{border-collapse:collapse;margin:1em 0}
td,th{border:1px solid #ccc;padding:4px 8px;text-align:left}pre{background:#f4f4f4;padding:8px;
overflow-x:auto}figcaption{font-style:italic;color:#555}.time{color:#777}"""


def write_report(out: Path, sections: list[Section], total_s: float) -> tuple[Path, Path]:
    head = f"# trainkit demo report\n\nMachine: {machine_info()}\n\nTotal time: {total_s:.0f} s\n"
    rows = summary_rows(sections)
    summary_md = ""
    summary_html = ""
    if rows:
        cell = lambda c: c.replace("|", "\\|")  # noqa: E731
        summary_md = (
            "\n## Summary\n\n"
            + "\n".join(
                ["| " + " | ".join(SUMMARY_HEADER) + " |", "|---|---|---|---|"]
                + [
                    "| "
                    + " | ".join(cell(c) if i < 3 else f"`{c}`" for i, c in enumerate(r))
                    + " |"
                    for r in rows
                ]
            )
            + "\n"
        )
        summary_html = (
            "<h2>Summary</h2><table class='summary'><tr>"
            + "".join(f"<th>{html.escape(h)}</th>" for h in SUMMARY_HEADER)
            + "</tr>"
            + "".join(
                "<tr>"
                + "".join(f"<td>{html.escape(c)}</td>" for c in r[:3])
                + f"<td><code>{html.escape(r[3])}</code></td></tr>"
                for r in rows
            )
            + "</table>"
        )
    md = head + summary_md + "\n" + "\n".join(_section_md(s) for s in sections)
    body = (
        f"<h1>trainkit demo report</h1><p>Machine: {html.escape(machine_info())}</p>"
        f"<p>Total time: {total_s:.0f} s</p>{summary_html}"
        + "\n".join(_section_html(s, out) for s in sections)
    )
    page = (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>trainkit demo</title>"
        f"<style>{CSS}</style></head><body>{body}</body></html>\n"
    )
    return atomic_write_text(out / "report.md", md), atomic_write_text(out / "report.html", page)


def run_demo(parts: list[str], quick: bool = False, out: str | None = None) -> Path:
    """Run the demo of each part in ``parts`` and write the report; returns its folder."""
    for p in parts:
        if p not in KNOWN_PARTS:
            raise UserError(f"unknown demo part '{p}'; choose from {', '.join(KNOWN_PARTS)}")
    folder = Path(out) if out else Path("runs") / "demo" / timestamp()
    folder.mkdir(parents=True, exist_ok=True)
    mods = {}
    for p in parts:
        try:
            mods[p] = importlib.import_module(f"trainkit.{p}.demo")
        except ModuleNotFoundError as e:
            if e.name and e.name.startswith(f"trainkit.{p}"):
                print(f"[demo] part '{p}' has no demo yet; skipped", file=sys.stderr)
                continue
            raise
    mode = "quick" if quick else "full"
    eta = sum(m.ESTIMATE_S[mode] for m in mods.values())
    import torch

    threads = torch.get_num_threads()  # a part may lower it (KAN runs on one thread)
    sections, t0 = [], time.time()
    for i, (p, mod) in enumerate(mods.items()):
        torch.set_num_threads(threads)
        print(
            f"[demo] {i + 1}/{len(mods)} {p}: about {mod.ESTIMATE_S[mode]} s "
            f"(all parts ETA {eta:.0f} s)",
            file=sys.stderr,
            flush=True,
        )
        ts = time.time()
        sec = mod.run(folder / p, quick)
        sec.images = [(cap, str(Path(p) / rel)) for cap, rel in sec.images]
        sec.seconds = time.time() - ts
        sections.append(sec)
        eta -= mod.ESTIMATE_S[mode]
        print(f"[demo] {p} done in {sec.seconds:.0f} s", file=sys.stderr, flush=True)
    md, page = write_report(folder, sections, time.time() - t0)
    for line in improvement_failures(md.read_text()):
        print(f"[demo] warning: {line}", file=sys.stderr)
    print(f"report: {md}\nhtml:   {page}")
    return folder
