"""Crash safety: SIGKILL the SFT CLI at random points, then resume.

After every kill the newest checkpoint loads (safetensors + ``weights_only`` .pt files,
step matching its folder name) and ``resume=true`` reaches the same final weights as
an uninterrupted run (max abs difference <= 1e-6; in practice 0 on CPU). The fast
variant kills the moment a checkpoint's temporary folder appears, i.e. mid-write.
"""

import json
import random
import signal
import time

import pytest
from sft_helpers import final_weights, max_abs_diff, sft_cfg, start_sft, wait_for_step

from trainkit.llm import checkpoint as ckpt


def _check_latest_loads(out) -> int:
    """The newest checkpoint's files all load safely; returns its step (0: none)."""
    from safetensors.torch import load_file

    last = ckpt.latest_checkpoint(out / "checkpoints")
    if last is None:
        return 0
    step = json.loads((last / "trainer_state.json").read_text())["step"]
    assert last.name == f"step-{step:06d}"
    assert load_file(str(last / "model.safetensors"))
    for name in ("optimizer.pt", "scheduler.pt", "rng.pt"):
        assert ckpt._load_pt(last / name) is not None
    return step


def _kill_resume(out, after_step, when, reference) -> dict:
    """Start, SIGKILL ``when`` s after ``after_step`` is logged, check, resume, compare.

    The child must still be running at the kill and must die of that SIGKILL (a child
    that had already finished would make the resume check meaningless).
    """
    from trainkit.llm.sft import train

    proc = start_sft(out, "train.save_every=1")
    wait_for_step(out, after_step, proc)
    time.sleep(when)
    assert proc.poll() is None, f"the child ended before the kill: {proc.returncode}"
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.returncode
    root = out / "checkpoints"  # absent when the kill came before the first save began
    leftovers = [p.name for p in root.iterdir() if p.name.startswith(".")] if root.is_dir() else []
    step = _check_latest_loads(out)
    train(sft_cfg(out, "train.save_every=1", "train.resume=true"))
    diff = max_abs_diff(final_weights(out), reference)
    assert diff <= 1e-6, (when, step, diff)
    return {
        "killed_after_step": after_step,
        "killed_after_s": when,
        "resumed_from": step,
        "leftovers": leftovers,
        "diff": diff,
    }


def test_sigkill_while_saving_then_resume_matches(tmp_path, reference_run):
    from trainkit.llm.sft import train

    out = tmp_path / "run"
    proc = start_sft(out, "train.save_every=1")
    wait_for_step(out, 2, proc)
    root, deadline = out / "checkpoints", time.monotonic() + 60
    while not any(p.name.endswith(".tmp") for p in root.iterdir()):  # a save has begun
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.001)
    proc.kill()
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert any(p.name.startswith(".") for p in root.iterdir())  # killed mid-write
    step = _check_latest_loads(out)
    assert 1 <= step <= 7  # the save in flight is not visible; an older one is
    train(sft_cfg(out, "train.save_every=1", "train.resume=true"))
    assert max_abs_diff(final_weights(out), reference_run[1]) <= 1e-6
    names = [p.name for p in (out / "checkpoints").iterdir()]
    assert names and all(n.startswith("step-") for n in names)  # leftovers cleaned up


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(6))
def test_sigkill_at_random_points_then_resume_matches(tmp_path, reference_run, seed):
    # a random point inside the 8-step run: after step 1..6 is logged, plus up to ~half a
    # step (a step with its save takes ~0.4-0.6 s here), so steps remain when it dies
    rng = random.Random(seed)
    after_step, when = rng.randint(1, 6), rng.uniform(0.0, 0.25)
    res = _kill_resume(tmp_path / "run", after_step, when, reference_run[1])
    print("sigkill", seed, res)
