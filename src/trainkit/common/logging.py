"""Metrics logging (JSONL always; TensorBoard, W&B, MLflow, trackio on request) and progress bars."""

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

    Each line is flushed at once, so a crash loses nothing already logged. The finite
    numeric values of each record also go to every tracker named in ``report_to``
    (:mod:`trainkit.common.trackers`: tensorboard, wandb, mlflow, trackio), which record
    ``config`` (the resolved run config) and the run folder with the run.
    ``tensorboard=True`` is the older spelling of ``report_to=["tensorboard"]``.
    ``run_dir=None`` keeps the records in memory only (``self.records``) and starts no
    tracker (the non-main ranks of a distributed run). ``lazy=True`` creates the folder,
    the file and the trackers at the first :meth:`log`, so a run that fails before its
    first step leaves nothing behind.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike | None,
        tensorboard: bool = False,
        report_to: list[str] | tuple[str, ...] = (),
        config: dict | None = None,
        lazy: bool = False,
    ):
        self.records: list[dict] = []
        self._file = None
        self.trackers: list[Any] = []
        names = (["tensorboard"] if tensorboard else []) + list(report_to)
        self._pending = None if run_dir is None else (Path(run_dir), names, config)
        if not lazy:
            self._open()

    def _open(self) -> None:
        if self._pending is None:
            return
        from trainkit.common.trackers import open_trackers

        run_dir, names, config = self._pending
        self._pending = None
        self.trackers = open_trackers(names, run_dir, config=config)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._file = open(run_dir / "metrics.jsonl", "a", encoding="utf-8")

    def log(self, step: int, **metrics: Any) -> dict:
        self._open()
        rec = {"step": int(step), "time": round(time.time(), 3)}
        rec.update({k: _clean(v) for k, v in metrics.items()})
        self.records.append(rec)
        if self._file is not None:
            self._file.write(json.dumps(rec) + "\n")
            self._file.flush()
        if self.trackers:
            from trainkit.common.trackers import scalars_of

            scalars = scalars_of(rec)
            for t in self.trackers:
                t.log(int(step), scalars)
        return rec

    def close(self) -> None:
        self._pending = None
        if self._file is not None:
            self._file.close()
            self._file = None
        trackers, self.trackers = self.trackers, []
        for t in trackers:
            t.close()

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
