"""Training: history, optimisers, regulariser, NaN guard and the paper's accuracy."""

import math

import pytest
import torch

from trainkit.common.errors import UserError
from trainkit.kan import KAN, create_dataset, fit_grids
from trainkit.kan.fit import fit


def test_create_dataset_values_and_ranges():
    # (also see conftest.target_fn for the paper's example)
    ds = create_dataset(
        lambda x: x[:, 0] * x[:, 1],
        n_var=2,
        ranges=[(0, 1), (-2, -1)],
        train_num=50,
        test_num=20,
        seed=3,
        dtype=torch.float64,
    )
    assert ds["train_input"].shape == (50, 2) and ds["test_label"].shape == (20, 1)
    assert ds["train_input"][:, 0].min() >= 0 and ds["train_input"][:, 1].max() <= -1
    want = ds["train_input"][:, 0] * ds["train_input"][:, 1]
    assert torch.equal(ds["train_label"][:, 0], want)
    again = create_dataset(
        lambda x: x[:, 0] * x[:, 1],
        n_var=2,
        ranges=[(0, 1), (-2, -1)],
        train_num=50,
        test_num=20,
        seed=3,
        dtype=torch.float64,
    )
    assert torch.equal(again["test_input"], ds["test_input"])
    with pytest.raises(UserError, match="ranges"):
        create_dataset(lambda x: x[:, 0], n_var=3, ranges=[(0, 1), (0, 1)])


def test_lbfgs_history_and_small_accuracy(exp_sin_data):
    """Default-suite accuracy check: [2,1,1], G=3 then G=10 (the full schedule is slow)."""
    m = KAN([2, 1, 1], grid=3, seed=1, dtype=torch.float64)
    m, hist = fit_grids(m, exp_sin_data, grids=(3, 10), steps=10, verbose=False)
    assert len(hist["train_loss"]) == 20 and hist["grid"] == [3] * 10 + [10] * 10
    assert hist["reg"] == [0.0] * 20  # lamb = 0: no regulariser computed
    g3, g10 = hist["stages"][0]["test_rmse"], hist["stages"][1]["test_rmse"]
    assert g3 < 0.1 and g10 < 5e-3 and g10 < g3 / 5, hist["stages"]
    pred = m(exp_sin_data["test_input"])
    rmse = torch.sqrt(torch.mean((pred - exp_sin_data["test_label"]) ** 2)).item()
    assert rmse == pytest.approx(hist["test_loss"][-1], rel=1e-12)


def test_regulariser_adam_minibatch_and_metrics():
    ds = create_dataset(
        lambda x: torch.sin(math.pi * x[:, 0]),
        n_var=3,
        train_num=256,
        test_num=64,
        seed=1,
        dtype=torch.float64,
    )
    m = KAN([3, 3, 1], grid=5, seed=0, dtype=torch.float64)
    calls = []
    hist = fit(
        m,
        ds,
        opt="Adam",
        lr=0.02,
        steps=60,
        lamb=0.01,
        batch=64,
        update_grid=False,
        verbose=False,
        metrics={"n": lambda: len(calls) or calls.append(1) or 1},
    )
    assert set(hist) == {"train_loss", "test_loss", "reg", "n"} and len(hist["n"]) == 60
    assert hist["reg"][0] > 0 and hist["reg"][-1] < hist["reg"][0]
    assert hist["test_loss"][-1] < 0.5 * hist["test_loss"][0]
    # the irrelevant inputs x2, x3 end up with smaller edges than x1
    _, acts = m.forward_with_acts(ds["train_input"])
    l1 = acts[0]["postacts"].abs().mean(0).sum(0)  # [in]
    assert l1[0] > l1[1] and l1[0] > l1[2]


def test_nan_guard_restores_parameters_and_stops(exp_sin_data):
    m = KAN([2, 2, 1], grid=3, seed=0, dtype=torch.float64)
    m.fit(exp_sin_data, steps=2, verbose=False)
    before = [p.detach().clone() for p in m.parameters()]
    hist = m.fit(
        exp_sin_data,
        steps=5,
        verbose=False,
        update_grid=False,
        opt="Adam",
        loss_fn=lambda p, y: torch.mean((p - y) ** 2) * float("nan"),
    )
    assert hist["train_loss"] == []
    for p, q in zip(m.parameters(), before):
        assert torch.equal(p, q)


def test_fit_errors(exp_sin_data):
    m = KAN([3, 1], grid=3)
    with pytest.raises(UserError, match="columns"):
        m.fit(exp_sin_data, steps=1, verbose=False)
    with pytest.raises(UserError, match="lacks"):
        m.fit({"train_input": exp_sin_data["train_input"]}, steps=1)
    with pytest.raises(UserError, match="opt"):
        KAN([2, 1]).fit(exp_sin_data, opt="SGD", steps=1, verbose=False)


@pytest.mark.slow
def test_paper_accuracy_2_1_1_grid_schedule(exp_sin_data):
    """[2,1,1] through G = 3,5,10,20,50 (200 LBFGS steps each, float64): <= 1e-5, G^-3."""
    m = KAN([2, 1, 1], grid=3, seed=1, dtype=torch.float64)
    _, hist = fit_grids(m, exp_sin_data, grids=(3, 5, 10, 20, 50), steps=200, verbose=False)
    rmse = {s["grid"]: s["test_rmse"] for s in hist["stages"]}
    assert rmse[50] <= 1e-5, rmse  # measured 2.8e-6 (paper: 1.6e-6)
    assert rmse[5] / rmse[20] >= (20 / 5) ** 3, rmse  # measured 132 >= 64


@pytest.mark.slow
def test_paper_accuracy_2_5_1(exp_sin_data):
    m = KAN([2, 5, 1], grid=3, seed=1, dtype=torch.float64)
    _, hist = fit_grids(m, exp_sin_data, grids=(3, 5, 10), steps=60, verbose=False)
    assert hist["stages"][-1]["test_rmse"] <= 1e-3, hist["stages"]
