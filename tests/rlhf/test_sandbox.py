"""The code sandbox: limits hold, and one bad sample fails only itself."""

import os
import sys
import textwrap

import pytest

from trainkit.rlhf.rewards import score
from trainkit.rlhf.sandbox import SandboxedReward, code_tests_reward, extract_code, run_python

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sandbox")


def test_ok_program_and_stdin():
    r = run_python("import sys\nprint(int(sys.stdin.read()) * 2)", stdin="21", timeout=5)
    assert r.ok and r.returncode == 0 and r.stdout == "42\n" and r.error is None


@pytest.mark.parametrize(
    "code,reason",
    [
        ("raise ValueError('boom')", "exit code 1: ValueError: boom"),
        ("import os; os._exit(3)", "exit code 3"),
        ("import os; os.abort()", "killed by SIGABRT"),
        ("x = bytearray(3_000_000_000)", "exit code 1: MemoryError"),
        ("import ctypes", "exit code 1: ModuleNotFoundError"),
    ],
)
def test_failures_are_reported(code, reason):
    r = run_python(code, timeout=5, memory_mb=256)
    assert not r.ok and not r.timed_out
    assert r.error.startswith(reason), r.error


def test_timeout_kills_the_whole_group():
    marker = "sleep 9" + str(os.getpid() % 1000)  # a unique command line to look for
    code = f"import subprocess, time\nsubprocess.Popen(['sh', '-c', '{marker}'])\ntime.sleep(60)"
    r = run_python(code, timeout=1.0)
    assert r.timed_out and not r.ok and r.error == "timed out after 1 s"
    assert r.seconds < 5
    import subprocess

    left = subprocess.run(["pgrep", "-f", marker], capture_output=True, text=True).stdout
    assert left.strip() == "", f"spawned process survived: {left}"


def test_no_network():
    code = textwrap.dedent("""
        import socket
        try:
            socket.create_connection(("127.0.0.1", 9), timeout=1)
        except PermissionError as e:
            print("blocked:", e)
        try:
            socket.socket()
        except PermissionError:
            print("socket blocked")
    """)
    r = run_python(code, timeout=5)
    assert r.ok, r.error
    assert "blocked: network access is disabled" in r.stdout and "socket blocked" in r.stdout


def test_output_limit():
    r = run_python("print('x' * 5_000_000)", timeout=5, max_output=10_000)
    assert not r.ok and len(r.stdout) <= 10_000


def test_code_tests_reward():
    f = code_tests_reward(timeout=1.0)
    good = "Here:\n```python\ndef add(a, b):\n    return a + b\n```"
    bad = "```python\ndef add(a, b):\n    return a - b\n```"
    hang = "```python\ndef add(a, b):\n    while True: pass\n```"
    tests = "assert add(2, 3) == 5"
    assert f(["p"] * 3, [good, bad, hang], tests=[tests] * 3) == [1.0, 0.0, 0.0]
    assert extract_code("no fence") == "no fence"


def test_sandboxed_reward_isolates_bad_samples(tmp_path):
    src = textwrap.dedent("""
        import time
        def rw(prompts, completions, **labels):
            c = completions[0]
            if c == "hang":
                time.sleep(100)
            if c == "crash":
                import os; os.abort()
            if c == "nan":
                return [float("nan")]
            return [float(len(c)) + labels["bonus"][0]]
    """)
    (tmp_path / "rw.py").write_text(src)
    f = SandboxedReward(f"{tmp_path}/rw.py:rw", timeout=1.5, memory_mb=512, max_workers=2)
    comps = ["ab", "hang", "crash", "nan", "abcd"]
    res = score(f, ["p"] * 5, comps, {"bonus": [10] * 5}, max_invalid_fraction=1.0)
    assert res.rewards == [12.0, 0.0, 0.0, 0.0, 14.0]
    assert res.valid == [True, False, False, False, True]
    assert res.errors[1] == "timed out after 1.5 s"
    assert res.errors[2] == "killed by SIGABRT"
    assert res.errors[3] == "non-finite reward nan"
    assert res.stats() == {"reward_invalid": 3, "reward_nan": 1, "reward_raised": 2}
