"""Tests for trainkit.kan.sklearn: KANRegressor / KANClassifier follow the sklearn contract."""

import pickle
import warnings

import numpy as np
import pytest

pytest.importorskip("sklearn")
from sklearn.base import clone  # noqa: E402
from sklearn.model_selection import cross_val_score  # noqa: E402
from sklearn.utils import estimator_checks as ec  # noqa: E402

from trainkit.kan.sklearn import KANClassifier, KANRegressor  # noqa: E402

TINY = {"hidden_layer_sizes": (2,), "grids": (3,), "steps": 2}


def _regression_data(n, seed):
    rng = np.random.default_rng(seed)
    X = rng.uniform(-1, 1, size=(n, 2))
    # arbitrary input units: the estimator standardises them
    return X * [3.0, 0.5] + [10.0, -2.0], X[:, 0] ** 2 + np.sin(2 * X[:, 1])


def test_regressor_learns_a_smooth_function():
    X, y = _regression_data(200, 0)
    Xt, yt = _regression_data(300, 1)
    reg = KANRegressor(hidden_layer_sizes=(3,), grids=(5,), steps=6).fit(X, y)
    assert reg.n_features_in_ == 2 and reg.model_.width == [[2, 0], [3, 0], [1, 0]]
    pred = reg.predict(Xt)
    assert pred.shape == (300,)
    assert reg.score(Xt, yt) > 0.999  # measured 0.99998
    assert len(reg.history_) == 1 and reg.history_[0]["train_loss"][-1] < 0.1


def test_regressor_multiplication_node_and_grid_schedule():
    rng = np.random.default_rng(0)
    X, Xt = rng.uniform(-1, 1, size=(100, 2)), rng.uniform(-1, 1, size=(200, 2))
    reg = KANRegressor(hidden_layer_sizes=((0, 1),), grids=(3, 5), steps=3).fit(
        X, X[:, 0] * X[:, 1]
    )
    assert reg.model_.width == [[2, 0], [0, 1], [1, 0]] and reg.model_.grid == 5
    assert len(reg.history_) == 2
    assert reg.score(Xt, Xt[:, 0] * Xt[:, 1]) > 0.998  # measured 0.9994


def test_classifier_learns_two_classes_with_string_labels():
    rng = np.random.default_rng(0)
    X = rng.uniform(-1, 1, size=(200, 2))
    y = np.where(X[:, 0] ** 2 + X[:, 1] > 0.3, "hot", "cold")
    clf = KANClassifier(hidden_layer_sizes=(3,), grids=(5,), steps=8).fit(X, y)
    assert list(clf.classes_) == ["cold", "hot"]
    proba = clf.predict_proba(X)
    assert proba.shape == (200, 2) and np.allclose(proba.sum(1), 1.0)
    assert clf.decision_function(X).shape == (200,)
    assert clf.score(X, y) > 0.95
    assert set(clf.predict(X[:5])) <= {"cold", "hot"}


def test_clone_params_pickle_and_cross_val_score():
    X, y = _regression_data(90, 2)
    reg = KANRegressor(**TINY, seed=3)
    params = reg.get_params()
    assert params["steps"] == 2 and params["seed"] == 3
    c = clone(reg).set_params(steps=1)
    assert c.steps == 1 and reg.steps == 2
    reg.fit(X, y)
    again = pickle.loads(pickle.dumps(reg))
    assert np.array_equal(again.predict(X), reg.predict(X))
    # deterministic: the same parameters give the same fit
    assert np.array_equal(clone(reg).fit(X, y).predict(X), reg.predict(X))
    scores = cross_val_score(KANRegressor(**TINY), X, y, cv=3)
    assert scores.shape == (3,) and np.isfinite(scores).all()


@pytest.mark.parametrize(
    "check",
    [
        ec.check_estimators_unfitted,
        ec.check_fit2d_1sample,
        ec.check_n_features_in_after_fitting,
        ec.check_estimators_nan_inf,
    ],
)
@pytest.mark.parametrize("cls", [KANRegressor, KANClassifier])
def test_selected_sklearn_checks(cls, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(cls.__name__, cls(**TINY))


@pytest.mark.slow
@pytest.mark.parametrize("cls", [KANRegressor, KANClassifier])
def test_check_estimator_full(cls):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        results = ec.check_estimator(cls(**TINY), on_fail=None)
    failed = [r["check_name"] for r in results if r["status"] == "failed"]
    assert failed == []
    assert len(results) > 50
