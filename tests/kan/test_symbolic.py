"""Snapping edges to symbols and reading formulas (trainkit.kan.symbolic)."""

# ruff: noqa: E741  -- (l, i, j) = (layer, input node, output node), the paper's edge index

import math

import pytest
import torch

from trainkit.common.errors import UserError
from trainkit.kan import KAN, create_dataset
from trainkit.kan import symbolic as S
from trainkit.kan.formula import equivalent


def _x(n_in, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.rand(n, n_in, generator=g, dtype=torch.float64) - 1


def _set(model, l, i, j, name, params):
    S.fix_symbolic(model, l, i, j, name, fit_params=False)
    with torch.no_grad():
        model.layers[l].sym_affine[j, i] = torch.tensor(params, dtype=torch.float64)


def test_hand_snapped_model_gives_paper_formula():
    m = KAN([2, 1, 1], dtype=torch.float64)
    _set(m, 0, 0, 0, "sin", [math.pi, 0.0, 1.0, 0.2])
    _set(m, 0, 1, 0, "x^2", [1.0, 0.0, 1.0, -0.2])
    _set(m, 1, 0, 0, "exp", [1.0, 0.0, 1.0, 0.0])
    x = _x(2)
    want = torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2)
    with torch.no_grad():
        assert torch.allclose(m(x)[:, 0], want, atol=1e-12)
    (expr,) = S.symbolic_formula(m)
    assert str(expr) == "exp(x2**2 + sin(3.1416*x1))"
    assert equivalent(expr, "exp(sin(pi*x1) + x2**2)", 3)
    (named,) = S.symbolic_formula(m, var_names=["a", "b"], digits=2)
    assert str(named) == "exp(b**2 + sin(3.14*a))"
    assert (
        S.formula_rmse([S.symbolic_formula(m, digits=None)[0]], ["x1", "x2"], x, want[:, None])
        < 1e-12
    )


def test_multiplication_node_is_a_product_in_the_formula():
    m = KAN([2, [0, 1], 1], dtype=torch.float64)
    _set(m, 0, 0, 0, "x", [1.0, 0.0, 2.0, 0.0])
    _set(m, 0, 1, 1, "x", [1.0, 0.0, 1.5, 0.0])
    _set(m, 0, 0, 1, "0", [1.0, 0.0, 0.0, 1.0])  # a constant edge: + 1 on the second factor
    with torch.no_grad():
        m.layers[0].mask[0, 1] = 0.0  # edge (0, 1, 0), x2 -> first factor, pruned
    _set(m, 1, 0, 0, "x", [1.0, 0.0, 1.0, 0.0])
    (expr,) = S.symbolic_formula(m)
    assert equivalent(expr, "2*x1*(1.5*x2 + 1)", 3)
    x = _x(2)
    with torch.no_grad():
        assert torch.allclose(m(x)[:, 0], 2 * x[:, 0] * (1.5 * x[:, 1] + 1), atol=1e-12)


def test_suggest_fix_then_fit_trains_affine_parameters():
    ds = create_dataset(
        lambda x: torch.sin(2 * x[:, 0] + 0.5),
        n_var=1,
        train_num=300,
        test_num=300,
        seed=0,
        dtype=torch.float64,
    )
    m = KAN([1, 1], grid=10, seed=0, dtype=torch.float64)
    m.fit(ds, steps=15, verbose=False)
    x = ds["train_input"]
    top = S.suggest_symbolic(m, 0, 0, 0, topk=3, x=x)
    assert top[0].name == "sin" and top[0].r2 > 0.9999
    r2 = S.fix_symbolic(m, 0, 0, 0, "sin", x=x)
    assert r2 > 0.9999
    assert float(m.layers[0].mask[0, 0]) == 0.0 and float(m.layers[0].sym_mask[0, 0]) == 1.0
    before = m.layers[0].sym_affine.detach().clone()
    h = m.fit(ds, steps=10, update_grid=False, verbose=False)
    assert not torch.equal(before, m.layers[0].sym_affine.detach())  # fit moved a, b, c, d
    assert h["test_loss"][-1] < 1e-9
    a, b, c, d = m.layers[0].sym_affine[0, 0].tolist()
    assert abs(a - 2) < 1e-6 and abs(b - 0.5) < 1e-6 and abs(c - 1) < 1e-6 and abs(d) < 1e-6
    S.unfix_symbolic(m, 0, 0, 0)
    assert float(m.layers[0].mask[0, 0]) == 1.0 and float(m.layers[0].sym_mask[0, 0]) == 0.0


