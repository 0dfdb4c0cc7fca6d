"""``trainkit kan fit``: fit a KAN to a formula or a CSV file, with grid extension.

Reads top to bottom: load data -> build model -> train through ``train.grids`` -> save
the model, the history, a loss plot and the resolved config in a run directory.
"""

from __future__ import annotations

import csv
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainkit.common.errors import UserError
from trainkit.common.trackers import TrackerName, check_installed


@dataclass
class ModelSection:
    """The ``model:`` section of ``kan fit``: the KAN's shape and numerics.

    Attributes:
        grid_range: ``[lo, hi]`` initial range of every spline grid (pykan's ``grid_range``);
            the grids then follow the training inputs while ``train.update_grid`` is on.
        base_fun: residual base function ``b(x)`` added to each spline (the paper's ``silu``);
            one of silu, identity, zero, tanh, gelu (``zero`` = no base branch).
        dtype: torch dtype of the model and the data (float64 as in pykan's examples).
        device: torch device of the model, e.g. ``cpu`` or ``cuda``.
    """

    width: list[Any] | None = field(
        default=None,
        metadata={
            "help": "node counts, e.g. [2,5,1] or [2,[3,1],1]; default [n_inputs, 5, n_outputs]"
        },
    )
    k: int = field(default=3, metadata={"help": "spline order"})
    seed: int = field(default=1, metadata={"help": "initialisation seed"})
    grid_range: list[float] = field(default_factory=lambda: [-1.0, 1.0])
    base_fun: str = "silu"
    dtype: Literal["float32", "float64"] = "float64"
    device: str = "cpu"


@dataclass
class DataSection:
    """The ``data:`` section: a formula to sample or a CSV file to read.

    Attributes:
        ranges: ``[lo, hi]`` interval every formula variable is sampled uniformly from
            (lo < hi; ignored for CSV data).
        train_num: number of sampled training points of a formula (ignored for CSV data).
        test_num: number of sampled test points of a formula (ignored for CSV data).
        seed: seed of the formula sampling, or of the CSV rows' train/test shuffle.
    """

    formula: str | None = field(default=None, metadata={"help": "e.g. exp(sin(pi*x1)+x2**2)"})
    csv: str | None = field(default=None, metadata={"help": "CSV file with a header row"})
    target: str | None = field(default=None, metadata={"help": "CSV column to predict"})
    ranges: list[float] = field(default_factory=lambda: [-1.0, 1.0])
    train_num: int = 1000
    test_num: int = 1000
    test_fraction: float = field(default=0.2, metadata={"help": "CSV rows held out"})
    seed: int = 0


@dataclass
class TrainSection:
    """The ``train:`` section: the grid-extension schedule and pykan-style ``fit`` options.

    Attributes:
        grids: grid sizes ``G`` trained in turn (the paper's grid extension); the model is
            built with ``grids[0]`` and refined to each next size; positive integers.
        opt: optimiser: ``LBFGS`` (strong-Wolfe line search, as pykan) or ``Adam``.
        lr: learning rate (for LBFGS the initial step of the line search; 1.0 as pykan).
        lamb: overall sparsity penalty weight (pykan's ``lamb``); 0 = no penalty.
        lamb_l1: weight of the L1 term inside the penalty (pykan's ``lamb_l1``).
        lamb_entropy: weight of the entropy term inside the penalty (pykan's ``lamb_entropy``).
        update_grid: adapt the spline grids to the training inputs during early steps.
        grid_update_num: how many grid updates happen before ``stop_grid_update_step`` (one
            every ``stop_grid_update_step // grid_update_num`` steps).
        stop_grid_update_step: step (per grid stage) after which grids are no longer updated.
        batch: minibatch size per step; -1 (or more than the data) = full batch.
        verbose: show a progress bar per grid stage with the step's train/test RMSE.
        report_to: experiment trackers (tensorboard, wandb, mlflow, trackio) that get each
            step's train/test loss, reg and grid once the fit ends, like ``metrics.jsonl``.
    """

    grids: list[int] = field(default_factory=lambda: [3, 5, 10, 20])
    steps: int = field(default=200, metadata={"help": "optimiser steps per grid"})
    opt: Literal["LBFGS", "Adam"] = "LBFGS"
    lr: float = 1.0
    lamb: float = 0.0
    lamb_l1: float = 1.0
    lamb_entropy: float = 2.0
    update_grid: bool = True
    grid_update_num: int = 10
    stop_grid_update_step: int = 50
    batch: int = -1
    verbose: bool = True
    report_to: list[TrackerName] = field(default_factory=list)


@dataclass
class OutSection:
    """The ``out:`` section: where the run is written.

    Attributes:
        root: parent folder of run directories; a run goes to ``root/name/<timestamp>/``.
        name: run name, the sub-folder of ``root`` (model, history.json, summary.json, config).
        plot: also write ``loss.png`` (train/test RMSE per step, grid changes marked).
    """

    root: str = "runs"
    name: str = "kan-fit"
    plot: bool = True


