"""Run untrusted, model-generated code (and the rewards that need it) in a subprocess.

Each run gets a fresh ``python -I`` process in a temporary directory with:

* a wall-clock **timeout** (the process group is killed; a CPU-time rlimit backs it up);
* a **memory** limit (``RLIMIT_AS``) and an output-size limit (``RLIMIT_FSIZE``: stdout
  and stderr go to files, so a print loop cannot fill the parent's memory);
* **no network**: on Linux the child enters new user, network and PID namespaces
  (``unshare``; no interface but a down loopback, and every process of the run dies
  with it); everywhere, ``socket`` creation and ``ctypes`` are disabled in Python before
  the user code runs;
* an empty environment (``-I``: no ``PYTHONPATH``, no user site) and ``HOME`` = the temp dir.

A hanging, crashing or memory-hungry sample fails only itself: the result says why.
This is isolation against accidents and sloppy generated code, not a security boundary
against a determined attacker (no seccomp, no filesystem jail): run hostile code in a
container.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

# The child's bootstrap. argv[1] is a JSON config. It limits itself, isolates itself,
# then runs main.py (mode "code") or calls a reward (mode "reward").
_BOOT = r"""
import json, os, resource, sys
cfg = json.loads(sys.argv[1])
mb = cfg["memory_mb"]
if mb:
    resource.setrlimit(resource.RLIMIT_AS, (mb << 20, mb << 20))
cpu = cfg["cpu_s"]
resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 1))
fs = cfg["max_output"]
resource.setrlimit(resource.RLIMIT_FSIZE, (fs, fs))
resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
isolated = "none"
if not cfg["network"] and sys.platform.startswith("linux"):
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        # CLONE_NEWUSER | CLONE_NEWNET | CLONE_NEWPID
        def relay(pid):
            _, st = os.waitpid(pid, 0)
            os._exit(os.WEXITSTATUS(st) if os.WIFEXITED(st) else 128 + os.WTERMSIG(st))
        if libc.unshare(0x10000000 | 0x40000000 | 0x20000000) == 0:
            isolated = "namespaces"
            pid = os.fork()
            if pid:
                relay(pid)
            # PID 1 of the new namespace: when it exits, every process in it is killed
            libc.prctl(1, 9)  # PR_SET_PDEATHSIG = SIGKILL: die with the parent
            pid = os.fork()
            if pid:
                relay(pid)
            # the user code runs as PID 2, so signals keep their default meaning
        del ctypes, libc
    except Exception:
        pass
if not cfg["network"]:
    import socket, _socket
    def _blocked(*a, **k):
        raise PermissionError("network access is disabled in the trainkit sandbox")
    class _NoSocket:
        def __init__(self, *a, **k):
            _blocked()
    for m in (socket, _socket):
        for n in ("socket", "socketpair", "fromfd", "create_connection", "create_server", "getaddrinfo"):
            if hasattr(m, n):
                setattr(m, n, _NoSocket if n == "socket" else _blocked)
    for n in ("ctypes", "_ctypes"):
        sys.modules[n] = None
os.environ["TRAINKIT_SANDBOX"] = isolated
if cfg["mode"] == "code":
    sys.argv = ["main.py"]
    src = open("main.py", encoding="utf-8").read()
    g = {"__name__": "__main__", "__file__": "main.py", "__builtins__": __builtins__}
    exec(compile(src, "main.py", "exec"), g)
else:
    sys.path[:0] = cfg["sys_path"]
    from trainkit.rlhf.rewards import load_reward
    fn = load_reward(cfg["ref"])
    p = json.load(open("payload.json", encoding="utf-8"))
    vals = list(fn(p["prompts"], p["completions"], **p["labels"]))
    with open("result.json", "w", encoding="utf-8") as f:
        json.dump([float(v) for v in vals], f)
