"""Attribution scores and pruning (trainkit.kan.prune)."""

import pytest
import torch

from trainkit.common.errors import UserError
from trainkit.kan import KAN
from trainkit.kan import prune as P


def _x(n_in, n=400, seed=0):
    g = torch.Generator().manual_seed(seed)
    return 2 * torch.rand(n, n_in, generator=g, dtype=torch.float64) - 1


def _rmse(a, b, x):
    with torch.no_grad():
        return torch.sqrt(torch.mean((a(x) - b(x)) ** 2)).item()


def test_scores_shapes_and_output_row_is_one():
    m = KAN([3, 4, 2], seed=0, dtype=torch.float64)
    att = P.attribution(m, _x(3))
    assert [t.shape for t in att["node"]] == [(3,), (4,), (2,)]
    assert [t.shape for t in att["edge"]] == [(4, 3), (2, 4)]
    assert torch.equal(att["node"][-1], torch.ones(2, dtype=torch.float64))
    # a node's score is the sum of its outgoing edges' scores
    assert torch.allclose(att["node"][1], att["edge"][1].sum(0))
    assert torch.allclose(P.feature_score(m, _x(3)), att["node"][0])


def test_masked_input_scores_zero():
    m = KAN([3, 4, 1], seed=0, dtype=torch.float64)
    m.layers[0].mask[:, 2] = 0.0
    s = P.feature_score(m, _x(3))
    assert float(s[2]) == 0.0
    assert float(s[0]) > 0.05 and float(s[1]) > 0.05


def test_prune_removes_dead_node_and_folds_its_constant():
    """A hidden node with no inputs is constant: its outgoing edge is a constant offset,
    which pruning folds into a surviving edge, so the function is unchanged."""
    m = KAN([2, 3, 1], seed=1, dtype=torch.float64)
    with torch.no_grad():
        m.layers[0].mask[1] = 0.0  # node 1 of the hidden row gets no input: value 0
        m.layers[1].coef[0, 1] += 0.7  # and its outgoing edge outputs a clear constant
    x = _x(2)
    s = P.node_scores(m, x)[1]
    assert float(s[1]) == 0.0
    p = P.prune(m, x=x)
    assert p.width == [[2, 0], [2, 0], [1, 0]]
    assert m.width == [[2, 0], [3, 0], [1, 0]]  # the original is untouched
    assert _rmse(m, p, x) < 1e-10


def test_prune_keeps_at_least_one_node_and_explicit_active():
    m = KAN([2, 3, 1], seed=1, dtype=torch.float64)
    x = _x(2)
    p = P.prune_node(m, threshold=1e9, x=x)  # every score is below: the best node stays
    assert p.width[1] == [1, 0]
    q = P.prune_node(m, x=x, active={1: [0, 2]})
    assert q.width[1] == [2, 0]
    with pytest.raises(UserError):
        P.remove_nodes(m, 1, [], x=x)
    with pytest.raises(UserError):
        P.remove_nodes(m, 0, [0], x=x)


def test_prune_multiplication_nodes():
    m = KAN([2, [1, 1], 1], seed=2, dtype=torch.float64)
    x = _x(2)
    with torch.no_grad():
        m.layers[1].mask[0, 0] = 0.0  # the sum node's output is not used
    p = P.prune_node(m, x=x)
    assert p.width == [[2, 0], [0, 1], [1, 0]]
    assert p.layers[0].out_features == 2 and p.layers[1].in_features == 1
    assert _rmse(m, p, x) < 1e-10
    m2 = KAN([2, [1, 1], 1], seed=2, dtype=torch.float64)
    with torch.no_grad():
        m2.layers[1].mask[0, 1] = 0.0  # now the product is unused
    p2 = P.prune_node(m2, x=x)
    assert p2.width == [[2, 0], [1, 0], [1, 0]]
    assert p2.layers[0].out_features == 1
    assert _rmse(m2, p2, x) < 1e-10


def test_prune_edge_masks_weak_edge_and_keeps_function_close():
    m = KAN([2, 2, 1], seed=3, dtype=torch.float64)
    with torch.no_grad():
        m.layers[0].scale_sp[1, 0] *= 1e-3
        m.layers[0].scale_base[1, 0] *= 1e-3
    x = _x(2)
    e = P.edge_scores(m, x)[0]
    assert float(e[1, 0]) < 3e-2
    p = P.prune_edge(m, x=x)
    assert float(p.layers[0].mask[1, 0]) == 0.0
    assert float(m.layers[0].mask[1, 0]) == 1.0
    assert int(p.layers[0].mask.sum()) == 3
    with torch.no_grad():
        scale = m(x).std().item()
    assert _rmse(m, p, x) < 1e-2 * scale


def test_prune_input():
    m = KAN([3, 2, 1], seed=4, dtype=torch.float64)
    with torch.no_grad():
        m.layers[0].mask[:, 1] = 0.0
    x = _x(3)
    p, kept = P.prune_input(m, x=x)
    assert kept == [0, 2] and p.width[0] == [2, 0]
    with torch.no_grad():
        assert torch.allclose(p(x[:, kept]), m(x), atol=1e-12)
    q, kept2 = P.prune_input(m, x=x, active_inputs=[2])
    assert kept2 == [2] and q.layers[0].grid.shape[0] == 1
    with pytest.raises(UserError):
        P.prune_input(m, x=x, active_inputs=[5])


def test_default_inputs_follow_first_grid():
    m = KAN([2, 1], grid_range=(0.0, 2.0), dtype=torch.float64)
    x = P.default_inputs(m, n=500)
    assert x.shape == (500, 2)
    assert float(x.min()) >= 0.0 and float(x.max()) <= 2.0
    with pytest.raises(UserError):
        P.node_scores(m, torch.zeros(4, 3))