@dataclass
class KanFitConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)
    out: OutSection = field(default_factory=OutSection)

    def validate(self) -> None:
        # single-field checks only: overrides are applied one by one, so cross-field
        # checks (formula vs csv, csv needs target) live in ``run_fit``
        d = self.data
        if len(d.ranges) != 2 or not d.ranges[0] < d.ranges[1]:
            raise UserError(f"kan fit: data.ranges must be [lo, hi] with lo < hi, got {d.ranges}")
        if not self.train.grids or any(g < 1 for g in self.train.grids):
            raise UserError(
                f"kan fit: train.grids must be positive integers, got {self.train.grids}"
            )
        check_installed(self.train.report_to)
        if not 0 < d.test_fraction < 1:
            raise UserError(f"kan fit: data.test_fraction must be in (0, 1), got {d.test_fraction}")


# ---- data -----------------------------------------------------------------------------
def formula_dataset(cfg: DataSection, dtype):
    """Sample ``cfg.formula`` on ``cfg.ranges``; returns ``(dataset, input_names)``."""
    import torch

    from trainkit.kan.datasets import create_dataset
    from trainkit.kan.formula import parse_formula, to_callable

    expr, names = parse_formula(cfg.formula)
    if not names:
        raise UserError(f"formula '{cfg.formula}': has no variables")
    f = to_callable(expr, names)
    ds = create_dataset(
        f,
        n_var=len(names),
        ranges=tuple(cfg.ranges),
        train_num=cfg.train_num,
        test_num=cfg.test_num,
        seed=cfg.seed,
        dtype=dtype,
    )
    for key in ("train_label", "test_label"):
        bad = (~torch.isfinite(ds[key])).sum().item()
        if bad:
            raise UserError(
                f"formula '{cfg.formula}': not finite at {bad} sampled points of "
                f"{key.split('_')[0]} (data.ranges={cfg.ranges}); narrow the ranges"
            )
    return ds, names


