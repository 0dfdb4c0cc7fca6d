"""Reward functions for online RL: rule-based (verifiable), combined, and remote.

A reward is any callable ``f(prompts, completions, **labels) -> list[float]``: one float
per completion, ``labels`` being per-sample lists from the dataset (e.g. ``answer``).
It is named in a config as ``"module:function"``, ``"path/to/file.py:function"`` or a
built-in name (:data:`BUILTINS`); see :func:`load_reward`.

Failures are loud but local: :func:`score` calls the reward on the batch, and when that
raises, once per sample; a sample whose reward raises or is NaN/inf is marked invalid
with its error recorded and counted (:class:`RewardResult`), and the run stops with a
:class:`RewardError` only when more than ``max_invalid_fraction`` of a batch failed.

This module is the import path for all of it: the rule rewards live in
:mod:`trainkit.rlhf.reward_rules`, scoring in :mod:`trainkit.rlhf.reward_scoring`; loading
references and the HTTP client :class:`RemoteReward` are here.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from typing import Any

from trainkit.common.errors import UserError
from trainkit.rlhf.reward_rules import (
    ANSWER_LINE,
    BUILTINS,
    combine,
    extract_answer,
    format_reward,
    length_penalty,
    math_closeness,
    math_exact,
    parse_number,
)
from trainkit.rlhf.reward_scoring import (
    RewardError,
    RewardFn,
    RewardResult,
    check_reward_values,
    score,
)

__all__ = [
    "ANSWER_LINE",
    "BUILTINS",
    "RemoteReward",
    "RewardError",
    "RewardFn",
    "RewardResult",
    "check_reward_values",
    "combine",
    "extract_answer",
    "format_reward",
    "length_penalty",
    "load_reward",
    "math_closeness",
    "math_exact",
    "parse_number",
    "score",
]


# ------------------------------------------------------------------------- loading


def load_reward(ref: str | RewardFn) -> RewardFn:
    """Resolve a reward reference.

    Args:
        ref: a callable (returned as is), a built-in name (``math_exact``,
            ``math_closeness``, ``format``, ``length_penalty``, ``code_tests``),
            ``"package.module:func"``
            or ``"path/to/file.py:func"``; ``"http(s)://host:port/path"`` is a
            :class:`RemoteReward` (bearer token from ``$TRAINKIT_RM_TOKEN``);
            ``"sandbox:<module:func or file.py:func>"`` runs the reward per sample in
            :class:`trainkit.rlhf.sandbox.SandboxedReward`.

    Raises:
        RewardError: with one line naming what could not be found.
    """
    if callable(ref):
        return ref
    if not isinstance(ref, str) or not ref.strip():
        raise RewardError(f"reward must be a name or 'module:function', got {ref!r}")
    if ref in BUILTINS:
        return BUILTINS[ref]()
    if ref.startswith(("http://", "https://")):
        import os

        return RemoteReward(ref, token=os.environ.get("TRAINKIT_RM_TOKEN") or None)
    if ref.startswith("sandbox:"):
        from trainkit.rlhf.sandbox import SandboxedReward

        return SandboxedReward(ref[len("sandbox:") :])
    if ":" not in ref:
        raise RewardError(
            f"reward '{ref}' is not a built-in ({', '.join(BUILTINS)}) "
            "nor of the form 'module:function' or 'file.py:function'"
        )
    from trainkit.common.refs import import_object

    return import_object(ref, "reward", RewardError, callable_=True)


# ------------------------------------------------------------------------- remote


class RemoteReward:
    """A reward model served over HTTP (see :mod:`trainkit.rlhf.serve`).

    POSTs OpenRLHF's request ``{"query": [prompt + completion, ...], "prompts": [...],
    "labels": [...]}`` (``labels``: one entry per sample: the value of the one label field,
    a ``{name: value}`` object when there are several, ``""`` when there are none) and
    reads ``{"rewards": [...]}`` plus the optional ``scores``, ``extra_logs`` (kept in
    :attr:`last_scores`, :attr:`last_extra_logs`) and ``invalid`` flags. A sample flagged
    invalid, or whose reward is ``null``/NaN, comes back as NaN, so :func:`score` marks it
    invalid (reason in :attr:`last_errors`). Connection errors, timeouts, 429 and 5xx are
    retried ``retries`` times with exponential backoff; other 4xx fail at once.

    Args:
        url: e.g. ``http://127.0.0.1:5000/get_reward``.
        timeout: seconds per request.
        retries: extra attempts after the first.
        token: bearer token, if the server requires one (none is sent when None).
        backoff: first retry delay in seconds (doubles each retry).
        batch_size: split large batches into requests of at most this many queries.
    """

    def __init__(
        self,
        url: str,
        timeout: float = 30.0,
        retries: int = 3,
        token: str | None = None,
        backoff: float = 0.5,
        batch_size: int = 256,
    ):
        if not url.startswith(("http://", "https://")):
            raise UserError(f"remote reward url must start with http:// or https://, got {url!r}")
        self.url, self.timeout, self.retries = url, float(timeout), int(retries)
        self.token, self.backoff, self.batch_size = token, float(backoff), int(batch_size)
        self.__name__ = f"RemoteReward({url})"
        self.last_scores: list[float] = []
        self.last_extra_logs: dict[str, list] = {}
        self.last_errors: list[str | None] = []

    def _post(self, payload: dict) -> dict:
        import urllib.error
        import urllib.request

        body = json.dumps(payload).encode("utf-8")
        headers = {"Content-Type": "application/json"}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff * 2 ** (attempt - 1))
            req = urllib.request.Request(self.url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=self.timeout) as resp:
                    out = json.loads(resp.read().decode("utf-8"))
                if not isinstance(out, dict) or not isinstance(out.get("rewards"), list):
                    raise ValueError(f"reply has no 'rewards' list: {str(out)[:200]}")
                return out
            except urllib.error.HTTPError as e:
                detail = e.read()[:200].decode("utf-8", "replace")
                last = RuntimeError(f"{self.url}: HTTP {e.code}: {detail}")
                if e.code not in (429, 500, 502, 503, 504):
                    raise last from None
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = RuntimeError(f"{self.url}: {getattr(e, 'reason', e)}")
        raise RuntimeError(f"remote reward failed after {self.retries + 1} attempts: {last}")

    @staticmethod
    def _labels(labels: dict[str, list], n: int) -> list:
        if not labels:
            return [""] * n
        if len(labels) == 1:
            return list(next(iter(labels.values())))
        return [{k: v[i] for k, v in labels.items()} for i in range(n)]

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **labels: Any
    ) -> list[float]:
        out: list[float] = []
        scores: list[float] = []
        extra: dict[str, list] = {}
        errors: list[str | None] = []
        for s in range(0, len(completions), self.batch_size):
            e = s + self.batch_size
            n = len(completions[s:e])
            payload = {
                "query": [p + c for p, c in zip(prompts[s:e], completions[s:e])],
                "prompts": list(prompts[s:e]),
                "labels": self._labels({k: list(v[s:e]) for k, v in labels.items()}, n),
            }
            got = self._post(payload)
            vals = check_reward_values(got["rewards"], n, self)
            flags = got.get("invalid")
            flags = flags if isinstance(flags, list) and len(flags) == n else [False] * n
            for v, bad in zip(vals, flags):
                if bad or v is None:
                    out.append(float("nan"))
                    why = "flagged invalid" if bad else "null"
                    errors.append(f"non-finite reward ({why} by the server)")
                else:
                    out.append(v)
                    errors.append(None)
            sc = got.get("scores")
            scores += sc if isinstance(sc, list) and len(sc) == n else out[-n:]
            logs = got.get("extra_logs")
            for k, v in (logs if isinstance(logs, dict) else {}).items():
                extra.setdefault(str(k), []).extend(v if isinstance(v, list) else [v] * n)
        self.last_scores, self.last_extra_logs, self.last_errors = scores, extra, errors
        return out
