"""Kolmogorov-Arnold Networks (Liu et al. 2024, arXiv 2404.19756).

``from trainkit.kan import KAN, KANLinear, create_dataset`` (lazily imported: ``import
trainkit.kan`` itself loads nothing heavy).
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "KAN": "trainkit.kan.model",
    "KANLinear": "trainkit.kan.layer",
    "create_dataset": "trainkit.kan.datasets",
    "fit_grids": "trainkit.kan.fit",
    "KANRegressor": "trainkit.kan.sklearn",
    "KANClassifier": "trainkit.kan.sklearn",
    "parse_formula": "trainkit.kan.formula",
    "to_callable": "trainkit.kan.formula",
    "to_latex": "trainkit.kan.formula",
    "suggest": "trainkit.kan.symbolic_lib",
    "fit_affine": "trainkit.kan.symbolic_lib",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'trainkit.kan' has no attribute {name!r}")
