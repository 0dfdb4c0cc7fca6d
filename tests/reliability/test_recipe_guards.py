"""Ctrl-C and non-finite steps in ``rlhf rm``, ``rlhf dpo`` and ``longctx extend``.

All three use :mod:`trainkit.llm.train_control` with the SFT semantics: the first SIGINT
finishes the step, saves a checkpoint and exits with 130 (no final model); ``resume=true``
reaches the weights of an uninterrupted run. A NaN/inf loss or gradient never reaches the
weights: ``train.nonfinite=skip`` drops and counts the step, ``train.max_nonfinite`` in a
row (or the first one with ``stop``) end the run with one error line and exit code 2.
"""

import json
import signal

import pytest
import torch
from recipe_helpers import Child, final_file, final_weights, recipe_cfg, run_recipe
from sft_helpers import max_abs_diff

from tiny_rl import TINY_GRPO
from trainkit.llm import checkpoint as ckpt

NAMES = ["rm", "dpo", "extend"]
MAX_STEPS = 16  # recipe_helpers.RECIPES


@pytest.fixture(scope="module")
def references(tmp_path_factory):
    """Uninterrupted runs of each recipe: name -> final weights."""
    return {n: final_weights(n, _ref_run(tmp_path_factory, n)) for n in NAMES}


def _ref_run(factory, name):
    out = factory.mktemp(f"ref-{name}")
    run_recipe(name, out)
    return out


@pytest.mark.parametrize("name", NAMES)
def test_sigint_checkpoints_exits_130_and_resume_matches(tmp_path, references, name):
    out = tmp_path / "run"
    child = Child(name, out)
    child.wait_for_step(2)
    child.proc.send_signal(signal.SIGINT)
    rc = child.wait()
    err = child.stderr()
    assert rc == 130, err
    assert "Traceback" not in err
    assert f"{name}: interrupted after step" in err and "resume=true" in err
    last = ckpt.latest_checkpoint(out / "checkpoints")
    assert last is not None, err  # save_every=0: the interrupt wrote it
    stopped = int(last.name.split("-")[1])
    assert 2 <= stopped < MAX_STEPS
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["step"] == stopped and state["nonfinite_skipped"] == 0
    assert not final_file(name, out).exists()  # an unfinished run writes no model
    assert not (out / "summary.json").exists() and not (out / "trainkit_extend.json").exists()

    rep = run_recipe(name, out, "train.resume=true")
    assert not rep["interrupted"]
    if name == "extend":
        assert rep["steps"] == MAX_STEPS and len(rep["losses"]) == MAX_STEPS
        assert not (out / "checkpoints").exists()  # the final model replaced the folder
    else:
        recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        train_steps = [r["step"] for r in recs if "loss" in r]
        assert train_steps == list(range(1, stopped + 1)) + list(range(stopped + 1, MAX_STEPS + 1))
    diff = max_abs_diff(final_weights(name, out), references[name])
    print(f"{name}: SIGINT after step {stopped}; resumed; max abs weight difference {diff}")
    assert diff <= 1e-6


# ------------------------------------------------------------------ NaN injection
class _Inject:
    """Snapshot the trainable weights at the start of each training step and corrupt
    chosen steps: ``kind="loss"`` makes the loss NaN, ``"grad"`` only the gradients."""

    def __init__(self, bad: set[int], kind: str = "loss"):
        self.bad, self.kind = bad, kind
        self.step, self.snaps, self.model = 0, {}, None

    def begin(self, model) -> bool:
        """Called once per training step, before the update; True: corrupt this one."""
        self.step += 1
        self.snaps[self.step] = {
            n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad
        }
        return self.step in self.bad

    def corrupt(self, loss):
        if self.kind == "loss":
            return loss * float("nan")
        return _NanGrad.apply(loss)  # finite loss, NaN gradients


class _NanGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("nan")


def _patch(monkeypatch, name: str, inj: _Inject) -> None:
    if name == "rm":
        import trainkit.rlhf.losses as L

        orig = L.pairwise_rm_loss

        def rm_loss(c, r, m=None):
            loss = orig(c, r, m)
            return inj.corrupt(loss) if inj.begin(inj.model) else loss

        monkeypatch.setattr(L, "pairwise_rm_loss", rm_loss)
    elif name == "dpo":
        import trainkit.rlhf.losses as L

        orig = L.dpo_loss

        def dpo_loss(*a, **k):
            loss, cr, rr = orig(*a, **k)
            return (inj.corrupt(loss) if inj.begin(inj.model) else loss), cr, rr

        monkeypatch.setattr(L, "dpo_loss", dpo_loss)
    else:
        from trainkit.llm.loss import CausalLMLoss

        orig = CausalLMLoss.forward

        def forward(self, *a, **k):
            ls, n = orig(self, *a, **k)
            if self.training and inj.begin(self.model):
                ls = inj.corrupt(ls)
            return ls, n

        monkeypatch.setattr(CausalLMLoss, "forward", forward)


