"""Record formats: detect a record's layout and validate it into a normalised record.

The layouts are TRL's dataset types in their standard (strings) and conversational
(message lists) forms, plus trainkit's ``prompt``/``response``:

==================  ==================================================  ==============
TRL type            keys                                                format
==================  ==================================================  ==============
language modelling  ``text`` / ``messages`` (tool calls, ``tools``)     text / chat
prompt-completion   ``prompt`` + ``completion`` (or ``response``)       prompt_response
prompt-only         ``prompt``                                          prompt_only
preference          ``prompt`` + ``chosen`` + ``rejected``; or only     preference
                    ``chosen`` + ``rejected`` sharing a prefix
                    (implicit prompt)
==================  ==================================================  ==============

Normalised records (:class:`Record` ``.data``):

* ``{"text": str}``;
* ``{"messages": [...], "tools": [...]?, "train_from": k?}``: a conversation; loss on the
  assistant turns at index >= ``train_from`` (a conversational prompt-completion record
  becomes ``prompt + completion`` with ``train_from = len(prompt)``);
* ``{"prompt": str, "response": str}`` (both strings);
* ``{"prompt": str | messages, "chosen": str, "rejected": str}``.

A prompt-only record has nothing to learn from in SFT, DPO or RM training; it is the
input of the RL recipes (:mod:`trainkit.rlhf.trainers.rl_data`). Every error is one
line: ``"<file>:<line>: ..."``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from trainkit.common.errors import UserError

FORMATS = ("chat", "prompt_response", "text", "preference")
DEFAULT_ROLES = ("system", "user", "assistant", "tool")
MESSAGE_EXTRAS = ("tool_calls", "name", "tool_call_id")


@dataclass
class Record:
    """A validated record: ``where`` says where it came from, ``data`` is normalised."""

    where: str
    data: dict


def tname(v: Any) -> str:
    """A JSON type name for error messages."""
    return (
        "null"
        if v is None
        else {dict: "object", list: "list", str: "string", bool: "boolean"}.get(
            type(v), type(v).__name__
        )
    )


def check_text(v: str, where: str, key: str) -> str:
    try:
        v.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate from a JSON escape such as "\ud800"
        raise UserError(
            f"{where}: field '{key}' holds an invalid unicode escape (lone surrogate)"
        ) from None
    return v


def string_field(obj: dict, key: str, where: str, nonempty: bool = True) -> str:
    """``obj[key]`` as a checked string."""
    if key not in obj:
        raise UserError(f"{where}: missing field '{key}'")
    v = obj[key]
    if not isinstance(v, str):
        raise UserError(f"{where}: field '{key}' must be a string, got {tname(v)}")
    if nonempty and not v:
        raise UserError(f"{where}: field '{key}' is an empty string")
    return check_text(v, where, key)


def message_list(obj: dict, key: str, where: str, roles: Any, need_assistant: bool) -> list[dict]:
    """``obj[key]`` as checked messages ``{"role", "content", tool_calls?, name?, ...}``.

    ``content`` may be missing or null on a message with ``tool_calls`` (it becomes "").
    """
    if key not in obj:
        raise UserError(f"{where}: missing field '{key}'")
    msgs = obj[key]
    if not isinstance(msgs, list):
        raise UserError(f"{where}: field '{key}' must be a list of messages, got {tname(msgs)}")
    if not msgs:
        raise UserError(f"{where}: field '{key}' is an empty list")
    out = []
    for j, m in enumerate(msgs):
        f = f"{key}[{j}]"
        if not isinstance(m, dict):
            raise UserError(
                f"{where}: field '{f}' must be an object with role and content, got {tname(m)}"
            )
        role = m.get("role")
        if not isinstance(role, str) or role not in roles:
            got = "missing" if "role" not in m else repr(role)
            raise UserError(
                f"{where}: field '{f}.role' must be one of {', '.join(roles)}; got {got}"
            )
        calls = m.get("tool_calls")
        if calls is not None and not (isinstance(calls, list) and calls):
            raise UserError(f"{where}: field '{f}.tool_calls' must be a non-empty list")
        content = m.get("content")
        if content is None and calls:
            content = ""
        elif "content" not in m:
            raise UserError(f"{where}: missing field '{f}.content'")
        elif not isinstance(content, str):
            raise UserError(
                f"{where}: field '{f}.content' must be a string, got {tname(m['content'])}"
            )
        msg = {"role": role, "content": check_text(content, where, f"{f}.content")}
        msg.update({k: m[k] for k in MESSAGE_EXTRAS if m.get(k) is not None})
        out.append(msg)
    if need_assistant and not any(m["role"] == "assistant" for m in out):
        raise UserError(f"{where}: field '{key}' has no assistant turn (nothing to learn from)")
    return out


def _tools(obj: dict, where: str) -> dict:
    if obj.get("tools") is None:
        return {}
    if not isinstance(obj["tools"], list) or not all(isinstance(t, dict) for t in obj["tools"]):
        raise UserError(f"{where}: field 'tools' must be a list of objects (function schemas)")
    return {"tools": obj["tools"]}


def detect_format(obj: Any, cfg: Any) -> str:
    """The format a record's keys suggest (``format: auto``): chat, preference,
    prompt_response, text or prompt_only.

    Raises:
        UserError: not an object, no known keys, or keys of two formats at once.
    """
    if not isinstance(obj, dict):
        raise UserError(f"a record must be a JSON object, got {tname(obj)}")
    keys = obj.keys()
    mk, pk, tk = cfg.messages_field, cfg.prompt_field, cfg.text_field
    ck, rk, ok = cfg.chosen_field, cfg.rejected_field, cfg.response_field
    comp = getattr(cfg, "completion_field", "completion")
    found = [
        name
        for name, hit in (
            ("chat", mk in keys),
            ("preference", ck in keys and rk in keys),
            ("prompt_response", pk in keys and (ok in keys or comp in keys)),
            ("text", tk in keys),
        )
        if hit
    ]
    if len(found) > 1 or (ok in keys and comp in keys and ok != comp):
        what = found if len(found) > 1 else [f"'{ok}' and '{comp}'"]
        raise UserError(
            f"ambiguous record: keys {sorted(map(str, keys))} fit {' and '.join(what)}; "
            "set data.format or remove the extra field"
        )
    if found:
        return found[0]
    if pk in keys:
        return "prompt_only"
    raise UserError(
        f"cannot tell the data format from keys {sorted(map(str, keys))}; expected "
        f"'{mk}' or '{tk}' (language modelling), '{pk}'+'{comp}' (or '{ok}'), "
        f"'{pk}'+'{ck}'+'{rk}' (or '{ck}'+'{rk}' alone), or '{pk}' alone (RL prompts); "
        "or set data.format and the data.*_field names"
    )


def _as_messages(v: Any, obj: dict, key: str, where: str, roles: Any, role: str) -> list[dict]:
    if isinstance(v, list):
        return message_list(obj, key, where, roles, need_assistant=role == "assistant")
    return [{"role": role, "content": string_field(obj, key, where)}]


def prompt_completion(obj: dict, where: str, cfg: Any) -> dict:
    """A prompt-completion record (strings or message lists) normalised."""
    pk, ok = cfg.prompt_field, cfg.response_field
    comp = getattr(cfg, "completion_field", "completion")
    rk = ok if ok in obj or comp not in obj else comp
    if rk not in obj:
        raise UserError(f"{where}: missing field '{ok}' (or '{comp}')")
    if pk not in obj:
        raise UserError(f"{where}: missing field '{pk}'")
    p, c = obj[pk], obj[rk]
    if not isinstance(p, list) and not isinstance(c, list):
        return {"prompt": string_field(obj, pk, where), "response": string_field(obj, rk, where)}
    roles = cfg.roles
    base = _as_messages(p, obj, pk, where, roles, "user")
    tail = _as_messages(c, obj, rk, where, roles, "assistant")
    return {"messages": base + tail, "train_from": len(base), **_tools(obj, where)}


def common_prefix_prompt(chosen: str, rejected: str) -> int:
    """Where the implicit prompt of two strings ends: their common prefix, cut back to
    the last whitespace so that a shared first part of a word stays in the answers."""
    n = 0
    for a, b in zip(chosen, rejected):
        if a != b:
            break
        n += 1
    if n == min(len(chosen), len(rejected)):
        return n
    while n > 0 and not chosen[n - 1].isspace() and not chosen[n].isspace():
        n -= 1
    while n > 0 and chosen[n - 1].isspace():  # the answers start with the space
        n -= 1
    return n


def preference_record(
    obj: dict,
    where: str,
    prompt_key: str = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
    roles: Any = DEFAULT_ROLES,
) -> dict:
    """Normalise a pair to ``{"prompt": str | messages, "chosen": str, "rejected": str}``.

    Accepted: strings (``prompt``, ``chosen``, ``rejected``); a ``prompt`` message list with
    string answers; conversational answers (TRL style ``chosen: [{"role": "assistant",
    ...}]`` after a prompt); and the implicit-prompt forms without ``prompt``: whole
    conversations whose earlier turns agree (the last turn is the answer), or strings
    whose common prefix is the prompt (see :func:`common_prefix_prompt`).
    """
    pk, ck, rk = prompt_key, chosen_key, rejected_key
    for k in (ck, rk):
        if k not in obj:
            raise UserError(f"{where}: missing field '{k}'")
    conv = isinstance(obj[ck], list) or isinstance(obj[rk], list)
    prompt: Any = None
    if pk in obj and isinstance(obj[pk], list):
        prompt = message_list(obj, pk, where, roles, need_assistant=False)
    elif pk in obj:
        prompt = string_field(obj, pk, where)
    if not conv:
        c, r = string_field(obj, ck, where), string_field(obj, rk, where)
        if prompt is None:
            n = common_prefix_prompt(c, r)
            if n == 0 or n in (len(c), len(r)):
                raise UserError(
                    f"{where}: missing field '{pk}' ('{ck}' and '{rk}' share no prefix to "
                    "take the prompt from, or one is a prefix of the other)"
                )
            prompt, c, r = c[:n], c[n:], r[n:]
        return {"prompt": prompt, "chosen": c, "rejected": r}
    base = (
        []
        if prompt is None
        else ([{"role": "user", "content": prompt}] if isinstance(prompt, str) else prompt)
    )
    turns = {}
    for k in (ck, rk):
        msgs = message_list(obj, k, where, roles, need_assistant=True)
        if msgs[-1]["role"] != "assistant":
            raise UserError(f"{where}: field '{k}' must end with an assistant turn")
        turns[k] = (base + msgs[:-1], msgs[-1]["content"])
    if turns[ck][0] != turns[rk][0]:
        raise UserError(
            f"{where}: fields '{ck}' and '{rk}' differ before their last turn; "
            "a preference pair must share its prompt"
        )
    if not turns[ck][0]:
        raise UserError(
            f"{where}: missing field '{pk}' (and '{ck}' has no turns before the answer)"
        )
    return {"prompt": turns[ck][0], "chosen": turns[ck][1], "rejected": turns[rk][1]}


def validate_record(obj: Any, where: str, fmt: str, cfg: Any) -> Record:
    """Check one raw record against ``fmt`` and return it normalised.

    Raises:
        UserError: ``"<file>:<line>: field '<name>' <problem>"``.
    """
    if not isinstance(obj, dict):
        raise UserError(f"{where}: a record must be a JSON object, got {tname(obj)}")
    if fmt == "chat":
        msgs = message_list(obj, cfg.messages_field, where, cfg.roles, True)
        return Record(where, {"messages": msgs, **_tools(obj, where)})
    if fmt == "prompt_response":
        return Record(where, prompt_completion(obj, where, cfg))
    if fmt == "text":
        return Record(where, {"text": string_field(obj, cfg.text_field, where)})
    if fmt == "preference":
        return Record(
            where,
            preference_record(
                obj, where, cfg.prompt_field, cfg.chosen_field, cfg.rejected_field, cfg.roles
            ),
        )
    if fmt == "prompt_only":
        raise UserError(
            f"{where}: a prompt-only record ('{cfg.prompt_field}' without a completion) has "
            "nothing to learn from here; prompt-only data is for `rlhf ppo` / `rlhf grpo`"
        )
    raise UserError(f"unknown data format '{fmt}'; expected one of {', '.join(FORMATS)}")


def prompt_text(prompt: str | list[dict]) -> str:
    """The text a reward function sees as the prompt: the string itself, or the content
    of the last user message of a conversational prompt."""
    if isinstance(prompt, str):
        return prompt
    users = [m["content"] for m in prompt if m["role"] == "user"]
    return users[-1] if users else prompt[-1]["content"]


def prompt_messages(prompt: str | list[dict], system: str | None) -> list[dict]:
    """The prompt as chat messages: a user turn for a string; ``system`` goes first unless
    the prompt brings its own system message."""
    msgs = (
        [{"role": "user", "content": prompt}]
        if isinstance(prompt, str)
        else [dict(m) for m in prompt]  # copies: callers may edit them
    )
    if system and msgs[0]["role"] != "system":
        msgs = [{"role": "system", "content": system}] + msgs
    return msgs
