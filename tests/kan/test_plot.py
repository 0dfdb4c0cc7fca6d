"""Headless network and edge plots (trainkit.kan.plot)."""

import math

import pytest
import torch

from trainkit.common.errors import UserError
from trainkit.kan import KAN
from trainkit.kan import plot as PL
from trainkit.kan import symbolic as S

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_png(path, min_bytes=10_000):
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC
    assert len(data) > min_bytes
    img = imread(str(path))  # [H, W, 4] floats in [0, 1]
    assert img.shape[0] > 200 and img.shape[1] > 300
    gray = img[..., :3].mean(-1)
    assert float(gray.std()) > 0.02  # not a blank canvas
    assert float((gray < 0.5).mean()) > 0.002  # some dark ink: curves, nodes, labels
    return img


def test_plot_network_png(tmp_path):
    m = KAN([2, 5, 1], grid=5, seed=0, dtype=torch.float64)
    S.fix_symbolic(m, 0, 0, 0, "sin", fit_params=False)
    with torch.no_grad():
        m.layers[0].mask[3, 1] = 0.0  # a pruned edge is not drawn
    fig = PL.plot(m, tmp_path / "net.png", in_vars=["x", "y"], out_vars=["f"], beta=3, title="t")
    _check_png(tmp_path / "net.png")
    # 10 - 1 alive edges in layer 0, 5 in layer 1, plus the canvas axes
    assert len(fig.axes) == 1 + 9 + 5
    assert not list(tmp_path.glob(".*"))  # no temporary file left behind


def test_plot_multiplication_nodes_and_no_path(tmp_path):
    m = KAN([2, [1, 1], 1], grid=3, seed=1, dtype=torch.float64)
    fig = PL.plot(m)  # returns a figure, writes nothing
    assert len(fig.axes) == 1 + 6 + 2
    assert not list(tmp_path.iterdir())
    PL.plot(m, tmp_path / "sub" / "mult.png", beta=10)
    _check_png(tmp_path / "sub" / "mult.png")


def test_plot_edge_spline_and_symbolic(tmp_path):
    m = KAN([1, 1], grid=5, seed=0, dtype=torch.float64)
    fig = PL.plot_edge(m, 0, 0, 0, tmp_path / "e.png")
    _check_png(tmp_path / "e.png", min_bytes=5_000)
    assert "spline, G=5" in fig.axes[0].get_title()
    S.fix_symbolic(m, 0, 0, 0, "sin", fit_params=False)
    with torch.no_grad():
        m.layers[0].sym_affine[0, 0] = torch.tensor([math.pi, 0.0, 1.0, 0.0], dtype=torch.float64)
    fig = PL.plot_edge(m, 0, 0, 0, tmp_path / "s.png")
    assert "sin(3.14 x" in fig.axes[0].get_title()
    line = fig.axes[0].lines[0]
    xs, ys = line.get_xdata(), line.get_ydata()
    assert max(abs(float(y) - math.sin(math.pi * float(x))) for x, y in zip(xs, ys)) < 1e-9


def test_plot_errors():
    m = KAN([2, 1], dtype=torch.float64)
    with pytest.raises(UserError):
        PL.plot(m, in_vars=["a"])
    with pytest.raises(UserError):
        PL.plot_edge(m, 0, 5, 0)