def read_csv(path: str, target: str) -> tuple[list[str], list[list[float]], list[float]]:
    """Read a numeric CSV with a header: ``(input_names, rows, targets)``."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: CSV file not found")
    try:
        with open(p, newline="", encoding="utf-8") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if not header:
                raise UserError(f"{p}: line 1: empty file, expected a header row of column names")
            header = [h.strip() for h in header]
            if target not in header:
                raise UserError(f"{p}: line 1: no column '{target}' (columns: {', '.join(header)})")
            ti = header.index(target)
            xs, ys = [], []
            for row in reader:
                line = reader.line_num
                if not row or all(not c.strip() for c in row):
                    continue
                if len(row) != len(header):
                    raise UserError(f"{p}: line {line}: {len(row)} fields, expected {len(header)}")
                vals = []
                for name, cell in zip(header, row):
                    try:
                        v = float(cell)
                    except ValueError:
                        raise UserError(
                            f"{p}: line {line}: column '{name}': '{cell.strip()}' is not a number"
                        ) from None
                    if not math.isfinite(v):
                        raise UserError(f"{p}: line {line}: column '{name}': value is not finite")
                    vals.append(v)
                ys.append(vals[ti])
                xs.append(vals[:ti] + vals[ti + 1 :])
    except UnicodeDecodeError:
        raise UserError(f"{p}: not UTF-8 text") from None
    except csv.Error as e:
        raise UserError(f"{p}: malformed CSV ({e})") from None
    if len(ys) < 4:
        raise UserError(f"{p}: needs at least 4 data rows, found {len(ys)}")
    if len(header) < 2:
        raise UserError(f"{p}: needs at least one input column besides '{target}'")
    names = [h for h in header if h != target]
    for j, name in enumerate(names):
        if len({r[j] for r in xs}) == 1:
            raise UserError(
                f"{p}: column '{name}' is constant ({xs[0][j]}); it carries no information, drop it"
            )
    if len(set(ys)) == 1:
        raise UserError(f"{p}: target column '{target}' is constant ({ys[0]}); nothing to fit")
    return names, xs, ys


def csv_dataset(cfg: DataSection, dtype):
    """Load ``cfg.csv``, split rows into train/test; returns ``(dataset, input_names)``."""
    import torch

    names, xs, ys = read_csv(cfg.csv, cfg.target)
    x = torch.tensor(xs, dtype=dtype)
    y = torch.tensor(ys, dtype=dtype)[:, None]
    perm = torch.randperm(len(ys), generator=torch.Generator().manual_seed(cfg.seed))
    n_test = max(1, int(round(cfg.test_fraction * len(ys))))
    te, tr = perm[:n_test], perm[n_test:]
    return {
        "train_input": x[tr],
        "train_label": y[tr],
        "test_input": x[te],
        "test_label": y[te],
    }, names


# ---- outputs --------------------------------------------------------------------------
def plot_history(hist: dict, path: Path, title: str = "") -> Path:
    """Train/test RMSE per step on a log scale, grid changes marked; PNG written atomically."""
    from matplotlib.figure import Figure

    from trainkit.common.io import atomic_path

    fig = Figure(figsize=(6.4, 4.0), dpi=110)
    ax = fig.add_subplot()
    steps = range(1, len(hist["train_loss"]) + 1)
    ax.plot(steps, hist["train_loss"], label="train RMSE")
    ax.plot(steps, hist["test_loss"], label="test RMSE", linestyle="--")
    grids = hist.get("grid", [])
    top = max(hist["train_loss"] + hist["test_loss"], default=1.0)
    for i in range(1, len(grids)):
        if grids[i] != grids[i - 1]:  # a grid extension happened before step i + 1
            ax.axvline(i + 0.5, color="0.8", linewidth=0.8)
            ax.text(i + 1, top, f"G={grids[i]}", fontsize=7, color="0.4", va="top")
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("RMSE")
    ax.set_title(title or "KAN training")
    ax.legend()
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Path(path)


def run_fit(cfg: KanFitConfig, args=None) -> int:
    """The ``kan fit`` command; returns the exit code (0)."""
    import torch

    from trainkit.common.io import atomic_write_json
    from trainkit.common.run import make_run_dir
    from trainkit.kan.fit import fit_grids
    from trainkit.kan.model import KAN

    d = cfg.data
    if d.formula is None and d.csv is None:
        raise UserError(
            "kan fit: give a formula (--formula 'exp(sin(pi*x1)+x2**2)') "
            "or a CSV file (--data file.csv --target y)"
        )
    if d.formula is not None and d.csv is not None:
        raise UserError("kan fit: give data.formula (--formula) or data.csv (--data), not both")
    if d.csv is not None and not d.target:
        raise UserError("kan fit: data.csv needs data.target (--target COLUMN)")
    dtype = getattr(torch, cfg.model.dtype)
    if cfg.data.formula is not None:
        ds, names = formula_dataset(cfg.data, dtype)
        source = f"formula {cfg.data.formula}"
    else:
        ds, names = csv_dataset(cfg.data, dtype)
        source = f"{cfg.data.csv} -> {cfg.data.target}"
    n_in, n_out = ds["train_input"].shape[1], ds["train_label"].shape[1]
    width = cfg.model.width if cfg.model.width is not None else [n_in, 5, n_out]
    model = KAN(
        width,
        grid=cfg.train.grids[0],
        k=cfg.model.k,
        seed=cfg.model.seed,
        grid_range=tuple(cfg.model.grid_range),
        dtype=dtype,
        device=cfg.model.device,
        base_fun=cfg.model.base_fun,
    )
    if model.width[0][0] != n_in or sum(model.width[-1]) != n_out:
        raise UserError(
            f"kan fit: model.width {width} must start with {n_in} (inputs: "
            f"{', '.join(names)}) and end with {n_out}"
        )
    run_dir = make_run_dir(cfg.out.name, cfg.out.root, config=cfg)
    print(
        f"kan fit: {source}; width {width}; grids {cfg.train.grids}; run {run_dir}", file=sys.stderr
    )
    t = cfg.train
    model, hist = fit_grids(
        model,
        ds,
        grids=t.grids,
        steps=t.steps,
        verbose=t.verbose,
        opt=t.opt,
        lr=t.lr,
        lamb=t.lamb,
        lamb_l1=t.lamb_l1,
        lamb_entropy=t.lamb_entropy,
        update_grid=t.update_grid,
        grid_update_num=t.grid_update_num,
        stop_grid_update_step=t.stop_grid_update_step,
        batch=t.batch,
    )
    for s in hist["stages"]:
        print(
            f"grid {s['grid']:>4}: train RMSE {s['train_rmse']:.3e}  test RMSE "
            f"{s['test_rmse']:.3e}  ({s['params']} parameters)"
        )
    model.save(run_dir / "model")
    summary = {
        "inputs": names,
        "width": model.width,
        "stages": hist["stages"],
        "train_rmse": hist["stages"][-1]["train_rmse"],
        "test_rmse": hist["stages"][-1]["test_rmse"],
    }
    atomic_write_json(
        run_dir / "history.json", {k: hist[k] for k in ("train_loss", "test_loss", "reg", "grid")}
    )
    atomic_write_json(run_dir / "summary.json", summary)
    from trainkit.common.logging import MetricsLogger
    from trainkit.config import to_dict

    with MetricsLogger(run_dir, report_to=t.report_to, config=to_dict(cfg)) as log:
        for i, row in enumerate(zip(hist["train_loss"], hist["test_loss"], hist["reg"])):
            log.log(i + 1, train_loss=row[0], test_loss=row[1], reg=row[2], grid=hist["grid"][i])
    if cfg.out.plot:
        plot_history(hist, run_dir / "loss.png", title=source)
    print(f"train RMSE {summary['train_rmse']:.3e}  test RMSE {summary['test_rmse']:.3e}")
    print(f"run directory: {run_dir}")
    return 0
