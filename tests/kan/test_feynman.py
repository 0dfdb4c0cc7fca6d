"""Tests for trainkit.kan.feynman: every equation checked against independent evaluations."""

import math

import pytest
import torch

sympy = pytest.importorskip("sympy")

from trainkit.common.errors import UserError  # noqa: E402
from trainkit.kan import feynman as F  # noqa: E402
from trainkit.kan.formula import parse_formula  # noqa: E402

# The ids of the KAN paper's Table 2.
PAPER_IDS = [
    "I.6.2",
    "I.6.2b",
    "I.9.18",
    "I.12.11",
    "I.13.12",
    "I.15.3x",
    "I.16.6",
    "I.18.4",
    "I.26.2",
    "I.27.6",
    "I.29.16",
    "I.30.3",
    "I.30.5",
    "I.37.4",
    "I.40.1",
    "I.44.4",
    "I.50.26",
    "II.2.42",
    "II.6.15a",
    "II.11.7",
    "II.11.27",
    "II.35.18",
    "II.36.38",
    "II.38.3",
    "III.9.52",
    "III.10.19",
    "III.17.37",
]

# Written independently from the paper's dimensionless formulas with the math module.
MATH = {
    "I.6.2": lambda t, s: math.exp(-t * t / (2 * s * s)) / math.sqrt(2 * math.pi * s * s),
    "I.6.2b": lambda t, t1, s: (
        math.exp(-((t - t1) ** 2) / (2 * s * s)) / math.sqrt(2 * math.pi * s * s)
    ),
    "I.9.18": lambda a, b, c, d, e, f: a / ((b - 1) ** 2 + (c - d) ** 2 + (e - f) ** 2),
    "I.12.11": lambda a, t: 1 + a * math.sin(t),
    "I.13.12": lambda a, b: a * (1 / b - 1),
    "I.15.3x": lambda a, b: (1 - a) / math.sqrt(1 - b * b),
    "I.16.6": lambda a, b: (a + b) / (1 + a * b),
    "I.18.4": lambda a, b: (1 + a * b) / (1 + a),
    "I.26.2": lambda n, t: math.asin(n * math.sin(t)),
    "I.27.6": lambda a, b: 1 / (1 + a * b),
    "I.29.16": lambda a, t1, t2: math.sqrt(1 + a * a - 2 * a * math.cos(t1 - t2)),
    "I.30.3": lambda n, t: math.sin(n * t / 2) ** 2 / math.sin(t / 2) ** 2,
    "I.30.5": lambda a, n: math.asin(a / n),
    "I.37.4": lambda a, d: 1 + a + 2 * math.sqrt(a) * math.cos(d),
    "I.40.1": lambda n0, a: n0 * math.exp(-a),
    "I.44.4": lambda n, a: n * math.log(a),
    "I.50.26": lambda a, al: math.cos(a) + al * math.cos(a) ** 2,
    "II.2.42": lambda a, b: (a - 1) * b,
    "II.6.15a": lambda a, b, c: c * math.hypot(a, b) / (4 * math.pi),
    "II.11.7": lambda n0, a, t: n0 * (1 + a * math.cos(t)),
    "II.11.27": lambda n, al: n * al / (1 - n * al / 3),
    "II.35.18": lambda n0, a: n0 / (2 * math.cosh(a)),
    "II.36.38": lambda a, al, b: a + al * b,
    "II.38.3": lambda a, b: a / b,
    "III.9.52": lambda a, b, c: a * (math.sin((b - c) / 2) / ((b - c) / 2)) ** 2,
    "III.10.19": lambda a, b: math.sqrt(1 + a * a + b * b),
    "III.17.37": lambda al, be, t: be * (1 + al * math.cos(t)),
}


def test_table_is_complete():
    assert F.names() == PAPER_IDS
    assert set(MATH) == set(PAPER_IDS)


@pytest.mark.parametrize("name", PAPER_IDS)
def test_equation_generator_matches_independent_evaluations(name):
    eq = F.get(name)
    expr = eq.expr()
    # the formula parses, uses exactly its declared variables, and so does the original
    assert {s.name for s in expr.free_symbols} == set(eq.variables)
    parse_formula(eq.original)
    assert len(eq.ranges) == eq.n_var and all(lo < hi for lo, hi in eq.ranges)

    tx, ty, vx, vy = F.make_dataset(name, train_num=64, test_num=16, seed=1)
    assert tx.shape == (64, eq.n_var) and ty.shape == (64, 1)
    assert vx.shape == (16, eq.n_var) and vy.shape == (16, 1)
    assert tx.dtype == torch.float64
    for j, (lo, hi) in enumerate(eq.ranges):
        assert lo <= float(tx[:, j].min()) and float(tx[:, j].max()) <= hi
    assert torch.isfinite(ty).all() and torch.isfinite(vy).all()
    assert float(ty.std()) > 1e-3  # not degenerate on its ranges

    # 1) the generator equals SymPy's own evaluation of the expression (3 points)
    syms = [sympy.Symbol(v) for v in eq.variables]
    for i in range(3):
        point = {s: sympy.Float(float(tx[i, j]), 30) for j, s in enumerate(syms)}
        ref = float(expr.subs(point).evalf(20))
        assert float(ty[i, 0]) == pytest.approx(ref, rel=1e-12, abs=1e-14)
    # 2) ... and a hand-written math-module version of the paper's formula (all points)
    ref = [MATH[name](*row) for row in tx.tolist()]
    assert ty[:, 0].tolist() == pytest.approx(ref, rel=1e-10, abs=1e-12)


def test_literal_values():
    def at(name, *vals):
        return F.get(name).function()(torch.tensor([vals], dtype=torch.float64)).item()

    assert at("I.6.2", 0.0, 1.0) == pytest.approx(1 / math.sqrt(2 * math.pi), rel=1e-15)
    assert at("I.16.6", 0.5, 0.5) == pytest.approx(0.8, rel=1e-15)
    assert at("I.27.6", 1.0, 1.0) == pytest.approx(0.5, rel=1e-15)
    assert at("I.30.3", 3.0, math.pi) == pytest.approx(1.0, rel=1e-12)
    assert at("III.10.19", 0.0, 0.0) == pytest.approx(1.0)
    assert at("II.35.18", 1.0, 0.0) == pytest.approx(0.5)
    assert at("I.9.18", 1.0, 0.0, 0.0, 0.0, 1.0, 0.0) == pytest.approx(0.5)


def test_make_dataset_is_reproducible_and_typed():
    a = F.make_dataset("I.12.11", 32, 8, seed=3)
    b = F.make_dataset("I.12.11", 32, 8, seed=3)
    c = F.make_dataset("I.12.11", 32, 8, seed=4)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[0], c[0])
    assert not torch.equal(a[0][:8], a[2])  # train and test are different draws
    f32 = F.make_dataset("I.12.11", 32, 8, seed=3, dtype=torch.float32)
    assert f32[1].dtype == torch.float32
    assert torch.allclose(f32[1].double(), a[1], atol=1e-6)


def test_dataset_dict_matches_tuple():
    d = F.make_dataset_dict("I.16.6", 16, 4, seed=2)
    t = F.make_dataset("I.16.6", 16, 4, seed=2)
    assert list(d) == ["train_input", "train_label", "test_input", "test_label"]
    assert all(torch.equal(d[k], v) for k, v in zip(d, t))


def test_unknown_equation_is_user_error():
    with pytest.raises(UserError, match="unknown Feynman equation 'I.99'"):
        F.make_dataset("I.99")
