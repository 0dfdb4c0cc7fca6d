"""A rollout engine in its own process: the single-process backend's engine for
``rollout.async=true`` and ``rollout.engine_process=true``.

The child process (``spawn``) builds its own copy of the policy from the run's config
(:func:`~trainkit.rlhf.trainers.rl_build.build_models`: same base weights, same LoRA
layout) and the engine of ``rollout.engine`` on it
(:func:`~trainkit.rlhf.trainers.rl_build.make_engine`), with its own torch threads
(``rollout.engine_threads``) and, when given, pinned to ``rollout.engine_cpus``. It then
serves requests one at a time, in the order they were sent:

* ``generate(...)``: the engine's :meth:`generate`; the returned
  :class:`~trainkit.rlhf.rollout.base.Rollout` carries ``info["actor_cpu_s"]``, the CPU
  seconds the child spent on it;
* ``update_weights(weights)``: the *trainable* parameters of the policy (a LoRA
  policy's adapters, every weight of a full fine-tune), under the names of
  ``named_parameters``, copied into the child's copy (and from there into a vLLM
  engine). :func:`trainable_snapshot` takes them from a model.

Messages are a JSON header, then, when tensors travel, one safetensors buffer (the
weights of an update, the tensors of a :class:`~trainkit.rlhf.rollout.base.Rollout`):
nothing is unpickled, and a LoRA update is one 20 MB copy. (Letting
``torch.multiprocessing`` move each tensor into shared memory costs one file-descriptor
hand-over per tensor, hundreds for a LoRA policy, and grew slower step after step.) A
child that dies or raises makes the next call fail with one line naming the engine
process.
"""

from __future__ import annotations

import json
import os
import threading
import time
import traceback
from typing import Any

import torch

__all__ = ["EngineProcess", "decode_rollout", "encode_rollout", "trainable_snapshot"]

_TENSORS = (
    "prompt_ids",
    "prompt_mask",
    "response_ids",
    "action_mask",
    "logprobs",
    "truncated",
    "response_mask",
)


def trainable_snapshot(model: Any) -> dict[str, torch.Tensor]:
    """Copies of the parameters of ``model`` that require grad, by ``named_parameters``
    name: what an :class:`EngineProcess` needs to follow the trainer, safe to keep while
    training goes on."""
    return {
        n: p.detach().clone().contiguous() for n, p in model.named_parameters() if p.requires_grad
    }


def encode_rollout(ro: Any) -> tuple[dict, dict[str, torch.Tensor]]:
    """A :class:`~trainkit.rlhf.rollout.base.Rollout` as ``(JSON-able header, tensors)``."""
    tensors = {f: getattr(ro, f).contiguous() for f in _TENSORS if getattr(ro, f) is not None}
    return {"n": ro.n, "info": ro.info}, tensors


def decode_rollout(head: dict, tensors: dict[str, torch.Tensor]) -> Any:
    """The inverse of :func:`encode_rollout`."""
    from trainkit.rlhf.rollout.base import Rollout

    return Rollout(
        **{f: tensors.get(f) for f in _TENSORS}, n=int(head["n"]), info=dict(head["info"])
    )


def _send(conn: Any, head: dict, tensors: dict[str, torch.Tensor] | None = None) -> None:
    from safetensors.torch import save

    conn.send_bytes(json.dumps({**head, "tensors": tensors is not None}, default=float).encode())
    if tensors is not None:
        conn.send_bytes(save(tensors))


def _recv(conn: Any) -> tuple[dict, dict[str, torch.Tensor] | None]:
    from safetensors.torch import load

    head = json.loads(conn.recv_bytes())
    return head, (load(conn.recv_bytes()) if head.pop("tensors") else None)


