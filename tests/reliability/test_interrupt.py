"""Ctrl-C and non-finite steps in the SFT loop (``trainkit rlhf sft``).

The first SIGINT finishes the step, saves a checkpoint and exits with code 130;
``train.resume=true`` then reaches the same final weights as an uninterrupted run. A NaN loss
is skipped and counted (``train.nonfinite=skip``) without touching the weights, and
training stops with a one-line error after ``train.max_nonfinite`` in a row.
"""

import os
import signal

import torch
from sft_helpers import TINY, final_weights, max_abs_diff, sft_cfg, start_sft, wait_for_step

from trainkit.llm import checkpoint as ckpt


def test_sigint_saves_checkpoint_exits_130_and_resume_matches(tmp_path, reference_run):
    from trainkit.llm.sft import train

    out = tmp_path / "run"
    proc = start_sft(out, "train.save_every=0")
    wait_for_step(out, 1, proc)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert "interrupted after step" in err and "resume=true" in err
    last = ckpt.latest_checkpoint(out / "checkpoints")
    assert last is not None
    stopped = int(last.name.split("-")[1])
    assert 1 <= stopped < 8  # a checkpoint although save_every=0: the interrupt saved it
    assert not (out / "final").exists()  # an unfinished run writes no final model
    res = train(sft_cfg(out, "train.save_every=0", "train.resume=true"))
    assert res["records"][0]["step"] == stopped + 1 and res["step"] == 8
    assert max_abs_diff(final_weights(out), reference_run[1]) <= 1e-6


def _inject_nan(monkeypatch, bad_steps: set[int], accum: int = 2) -> None:
    """Make the training loss NaN at the given (1-based) optimizer steps."""
    from trainkit.llm.loss import CausalLMLoss

    orig, calls = CausalLMLoss.forward, [0]

    def forward(self, *a, **k):
        ls, n = orig(self, *a, **k)
        if self.training:
            calls[0] += 1
            if (calls[0] - 1) // accum + 1 in bad_steps:
                ls = ls * float("nan")
        return ls, n

    monkeypatch.setattr(CausalLMLoss, "forward", forward)


def test_nan_steps_are_skipped_counted_and_leave_weights_untouched(tmp_path, monkeypatch):
    from trainkit.llm.sft import train
    from trainkit.llm.strategy import Strategy

    _inject_nan(monkeypatch, {2, 3})
    held, snaps, wrap = {}, {}, Strategy.wrap

    def keep(self, module):  # remember the training module to snapshot its weights
        held["m"] = wrap(self, module)
        return held["m"]

    def snap(step, rec):
        snaps[step] = {n: p.detach().clone() for n, p in held["m"].named_parameters()}

    monkeypatch.setattr(Strategy, "wrap", keep)
    res = train(sft_cfg(tmp_path / "a", "train.max_steps=4", "train.save_every=0"), on_step=snap)
    recs = {r["step"]: r for r in res["records"]}
    assert [s for s, r in recs.items() if r.get("skipped")] == [2, 3]
    assert res["nonfinite_skipped"] == 2 and recs[4]["nonfinite_skipped"] == 2
    assert all(torch.isfinite(torch.tensor(recs[s]["loss"])) for s in (1, 4))
    # the skipped steps did not move a single weight; the next good step did
    assert all(torch.equal(snaps[1][n], snaps[3][n]) for n in snaps[1])
    assert any(not torch.equal(snaps[3][n], snaps[4][n]) for n in snaps[3])
    assert all(torch.isfinite(v).all() for v in final_weights(tmp_path / "a").values())


def test_nan_stops_with_one_line_error(tmp_path, monkeypatch, capsys):
    """NaN from step 3 on, ``max_nonfinite=2``: stops at step 4 (``stop`` policy: test_guard)."""
    policy, bad, stop_at = "skip", set(range(3, 99)), 4
    from trainkit.cli import main

    _inject_nan(monkeypatch, bad)
    out = tmp_path / "run"
    argv = ["rlhf", "sft", "--config", TINY, f"output_dir={out}"]
    argv += ["train.max_steps=8", "train.eval_every=0", "train.save_every=1"]
    argv += [f"train.nonfinite={policy}", "train.max_nonfinite=2"]
    assert main(argv) == 2
    err = [x for x in capsys.readouterr().err.splitlines() if x.startswith("trainkit:")]
    assert len(err) == 1 and err[0].startswith("trainkit: error: non-finite")
    assert f"at step {stop_at} " in err[0]
    # the newest checkpoint is the last good step, and it loads safely
    last = ckpt.latest_checkpoint(out / "checkpoints")
    assert last.name == f"step-{stop_at - 1:06d}"
    assert ckpt._load_pt(last / "optimizer.pt")
    assert not (out / "final").exists()


def _worker_pid(launcher_pid: int, local_rank: int) -> int:
    """The pid of the torchrun worker with ``LOCAL_RANK=local_rank`` under ``launcher_pid``."""
    from pathlib import Path

    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            env = (d / "environ").read_bytes().split(b"\0")
        except (OSError, IndexError, ValueError):
            continue
        if ppid == launcher_pid and f"LOCAL_RANK={local_rank}".encode() in env:
            return int(d.name)
    raise AssertionError(f"no worker with LOCAL_RANK={local_rank} under pid {launcher_pid}")


# a 2-process FSDP2 run of the tiny SFT config, 4 rows per step, one row per micro-batch
FSDP2 = ["train.strategy=fsdp2", "train.batch_size=4", "train.micro_batch_size=1"]


def test_sigint_to_one_fsdp2_rank_stops_every_rank_after_the_same_step(tmp_path):
    """Ctrl-C reaching only rank 1 of a 2-process FSDP2 run: rank 0 (which logs and never
    saw the signal) stops after the same step, one checkpoint of both ranks is written, and
    train.resume=true finishes with the losses of the uninterrupted single-process run."""
    import json

    from trainkit.llm.sft import train

    out = tmp_path / "fsdp"
    proc = start_sft(out, *FSDP2, "train.save_every=0", nproc=2)
    wait_for_step(out, 1, proc, timeout=300)
    os.kill(_worker_pid(proc.pid, 1), signal.SIGINT)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode != 0  # the workers exit 130; torchrun reports them as failed
    assert "interrupted after step" in err and "resume=true" in err, err[-3000:]
    last = ckpt.latest_checkpoint(out / "checkpoints")
    assert last is not None
    stopped = int(last.name.split("-")[1])
    assert 1 <= stopped < 8
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["world_size"] == 2  # both ranks' RNG states went into the checkpoint
    assert len(torch.load(last / "rng.pt", weights_only=False)) == 2
    logged = [json.loads(x)["step"] for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(logged) == stopped  # rank 0 stopped after the step rank 1 was told to
    assert not (out / "final").exists()

    resumed = start_sft(out, *FSDP2, "train.save_every=0", "train.resume=true", nproc=2)
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err[-3000:]
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    after = {r["step"]: r["loss"] for r in recs if r["step"] > stopped}
    assert sorted(after) == list(range(stopped + 1, 9))
    single = train(sft_cfg(tmp_path / "single", "train.batch_size=4", "train.micro_batch_size=2"))
    ref = {r["step"]: r["loss"] for r in single["records"]}
    assert max(abs(after[s] - ref[s]) for s in after) < 1e-4
