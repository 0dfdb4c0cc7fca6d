"""B-spline math: exact values, partition of unity, Cox-de Boor agreement, gradients."""

import pytest
import torch

from trainkit.kan import grid as kgrid
from trainkit.kan import spline


def naive_bspline(x: float, t: list[float], i: int, k: int) -> float:
    """Scalar textbook Cox-de Boor recursion, the reference (0/0 := 0)."""
    if k == 0:
        return 1.0 if t[i] <= x < t[i + 1] else 0.0
    out = 0.0
    if t[i + k] > t[i]:
        out += (x - t[i]) / (t[i + k] - t[i]) * naive_bspline(x, t, i, k - 1)
    if t[i + k + 1] > t[i + 1]:
        out += (t[i + k + 1] - x) / (t[i + k + 1] - t[i + 1]) * naive_bspline(x, t, i + 1, k - 1)
    return out


def test_uniform_grid_knots():
    g = spline.uniform_grid(2, grid=4, k=2, lo=-1, hi=1, dtype=torch.float64)
    assert g.shape == (2, 9)
    assert g[0].tolist() == pytest.approx([-2.0, -1.5, -1.0, -0.5, 0.0, 0.5, 1.0, 1.5, 2.0])


def test_cubic_uniform_values():
    # the uniform cubic B-spline at its knots is (1/6, 4/6, 1/6), at its centre 2/3
    g = spline.uniform_grid(1, grid=4, k=3, dtype=torch.float64)  # knots step 0.5
    b = spline.bspline_basis(torch.tensor([[0.0]], dtype=torch.float64), g, 3)[0, 0]
    # x = 0 is knot t_5; B_2 (support t_2..t_6) etc.
    assert b.tolist() == pytest.approx([0, 0, 1 / 6, 4 / 6, 1 / 6, 0, 0], abs=1e-15)


@pytest.mark.parametrize("k", [0, 1, 2, 3, 4])
def test_matches_naive_cox_de_boor(k):
    gen = torch.Generator().manual_seed(k)
    knots = torch.sort(torch.rand(3, 7, generator=gen, dtype=torch.float64) * 2 - 1, dim=1).values
    grid = spline.extend_grid(knots, k)
    x = torch.rand(200, 3, generator=gen, dtype=torch.float64) * 3.2 - 1.6  # includes outside
    x[0] = grid[:, 0]
    x[1] = grid[:, k]
    b = spline.bspline_basis(x, grid, k)
    dense = spline.bspline_basis_cox(x, grid, k)
    ref = torch.tensor(
        [
            [
                [
                    naive_bspline(x[n, i].item(), grid[i].tolist(), j, k)
                    for j in range(grid.shape[1] - k - 1)
                ]
                for i in range(3)
            ]
            for n in range(200)
        ],
        dtype=torch.float64,
    )
    assert (b - ref).abs().max().item() < 1e-12
    assert (dense - ref).abs().max().item() < 1e-12


def test_partition_of_unity_and_support():
    knots = torch.tensor([[-1.0, -0.7, -0.1, 0.05, 0.6, 1.0]], dtype=torch.float64)
    grid = spline.extend_grid(knots, 3)
    x = torch.linspace(-1, 1, 1001, dtype=torch.float64)[:, None]
    b = spline.bspline_basis(x, grid, 3)
    assert (b.sum(-1) - 1).abs().max().item() < 1e-14
    assert b.min().item() >= 0
    assert ((b > 0).sum(-1) <= 4).all()
    far = spline.bspline_basis(torch.tensor([[5.0], [-5.0]], dtype=torch.float64), grid, 3)
    assert far.abs().max().item() == 0.0


def test_derivative_matches_finite_difference():
    grid = spline.extend_grid(torch.tensor([[-1.0, -0.3, 0.2, 1.0]], dtype=torch.float64), 3)
    x = torch.tensor([[-0.9], [-0.31], [0.0], [0.55]], dtype=torch.float64)
    _, db = spline.bspline_basis_deriv(x, grid, 3)
    h = 1e-6
    fd = (spline.bspline_basis(x + h, grid, 3) - spline.bspline_basis(x - h, grid, 3)) / (2 * h)
    assert (db - fd).abs().max().item() < 1e-7


