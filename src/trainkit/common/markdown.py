"""Markdown tables for the docs that are generated from code (variant tables, CONFIG.md)."""

from __future__ import annotations

from collections.abc import Iterable


def yes_no(flag: bool) -> str:
    """``"yes"`` / ``"no"`` for a table cell."""
    return "yes" if flag else "no"


def table(header: list[str], rows: Iterable[list[str]]) -> str:
    """A GitHub Markdown table, one line per row, ending in a newline.

    ``table(["a", "b"], [["1", "2"]])`` is ``"| a | b |\\n|---|---|\\n| 1 | 2 |\\n"``.
    """
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines) + "\n"
