"""Metrics logging (JSONL always, TensorBoard when installed) and progress bars."""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any


def _clean(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):
        try:
            v = v.item()
        except (ValueError, RuntimeError):
            return str(v)
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    return v


class MetricsLogger:
    """Append one JSON object per step to ``metrics.jsonl`` in ``run_dir``.

    Each line is flushed at once, so a crash loses nothing already logged. Scalars
    also go to TensorBoard when ``tensorboard`` is installed and ``tensorboard=True``.
    ``run_dir=None`` keeps the records in memory only (``self.records``).
    """

    def __init__(self, run_dir: str | os.PathLike | None, tensorboard: bool = True):
        self.records: list[dict] = []
        self._file = None
        self._tb = None
        if run_dir is not None:
            run_dir = Path(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            self._file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")
            if tensorboard:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(run_dir / "tb"))
                except Exception:  # tensorboard is optional
                    self._tb = None

    def log(self, step: int, **metrics: Any) -> dict:
        rec = {"step": int(step), "time": round(time.time(), 3)}
        rec.update({k: _clean(v) for k, v in metrics.items()})
        self.records.append(rec)
        if self._file is not None:
            self._file.write(json.dumps(rec) + "\n")
            self._file.flush()
        if self._tb is not None:
            for k, v in rec.items():
                if k not in ("step", "time") and isinstance(v, (int, float)):
                    self._tb.add_scalar(k, v, step)
        return rec

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def progress(
    iterable: Iterable | None = None,
    total: int | None = None,
    desc: str = "",
    disable: bool = False,
    **kw,
):
    """A tqdm progress bar (rate and ETA) that writes to stderr; ``disable`` silences it."""
    from tqdm.auto import tqdm

    return tqdm(
        iterable, total=total, desc=desc, disable=disable, dynamic_ncols=True, leave=False, **kw
    )
