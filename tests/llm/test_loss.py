"""Chunked cross-entropy: literal values, equality with the plain loss, model wrapper."""

import math

import pytest
import torch

from trainkit.llm.loss import (
    CausalLMLoss,
    chunked_cross_entropy,
    plain_cross_entropy,
    shift_targets,
)


def test_literal_values_and_gradients():
    h = torch.tensor([[1.0, 0.0], [0.0, 1.0], [3.0, 3.0]], requires_grad=True)
    w = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], requires_grad=True)
    y = torch.tensor([0, 2, -100])
    loss, n = chunked_cross_entropy(h, w, y, chunk_size=1)
    lse = math.log(math.e + 2)  # logsumexp([1, 0, 0]) = 1.5514447139
    assert n.item() == 2
    assert loss.item() == pytest.approx((lse - 1) + lse, abs=1e-6)  # 2.1028894278
    loss.backward()
    p = [math.e / (math.e + 2), 1 / (math.e + 2), 1 / (math.e + 2)]  # softmax of row 0
    assert h.grad[0].tolist() == pytest.approx([p[0] - 1, p[1]], abs=1e-6)  # [-0.42388, 0.21194]
    assert h.grad[1].tolist() == pytest.approx([1 / (math.e + 2), math.e / (math.e + 2)], abs=1e-6)
    assert h.grad[2].tolist() == [0.0, 0.0]  # ignored row
    # dL/dW[2] = sum_i (p_i2 - [y_i = 2]) h_i = p[1] * h0 + (p[1] - 1) * h1
    assert w.grad[2].tolist() == pytest.approx([p[1], p[1] - 1], abs=1e-6)


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_chunked_equals_plain(chunk):
    g = torch.Generator().manual_seed(0)
    h = torch.randn(300, 16, generator=g, requires_grad=True)
    w = torch.randn(101, 16, generator=g, requires_grad=True)
    y = torch.randint(0, 101, (300,), generator=g)
    y[::7] = -100
    l1, n1 = plain_cross_entropy(h, w, y)
    g1 = torch.autograd.grad(l1 / n1, (h, w))
    l2, n2 = chunked_cross_entropy(h, w, y, chunk_size=chunk)
    g2 = torch.autograd.grad(l2 / n2, (h, w))
    assert n1.item() == n2.item() == 300 - 43
    assert abs((l1 / n1).item() - (l2 / n2).item()) < 1e-5
    assert torch.allclose(g1[0], g2[0], atol=1e-6) and torch.allclose(g1[1], g2[1], atol=1e-6)
    # without grad and with a frozen weight
    with torch.no_grad():
        l3, _ = chunked_cross_entropy(h, w, y, chunk_size=chunk)
    assert abs(l3.item() - l2.item()) < 1e-3
    l4, _ = chunked_cross_entropy(h, w.detach(), y, chunk_size=chunk)
    (gh,) = torch.autograd.grad(l4 / n2, (h,))
    assert torch.allclose(gh, g1[0], atol=1e-6)


def test_all_ignored_and_shift():
    h = torch.randn(4, 3, requires_grad=True)
    loss, n = chunked_cross_entropy(h, torch.randn(5, 3), torch.full((4,), -100))
    assert loss.item() == 0.0 and n.item() == 0
    assert shift_targets(torch.tensor([[5, 6, 7]])).tolist() == [[6, 7, -100]]


def test_causal_lm_wrapper_matches_hf_loss():
    from trainkit.llm.models import load_model

    model, _ = load_model("tiny-llama")
    ids = torch.randint(10, 1000, (2, 12), generator=torch.Generator().manual_seed(1))
    am = torch.ones_like(ids)
    am[1, 9:] = 0
    labels = ids.masked_fill(am == 0, -100)
    labels[:, :3] = -100
    ref = model(input_ids=ids, attention_mask=am, labels=labels).loss
    for chunk in (0, 5):
        ls, n = CausalLMLoss(model, chunk)(ids, am, labels)
        assert n.item() == 9 + 6  # labelled positions 3..11 and 3..8 (position 0 never a target)
        assert abs((ls / n).item() - ref.item()) < 1e-5


def test_causal_lm_wrapper_without_labels_masks_padding():
    """labels=None: the targets are the inputs, and padded positions carry no loss."""
    from trainkit.llm.models import load_model

    model, _ = load_model("tiny-llama")
    ids = torch.randint(10, 1000, (2, 12), generator=torch.Generator().manual_seed(2))
    am = torch.ones_like(ids)
    am[1, 7:] = 0  # row 1: 7 real tokens, then 5 padding
    ids[1, 7:] = 0  # padding ids, which must not be predicted
    explicit = ids.masked_fill(am == 0, -100)
    for chunk in (0, 5):
        ls, n = CausalLMLoss(model, chunk)(ids, am, None)
        ref, ref_n = CausalLMLoss(model, chunk)(ids, am, explicit)
        # targets are positions 1..11 of row 0 (11) and 1..6 of row 1 (6)
        assert n.item() == 11 + 6 == ref_n.item()
        assert abs(ls.item() - ref.item()) < 1e-4 * max(1.0, abs(ref.item()))