def test_canonical_forms_are_the_same_function():
    u = torch.linspace(-2, 2, 101, dtype=torch.float64)
    for name, fn, p in [
        ("sin", torch.sin, (-2.0, 3.0, 0.7, 0.1)),
        ("cos", torch.cos, (1.5, -2.5, -1.2, 0.0)),
        ("x^2", lambda v: v * v, (-1.0, 0.3, 2.0, 1.0)),
        ("tanh", torch.tanh, (-3.0, 0.2, 1.0, 0.0)),
    ]:
        a, b, c, d = p
        a2, b2, c2, d2 = S.canonical(name, *p)
        assert a2 > 0
        assert torch.allclose(c * fn(a * u + b) + d, c2 * fn(a2 * u + b2) + d2, atol=1e-12)
        if name in ("sin", "cos"):
            assert -math.pi / 2 < b2 <= math.pi / 2


def test_singular_functions_stay_finite():
    m = KAN([2, 1], dtype=torch.float64)
    _set(m, 0, 0, 0, "1/x", [1.0, 0.0, 1.0, 0.0])
    _set(m, 0, 1, 0, "log", [1.0, 0.0, 1.0, 0.0])
    x = torch.tensor([[0.0, -1.0], [0.0, 0.0], [1e-30, -5.0]], dtype=torch.float64)
    x.requires_grad_(True)
    y = m(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()


def test_auto_symbolic_threshold_and_formula_refuses_splines():
    m = KAN([2, 2, 1], seed=0, dtype=torch.float64)  # random splines: no clean law
    x = _x(2)
    rep = S.auto_symbolic(m, x=x, r2_threshold=1.1)
    assert len(rep) == 6 and not any(r["fixed"] for r in rep)
    assert all(len(r["candidates"]) == 3 for r in rep)
    assert len(S.spline_edges(m)) == 6
    with pytest.raises(UserError, match="still splines"):
        S.symbolic_formula(m)
    rep = S.auto_symbolic(m, x=x, r2_threshold=0.0)
    assert all(r["fixed"] for r in rep) and S.spline_edges(m) == []
    assert len(S.symbolic_formula(m)) == 1


def test_edge_index_errors_and_unknown_name():
    m = KAN([2, 1], dtype=torch.float64)
    with pytest.raises(UserError):
        S.fix_symbolic(m, 1, 0, 0, "sin")
    with pytest.raises(UserError):
        S.fix_symbolic(m, 0, 2, 0, "sin")
    with pytest.raises(UserError, match="unknown symbolic function"):
        S.fix_symbolic(m, 0, 0, 0, "bessel")


def test_snapped_model_saves_and_loads(tmp_path):
    m = KAN([1, 1], dtype=torch.float64)
    _set(m, 0, 0, 0, "1/x^2", [2.0, 3.0, 0.5, 0.0])
    m.save(tmp_path / "m")
    m2 = KAN.load(tmp_path / "m")
    x = _x(1)
    with torch.no_grad():
        assert torch.equal(m(x), m2(x))
    assert str(S.symbolic_formula(m2, digits=3)[0]) == str(S.symbolic_formula(m, digits=3)[0])


def test_formula_pulls_constants_out_of_roots():
    """sqrt(2.2754 (a^2 + b^2 + 1)) * 0.6629 reads as sqrt(a^2 + b^2 + 1) (Feynman III.10.19)."""
    m = KAN([2, 1, 1], dtype=torch.float64)
    _set(m, 0, 0, 0, "x^2", [1.0, 0.0, 2.2754, 1.1377])
    _set(m, 0, 1, 0, "x^2", [1.0, 0.0, 2.2754, 1.1377])
    _set(m, 1, 0, 0, "sqrt", [1.0, 0.0, 0.6629, 0.0])
    (expr,) = S.symbolic_formula(m, ["a", "b"])
    assert str(expr) == "0.9999*sqrt(a**2 + b**2 + 1)"
    assert equivalent(expr, "sqrt(1 + a**2 + b**2)", 3)
