"""Experiment trackers behind ``train.report_to`` (TensorBoard, W&B, MLflow, trackio).

``metrics.jsonl`` in the run folder is always written and stays the source of truth; a
tracker is a second copy of the same scalars for a dashboard. Each package is imported only
when its name is listed, and each tracker records the run's resolved config and its run
folder with the run, so a dashboard entry leads back to ``output_dir``.

Where each one writes (their own environment variables keep working):

- ``tensorboard``: event files in ``<run_dir>/tb`` (scalars, and the config as text).
- ``wandb``: ``wandb.init(dir=<run_dir>, config=...)``; the project is ``WANDB_PROJECT``
  (default ``trainkit``), the mode ``WANDB_MODE`` (``offline`` keeps the run folder in
  ``<run_dir>/wandb``, to ``wandb sync`` later).
- ``mlflow``: the tracking URI ``MLFLOW_TRACKING_URI``, or a local SQLite store
  ``<run_dir>/mlflow.db`` when unset (``mlflow ui --backend-store-uri sqlite:///...``); experiment ``MLFLOW_EXPERIMENT_NAME`` (default
  ``trainkit``); the config as params (flattened, ``a.b`` keys), the run folder as tag.
- ``trackio``: a local trackio project (``TRACKIO_DIR``, default under ``HF_HOME``); project
  ``TRACKIO_PROJECT`` (default ``trainkit``).
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any, Literal

from trainkit.common.errors import UserError

__all__ = [
    "TRACKERS",
    "TrackerName",
    "check_installed",
    "flatten_config",
    "open_trackers",
    "scalars_of",
]

TrackerName = Literal["tensorboard", "wandb", "mlflow", "trackio"]
TRACKERS: tuple[str, ...] = ("tensorboard", "wandb", "mlflow", "trackio")
_PIP = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow", "trackio": "trackio"}


def flatten_config(cfg: dict, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": 1}, "c": [1, 2]}`` -> ``{"a.b": 1, "c": "[1, 2]"}`` (lists as JSON)."""
    out: dict[str, Any] = {}
    for k, v in cfg.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten_config(v, key + "."))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v, default=str)
        else:
            out[key] = v
    return out


def check_installed(report_to: list[str] | tuple[str, ...]) -> None:
    """Raise :class:`UserError` (one line) for a tracker whose package is not installed;
    called when a config is loaded, before any run folder is written."""
    import importlib.util

    for name in report_to:
        if name in _PIP and importlib.util.find_spec(name) is None:
            raise UserError(
                f"train.report_to lists '{name}', which is not installed: pip install {_PIP[name]}"
            )


def _import(name: str) -> Any:
    module = "torch.utils.tensorboard" if name == "tensorboard" else name
    try:
        import importlib

        return importlib.import_module(module)
    except ImportError:
        raise UserError(
            f"train.report_to lists '{name}', which is not installed: pip install {_PIP[name]}"
        ) from None


class _TensorBoard:
    def __init__(self, run_dir: Path, config: dict, run_name: str):
        tb = _import("tensorboard")
        self._w = tb.SummaryWriter(str(run_dir / "tb"))
        text = json.dumps(config, indent=2, default=str)
        self._w.add_text("config", f"run folder: {run_dir}\n\n```\n{text}\n```", 0)

    def log(self, step: int, scalars: dict[str, float]) -> None:
        for k, v in scalars.items():
            self._w.add_scalar(k, v, step)
        self._w.flush()

    def close(self) -> None:
        self._w.close()


class _WandB:
    def __init__(self, run_dir: Path, config: dict, run_name: str):
        wandb = _import("wandb")
        self._run = wandb.init(
            project=os.environ.get("WANDB_PROJECT", "trainkit"),
            name=run_name,
            dir=str(run_dir),
            config={**config, "run_dir": str(run_dir)},
            reinit="create_new",
        )

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log(scalars, step=step)

    def close(self) -> None:
        self._run.finish()


_MLFLOW_BAD = re.compile(r"[^A-Za-z0-9_\-. /:]")


class _MLflow:
    def __init__(self, run_dir: Path, config: dict, run_name: str):
        mlflow = _import("mlflow")
        uri = (
            os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{(run_dir / 'mlflow.db').resolve()}"
        )
        self._client = mlflow.tracking.MlflowClient(tracking_uri=uri)
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME", "trainkit")
        exp = self._client.get_experiment_by_name(name)
        exp_id = exp.experiment_id if exp is not None else self._client.create_experiment(name)
        run = self._client.create_run(exp_id, run_name=run_name, tags={"run_dir": str(run_dir)})
        self.run_id = run.info.run_id
        self.tracking_uri = uri
        params = [
            mlflow.entities.Param(k[:250], str(v)[:6000]) for k, v in flatten_config(config).items()
        ]
        for i in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
            self._client.log_batch(self.run_id, params=params[i : i + 100])
        self._mlflow = mlflow

    def log(self, step: int, scalars: dict[str, float]) -> None:
        import time

        ms = int(time.time() * 1000)
        metrics = [
            self._mlflow.entities.Metric(_MLFLOW_BAD.sub("_", k), v, ms, step)
            for k, v in scalars.items()
        ]
        self._client.log_batch(self.run_id, metrics=metrics)

    def close(self) -> None:
        self._client.set_terminated(self.run_id)


class _Trackio:
    def __init__(self, run_dir: Path, config: dict, run_name: str):
        self._trackio = _import("trackio")
        self._run = self._trackio.init(
            project=os.environ.get("TRACKIO_PROJECT", "trainkit"),
            name=run_name,
            config={**config, "run_dir": str(run_dir)},
        )

    def log(self, step: int, scalars: dict[str, float]) -> None:
        self._run.log(scalars, step=step)

    def close(self) -> None:
        self._run.finish()


_CLASSES = {"tensorboard": _TensorBoard, "wandb": _WandB, "mlflow": _MLflow, "trackio": _Trackio}


def scalars_of(record: dict) -> dict[str, float]:
    """The finite numeric entries of a metrics record, without ``step`` and ``time``."""
    out = {}
    for k, v in record.items():
        if k in ("step", "time") or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(v):
            out[k] = float(v)
    return out


def open_trackers(
    report_to: list[str] | tuple[str, ...],
    run_dir: str | os.PathLike,
    config: dict | None = None,
    run_name: str | None = None,
) -> list[Any]:
    """Start one tracker per name in ``report_to`` (duplicates ignored), in that order.

    Each returned object has ``log(step, scalars: dict[str, float])`` and ``close()``.
    ``run_name`` defaults to the run folder's name. An unknown name or a missing package
    raises :class:`UserError` (one line, before anything is trained).
    """
    run_dir = Path(run_dir)
    names = list(dict.fromkeys(report_to))
    for n in names:
        if n not in _CLASSES:
            raise UserError(
                f"train.report_to: unknown tracker '{n}' (one of {', '.join(TRACKERS)})"
            )
    run_dir.mkdir(parents=True, exist_ok=True)
    name = run_name or run_dir.resolve().name
    opened: list[Any] = []
    try:
        for n in names:
            try:
                opened.append(_CLASSES[n](run_dir, dict(config or {}), name))
            except (ImportError, KeyboardInterrupt, UserError):
                raise
            except Exception as e:  # the tracker refused its settings (URI, mode, ...)
                first = str(e).strip().splitlines()[0] if str(e).strip() else ""
                raise UserError(
                    f"train.report_to: {n} could not start ({type(e).__name__}: {first[:300]})"
                ) from None
    except BaseException:
        for t in opened:
            t.close()
        raise
    return opened
