"""Generate ``docs/CONFIG.md``: every config key of every recipe, from the dataclasses.

``python -m trainkit.config_docs`` rewrites the file; a test fails when it is stale.
A key's help text is its field's ``metadata["help"]`` or the line for it under
``Attributes:`` in its dataclass's Google-style docstring.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
import sys
import typing
from pathlib import Path

from trainkit.cli import PARTS
from trainkit.commands import part_commands, resolve
from trainkit.config import key_of

DOC = Path(__file__).resolve().parents[2] / "docs" / "CONFIG.md"


def _attr_docs(cls: type) -> dict[str, str]:
    doc = inspect.getdoc(cls) or ""
    out, in_attrs = {}, False
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            in_attrs = True
            continue
        if in_attrs:
            m = re.match(r"^ {2,4}(\w+)(?: \([^)]*\))?:\s*(.*)$", line)
            if m:
                out[m.group(1)] = m.group(2).strip()
                last = m.group(1)
            elif line.startswith("        ") and out:
                out[last] += " " + line.strip()
            elif line.strip() and not line.startswith(" "):
                in_attrs = False
    return out


def _rows(cls: type, prefix: str = "", inst=None) -> list[tuple[str, str, str, str]]:
    hints = typing.get_type_hints(cls)
    docs = _attr_docs(cls)
    inst = cls() if inst is None else inst  # a section's defaults come from its parent
    rows = []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            rows += _rows(tp, prefix + key_of(f.name) + ".", getattr(inst, f.name))
            continue
        name = tp.__name__ if isinstance(tp, type) else str(tp).replace("typing.", "")
        default = getattr(inst, f.name)
        help_ = f.metadata.get("help") or docs.get(key_of(f.name), docs.get(f.name, ""))
        rows.append((prefix + key_of(f.name), name, repr(default), help_))
    return rows


def render() -> str:
    lines = [
        "# Config reference",
        "",
        "Generated from the recipe dataclasses by `python -m trainkit.config_docs`;",
        "a test fails when this file is stale. Set any key in a YAML file (`--config`)",
        "or on the command line as `key.sub=value`.",
        "",
    ]
    for part in PARTS:
        for name, cmd in sorted(part_commands(part).items()):
            if cmd.config is None:
                continue
            cls = resolve(cmd.config)
            lines += [
                f"## `trainkit {part} {name}`",
                "",
                cmd.help,
                "",
                f"Config class: `{cmd.config}`",
                "",
            ]
            lines += ["| key | type | default | meaning |", "|---|---|---|---|"]
            for key, tp, default, help_ in _rows(cls):
                cell = lambda s: s.replace("|", "\\|")
                lines.append(f"| `{key}` | {cell(tp)} | `{cell(default)}` | {cell(help_)} |")
            lines.append("")
    return "\n".join(lines)


def main() -> int:
    from trainkit.common.io import atomic_write_text

    importlib.invalidate_caches()
    atomic_write_text(DOC, render())
    print(f"wrote {DOC}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
