"""Tiny runs of ``rlhf rm``, ``rlhf dpo`` and ``longctx extend`` for the reliability tests:
in-process (reference and resumed runs) and as CLI subprocesses (Ctrl-C)."""

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
TINY_BASE = ROOT / "src/trainkit/longctx/assets/tiny_base"

# name -> (CLI words, config file, overrides shared by every run of the recipe)
RECIPES = {
    "rm": (
        ["rlhf", "rm"],
        ROOT / "configs/rlhf/rm_tiny.yaml",
        [
            "train.max_steps=16",
            "train.log_every=1",
            "train.progress=false",
            "data.generate_n=96",
            "data.generate_heldout=16",
        ],
    ),
    "dpo": (
        ["rlhf", "dpo"],
        ROOT / "configs/rlhf/dpo_tiny.yaml",
        [
            "train.max_steps=16",
            "train.log_every=1",
            "train.progress=false",
            "eval.every=0",
            "eval.generate=false",
        ],
    ),
    "extend": (
        ["longctx", "extend"],
        ROOT / "configs/longctx/tiny_8x.yaml",
        [
            f"model.name={TINY_BASE}",
            "data.max_length=96",
            "data.min_length=64",
            "train.batch_size=2",
            "train.max_steps=16",
            "train.log_every=1",
        ],
    ),
}


def recipe_cfg(name: str, out, *over):
    """The recipe's config with the shared overrides and ``output_dir=out``."""
    from trainkit.config import load_config
    from trainkit.longctx.recipe import ExtendConfig
    from trainkit.rlhf.trainers.dpo import DPOConfig
    from trainkit.rlhf.trainers.rm import RMConfig

    cls = {"rm": RMConfig, "dpo": DPOConfig, "extend": ExtendConfig}[name]
    _, path, base = RECIPES[name]
    return load_config(cls, str(path), [*base, f"output_dir={out}", *over])


def run_recipe(name: str, out, *over, on_model=None) -> dict:
    """Run the recipe in this process; returns its summary / report."""
    cfg = recipe_cfg(name, out, *over)
    if name == "rm":
        from trainkit.rlhf.trainers.rm import train_rm

        return train_rm(cfg, on_model=on_model)
    if name == "dpo":
        from trainkit.rlhf.trainers.dpo import train_dpo

        return train_dpo(cfg, on_model=on_model)
    from trainkit.longctx.recipe import extend

    return extend(cfg, log=None)[2]


def final_file(name: str, out) -> Path:
    """The saved final model's safetensors file."""
    return Path(out) / ("model.safetensors" if name == "extend" else "model/model.safetensors")


def final_weights(name: str, out) -> dict:
    from safetensors.torch import load_file

    return load_file(str(final_file(name, out)))


class Child:
    """The recipe's CLI as a child process; stdout lines are collected as they come."""

    def __init__(self, name: str, out, *over):
        words, path, base = RECIPES[name]
        cmd = [sys.executable, "-m", "trainkit.cli", *words, "--config", str(path)]
        cmd += [*base, f"output_dir={out}", *over]
        env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
        self.name, self.out, self.lines = name, Path(out), []
        self.proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line)

    def reached(self, step: int) -> bool:
        """Training step ``step`` is done (metrics.jsonl for rm/dpo, stdout for extend)."""
        tag = f'"step": {step},'
        if self.name == "extend":
            return any(line.startswith("{") and tag in line for line in list(self.lines))
        m = self.out / "metrics.jsonl"
        return m.is_file() and tag in m.read_text()

    def wait_for_step(self, step: int, timeout: float = 180) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.reached(step):
                return
            if self.proc.poll() is not None:
                raise AssertionError(f"child ended early: {self.proc.returncode}\n{self.stderr()}")
            time.sleep(0.01)
        self.proc.kill()
        raise AssertionError(f"step {step} not reached in {timeout} s")

    def wait(self, timeout: float = 180) -> int:
        rc = self.proc.wait(timeout=timeout)
        self._reader.join(timeout=10)
        return rc

    def stderr(self) -> str:
        return self.proc.stderr.read()