"""


@dataclass
class SandboxResult:
    """Outcome of one sandboxed run.

    Attributes:
        ok: exit code 0 and no timeout.
        returncode: the exit code (negative: killed by that signal), None on timeout.
        stdout: captured standard output (at most ``max_output`` bytes).
        stderr: captured standard error (the tail of a traceback on failure).
        timed_out: killed for exceeding the wall-clock timeout.
        seconds: wall-clock duration.
        error: a one-line reason when not ``ok``.
        value: the parsed result of a sandboxed reward call, if any.
    """

    ok: bool
    returncode: int | None
    stdout: str
    stderr: str
    timed_out: bool
    seconds: float
    error: str | None = None
    value: Any = None


def _reason(rc: int | None, timed_out: bool, timeout: float, stderr: str) -> str | None:
    if timed_out:
        return f"timed out after {timeout:g} s"
    if rc == 0:
        return None
    if rc is not None and rc < 0:
        name = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        extra = {
            "SIGXCPU": " (CPU time limit)",
            "SIGXFSZ": " (output size limit)",
            "SIGKILL": " (killed)",
        }.get(name, "")
        return f"killed by {name}{extra}"
    tail = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    last = tail[-1][:300] if tail else ""
    if rc is not None and rc > 128 and not last:
        sig = rc - 128
        name = signal.Signals(sig).name if sig in signal.Signals._value2member_map_ else str(sig)
        return f"killed by {name}"
    return f"exit code {rc}: {last}" if last else f"exit code {rc}"


def _group_alive(pgid: int) -> bool:
    """Whether a process group has a member that is not a zombie (Linux: via /proc)."""
    try:
        entries = os.listdir("/proc")
    except OSError:
        entries = None
    if entries is None:
        try:
            os.killpg(pgid, 0)
            return True
        except (ProcessLookupError, PermissionError):
            return False
    for e in entries:
        if not e.isdigit():
            continue
        try:
            with open(f"/proc/{e}/stat", "rb") as f:
                stat = f.read().decode("ascii", "replace")
        except OSError:
            continue
        # fields after the ")" that ends the command name: state ppid pgrp ...
        rest = stat[stat.rfind(")") + 2 :].split()
        if len(rest) > 2 and rest[2] == str(pgid) and rest[0] not in ("Z", "X"):
            return True
    return False


def _kill_group(proc: subprocess.Popen, wait_s: float = 2.0) -> None:
    """SIGKILL the run's process group, reap the child, and wait (briefly) until every
    member of the group is dead (dead members may stay zombies until their reaper runs)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    deadline = time.monotonic() + wait_s
    while _group_alive(proc.pid) and time.monotonic() < deadline:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            break
        time.sleep(0.005)


def _run(
    cfg: dict, files: dict[str, str], stdin: str, timeout: float, keep: Sequence[str] = ()
) -> tuple[SandboxResult, dict[str, str]]:
    work = tempfile.mkdtemp(prefix="trainkit-sbx-")
    got: dict[str, str] = {}
    try:
        for name, text in files.items():
            with open(os.path.join(work, name), "w", encoding="utf-8") as f:
                f.write(text)
        with open(os.path.join(work, "stdin.txt"), "w", encoding="utf-8") as f:
            f.write(stdin)
        env = {"PATH": "/usr/bin:/bin", "HOME": work, "LANG": "C.UTF-8", "TMPDIR": work}
        t0 = time.monotonic()
        with (
            open(os.path.join(work, "stdin.txt"), "rb") as fin,
            open(os.path.join(work, ".out"), "wb") as fout,
            open(os.path.join(work, ".err"), "wb") as ferr,
        ):
            proc = subprocess.Popen(
                [sys.executable, "-I", "-c", _BOOT, json.dumps(cfg)],
                cwd=work,
                env=env,
                stdin=fin,
                stdout=fout,
                stderr=ferr,
                start_new_session=True,
                close_fds=True,
            )
            timed_out = False
            try:
                rc: int | None = proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                timed_out = True
                rc = None
            finally:
                # kill the whole group (also any child the code spawned), then reap
                _kill_group(proc)
        secs = time.monotonic() - t0
        lim = cfg["max_output"]

        def read(name: str) -> str:
            try:
                with open(os.path.join(work, name), "rb") as f:
                    return f.read(lim).decode("utf-8", "replace")
            except OSError:
                return ""

        out, err = read(".out"), read(".err")
        for name in keep:
            if os.path.exists(os.path.join(work, name)):
                got[name] = read(name)
        reason = _reason(rc, timed_out, timeout, err)
        return SandboxResult(reason is None, rc, out, err, timed_out, secs, reason), got
    finally:
        shutil.rmtree(work, ignore_errors=True)


def run_python(
    code: str,
    stdin: str = "",
    timeout: float = 5.0,
    memory_mb: int = 512,
    max_output: int = 1 << 20,
    network: bool = False,
) -> SandboxResult:
    """Run Python source in the sandbox.

    Args:
        code: the program (e.g. a model's solution followed by test asserts).
        stdin: text fed to its standard input.
        timeout: wall-clock seconds before the process group is killed.
        memory_mb: address-space limit in MiB (0: none).
        max_output: bytes of stdout/stderr kept; writing more kills the run.
        network: allow network access (off by default).

    Returns:
        :class:`SandboxResult`; ``ok`` is True when the program exited with 0 in time.
    """
    cfg = {
        "mode": "code",
        "memory_mb": int(memory_mb),
        "cpu_s": int(math.ceil(timeout)) + 1,
        "max_output": int(max_output),
        "network": bool(network),
    }
    res, _ = _run(cfg, {"main.py": code}, stdin, timeout)
    return res


