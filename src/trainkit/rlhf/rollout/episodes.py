"""Multi-turn episodes: the policy and an environment take turns until the episode ends.

Each of the ``B = n_prompts * n`` rows is one episode with its own environment
(:mod:`trainkit.rlhf.envs`). A turn samples one assistant reply per live episode (up to
EOS or ``max_new_tokens``); the environment answers with an observation (tool results,
a user reply), a reward and ``done``. An episode ends when the environment says so, when
a reply is cut by ``max_new_tokens`` (no EOS: counted as truncated), after ``max_turns``
replies, or when its tokens would pass ``max_tokens`` (both truncated, too).

The result is one :class:`~trainkit.rlhf.rollout.base.Rollout` row per episode: the
prompt is the rendered first messages, the response the whole episode after it
(replies and observations, as token ids), ``action_mask`` 1 only on the policy's
tokens (holes on observations) and ``response_mask`` on all of them, ``logprobs`` the
engine's on the policy's tokens. The reward of an episode is the sum of its turns'
rewards plus ``tool_call_reward`` per successful and ``tool_error_reward`` per failed
tool call.

Any engine works: the first turn samples the ``n`` replies of each prompt with one
shared prefill (``generate(ids, n=n)``); later turns generate the live episodes' whole
contexts (``n=1``), which an engine with prefix caching (vLLM) serves from its cache.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from trainkit.rlhf.rollout.base import Rollout, pad_left

#: seed offset between turns of one step (turn ``k`` samples with ``seed + k * TURN_SEED``)
TURN_SEED = 1 << 40


@dataclass
class Episodes:
    """A step's episodes.

    Attributes:
        rollout: ``B`` rows (see the module docstring).
        replies: ``[B]`` the last reply of each episode (its answer), as text.
        transcripts: ``[B]`` the whole episode after the prompt, as text.
        rewards: ``[B]`` episode rewards.
        correct: ``[B]`` the environment's ``correct`` on the last turn (None: not said).
        stats: per-step figures: ``env/turns``, ``env/tool_calls``, ``env/tool_errors``,
            ``env/tool_call_rate`` (share of episodes with a call), ``env/episode_len``
            (tokens after the prompt), ``env/truncated_frac``.
    """

    rollout: Rollout
    replies: list[str]
    transcripts: list[str]
    rewards: list[float]
    correct: list[bool | None]
    stats: dict[str, float] = field(default_factory=dict)


@dataclass
class _Ep:
    env: Any
    context: list[int]
    ids: list[int] = field(default_factory=list)
    act: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    reward: float = 0.0
    turns: int = 0
    calls: int = 0
    errors: int = 0
    done: bool = False
    truncated: bool = False
    correct: bool | None = None
    reply: str = ""


def run_episodes(
    generate: Callable[..., Rollout],
    tokenizer: Any,
    renderer: Any,
    envs: list[Any],
    n: int,
    *,
    max_turns: int,
    max_new_tokens: int,
    max_tokens: int,
    seed: int,
    tool_call_reward: float = 0.0,
    tool_error_reward: float = 0.0,
) -> Episodes:
    """Play ``len(envs)`` episodes, rows ``i*n .. i*n+n-1`` sharing prompt ``i``.

    Args:
        generate: ``generate(prompt_ids, n=..., max_new_tokens=..., seed=...) -> Rollout``
            (an engine's or a backend's).
        tokenizer: the policy's tokenizer (decoding replies).
        renderer: a :class:`~trainkit.rlhf.envs.render.Renderer`.
        envs: one environment per row, ``reset`` not yet called.
        n: episodes per prompt (their first messages must be the same).
        max_turns: assistant replies per episode at most.
        max_new_tokens: tokens per reply at most.
        max_tokens: tokens of an episode after its prompt at most.
        seed: the step's sampling seed.
        tool_call_reward: added per successful tool call.
        tool_error_reward: added per failed tool call.
    """
    t0 = time.perf_counter()
    if len(envs) % n:
        raise ValueError(f"{len(envs)} environments are not groups of n={n}")
    first = [renderer.first(envs[i].reset()) for i in range(len(envs))]
    for i in range(0, len(envs), n):
        if any(first[j] != first[i] for j in range(i, i + n)):
            raise ValueError("the n episodes of a prompt must start with the same messages")
    eps = [_Ep(env, list(ids)) for env, ids in zip(envs, first)]
    gen_tokens, actor_cpu = 0, 0.0
    for turn in range(max_turns):
        live = [i for i, e in enumerate(eps) if not e.done]
        if not live:
            break
        if turn == 0:
            ro = generate(first[::n], n=n, max_new_tokens=max_new_tokens, seed=seed)
        else:
            ro = generate(
                [eps[i].context for i in live],
                n=1,
                max_new_tokens=max_new_tokens,
                seed=seed + turn * TURN_SEED,
            )
        gen_tokens += int(ro.info.get("gen_tokens", 0))
        actor_cpu += float(ro.info.get("actor_cpu_s", 0.0))
        for row, i in enumerate(live):
            _take_turn(eps[i], ro, row, turn, tokenizer, renderer, max_turns, max_tokens)
    for e in eps:
        _settle(e, tool_call_reward, tool_error_reward)
    rollout = _as_rollout(eps, first, n, tokenizer.pad_token_id)
    rollout.info = {
        "gen_s": time.perf_counter() - t0,
        "gen_tokens": gen_tokens,
        "actor_cpu_s": actor_cpu,
    }
    return Episodes(
        rollout,
        [e.reply for e in eps],
        [tokenizer.decode(e.ids, skip_special_tokens=True) for e in eps],
        [e.reward for e in eps],
        [e.correct for e in eps],
        episode_stats(eps),
    )


def _take_turn(e: _Ep, ro: Rollout, row: int, turn: int, tok, renderer, max_turns, max_tokens):
    """Append row ``row`` of ``ro`` to episode ``e`` and let its environment answer."""
    k = int(ro.action_mask[row].sum())
    toks = ro.response_ids[row, :k].tolist()
    e.ids += toks
    e.act += [1] * k
    e.logps += ro.logprobs[row, :k].tolist()
    e.turns = turn + 1
    e.reply = tok.decode(toks, skip_special_tokens=True)
    if bool(ro.truncated[row]):  # cut mid-reply: the environment never sees it
        e.done = e.truncated = True
        return
    step = e.env.step(e.reply)
    e.reward += float(step.reward)
    e.calls += int(step.info.get("tool_calls", 0))
    e.errors += int(step.info.get("tool_errors", 0))
    if "correct" in step.info:
        e.correct = bool(step.info["correct"])
    if step.done:
        e.done = True
        return
    if e.turns >= max_turns:
        e.done = e.truncated = True
        return
    obs = step.observation
    msgs = [{"role": "user", "content": obs}] if isinstance(obs, str) else list(obs or [])
    obs_ids = renderer.continuation(msgs)
    if len(e.ids) + len(obs_ids) + 1 > max_tokens:
        e.done = e.truncated = True
        return
    e.ids += obs_ids
    e.act += [0] * len(obs_ids)
    e.logps += [0.0] * len(obs_ids)
    e.context += toks + obs_ids


def _settle(e: _Ep, call_r: float, err_r: float) -> None:
    e.reward += call_r * (e.calls - e.errors) + err_r * e.errors


def _as_rollout(eps: list[_Ep], first: list[list[int]], n: int, pad_id: int) -> Rollout:
    pids, pmask = pad_left(first, pad_id)
    B, R = len(eps), max(1, max(len(e.ids) for e in eps))
    resp = torch.full((B, R), pad_id, dtype=torch.long)
    act = torch.zeros((B, R), dtype=torch.long)
    real = torch.zeros((B, R), dtype=torch.long)
    lp = torch.zeros((B, R), dtype=torch.float32)
    for i, e in enumerate(eps):
        L = len(e.ids)
        resp[i, :L] = torch.tensor(e.ids, dtype=torch.long)
        act[i, :L] = torch.tensor(e.act, dtype=torch.long)
        real[i, :L] = 1
        lp[i, :L] = torch.tensor(e.logps, dtype=torch.float32)
    trunc = torch.tensor([e.truncated for e in eps], dtype=torch.bool)
    return Rollout(pids, pmask, resp, act, lp, trunc, n, {}, real)


def episode_stats(eps: list[Any]) -> dict[str, float]:
    """Means over the episodes: turns, tool calls and errors, the share of episodes with
    at least one call, tokens after the prompt, and the truncated share."""
    B = max(len(eps), 1)
    return {
        "env/turns": sum(e.turns for e in eps) / B,
        "env/tool_calls": sum(e.calls for e in eps) / B,
        "env/tool_errors": sum(e.errors for e in eps) / B,
        "env/tool_call_rate": sum(e.calls > 0 for e in eps) / B,
        "env/episode_len": sum(len(e.ids) for e in eps) / B,
        "env/truncated_frac": sum(e.truncated for e in eps) / B,
    }