@pytest.mark.parametrize(("name", "kind"), [("rm", "loss"), ("dpo", "grad"), ("extend", "loss")])
def test_nonfinite_steps_are_skipped_counted_and_leave_weights_untouched(
    tmp_path, monkeypatch, name, kind
):
    inj = _Inject({2, 3}, kind)
    _patch(monkeypatch, name, inj)
    on_model = None if name == "extend" else (lambda m: setattr(inj, "model", m))
    rep = run_recipe(name, tmp_path / "a", "train.max_steps=5", on_model=on_model)
    assert rep["nonfinite_skipped"] == 2 and inj.step == 5
    s = inj.snaps
    # steps 2 and 3 did not move a single weight; steps 1 and 4 did
    assert all(torch.equal(s[2][n], s[3][n]) and torch.equal(s[2][n], s[4][n]) for n in s[2])
    assert any(not torch.equal(s[1][n], s[2][n]) for n in s[1])
    assert any(not torch.equal(s[4][n], s[5][n]) for n in s[4])
    assert all(torch.isfinite(v).all() for v in final_weights(name, tmp_path / "a").values())
    if name == "extend":
        lossy = [v != v for v in rep["losses"]]  # NaN != NaN
        assert lossy == [False, True, True, False, False]
    else:
        recs = [json.loads(x) for x in (tmp_path / "a/metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in recs if r.get("skipped")] == [2, 3]
        assert [r["nonfinite_skipped"] for r in recs if r["step"] == 5 and "loss" in r] == [2]


@pytest.mark.parametrize(
    ("name", "policy", "bad_from", "stop_at", "over"),
    [
        ("rm", "skip", 3, 4, ["train.max_nonfinite=2", "train.save_every=1"]),
        ("dpo", "stop", 3, 3, ["train.save_every=2"]),
        ("extend", "skip", 2, 4, ["train.max_nonfinite=3"]),
    ],
)
def test_nonfinite_run_stops_with_one_line_and_exit_2(
    tmp_path, monkeypatch, capsys, name, policy, bad_from, stop_at, over
):
    from recipe_helpers import RECIPES

    from trainkit.cli import main

    inj = _Inject(set(range(bad_from, 99)), "grad" if name == "dpo" else "loss")
    _patch(monkeypatch, name, inj)
    if name != "extend":  # the patched loss needs the model: take it from the loader
        _hold_model(monkeypatch, name, inj)
    words, path, base = RECIPES[name]
    out = tmp_path / "run"
    argv = [*words, "--config", str(path), *base, f"output_dir={out}", "train.max_steps=8"]
    assert main([*argv, f"train.nonfinite={policy}", *over]) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("trainkit:")]
    assert len(err) == 1 and err[0].startswith("trainkit: error: non-finite"), err
    assert f"at step {stop_at} " in err[0]
    last = ckpt.latest_checkpoint(out / "checkpoints")
    if name == "extend":  # save_every=0: no checkpoint, and the message says so
        assert last is None and err[0].endswith("last checkpoint: none")
    else:  # the newest checkpoint is the last good step and loads safely
        good = stop_at - 1 if name == "rm" else 2
        assert last.name == f"step-{good:06d}" and str(last) in err[0]
        assert ckpt._load_pt(last / "optimizer.pt")
    assert not final_file(name, out).exists()


def _hold_model(monkeypatch, name, inj) -> None:
    if name == "rm":
        import trainkit.rlhf.trainers.rm as mod

        orig = mod.build_model
        monkeypatch.setattr(mod, "build_model", lambda cfg: _keep(orig(cfg), inj))
    else:
        import trainkit.rlhf.trainers.dpo as mod

        orig = mod.build_policy
        monkeypatch.setattr(mod, "build_policy", lambda cfg: _keep(orig(cfg), inj))


def _keep(result, inj):
    inj.model = result[0]
    return result


def test_safety_keys_are_checked():
    from trainkit.common.errors import UserError

    for name in NAMES:
        with pytest.raises(UserError, match="train.max_nonfinite must be >= 1, got 0"):
            recipe_cfg(name, "x", "train.max_nonfinite=0")
        with pytest.raises(UserError, match="train.save_every must be >= 0, got -1"):
            recipe_cfg(name, "x", "train.save_every=-1")


def test_rl_sigint_saves_checkpoint_returns_130_and_resumes(tmp_path, monkeypatch, capsys):
    """``rlhf grpo``: a real SIGINT (sent to this process after step 1) -> checkpoint,
    no final eval or model, exit code 130; ``train.resume=true`` finishes the run."""
    import os

    from trainkit.config import load_config
    from trainkit.rlhf.trainers import ppo
    from trainkit.rlhf.trainers.rl_config import GRPOConfig

    over = [
        *TINY_GRPO,
        "train.max_steps=4",
        f"output_dir={tmp_path / 'rl'}",
    ]
    cfg = load_config(GRPOConfig, None, over)
    orig = ppo.train

    def sigint_after_step_1(rec):
        if rec["step"] == 1 and "loss" in rec:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(ppo, "train", lambda c: orig(c, on_log=sigint_after_step_1))
    assert ppo.run_cli(cfg) == 130
    err = capsys.readouterr().err
    assert "rl: interrupted after step 1;" in err and "resume=true" in err
    out = tmp_path / "rl"
    assert ckpt.latest_checkpoint(out / "checkpoints").name == "step-000001"
    assert not (out / "final").exists()  # an interrupted run writes no final model
    summary = json.loads((out / "summary.json").read_text())
    assert summary["interrupted"] and summary["steps"] == 1
    resumed = orig(load_config(GRPOConfig, None, [*over, "train.resume=true"]))
    assert not resumed["interrupted"] and resumed["steps"] == 4
    assert (out / "final").is_dir()