def extract_code(text: str) -> str:
    """The last fenced code block of a completion (```python ... ```), else the text."""
    import re

    blocks = re.findall(r"```(?:python|py)?[ \t]*\n(.*?)```", text, re.DOTALL)
    return blocks[-1] if blocks else text


def code_tests_reward(timeout: float = 5.0, memory_mb: int = 512, max_workers: int = 2):
    """A reward for code generation: 1.0 when the completion's code passes ``tests``.

    The returned callable takes labels ``tests`` (Python source with asserts, run after
    the extracted code). A sample that times out, crashes or fails an assert scores 0.0:
    for code rewards a failing program is a legitimate (zero) reward, not an error.
    """

    def code_tests(
        prompts: Sequence[str],
        completions: Sequence[str],
        tests: Sequence[str] | None = None,
        **labels: Any,
    ) -> list[float]:
        if tests is None:
            raise ValueError("code_tests reward needs the label 'tests' in each data row")
        jobs = [extract_code(c) + "\n\n" + t + "\n" for c, t in zip(completions, tests)]
        with ThreadPoolExecutor(max_workers=max(1, max_workers)) as ex:
            res = list(
                ex.map(lambda src: run_python(src, timeout=timeout, memory_mb=memory_mb), jobs)
            )
        return [1.0 if r.ok else 0.0 for r in res]

    code_tests.__name__ = "code_tests"
    return code_tests


class SandboxedReward:
    """Call a user reward function in the sandbox, one subprocess per sample.

    For reward functions that themselves run generated code or may hang or crash: a
    sample whose call times out, crashes or runs out of memory yields NaN and its reason
    in ``last_errors[i]``, which :func:`trainkit.rlhf.rewards.score` records as an
    invalid sample; the other samples are unaffected.

    Args:
        ref: the reward as ``"module:function"`` or ``"path/file.py:function"``
            (it is loaded inside the child).
        timeout: seconds per sample (includes interpreter start, ~0.1 s).
        memory_mb: address-space limit per sample.
        max_workers: parallel subprocesses.
        network: allow network access.
    """

    def __init__(
        self,
        ref: str,
        timeout: float = 10.0,
        memory_mb: int = 1024,
        max_workers: int = 2,
        network: bool = False,
    ):
        if not isinstance(ref, str) or ":" not in ref:
            from trainkit.common.errors import UserError

            raise UserError(
                f"sandboxed reward must be 'module:function' or 'file.py:function', got {ref!r}"
            )
        if ref.rpartition(":")[0].endswith(".py"):
            ref = os.path.abspath(ref.rpartition(":")[0]) + ":" + ref.rpartition(":")[2]
        self.ref, self.timeout, self.memory_mb = ref, float(timeout), int(memory_mb)
        self.max_workers, self.network = int(max_workers), bool(network)
        self.last_errors: list[str | None] = []
        self.__name__ = f"sandboxed({ref})"

    def _one(self, prompt: str, completion: str, labels: dict) -> tuple[float, str | None]:
        cfg = {
            "mode": "reward",
            "memory_mb": self.memory_mb,
            "cpu_s": int(math.ceil(self.timeout)) + 1,
            "max_output": 1 << 20,
            "network": self.network,
            "ref": self.ref,
            "sys_path": [p for p in sys.path if p and os.path.isdir(p)],
        }
        payload = json.dumps({"prompts": [prompt], "completions": [completion], "labels": labels})
        res, got = _run(cfg, {"payload.json": payload}, "", self.timeout, keep=("result.json",))
        if not res.ok:
            return math.nan, res.error
        try:
            vals = json.loads(got.get("result.json", ""))
            return float(vals[0]), None
        except (ValueError, IndexError, TypeError) as e:
            return math.nan, f"no valid result from the reward ({e})"

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **labels: Any
    ) -> list[float]:
        per = [{k: [v[i]] for k, v in labels.items()} for i in range(len(completions))]
        with ThreadPoolExecutor(max_workers=max(1, self.max_workers)) as ex:
            out = list(ex.map(self._one, prompts, completions, per))
        self.last_errors = [e for _, e in out]
        return [v for v, _ in out]
