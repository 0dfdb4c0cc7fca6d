"""KAN model: widths with multiplication nodes, grids, save/load, pickle, dtypes."""

import copy
import math
import pickle

import pytest
import torch

from trainkit.common.errors import UserError
from trainkit.kan import KAN
from trainkit.kan.model import normalize_width


def test_normalize_width():
    assert normalize_width([2, [3, 2], 1]) == [[2, 0], [3, 2], [1, 0]]
    for bad in ([2], [2, "a", 1], [2, [0, 0], 1], [[2, 1], 1]):
        with pytest.raises(UserError):
            normalize_width(bad)


def test_multiplication_nodes_multiply_pairs():
    m = KAN([2, [1, 1], 1], grid=3, seed=0, dtype=torch.float64)
    assert [(layer.in_features, layer.out_features) for layer in m.layers] == [(2, 3), (2, 1)]
    x = torch.rand(7, 2, dtype=torch.float64) * 2 - 1
    z = m.layers[0](x)  # [7, 3]: one sum node, one mult node fed by outputs 1 and 2
    want = m.layers[1](torch.stack([z[:, 0], z[:, 1] * z[:, 2]], 1))
    assert (m(x) - want).abs().max().item() < 1e-15
    y, acts = m.forward_with_acts(x)
    assert (y - want).abs().max().item() < 1e-14
    assert acts[0]["postacts"].shape == (7, 3, 2) and acts[1]["input"].shape == (7, 2)


def test_seed_makes_init_reproducible_and_leaves_global_rng():
    torch.manual_seed(123)
    a = torch.rand(1)
    torch.manual_seed(123)
    m1 = KAN([3, 4, 2], seed=5)
    b = torch.rand(1)
    m2 = KAN([3, 4, 2], seed=5)
    assert a.item() == b.item()
    for p, q in zip(m1.parameters(), m2.parameters()):
        assert torch.equal(p, q)
    assert not torch.equal(KAN([3, 4, 2], seed=6).layers[0].coef, m1.layers[0].coef)


def test_regularization_values():
    # postacts [N=2, out=1, in=2]: mean |phi| = (1, 3); L1 = 4, p = (1/4, 3/4)
    acts = [{"postacts": torch.tensor([[[1.0, -3.0]], [[-1.0, 3.0]]], dtype=torch.float64)}]
    ent = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    reg = KAN.regularization(acts, lamb_l1=1.0, lamb_entropy=2.0).item()
    assert reg == pytest.approx(4.0 + 2.0 * ent, rel=1e-9)


def test_update_grid_and_refine_keep_outputs(exp_sin_data):
    m = KAN([2, 5, 1], grid=10, seed=1, dtype=torch.float64)
    m.fit(exp_sin_data, steps=20, verbose=False)  # grids last updated at step 15
    x = exp_sin_data["train_input"]
    before = m(x)
    layer0 = m.layers[0](x)
    m.update_grid(x)
    # layer 0 sees the same inputs as at its last update: same knots, exact refit
    assert (m.layers[0](x) - layer0).abs().max().item() < 1e-12
    # the hidden layer's knots move with its inputs: a G=10 spline on the moved grid
    # approximates the old one (measured 3.6e-4 absolute, 5e-5 relative to max |y|)
    change = (m(x) - before).abs().max().item()
    assert change < 1e-3 and change / before.abs().max().item() < 2e-4
    r = m.refine(20)
    assert r is not m and r.grid == 20 and m.grid == 10
    assert (r(x) - m(x)).abs().max().item() < 1e-10  # knot insertion: exact in range
    r3 = r.refine(47)
    assert (r3(x) - m(x)).abs().max().item() < 1e-10


def test_save_load_pickle_deepcopy_identical(tmp_path):
    m = KAN([2, [2, 1], 1], grid=4, seed=3, dtype=torch.float64)
    m.layers[0].refine(7)  # layers of different grid sizes must round-trip too
    m.layers[1].sym_fns[0][1] = "sin"
    m.layers[1].sym_mask[0, 1] = 1.0
    m.layers[0].mask[1, 0] = 0.0
    x = torch.rand(50, 2, dtype=torch.float64) * 2 - 1
    y = m(x)
    m.save(tmp_path / "m")
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == [
        "config.json",
        "model.safetensors",
    ]
    for other in (KAN.load(tmp_path / "m"), pickle.loads(pickle.dumps(m)), copy.deepcopy(m)):
        assert torch.equal(other(x), y)
        assert other.layers[1].sym_fns[0][1] == "sin"
    (tmp_path / "bad").mkdir()
    with pytest.raises(UserError, match="not a saved KAN"):
        KAN.load(tmp_path / "bad")


def test_float32_and_to():
    m = KAN([2, 3, 1], seed=0)
    assert m.dtype == torch.float32
    x = torch.rand(4, 2)
    y32 = m(x)
    m64 = copy.deepcopy(m).to(torch.float64)
    assert m64.layers[0].grid.dtype == torch.float64
    assert (m64(x.double()) - y32.double()).abs().max().item() < 1e-5
    m.to("cpu")
    assert m.device.type == "cpu"


@pytest.mark.gpu
def test_cuda_matches_cpu():
    m = KAN([3, 4, 2], grid=6, seed=0, dtype=torch.float64)
    x = torch.rand(64, 3, dtype=torch.float64) * 2.6 - 1.3  # some points beyond the grid
    y = m(x)
    mc = copy.deepcopy(m).to("cuda")
    assert mc(x.cuda()).device.type == "cuda"
    assert (mc(x.cuda()).cpu() - y).abs().max().item() < 1e-12
    # gradients of the custom backward agree
    (m(x) ** 2).sum().backward()
    (mc(x.cuda()) ** 2).sum().backward()
    for p, q in zip(m.parameters(), mc.parameters()):
        if p.grad is not None:
            assert (p.grad - q.grad.cpu()).abs().max().item() < 1e-10
    mc.update_grid(x.cuda())
    m.update_grid(x)
    assert (mc(x.cuda()).cpu() - m(x)).abs().max().item() < 1e-10
    ds = {
        k: v.cuda()
        for k, v in {
            "train_input": x,
            "train_label": y.detach(),
            "test_input": x,
            "test_label": y.detach(),
        }.items()
    }
    hist = mc.fit(ds, steps=2, verbose=False)
    assert len(hist["test_loss"]) == 2 and math.isfinite(hist["test_loss"][-1])
