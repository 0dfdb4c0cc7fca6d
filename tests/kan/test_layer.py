"""KANLinear: fast path = slow path, grid update/extension keep the function, slots."""

import math

import pytest
import torch

from trainkit.common.errors import UserError
from trainkit.kan import grid as kgrid
from trainkit.kan import spline
from trainkit.kan.layer import KANLinear


def smooth_layer(grid=5, dtype=torch.float64) -> KANLinear:
    """A 2->2 layer whose splines are fitted to smooth functions (like a trained layer)."""
    layer = KANLinear(2, 2, grid=grid, dtype=dtype, generator=torch.Generator().manual_seed(0))
    x = torch.linspace(-1, 1, 400, dtype=dtype)[:, None].expand(-1, 2)
    y = torch.stack(
        [
            torch.stack([torch.sin(2 * x[:, 0]), x[:, 1] ** 2], -1),
            torch.stack([torch.exp(x[:, 0]) / 3, torch.cos(x[:, 1])], -1),
        ],
        1,
    )
    with torch.no_grad():
        layer.coef.copy_(spline.curve2coef(x, y / layer.scale_sp, layer.grid, layer.k))
    return layer


def saved_bytes(fn) -> int:
    """Bytes of distinct storages autograd keeps for backward while ``fn()`` runs."""
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(seen.values()), out


def test_forward_matches_edge_sum_and_leading_dims():
    layer = KANLinear(3, 4, grid=5, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = torch.rand(2, 5, 3, dtype=torch.float64) * 2 - 1
    y = layer(x)
    assert y.shape == (2, 5, 4)
    acts = layer.edge_activations(x.reshape(10, 3))
    assert (acts["postacts"].sum(-1) - y.reshape(10, 4)).abs().max().item() < 1e-14
    # the edge formula itself: w_b silu(x) + w_s * spline
    n, o, i = 3, 2, 1
    xi = x.reshape(10, 3)[n, i]
    b = spline.bspline_basis(xi.reshape(1, 1), layer.grid[i : i + 1], 3)[0, 0]
    want = layer.scale_base[o, i] * torch.nn.functional.silu(xi) + layer.scale_sp[o, i] * (
        b @ layer.coef[o, i]
    )
    assert acts["postacts"][n, o, i].item() == pytest.approx(want.item(), abs=1e-14)


def test_fast_and_plain_paths_agree_with_gradients():
    torch.manual_seed(0)
    fast = KANLinear(3, 4, grid=7, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    plain = KANLinear(
        3, 4, grid=7, dtype=torch.float64, fast=False, generator=torch.Generator().manual_seed(1)
    )
    x = (torch.rand(64, 3, dtype=torch.float64) * 2.4 - 1.2).requires_grad_()
    (fast(x) ** 2).sum().backward()
    gx_fast = x.grad.clone()
    x.grad = None
    (plain(x) ** 2).sum().backward()
    assert (x.grad - gx_fast).abs().max().item() < 1e-12
    for a, b in zip(fast.parameters(), plain.parameters()):
        if a.grad is not None or b.grad is not None:
            assert (a.grad - b.grad).abs().max().item() < 1e-12


def test_fast_path_saves_little_for_backward():
    layer = KANLinear(64, 64, grid=5, generator=torch.Generator().manual_seed(0))
    x = torch.rand(512, 64) * 2 - 1
    x.requires_grad_()
    fast, _ = saved_bytes(lambda: layer(x))
    layer.fast = False
    plain, _ = saved_bytes(
        lambda: (
            spline.bspline_basis_cox(x, layer.grid, 3).reshape(512, -1)
            @ layer.spline_weight().reshape(64, -1).t()
        )
    )
    # local basis + derivative (2 x [N, in, 4]) + start index + weights vs the whole recursion
    assert fast < 0.25 * plain, (fast, plain)


def test_update_grid_keeps_a_smooth_function():
    # G=10: a cubic spline on the new grid can represent the old one to ~1e-5
    # (with G=5 the best approximation itself differs by ~8e-4 for sin(2x))
    layer = smooth_layer(grid=10)
    x = torch.rand(1000, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    x = x * 1.4 - 0.6  # data in [-0.6, 0.8]: a real change of grid
    inside = torch.linspace(-0.6, 0.8, 501, dtype=torch.float64)[:, None].expand(-1, 2)
    before = layer(inside)
    layer.update_grid(x)
    knots = spline.interior(layer.grid, 3)
    assert knots[:, 0].max().item() < -0.59 and knots[:, -1].min().item() > 0.79
    assert (layer(inside) - before).abs().max().item() < 1e-4


def test_refine_nested_is_exact_and_non_nested_close():
    layer = smooth_layer()
    x = torch.linspace(-1, 1, 777, dtype=torch.float64)[:, None].expand(-1, 2)
    before = layer(x)
    layer.refine(10)
    assert layer.grid_size == 10 and layer.coef.shape == (2, 2, 13)
    assert (layer(x) - before).abs().max().item() < 1e-12
    layer.refine(13)  # not a multiple: knot insertion keeps it exact anyway
    assert (layer(x) - before).abs().max().item() < 1e-12
    layer.refine(50)
    assert (layer(x) - before).abs().max().item() < 1e-12
    knots = spline.interior(layer.grid, 3)
    assert knots.shape == (2, 51) and (knots[:, 1:] > knots[:, :-1]).all()


def test_nested_knots_allocation():
    k = torch.tensor([[-1.0, -1 / 3, 1 / 3, 1.0]], dtype=torch.float64)
    new = kgrid.nested_knots(k, 5)
    assert new[0].tolist() == pytest.approx([-1.0, -2 / 3, -1 / 3, 0.0, 1 / 3, 1.0])
    uni = kgrid.nested_knots(torch.linspace(-1, 1, 6, dtype=torch.float64)[None], 10)
    assert uni[0].tolist() == pytest.approx([i / 5 - 1 for i in range(11)], abs=1e-15)


def test_mask_and_symbolic_slot():
    layer = KANLinear(2, 1, grid=3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x = torch.tensor([[0.3, -0.4], [0.9, 0.1]], dtype=torch.float64)
    assert layer.sym_mask.sum().item() == 0  # inactive by default
    edge1 = layer.edge_activations(x)["postacts"][:, 0, 1]
    layer.mask[0, 0] = 0.0
    assert (layer(x)[:, 0] - edge1).abs().max().item() < 1e-15
    layer.sym_fns[0][0] = "x^2"
    layer.sym_mask[0, 0] = 1.0
    with torch.no_grad():
        layer.sym_affine[0, 0] = torch.tensor([2.0, 0.5, 3.0, -1.0], dtype=torch.float64)
    want = edge1 + 3.0 * (2.0 * x[:, 0] + 0.5) ** 2 - 1.0
    assert (layer(x)[:, 0] - want).abs().max().item() < 1e-14
    layer.sym_fns[0][0] = "nope"
    with pytest.raises(UserError, match="not registered"):
        layer(x)


def test_float32_and_bad_args():
    layer = KANLinear(2, 3, grid=4)
    assert layer.coef.dtype == torch.float32
    assert layer(torch.zeros(5, 2)).dtype == torch.float32
    assert layer.grid.shape == (2, 4 + 7)
    assert math.isclose(layer.scale_sp[0, 0].item(), 1 / math.sqrt(2), rel_tol=1e-6)
    with pytest.raises(UserError, match="base_fun"):
        KANLinear(2, 3, base_fun="relu6")
