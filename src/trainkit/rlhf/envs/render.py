"""Chat messages of an episode -> token ids, with tools described to the policy.

Three cases, chosen once per run by :class:`Renderer`:

* the tokenizer's chat template handles tools (it mentions ``tools``; Qwen2.5, Hermes,
  Llama 3.1): messages and the tools' JSON schemas go through
  ``apply_chat_template(messages, tools=...)``, tool results as ``role: tool`` messages;
* a chat template without tool support (SmolLM2): the tools are described in the system
  message (:func:`tool_system_prompt`: the schemas and the ``<tool_call>`` format), and a
  tool result is shown as a user message ``<tool_response>\\n...\\n</tool_response>``;
* no chat template (tiny test models, ``data.chat_template=false``): plain
  ``"{role}: {content}\\n"`` lines and ``"assistant:"`` as the generation prompt, tools
  described as in the second case.

After an assistant turn that ended with EOS, :meth:`Renderer.continuation` gives the
tokens of the next messages up to the next generation prompt, exactly what the template
would put there (found by rendering a fixed conversation with and without them and taking
the difference), so an episode's tokens equal the template's rendering of the whole
conversation except for the policy's own tokens, which are kept as sampled.
"""

from __future__ import annotations

import json
from typing import Any

from trainkit.rlhf.envs.tools import CALL_CLOSE, CALL_OPEN, Tool

_PROBE = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "U"},
    {"role": "assistant", "content": "A"},
]


def tool_system_prompt(tools: dict[str, Tool], system: str | None = None) -> str:
    """The system message that describes ``tools`` when the template cannot."""
    lines = [system] if system else []
    lines += [
        "You can use tools. Each tool is described by a JSON schema:",
        *(json.dumps(t.schema()["function"]) for t in tools.values()),
        f'To call a tool, reply with {CALL_OPEN}{{"name": <tool name>, "arguments": '
        f"{{...}}}}{CALL_CLOSE} and nothing else; the result comes back in "
        "<tool_response></tool_response>. When you know the answer, reply without a tool call.",
    ]
    return "\n".join(lines)


class Renderer:
    """Token ids of an episode's messages for one tokenizer.

    Args:
        tokenizer: the policy's tokenizer.
        tools: the tools offered (empty: none described).
        chat_template: use the tokenizer's chat template when it has one.
    """

    def __init__(self, tokenizer: Any, tools: dict[str, Tool], chat_template: bool = True):
        self.tok, self.tools = tokenizer, tools
        template = getattr(tokenizer, "chat_template", None) if chat_template else None
        self.mode = "plain" if not template else ("tools" if "tools" in template else "fallback")

    # ------------------------------------------------------------------ text
    def _messages(self, messages: list[dict]) -> list[dict]:
        """Messages as the template will see them (fallback: tools in the system
        message, tool results as user messages)."""
        if self.mode == "tools":
            return messages
        out = []
        for m in messages:
            if m["role"] == "tool":
                out.append(
                    {
                        "role": "user",
                        "content": f"<tool_response>\n{m['content']}\n</tool_response>",
                    }
                )
            else:
                out.append({"role": m["role"], "content": m["content"]})
        return out

    def _text(self, messages: list[dict], generation_prompt: bool) -> str:
        msgs = self._messages(messages)
        if self.mode == "plain":
            text = "".join(f"{m['role']}: {m['content']}\n" for m in msgs)
            return text + ("assistant:" if generation_prompt else "")
        kw = {"tools": [t.schema() for t in self.tools.values()]} if self.mode == "tools" else {}
        return self.tok.apply_chat_template(
            msgs, tokenize=False, add_generation_prompt=generation_prompt, **kw
        )

    def with_tools(self, messages: list[dict]) -> list[dict]:
        """``messages`` with the tool description added to (or as) the system message
        when the template cannot render tools itself."""
        if not self.tools or self.mode == "tools":
            return messages
        if messages and messages[0]["role"] == "system":
            sys_msg = tool_system_prompt(self.tools, messages[0]["content"])
            return [{"role": "system", "content": sys_msg}, *messages[1:]]
        return [{"role": "system", "content": tool_system_prompt(self.tools)}, *messages]

    # ------------------------------------------------------------------ ids
    def first(self, messages: list[dict]) -> list[int]:
        """Token ids of the episode's first messages up to the generation prompt."""
        text = self._text(self.with_tools(messages), generation_prompt=True)
        if self.mode == "plain":
            return list(self.tok(text).input_ids)
        return list(self.tok(text, add_special_tokens=False).input_ids)

    def continuation(self, messages: list[dict]) -> list[int]:
        """Token ids that follow an assistant turn ended by EOS: ``messages`` (tool
        results, user replies) and the next generation prompt."""
        base = self._text(_PROBE, generation_prompt=False)
        full = self._text(_PROBE + list(messages), generation_prompt=True)
        if not full.startswith(base):
            raise ValueError("the chat template renders earlier messages differently later")
        text = full[len(base) :]
        # the text the template puts after an assistant message's content, minus the EOS
        # the policy already emitted ("<|im_end|>\n" -> "\n")
        closing = base[base.rindex("A") + 1 :]
        eos = self.tok.eos_token or ""
        gap = closing[len(eos) :] if eos and closing.startswith(eos) else ""
        if self.mode == "plain":
            gap = "\n"
        return list(self.tok(gap + text, add_special_tokens=False).input_ids)
