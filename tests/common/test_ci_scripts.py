"""scripts/test_vllm.sh: a vLLM environment that cannot be built fails CI, skips elsewhere."""

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(tmp_path, ci: str | None):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    # a venv that cannot be created: PYTHON is a program that always fails
    env.update(VLLM_VENV=str(tmp_path / "no-venv"), PYTHON="false")
    if ci is not None:
        env["CI"] = ci
    return subprocess.run(
        ["bash", str(ROOT / "scripts" / "test_vllm.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_unbuildable_vllm_env_fails_under_ci(tmp_path):
    p = _run(tmp_path, "true")
    assert p.returncode == 1, p.stdout + p.stderr
    assert p.stdout.startswith("FAIL vllm tests: could not build")


def test_unbuildable_vllm_env_skips_outside_ci(tmp_path):
    p = _run(tmp_path, None)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.startswith("SKIP vllm tests: could not build")
