"""scikit-learn estimators wrapping :class:`trainkit.kan.KAN`.

``KANRegressor`` and ``KANClassifier`` follow the scikit-learn estimator contract
(``fit``/``predict``/``score``, ``get_params``/``set_params``, clone-able, picklable,
``n_features_in_``), so they work in ``cross_val_score``, ``GridSearchCV`` and
``Pipeline``. The network is ``[n_features, *hidden_layer_sizes, n_outputs]``;
inputs (and regression targets) are standardised with the training statistics
because the spline grids start on ``[-1, 1]`` (``update_grid`` then adapts them).

Training is :meth:`KAN.fit` (LBFGS by default) for ``steps`` steps per grid size in
``grids`` (grid extension as in the KAN paper, section 2.4: each larger grid starts
from :meth:`KAN.refine` of the previous model). The classifier minimises the cross
entropy of the ``n_classes`` output logits.

Importing this module imports scikit-learn (``import trainkit.kan`` does not).
"""

from __future__ import annotations

import numpy as np
import torch

from trainkit.common.errors import require

_sk = require("sklearn", "kan")
from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin  # noqa: E402
from sklearn.preprocessing import LabelEncoder  # noqa: E402
from sklearn.utils.multiclass import check_classification_targets  # noqa: E402
from sklearn.utils.validation import check_is_fitted, validate_data  # noqa: E402

_DTYPES = {"float32": torch.float32, "float64": torch.float64}


class _KANBase(BaseEstimator):
    """Shared parameters and training loop of the two estimators."""

    def __init__(
        self,
        hidden_layer_sizes=(5,),
        grids=(5,),
        k=3,
        steps=50,
        opt="LBFGS",
        lr=1.0,
        lamb=0.0,
        update_grid=True,
        batch=-1,
        standardize=True,
        dtype="float64",
        seed=0,
        verbose=False,
    ):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.grids = grids
        self.k = k
        self.steps = steps
        self.opt = opt
        self.lr = lr
        self.lamb = lamb
        self.update_grid = update_grid
        self.batch = batch
        self.standardize = standardize
        self.dtype = dtype
        self.seed = seed
        self.verbose = verbose

    # ---- helpers ----------------------------------------------------------------------
    def _torch_dtype(self) -> torch.dtype:
        if self.dtype not in _DTYPES:
            raise ValueError(f"dtype must be one of {sorted(_DTYPES)}, got {self.dtype!r}")
        return _DTYPES[self.dtype]

    def _grids(self) -> list[int]:
        grids = [self.grids] if isinstance(self.grids, (int, np.integer)) else list(self.grids)
        if not grids or any(int(g) < 1 for g in grids):
            raise ValueError(f"grids must be positive grid sizes, got {self.grids!r}")
        return [int(g) for g in grids]

    def _scale_x(self, X: np.ndarray) -> torch.Tensor:
        x = torch.tensor(np.asarray(X, dtype=np.float64))  # a copy: X may be read-only
        if self.standardize:
            x = (x - self.x_mean_) / self.x_scale_
        return x.to(self._torch_dtype())

    def _train(self, X: np.ndarray, Y: np.ndarray, n_out: int, loss_fn=None):
        from trainkit.kan.model import KAN

        if self.steps < 0:
            raise ValueError(f"steps must be >= 0, got {self.steps}")
        x64 = np.asarray(X, dtype=np.float64)
        self.x_mean_ = torch.as_tensor(x64.mean(0))
        sd = x64.std(0)
        self.x_scale_ = torch.as_tensor(np.where(sd > 0, sd, 1.0))
        x = self._scale_x(X)
        dt = self._torch_dtype()
        y = torch.tensor(np.asarray(Y, dtype=np.float64)).to(dt)
        hidden = list(self.hidden_layer_sizes or [])
        width = [
            X.shape[1],
            *[list(h) if isinstance(h, (list, tuple)) else int(h) for h in hidden],
            n_out,
        ]
        grids = self._grids()
        model = KAN(width, grid=grids[0], k=self.k, seed=self.seed, dtype=dt)
        data = {"train_input": x, "train_label": y, "test_input": x, "test_label": y}
        history = []
        for i, g in enumerate(grids):
            if i > 0:
                model = model.refine(g)
            if self.steps > 0:
                history.append(
                    model.fit(
                        data,
                        opt=self.opt,
                        steps=self.steps,
                        lr=self.lr,
                        lamb=self.lamb,
                        update_grid=self.update_grid,
                        batch=self.batch,
                        loss_fn=loss_fn,
                        verbose=self.verbose,
                        seed=self.seed,
                    )
                )
        self.model_ = model
        self.history_ = history
        return self

    @torch.no_grad()
    def _forward(self, X) -> torch.Tensor:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False, dtype=np.float64)
        return self.model_(self._scale_x(X)).to(torch.float64)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.non_deterministic = False
        return tags


