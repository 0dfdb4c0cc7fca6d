"""The ``env:`` config section of the RL recipes and building a step's environments."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from trainkit.common.errors import UserError
from trainkit.config import ConfigError


@dataclass
class EnvSection:
    """Multi-turn episodes with an environment (``env.name`` unset: single-turn RL)."""

    name: str | None = field(
        default=None,
        metadata={
            "help": "environment: a built-in (tool_math, guess_number), 'module:Class' or "
            "'file.py:Class'; null = single-turn completions scored by data.reward"
        },
    )
    max_turns: int = field(default=4, metadata={"help": "assistant replies per episode at most"})
    max_tokens: int = field(
        default=512,
        metadata={"help": "tokens of an episode after its prompt at most (replies + observations)"},
    )
    tools: list[str] | None = field(
        default=None,
        metadata={
            "help": "tools offered: built-ins (calculator, python) or 'module:factory'; "
            "null = the environment's default ([calculator] for tool_math), [] = none"
        },
    )
    tool_call_reward: float = field(
        default=0.0, metadata={"help": "reward added per successful tool call"}
    )
    tool_error_reward: float = field(
        default=0.0, metadata={"help": "reward added per failed tool call (e.g. -0.1)"}
    )
    system: str | None = field(
        default=None, metadata={"help": "system message of every episode (tool_math)"}
    )
    kwargs: dict[str, Any] = field(
        default_factory=dict, metadata={"help": "keyword arguments of the environment class"}
    )

    def validate(self) -> None:
        if self.name is None:
            return
        if self.max_turns < 1 or self.max_tokens < 2:
            raise ConfigError("env.max_turns must be >= 1 and env.max_tokens >= 2")


#: tools an environment gets when ``env.tools`` is null
DEFAULT_TOOLS = {"tool_math": ["calculator"], "guess_number": []}


class EnvFactory:
    """Creates the environment of a prompt record: ``factory(record) -> env``.

    Args:
        env: the ``env`` config section (``name`` set).
    """

    def __init__(self, env: EnvSection):
        from trainkit.common.refs import import_object
        from trainkit.rlhf.envs.builtin import ENVS
        from trainkit.rlhf.envs.tools import load_tools

        if env.name in ENVS:
            self.cls = ENVS[env.name]
        elif env.name and ":" in env.name:
            self.cls = import_object(env.name, "environment", UserError, callable_=True)
        else:
            raise UserError(
                f"env.name: unknown environment '{env.name}' (built-in: {', '.join(ENVS)}; "
                "or 'module:Class' / 'file.py:Class')"
            )
        names = env.tools if env.tools is not None else DEFAULT_TOOLS.get(env.name, [])
        self.tools = load_tools(list(names))
        self.kwargs = dict(env.kwargs)
        if env.system is not None:
            self.kwargs["system"] = env.system

    def __call__(self, record: dict) -> Any:
        try:
            return self.cls(record, self.tools, **self.kwargs)
        except TypeError as e:
            raise UserError(f"env.kwargs do not fit {self.cls.__name__}: {e}") from None