def _serve(cfg: Any, conn: Any, threads: int, cpus: list[int]) -> None:
    """The child: build the policy copy and the engine, then answer requests."""
    import signal

    # a terminal's Ctrl-C reaches the whole process group: the trainer finishes its step
    # and checkpoints (with the batches in flight), so the engine must keep serving
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if cpus:
        os.sched_setaffinity(0, cpus)
    torch.set_num_threads(max(1, threads))
    try:
        from trainkit.rlhf.trainers.rl_build import build_models, make_engine

        policy, tok, _, _ = build_models(cfg, with_ref=False, with_critic=False)
        policy.requires_grad_(False)
        own = dict(policy.named_parameters())
        engine = make_engine(cfg, policy, tok)
        separate = getattr(engine, "model", None) is not policy
        _send(conn, {"status": "ok"})
    except BaseException:
        _send(conn, {"status": "error", "error": traceback.format_exc(limit=-3)})
        return
    while True:
        try:
            head, tensors = _recv(conn)
        except EOFError:
            return
        op = head.get("op")
        if op == "close":
            if hasattr(engine, "close"):
                engine.close()
            return
        try:
            c0 = time.process_time()
            if op == "generate":
                ro = engine.generate(**head["kw"])
                ro.info["actor_cpu_s"] = ro.info.get("actor_cpu_s", 0.0) + (
                    time.process_time() - c0
                )
                meta, out = encode_rollout(ro)
                _send(conn, {"status": "ok", "rollout": meta}, out)
            elif op == "update_weights":
                unknown = sorted(set(tensors or {}) - set(own))
                if unknown:
                    raise KeyError(f"unknown parameter names, e.g. {unknown[:3]}")
                with torch.no_grad():
                    for name, value in (tensors or {}).items():
                        own[name].copy_(value)
                if separate:
                    engine.update_weights(policy)
                _send(conn, {"status": "ok"})
            else:
                raise ValueError(f"unknown request {op!r}")
        except BaseException:
            _send(conn, {"status": "error", "error": traceback.format_exc(limit=-3)})


class EngineProcess:
    """The rollout engine of ``cfg`` in a child process (a
    :class:`~trainkit.rlhf.rollout.base.RolloutEngine`).

    Args:
        cfg: the validated RL config (handed to the child by multiprocessing's spawn).
        threads: the child's torch threads.
        cpus: cores the child pins itself to (empty: not pinned).
        timeout_s: how long to wait for the child to build its models.

    Raises:
        RuntimeError: the child failed to start (its error's last lines).
    """

    def __init__(self, cfg: Any, threads: int = 1, cpus: list[int] | None = None, timeout_s=600):
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._lock = threading.Lock()
        self._proc = ctx.Process(
            target=_serve, args=(cfg, child, int(threads), list(cpus or [])), daemon=True
        )
        self._proc.start()
        child.close()
        if not self._conn.poll(timeout_s):
            self.close()
            raise RuntimeError(f"rollout engine process did not start within {timeout_s} s")
        self._answer("start")

    @property
    def pid(self) -> int | None:
        return self._proc.pid

    def _answer(self, what: str) -> Any:
        try:
            head, tensors = _recv(self._conn)
        except (EOFError, ConnectionError, OSError):
            code = self._proc.exitcode
            raise RuntimeError(
                f"rollout engine process died during {what} (exit code {code})"
            ) from None
        if head.get("status") == "error":
            text = str(head.get("error", "")).strip()
            last = text.splitlines()[-1] if text else "unknown error"
            raise RuntimeError(f"rollout engine process failed in {what}: {last}")
        return decode_rollout(head["rollout"], tensors) if "rollout" in head else None

    def _call(self, op: str, kw: dict | None = None, tensors: dict | None = None) -> Any:
        with self._lock:
            try:
                _send(self._conn, {"op": op, "kw": kw or {}}, tensors)
            except (BrokenPipeError, ConnectionError, OSError):
                code = self._proc.exitcode
                raise RuntimeError(
                    f"rollout engine process died before {op} (exit code {code})"
                ) from None
            return self._answer(op)

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        n: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        min_new_tokens: int = 0,
    ):
        """The child engine's ``generate`` (same arguments and result)."""
        kw = {
            "prompt_token_ids": [list(map(int, p)) for p in prompt_token_ids],
            "n": n,
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "seed": seed,
            "min_new_tokens": min_new_tokens,
        }
        return self._call("generate", kw)

    def update_weights(self, weights: Any) -> None:
        """Load the trainer's trainable weights: a model (its parameters that require
        grad) or a ``{name: tensor}`` dict (e.g. a :func:`trainable_snapshot`)."""
        if isinstance(weights, torch.nn.Module):
            weights = trainable_snapshot(weights)
        tensors = {k: v.detach().contiguous() for k, v in weights.items()}
        self._call("update_weights", tensors=tensors)

    def close(self) -> None:
        """Stop the child (politely, then by force after 30 s)."""
        if self._proc.is_alive():
            try:
                with self._lock:
                    _send(self._conn, {"op": "close"})
            except (BrokenPipeError, ConnectionError, OSError):
                pass
            self._proc.join(30)
            if self._proc.is_alive():
                self._proc.kill()
                self._proc.join(5)
        self._conn.close()
