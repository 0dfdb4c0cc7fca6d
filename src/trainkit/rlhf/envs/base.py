"""The environment interface of multi-turn RL, and the tool-using base environment.

An environment is created per sample, from its prompt record, and plays one episode:

    env = EnvClass(record, tools, **env.kwargs)   # record: {"prompt": ..., labels...}
    messages = env.reset()                        # the first chat messages
    step = env.step(reply)                        # after each assistant turn
    # step.observation: messages (or a text = one user message) shown next, or None
    # step.reward: this turn's reward; step.done: the episode is over

The episode's reward is the sum of its turns' rewards (plus ``env.tool_call_reward`` /
``env.tool_error_reward`` per call, added by the rollout). An environment is named in the
config like a reward function: a built-in name, ``package.module:Class`` or
``file.py:Class``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from trainkit.rlhf.envs.tools import Tool, parse_tool_calls, run_tool


@dataclass
class Step:
    """What an environment returns after an assistant turn.

    Attributes:
        observation: chat messages shown to the policy next (a ``str`` is one user
            message); None when the episode is over.
        reward: reward of this turn (the episode reward sums them).
        done: the episode ended.
        info: counters the rollout logs: ``tool_calls``, ``tool_errors`` (ints) and, on
            the last turn, ``correct`` (bool) for accuracy figures.
    """

    observation: list[dict] | str | None = None
    reward: float = 0.0
    done: bool = False
    info: dict[str, Any] = field(default_factory=dict)


class Environment(Protocol):
    """One episode of a multi-turn task (see the module docstring)."""

    def __init__(self, record: dict, tools: dict[str, Tool], **kwargs: Any) -> None: ...

    def reset(self) -> list[dict]:
        """The first messages (system and user); tools are described by the renderer."""

    def step(self, reply: str) -> Step:
        """React to the assistant's ``reply`` (its text, special tokens dropped)."""


class ToolEnv:
    """A question answered with tools: each reply that holds ``<tool_call>`` blocks gets
    the tools' results back; the first reply without one is the final answer, scored by
    :meth:`score`.

    Subclasses implement :meth:`score` (and may override :meth:`reset`).

    Args:
        record: the prompt record (``prompt`` and labels such as ``answer``).
        tools: the tools the policy may call, by name (empty: none offered).
        system: an optional system message put first.
    """

    def __init__(self, record: dict, tools: dict[str, Tool], system: str | None = None):
        self.record, self.tools, self.system = record, tools, system

    def reset(self) -> list[dict]:
        """The first messages: the system message (``system``; a conversational prompt's
        own system message is appended to it after a blank line), then the prompt."""
        from trainkit.llm.data_formats import prompt_messages

        msgs = prompt_messages(self.record["prompt"], None)
        if not self.system:
            return msgs
        if msgs[0]["role"] == "system":
            msgs[0]["content"] = f"{self.system}\n\n{msgs[0]['content']}"
            return msgs
        return [{"role": "system", "content": self.system}] + msgs

    def score(self, reply: str) -> tuple[float, bool]:
        """``(reward, correct)`` of the final ``reply``."""
        raise NotImplementedError

    def step(self, reply: str) -> Step:
        calls = parse_tool_calls(reply)
        if not calls:
            reward, correct = self.score(reply)
            return Step(None, reward, True, {"tool_calls": 0, "tool_errors": 0, "correct": correct})
        results = [(c, *run_tool(self.tools, c)) for c in calls]
        obs = [
            {"role": "tool", "name": c.name or "unknown", "content": text} for c, text, _ in results
        ]
        errors = sum(not ok for _, _, ok in results)
        return Step(obs, 0.0, False, {"tool_calls": len(calls), "tool_errors": errors})