class KANRegressor(RegressorMixin, _KANBase):
    """KAN regression (single or multi-output) with the scikit-learn API.

    Args:
        hidden_layer_sizes: hidden rows of the KAN, ints or ``(n_sum, n_mult)`` pairs;
            the width is ``[n_features, *hidden_layer_sizes, n_outputs]``.
        grids: grid sizes; training runs ``steps`` steps on each, refining in between.
        k: spline order.
        steps: optimiser steps per grid size.
        opt, lr, lamb, update_grid, batch: passed to :meth:`KAN.fit`.
        standardize: standardise inputs and targets with the training statistics.
        dtype: ``"float64"`` or ``"float32"``.
        seed: initialisation and minibatch seed (fits are deterministic).
        verbose: progress bars.

    Attributes (after fit): ``model_`` (the KAN), ``history_`` (one history dict per
    grid), ``n_features_in_``, ``n_outputs_``.
    """

    def fit(self, X, y):
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        self._y_1d = y.ndim == 1
        Y = y.reshape(len(y), -1)
        self.n_outputs_ = Y.shape[1]
        self.y_mean_ = Y.mean(0) if self.standardize else np.zeros(Y.shape[1])
        sd = Y.std(0) if self.standardize else np.ones(Y.shape[1])
        self.y_scale_ = np.where(sd > 0, sd, 1.0)
        return self._train(X, (Y - self.y_mean_) / self.y_scale_, self.n_outputs_)

    def predict(self, X):
        """``[n_samples]`` (or ``[n_samples, n_outputs]``) predictions."""
        out = self._forward(X).numpy() * self.y_scale_ + self.y_mean_
        return out[:, 0] if self._y_1d else out

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags


class KANClassifier(ClassifierMixin, _KANBase):
    """KAN classification with the scikit-learn API (cross entropy on class logits).

    Same parameters as :class:`KANRegressor`; the output row has one logit per class.
    Attributes (after fit): ``classes_``, ``model_``, ``history_``, ``n_features_in_``.
    """

    def fit(self, X, y):
        X, y = validate_data(self, X, y, dtype=np.float64)
        check_classification_targets(y)
        enc = LabelEncoder()
        yi = enc.fit_transform(y)
        self.classes_ = enc.classes_
        n_classes = len(self.classes_)
        if n_classes < 2:
            raise ValueError(f"KANClassifier needs at least 2 classes, got {n_classes} class")
        onehot = np.eye(n_classes)[yi]

        def loss_fn(logits, target):
            return torch.nn.functional.cross_entropy(logits, target.argmax(-1))

        return self._train(X, onehot, n_classes, loss_fn=loss_fn)

    def decision_function(self, X):
        """Class logits ``[n_samples, n_classes]``; for two classes the logit margin
        ``[n_samples]`` (positive means ``classes_[1]``), as scikit-learn expects."""
        z = self._forward(X).numpy()
        return z[:, 1] - z[:, 0] if z.shape[1] == 2 else z

    def predict_proba(self, X):
        """Softmax of the logits, ``[n_samples, n_classes]``."""
        return torch.softmax(self._forward(X), -1).numpy()

    def predict(self, X):
        logits = self._forward(X).numpy()
        return self.classes_[np.argmax(logits, axis=1)]
