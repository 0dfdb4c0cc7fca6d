"""Tools an RL policy can call, their JSON schemas, and the one tool-call format.

A tool call is written by the policy inside its reply as

    <tool_call>{"name": "calculator", "arguments": {"expression": "347 * 86"}}</tool_call>

(the format of the Qwen2.5 / Hermes chat templates). :func:`parse_tool_calls` finds
every such block; each one becomes a :class:`ToolCall` or, when its JSON is broken,
names no known tool or has no ``arguments`` object, a :class:`ToolCall` with ``error``
set. :func:`run_tool` never raises: a tool that crashes, returns a non-string or runs past
its time limit gives an error text that the policy reads as the tool's result.

Tools are described by OpenAI function-calling schemas (:meth:`Tool.schema`), which chat
templates with tool support render themselves (``apply_chat_template(..., tools=...)``).
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

CALL_OPEN, CALL_CLOSE = "<tool_call>", "</tool_call>"
_CALL_RE = re.compile(re.escape(CALL_OPEN) + r"(.*?)(?:" + re.escape(CALL_CLOSE) + r"|$)", re.S)


@dataclass
class Tool:
    """A function the policy may call.

    Attributes:
        name: the ``name`` of the call.
        description: one sentence for the prompt.
        parameters: JSON schema of the ``arguments`` object.
        fn: ``fn(**arguments) -> str`` (other return values are turned into text).
        timeout_s: seconds before a call counts as hung (its thread is abandoned;
            tools that may hang for real should run in a subprocess, as ``python`` does).
    """

    name: str
    description: str
    parameters: dict
    fn: Callable[..., Any]
    timeout_s: float = 5.0

    def schema(self) -> dict:
        """The OpenAI function-calling description ``{"type": "function", "function": ...}``."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass
class ToolCall:
    """One parsed ``<tool_call>`` block: ``name`` and ``arguments``, or ``error``."""

    name: str | None
    arguments: dict = field(default_factory=dict)
    error: str | None = None


def parse_tool_calls(text: str) -> list[ToolCall]:
    """Every ``<tool_call>{...}</tool_call>`` block of ``text``, in order.

    An unclosed block at the end of the text is parsed too (a reply cut short). A block
    whose content is not a JSON object with a string ``name`` and an object ``arguments``
    (missing ``arguments`` reads as ``{}``; a JSON-encoded string is decoded) gives a call
    with ``error`` set.
    """
    calls = []
    for m in _CALL_RE.finditer(text):
        body = m.group(1).strip()
        try:
            obj = json.loads(body)
        except json.JSONDecodeError as e:
            calls.append(ToolCall(None, error=f"the tool call is not valid JSON ({e.msg})"))
            continue
        if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
            calls.append(ToolCall(None, error='the tool call needs a string "name"'))
            continue
        args = obj.get("arguments", obj.get("parameters", {}))
        if isinstance(args, str):
            try:
                args = json.loads(args)
            except json.JSONDecodeError:
                args = None
        if not isinstance(args, dict):
            calls.append(ToolCall(obj["name"], error='"arguments" must be a JSON object'))
            continue
        calls.append(ToolCall(obj["name"], args))
    return calls


def format_call(name: str, arguments: dict) -> str:
    """The text of one call in the documented format (demonstrations, tests)."""
    return CALL_OPEN + json.dumps({"name": name, "arguments": arguments}) + CALL_CLOSE


def run_tool(tools: dict[str, Tool], call: ToolCall) -> tuple[str, bool]:
    """Run one parsed call; ``(result text, ok)``. Never raises.

    Errors (a malformed call, an unknown tool, bad arguments, an exception, a timeout)
    come back as ``("error: ...", False)``.
    """
    if call.error:
        return f"error: {call.error}", False
    tool = tools.get(call.name or "")
    if tool is None:
        known = ", ".join(sorted(tools)) or "none"
        return f"error: unknown tool {call.name!r} (tools: {known})", False
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["value"] = tool.fn(**call.arguments)
        except TypeError as e:
            box["error"] = f"bad arguments for {tool.name}: {e}"
        except Exception as e:  # a tool's own failure is the policy's observation
            box["error"] = f"{tool.name} failed: {type(e).__name__}: {e}"

    th = threading.Thread(target=target, daemon=True, name=f"tool-{tool.name}")
    th.start()
    th.join(tool.timeout_s)
    if th.is_alive():
        return f"error: {tool.name} did not finish within {tool.timeout_s:g} s", False
    if "error" in box:
        return "error: " + box["error"].splitlines()[0][:300], False
    value = box.get("value")
    return (value if isinstance(value, str) else json.dumps(value, default=str)), True


# ------------------------------------------------------------------ built-in tools


def calculator_tool(timeout_s: float = 2.0) -> Tool:
    """``calculator(expression)``: exact arithmetic (:func:`~trainkit.rlhf.envs.calc.calculate`)."""
    from trainkit.rlhf.envs.calc import calculate, format_number

    def fn(expression: str) -> str:
        return format_number(calculate(str(expression)))

    return Tool(
        "calculator",
        "Evaluate an arithmetic expression with + - * / ** and parentheses; returns the number.",
        {
            "type": "object",
            "properties": {
                "expression": {"type": "string", "description": "e.g. 347 * 86"},
            },
            "required": ["expression"],
        },
        fn,
        timeout_s,
    )


def python_tool(timeout_s: float = 5.0, memory_mb: int = 512) -> Tool:
    """``python(code)``: run a program in :func:`trainkit.rlhf.sandbox.run_python` (time and
    memory limits, no network); the result is its stdout, or the error's last line."""
    from trainkit.rlhf.sandbox import run_python

    def fn(code: str) -> str:
        res = run_python(str(code), timeout=timeout_s, memory_mb=memory_mb)
        if res.ok:
            return res.stdout[-2000:] or "(no output)"
        raise RuntimeError(res.error or "the program failed")

    return Tool(
        "python",
        "Run a Python program and return what it prints (no network, limited time).",
        {
            "type": "object",
            "properties": {"code": {"type": "string", "description": "the program"}},
            "required": ["code"],
        },
        fn,
        timeout_s + 5.0,  # the sandbox enforces timeout_s itself
    )


#: built-in tools by name (``env.tools``)
BUILTIN_TOOLS: dict[str, Callable[[], Tool]] = {
    "calculator": calculator_tool,
    "python": python_tool,
}


def load_tools(names: list[str]) -> dict[str, Tool]:
    """Tools by name: built-ins or ``module:factory`` / ``file.py:factory`` (a function
    returning a :class:`Tool`, or a :class:`Tool` itself)."""
    from trainkit.common.errors import UserError
    from trainkit.common.refs import import_object

    out = {}
    for name in names:
        if name in BUILTIN_TOOLS:
            tool = BUILTIN_TOOLS[name]()
        else:
            if ":" not in name:
                raise UserError(
                    f"env.tools: unknown tool '{name}' (built-in: {', '.join(BUILTIN_TOOLS)}; "
                    "or 'module:factory')"
                )
            obj = import_object(name, "tool", UserError)
            tool = obj if isinstance(obj, Tool) else obj()
            if not isinstance(tool, Tool):
                raise UserError(f"env.tools: '{name}' did not give a trainkit Tool")
        out[tool.name] = tool
    return out
