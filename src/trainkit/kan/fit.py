"""Training KANs: ``fit`` (one grid) and ``fit_grids`` (grid extension schedule).

Follows pykan's ``fit`` (Liu et al. 2024, section 2.5 and 2.4) with these departures:

- LBFGS is ``torch.optim.LBFGS`` with a strong-Wolfe line search, run on the objective
  divided by its value when the optimiser was (re)built. torch skips curvature pairs with
  ``y.s <= 1e-10``; without the rescaling that freezes LBFGS once the MSE nears 1e-10,
  which is exactly the regime of the paper's 1e-6 RMSE (pykan patches LBFGS instead).
- After each grid update the optimiser state is rebuilt (the coefficients were refitted,
  so the stored curvature pairs no longer describe the objective).
- A step whose loss becomes NaN/inf is undone and training stops (pykan carries on with
  NaN weights).
- ``train_loss`` is the RMSE on the step's training batch after the step, ``test_loss``
  the RMSE on the whole test set; both without the regulariser (kept under ``reg``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from trainkit.common.errors import UserError
from trainkit.common.logging import progress

_KEYS = ("train_input", "train_label", "test_input", "test_label")


def _rmse(pred: torch.Tensor, y: torch.Tensor) -> float:
    return math.sqrt(torch.mean((pred - y) ** 2).item())


def _check(dataset: dict, model) -> None:
    missing = [k for k in _KEYS if k not in dataset]
    if missing:
        raise UserError(
            f"fit: dataset lacks {', '.join(missing)} (expected keys {', '.join(_KEYS)})"
        )
    n_in = model.width[0][0]
    if dataset["train_input"].shape[-1] != n_in:
        raise UserError(
            f"fit: train_input has {dataset['train_input'].shape[-1]} columns, "
            f"the model's width[0] is {n_in}"
        )


def _make_opt(opt: str, params, lr: float, max_iter: int, history_size: int):
    if opt == "LBFGS":
        return torch.optim.LBFGS(
            params,
            lr=lr,
            max_iter=max_iter,
            history_size=history_size,
            line_search_fn="strong_wolfe",
            tolerance_grad=1e-32,
            tolerance_change=1e-32,
        )
    if opt == "Adam":
        return torch.optim.Adam(params, lr=lr)
    raise UserError(f"fit: opt must be 'LBFGS' or 'Adam', got {opt!r}")


def fit(
    model,
    dataset: dict,
    opt: str = "LBFGS",
    steps: int = 100,
    lr: float = 1.0,
    lamb: float = 0.0,
    lamb_l1: float = 1.0,
    lamb_entropy: float = 2.0,
    update_grid: bool = True,
    grid_update_num: int = 10,
    start_grid_update_step: int = -1,
    stop_grid_update_step: int = 50,
    batch: int = -1,
    loss_fn: Callable | None = None,
    metrics: dict[str, Callable[[], float]] | None = None,
    verbose: bool = True,
    max_iter: int = 20,
    history_size: int = 10,
    seed: int = 0,
) -> dict:
    """Train ``model`` in place on ``dataset``.

    Args:
        model: a :class:`trainkit.kan.KAN`.
        dataset: ``train_input [N, n_0]``, ``train_label [N, n_L]``, ``test_input``,
            ``test_label`` (see :func:`trainkit.kan.create_dataset`).
        opt: ``"LBFGS"`` (``max_iter`` iterations per step, like pykan) or ``"Adam"``.
        steps: optimiser steps.
        lr: learning rate (LBFGS: initial step of the line search).
        lamb, lamb_l1, lamb_entropy: sparsity penalty ``lamb * (lamb_l1 * L1 + lamb_entropy
            * entropy)`` (:meth:`KAN.regularization`), computed only when ``lamb > 0``.
        update_grid: adapt the grids to the training inputs every
            ``stop_grid_update_step // grid_update_num`` steps while
            ``start_grid_update_step <= step < stop_grid_update_step``.
        batch: minibatch size; ``-1`` = full batch.
        loss_fn: ``loss_fn(pred, label) -> scalar``; default mean squared error.
        metrics: ``{name: fn()}`` evaluated after every step and recorded in the history.
        verbose: show a progress bar.
        seed: seed of the minibatch sampler.

    Returns:
        ``{"train_loss": [...], "test_loss": [...], "reg": [...], <metric>: [...]}``, one
        value per step (RMSE for the losses).
    """
    _check(dataset, model)
    dev, dt = model.device, model.dtype
    xtr, ytr = dataset["train_input"].to(dev, dt), dataset["train_label"].to(dev, dt)
    xte, yte = dataset["test_input"].to(dev, dt), dataset["test_label"].to(dev, dt)
    loss_fn = loss_fn or (lambda p, y: torch.mean((p - y) ** 2))
    params = [p for p in model.parameters() if p.requires_grad]
    n = xtr.shape[0]
    bs = n if batch is None or batch <= 0 or batch > n else batch
    gen = torch.Generator().manual_seed(seed)
    every = max(1, stop_grid_update_step // max(1, grid_update_num))
    hist: dict[str, list] = {"train_loss": [], "test_loss": [], "reg": []}
    for name in metrics or {}:
        hist[name] = []

    def objective(x, y):
        if lamb > 0:
            pred, acts = model.forward_with_acts(x)
            reg = model.regularization(acts, lamb_l1, lamb_entropy)
        else:
            pred, reg = model(x), torch.zeros((), dtype=dt, device=dev)
        return loss_fn(pred, y) + lamb * reg, reg

    optimizer, scale = None, 1.0
    bar = progress(range(steps), desc="kan fit", disable=not verbose)
    for step in bar:
        if (
            update_grid
            and step % every == 0
            and start_grid_update_step <= step < stop_grid_update_step
        ):
            model.update_grid(xtr)
            optimizer = None  # the refit invalidates LBFGS's curvature pairs
        if bs < n:
            idx = torch.randperm(n, generator=gen)[:bs].to(dev)
            x, y = xtr[idx], ytr[idx]
        else:
            x, y = xtr, ytr
        # params are re-read each step: a grid update replaces the coef tensors
        params = [p for p in model.parameters() if p.requires_grad]
        if optimizer is None:
            optimizer = _make_opt(opt, params, lr, max_iter, history_size)
            if opt == "LBFGS":
                with torch.no_grad():
                    obj0 = objective(x, y)[0].item()
                scale = 1.0 / obj0 if math.isfinite(obj0) and obj0 > 1e-300 else 1.0
        last_reg = [0.0]

        # defaults bind this step's values (the closure is called only within this step)
        def closure(x=x, y=y, optimizer=optimizer, scale=scale, last_reg=last_reg):
            optimizer.zero_grad(set_to_none=True)
            obj, reg = objective(x, y)
            last_reg[0] = float(reg.detach())
            (obj * scale).backward()
            return obj * scale

        backup = [p.detach().clone() for p in params]
        optimizer.step(closure)
        with torch.no_grad():
            tr, te = _rmse(model(x), y), _rmse(model(xte), yte)
        if not (math.isfinite(tr) and math.isfinite(te)):
            with torch.no_grad():
                for p, b in zip(params, backup):
                    p.copy_(b)
            if verbose:
                bar.write(f"kan fit: step {step}: loss became non-finite; undone and stopped")
            break
        hist["train_loss"].append(tr)
        hist["test_loss"].append(te)
        hist["reg"].append(last_reg[0])
        for name, fn in (metrics or {}).items():
            hist[name].append(float(fn()))
        if verbose:
            bar.set_postfix(train=f"{tr:.2e}", test=f"{te:.2e}", reg=f"{last_reg[0]:.2e}")
    bar.close()
    return hist


def fit_grids(
    model, dataset: dict, grids=(3, 5, 10, 20, 50), steps: int = 200, verbose: bool = True, **fit_kw
):
    """The paper's grid-extension schedule: train at each ``G`` in ``grids``, refining between.

    The model is first refined to ``grids[0]`` if its grid differs.

    Returns:
        ``(model, history)``: the final (refined) model and a dict with concatenated
        per-step ``train_loss``/``test_loss``/``reg``, ``grid`` (the ``G`` of each step) and
        ``stages`` (``[{"grid", "train_rmse", "test_rmse", "params"}]``, one per grid).
    """
    out: dict[str, list] = {"train_loss": [], "test_loss": [], "reg": [], "grid": [], "stages": []}
    for g in grids:
        if model.grid != g:
            model = model.refine(g)
        h = fit(model, dataset, steps=steps, verbose=verbose, **fit_kw)
        for key in ("train_loss", "test_loss", "reg"):
            out[key] += h[key]
        out["grid"] += [g] * len(h["train_loss"])
        out["stages"].append(
            {
                "grid": g,
                "train_rmse": h["train_loss"][-1] if h["train_loss"] else None,
                "test_rmse": h["test_loss"][-1] if h["test_loss"] else None,
                "params": model.n_params(),
            }
        )
    return model, out
