"""The command registry every part fills (kept free of heavy imports).

Each part has a ``trainkit/<part>/commands.py`` with ``COMMANDS: dict[str, Command]``.
A command either takes a recipe config (``config="module:Class"``: the CLI adds
``--config FILE``, ``--print-config`` and ``key.sub=value`` overrides and passes the
loaded config) or only its own flags (``add_args``). ``run`` is ``"module:function"``,
imported only when the command runs, and called as ``run(cfg, args)``.
``flags`` maps convenience flags to config keys: ``{"--width": "model.width"}`` makes
``--width 2,5,1`` the same as the override ``model.width=2,5,1``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Command:
    help: str
    run: str
    config: str | None = None
    add_args: Callable[[Any], None] | None = None
    description: str | None = None
    flags: dict[str, str] | None = None


def resolve(ref: str) -> Any:
    """Import ``"package.module:attr"``."""
    mod, _, attr = ref.partition(":")
    return getattr(importlib.import_module(mod), attr)


def part_commands(part: str) -> dict[str, Command]:
    """``COMMANDS`` of ``trainkit.<part>.commands``; ``{}`` when the part has no such module
    (an import error inside it is raised, not hidden)."""
    try:
        mod = importlib.import_module(f"trainkit.{part}.commands")
    except ModuleNotFoundError as e:
        if e.name and e.name.startswith(f"trainkit.{part}"):
            return {}
        raise
    return getattr(mod, "COMMANDS", {})
