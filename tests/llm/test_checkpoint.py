"""Checkpoints: weights, optimizer, scheduler, RNG, rotation, mismatch errors."""

import pytest
import torch

from trainkit.common.errors import UserError
from trainkit.llm import checkpoint as ckpt
from trainkit.llm.strategy import make_strategy


def _setup(seed):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    m[0].weight.requires_grad_(False)  # frozen parameters are not stored
    opt = torch.optim.AdamW([p for p in m.parameters() if p.requires_grad], lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (s + 1))
    return m, opt, sched


def _step(m, opt, sched):
    m(torch.randn(5, 3)).pow(2).mean().backward()
    opt.step()
    opt.zero_grad()
    sched.step()


def test_roundtrip_rotation_and_rng(tmp_path):
    s = make_strategy("single", device="cpu")
    s.setup()
    m, opt, sched = _setup(0)
    for step in (1, 2, 3):
        _step(m, opt, sched)
        ckpt.save_checkpoint(
            tmp_path, step, s, m, opt, sched, {"epoch": 0, "index": step}, keep_last=2
        )
    assert [st for st, _ in ckpt.list_checkpoints(tmp_path)] == [2, 3]
    assert sorted(p.name for p in (tmp_path / "step-000003").iterdir()) == [
        "model.safetensors",
        "optimizer.pt",
        "rng.pt",
        "scheduler.pt",
        "trainer_state.json",
    ]
    expect_next = torch.rand(3)  # drawn right after the step-3 save
    _step(m, opt, sched)
    after_one_more = [p.detach().clone() for p in m.parameters()]

    m2, opt2, sched2 = _setup(1)  # different init; frozen weight must match the base
    m2[0].weight.data.copy_(m[0].weight.data)
    state = ckpt.load_checkpoint(ckpt.latest_checkpoint(tmp_path), s, m2, opt2, sched2)
    assert state["step"] == 3 and state["data"] == {"epoch": 0, "index": 3}
    assert torch.equal(torch.rand(3), expect_next)
    assert sched2.last_epoch == 3 and sched2.get_last_lr()[0] == pytest.approx(0.1 / 4)
    _step(m2, opt2, sched2)  # same batch (RNG restored) and optimizer moments -> same weights
    for a, b in zip(after_one_more, m2.parameters()):
        assert torch.equal(a, b)


def test_load_mismatch_is_user_error(tmp_path):
    s = make_strategy("single", device="cpu")
    s.setup()
    m, opt, sched = _setup(0)
    ckpt.save_checkpoint(tmp_path, 1, s, m, opt, sched)
    other = torch.nn.Linear(3, 3)
    opt2 = torch.optim.AdamW(other.parameters())
    with pytest.raises(UserError, match="do not match"):
        ckpt.load_checkpoint(tmp_path / "step-000001", s, other, opt2)
    with pytest.raises(UserError, match="not a trainkit checkpoint"):
        ckpt.load_checkpoint(tmp_path, s, other, opt2)
    with pytest.raises(UserError, match="must be one of"):
        make_strategy("deepspeed")


def test_epoch_order_covers_each_epoch_and_resumes_exactly():
    import json

    from trainkit.llm.train_control import EpochOrder

    a = EpochOrder(5, seed=3)
    first = [a.take(2) for _ in range(5)]  # 10 indices = two whole epochs
    assert sorted(sum(first[:2], []) + first[2][:1]) == [0, 1, 2, 3, 4]
    assert sorted(first[2][1:] + sum(first[3:], [])) == [0, 1, 2, 3, 4]
    saved = json.loads(json.dumps(a.state()))  # what a checkpoint keeps
    b = EpochOrder(5, seed=99, state=saved)
    assert [b.take(2) for _ in range(7)] == [a.take(2) for _ in range(7)]
