"""Tiny SFT runs for the reliability tests: in-process and as subprocesses."""

import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY = str(ROOT / "configs/rlhf/sft_tiny.yaml")
# one reference schedule for every interrupt/kill test: 8 steps, no mid-run eval
OVER = ["train.max_steps=8", "train.eval_every=0"]


def sft_cfg(out, *over):
    """The tiny SFT config with ``output_dir=out`` and the shared overrides."""
    from trainkit.config import load_config
    from trainkit.llm.sft import SFTConfig

    return load_config(SFTConfig, TINY, [f"output_dir={out}", *OVER, *over])


def final_weights(out) -> dict:
    """The saved final model's tensors."""
    from safetensors.torch import load_file

    return load_file(str(Path(out) / "final" / "model.safetensors"))


def max_abs_diff(a: dict, b: dict) -> float:
    assert set(a) == set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def start_sft(out, *over, nproc: int = 1) -> subprocess.Popen:
    """``trainkit rlhf sft`` on the tiny config as a child process (own session); with
    ``nproc > 1`` under ``torchrun --standalone`` with that many worker processes."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable]
    if nproc > 1:
        cmd += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    cmd += ["-m", "trainkit.cli", "rlhf", "sft", "--config", TINY]
    cmd += [f"output_dir={out}", *OVER, *over]
    return subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def wait_for_step(out, step: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    """Block until ``metrics.jsonl`` records ``step`` (fails if the child ends first)."""
    path = Path(out) / "metrics.jsonl"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if path.is_file() and f'"step": {step},' in path.read_text():
            return
        if proc.poll() is not None:
            raise AssertionError(f"child ended early: {proc.returncode}\n{proc.stderr.read()}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"step {step} not reached in {timeout} s")
