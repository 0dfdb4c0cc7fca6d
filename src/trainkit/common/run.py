"""Run directories: ``runs/<name>/<timestamp>/`` with the resolved config inside."""

from __future__ import annotations

import datetime as _dt
import os
from pathlib import Path
from typing import Any

from trainkit.common.io import atomic_write_text


def timestamp() -> str:
    """A sortable, filesystem-safe local timestamp, e.g. ``20261127-083012``."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S")


def make_run_dir(name: str, root: str | os.PathLike = "runs", config: Any = None) -> Path:
    """Create ``root/name/<timestamp>/`` (suffixing ``-1``, ``-2`` on collision).

    When ``config`` is a trainkit config dataclass it is saved as ``config.yaml``.
    """
    base = Path(root) / name
    base.mkdir(parents=True, exist_ok=True)
    stamp = timestamp()
    path = base / stamp
    i = 0
    while True:
        try:
            path.mkdir()
            break
        except FileExistsError:
            i += 1
            path = base / f"{stamp}-{i}"
    if config is not None:
        save_config(config, path / "config.yaml")
    return path


def save_config(config: Any, path: str | os.PathLike) -> Path:
    """Write a config dataclass as YAML, atomically."""
    from trainkit.config import to_yaml

    return atomic_write_text(path, to_yaml(config))