def test_gradcheck_custom_function_and_plain_path():
    gen = torch.Generator().manual_seed(0)
    grid = spline.uniform_grid(2, 5, 3, dtype=torch.float64)
    x = (torch.rand(8, 2, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()
    w = torch.randn(2, 2, 8, generator=gen, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: spline.spline_linear(a, grid, b, 3), (x, w))
    assert torch.autograd.gradcheck(
        lambda a, b: spline.spline_linear(a, grid, b, 3, fast=False), (x, w)
    )
    assert torch.autograd.gradgradcheck(
        lambda a, b: spline.spline_linear(a, grid, b, 3, fast=False), (x, w)
    )


def test_curve2coef_recovers_a_spline_exactly():
    gen = torch.Generator().manual_seed(1)
    grid = spline.uniform_grid(2, 6, 3, dtype=torch.float64)
    coef = torch.randn(3, 2, 9, generator=gen, dtype=torch.float64)
    x = torch.rand(300, 2, generator=gen, dtype=torch.float64) * 2 - 1
    y = spline.coef2curve(x, grid, coef, 3)  # [N, out, in]
    assert y.shape == (300, 3, 2)
    assert (spline.curve2coef(x, y, grid, 3) - coef).abs().max().item() < 1e-9


def test_refit_to_nested_grid_is_exact_and_to_coarse_is_close():
    gen = torch.Generator().manual_seed(2)
    old = spline.uniform_grid(1, 5, 3, dtype=torch.float64)
    coef = torch.randn(2, 1, 8, generator=gen, dtype=torch.float64)
    x = torch.linspace(-1, 1, 400, dtype=torch.float64)[:, None]
    new = spline.extend_grid(kgrid.resample_knots(spline.interior(old, 3), 10), 3)
    t = spline.refit_matrix(x, old, new, 3)
    assert t.shape == (1, 13, 8)
    y_old = spline.coef2curve(x, old, coef, 3)
    y_new = spline.coef2curve(x, new, spline.apply_refit(t, coef), 3)
    assert (y_old - y_new).abs().max().item() < 1e-12


def test_adaptive_knots_follow_percentiles():
    x = torch.tensor([[0.0], [1.0], [2.0], [3.0], [10.0]], dtype=torch.float64)
    k = kgrid.adaptive_knots(x, grid=4, eps=0.0)
    assert k[0].tolist() == pytest.approx([0.0, 1.0, 2.0, 3.0, 10.0])
    k = kgrid.adaptive_knots(x, grid=4, eps=1.0)
    assert k[0].tolist() == pytest.approx([0.0, 2.5, 5.0, 7.5, 10.0])
    const = kgrid.adaptive_knots(torch.ones(5, 1), grid=2, eps=0.02)
    assert const[0].tolist() == pytest.approx([0.5, 1.0, 1.5])


@pytest.mark.parametrize("k", [1, 2, 3, 4])
def test_uniform_fast_path_matches_reference(k):
    grid = spline.uniform_grid(3, 7, k, lo=-0.7, hi=1.3, dtype=torch.float64)
    assert spline.is_uniform(grid) and not spline.is_uniform(
        spline.extend_grid(torch.tensor([[-1.0, 0.1, 1.0]], dtype=torch.float64), k)
    )
    gen = torch.Generator().manual_seed(k)
    for lo, hi in ((-0.7, 1.3), (-3.0, 3.0)):  # inside only / with points beyond the grid
        x = lo + (hi - lo) * torch.rand(300, 3, generator=gen, dtype=torch.float64)
        ref = torch.tensor(
            [
                [
                    [
                        naive_bspline(x[n, i].item(), grid[i].tolist(), j, k)
                        for j in range(grid.shape[1] - k - 1)
                    ]
                    for i in range(3)
                ]
                for n in range(300)
            ],
            dtype=torch.float64,
        )
        assert (spline.bspline_basis(x, grid, k, uniform=True) - ref).abs().max().item() < 1e-12
        f1, v1, d1 = spline.bspline_local(x, grid, k, deriv=True)
        f2, v2, d2 = spline.bspline_local(x, grid, k, deriv=True, uniform=True)
        nb = grid.shape[1] - k - 1
        assert (
            spline.scatter_local(f1, d1, nb) - spline.scatter_local(f2, d2, nb)
        ).abs().max() < 1e-11
    xg = (torch.rand(8, 3, generator=gen, dtype=torch.float64) * 2.4 - 0.9).requires_grad_()
    w = torch.randn(
        2, 3, grid.shape[1] - k - 1, generator=gen, dtype=torch.float64
    ).requires_grad_()
    for fast in (True, False):

        def fn(a, b, fast=fast):
            return spline.spline_linear(a, grid, b, k, fast=fast, uniform=True)

        assert torch.autograd.gradcheck(fn, (xg, w))
