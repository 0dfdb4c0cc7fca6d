"""TRL's and OpenRLHF's dataset layouts: one small file per format, tokenised with a
character-level tokenizer so the prompt masks and labels can be written out literally."""

import json

import pytest

from trainkit.common.errors import UserError
from trainkit.llm.collate import IGNORE_INDEX, tokenize_records
from trainkit.llm.data import DataConfig, load_records
from trainkit.rlhf.trainers.pairs import chat_prompt, read_pairs


class Chars:
    """One token per character: ``ord(c) + 2``; ``|`` is EOS (id 1).

    Template: ``<role>content|`` per message; a tool call renders as ``<call name>``; the
    tool schemas, when given, as ``[tools: a,b]`` before the first message.
    """

    eos_token_id, pad_token_id = 1, None
    chat_template = "chars"

    def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=False, tools=None):
        head = f"[tools: {','.join(t['name'] for t in tools)}]" if tools else ""
        body = "".join(
            f"<{m['role']}>{m['content']}"
            + "".join(f"<call {c['function']['name']}>" for c in m.get("tool_calls", []))
            + "|"
            for m in msgs
        )
        return head + body + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        if return_offsets_mapping:
            raise NotImplementedError
        return {"input_ids": [1 if c == "|" else ord(c) + 2 for c in text]}

    def decode(self, ids):
        return "".join("|" if i == 1 else chr(i - 2) for i in ids)


TOK = Chars()


def ids(text):
    return TOK(text)["input_ids"]


def write(tmp_path, name, records):
    p = tmp_path / name
    p.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(p)


def load(tmp_path, records, **cfg):
    cfg = DataConfig(**cfg)
    cfg.validate()
    recs, fmt = load_records(write(tmp_path, "d.jsonl", records), cfg)
    out, _ = tokenize_records(recs, fmt, TOK, cfg)
    return fmt, out


def masked(text, labelled):
    """The labels of ``text`` where only the substrings ``labelled`` (in order) count."""
    labels, pos = [IGNORE_INDEX] * len(text), 0
    for part in labelled:
        pos = text.index(part, pos)
        labels[pos : pos + len(part)] = ids(part)
        pos += len(part)
    return labels


U, A = "user", "assistant"


def m(role, content, **kw):
    return {"role": role, "content": content, **kw}


# ----------------------------------------------------------------- language modelling


def test_text(tmp_path):
    fmt, (s,) = load(tmp_path, [{"text": "ab"}])
    assert fmt == "text"
    assert s == {"input_ids": [99, 100, 1], "labels": [99, 100, 1]}


def test_messages_with_tool_calls(tmp_path):
    call = {"type": "function", "function": {"name": "calc", "arguments": {"x": "2+2"}}}
    rec = {
        "messages": [
            m(U, "2+2?"),
            {"role": A, "tool_calls": [call]},  # no content: a pure tool call
            {"role": "tool", "name": "calc", "content": "4"},
            m(A, "4"),
        ],
        "tools": [{"name": "calc"}],
    }
    fmt, (s,) = load(tmp_path, [rec])
    text = "[tools: calc]<user>2+2?|<assistant><call calc>|<tool>4|<assistant>4|"
    assert fmt == "chat"
    assert s["input_ids"] == ids(text)
    start = text.index("<call calc>|")  # the tool call turn and the final answer
    want = [*range(start, start + len("<call calc>|")), len(text) - 2, len(text) - 1]
    assert [i for i, lab in enumerate(s["labels"]) if lab != IGNORE_INDEX] == want
    assert TOK.decode([t for t, lab in zip(s["input_ids"], s["labels"]) if lab != -100]) == (
        "<call calc>|4|"
    )


# ----------------------------------------------------------------- prompt-completion


def test_prompt_completion_strings(tmp_path):
    fmt, (s,) = load(tmp_path, [{"prompt": "Hi", "completion": "Yo"}])
    assert fmt == "prompt_response"
    text = "<user>Hi|<assistant>Yo|"
    assert s == {"input_ids": ids(text), "labels": masked(text, ["Yo|"])}
    _, (s,) = load(tmp_path, [{"prompt": "Hi", "completion": "Yo"}], chat_template="never")
    assert s == {"input_ids": ids("Hi\nYo|"), "labels": masked("Hi\nYo|", ["Yo|"])}


def test_prompt_completion_conversational_labels_only_the_completion(tmp_path):
    rec = {
        "prompt": [m("system", "S"), m(U, "Q1"), m(A, "A1"), m(U, "Q2")],
        "completion": [m(A, "A2")],
    }
    fmt, (s,) = load(tmp_path, [rec])
    text = "<system>S|<user>Q1|<assistant>A1|<user>Q2|<assistant>A2|"
    assert fmt == "prompt_response"
    assert s == {"input_ids": ids(text), "labels": masked(text, ["A2|"])}  # not A1
    # mixed: a message-list prompt with a string completion, and the other way round
    _, (a, b) = load(
        tmp_path,
        [
            {"prompt": [m(U, "Q")], "completion": "A"},
            {"prompt": "Q", "completion": [m(A, "A")]},
        ],
    )
    assert (
        a
        == b
        == {
            "input_ids": ids("<user>Q|<assistant>A|"),
            "labels": masked("<user>Q|<assistant>A|", ["A|"]),
        }
    )


def test_prompt_only_is_for_rl(tmp_path):
    p = write(tmp_path, "p.jsonl", [{"prompt": "What is 2+2?"}])
    with pytest.raises(UserError, match=r"p\.jsonl:1: a prompt-only record .*rlhf grpo"):
        load_records(p, DataConfig())


# ----------------------------------------------------------------- preference


def pair_text(s, side):
    return TOK.decode(s[f"{side}_input_ids"]), TOK.decode(
        [t for t, lab in zip(s[f"{side}_input_ids"], s[f"{side}_labels"]) if lab != -100]
    )


@pytest.mark.parametrize(
    "rec",
    [
        {"prompt": "Q", "chosen": "good", "rejected": "bad"},
        {"prompt": [m(U, "Q")], "chosen": [m(A, "good")], "rejected": [m(A, "bad")]},
        {"chosen": [m(U, "Q"), m(A, "good")], "rejected": [m(U, "Q"), m(A, "bad")]},
    ],
    ids=["standard", "conversational", "implicit-conversational"],
)
def test_preference_forms(tmp_path, rec):
    fmt, (s,) = load(tmp_path, [rec])
    assert fmt == "preference"
    assert pair_text(s, "chosen") == ("<user>Q|<assistant>good|", "good|")
    assert pair_text(s, "rejected") == ("<user>Q|<assistant>bad|", "bad|")
    assert s["prompt_length"] == len("<user>Q|<assistant>")


def test_preference_implicit_strings(tmp_path):
    rec = {"chosen": "Answer: 42", "rejected": "Answer: 47"}
    _, (s,) = load(tmp_path, [rec], chat_template="never", separator="")
    # the shared prefix cut back to the last space: the answers keep their first digit
    assert pair_text(s, "chosen") == ("Answer: 42|", " 42|")
    assert pair_text(s, "rejected") == ("Answer: 47|", " 47|")
    assert s["prompt_length"] == len("Answer:")
    multi = {
        "chosen": [m(U, "a"), m(A, "b"), m(U, "c"), m(A, "yes")],
        "rejected": [m(U, "a"), m(A, "b"), m(U, "c"), m(A, "no")],
    }
    _, (s,) = load(tmp_path, [multi])  # earlier assistant turns are prompt, not labelled
    assert pair_text(s, "chosen") == ("<user>a|<assistant>b|<user>c|<assistant>yes|", "yes|")


def test_dpo_rm_reader_takes_every_preference_form(tmp_path):
    p = write(
        tmp_path,
        "pairs.jsonl",
        [
            {"prompt": "Q", "chosen": "good", "rejected": "bad"},
            {"prompt": [m(U, "Q")], "chosen": [m(A, "good")], "rejected": [m(A, "bad")]},
            {"chosen": [m(U, "Q"), m(A, "good")], "rejected": [m(U, "Q"), m(A, "bad")]},
            {"chosen": "Q: good", "rejected": "Q: bad"},
        ],
    )
    got = read_pairs(p)
    assert got == [
        {"prompt": "Q", "chosen": "good", "rejected": "bad"},
        {"prompt": [m(U, "Q")], "chosen": "good", "rejected": "bad"},
        {"prompt": [m(U, "Q")], "chosen": "good", "rejected": "bad"},
        {"prompt": "Q:", "chosen": " good", "rejected": " bad"},
    ]
    assert [chat_prompt(TOK, r["prompt"]) for r in got[:2]] == ["<user>Q|<assistant>"] * 2
    q = write(tmp_path, "q.jsonl", [{"question": "Q", "better": "a", "worse": "b"}])
    assert read_pairs(q, "question", "better", "worse") == [
        {"prompt": "Q", "chosen": "a", "rejected": "b"}
    ]


# ----------------------------------------------------------------- OpenRLHF options


def test_openrlhf_aliases(tmp_path):
    rec = {"question": "Hi", "answer": "Yo"}
    fmt, (s,) = load(
        tmp_path,
        [rec],
        input_key="question",
        output_key="answer",
        apply_chat_template=False,
        input_template="Q: {}\nA: ",
    )
    assert fmt == "prompt_response"
    assert s == {"input_ids": ids("Q: Hi\nA: Yo|"), "labels": masked("Q: Hi\nA: Yo|", ["Yo|"])}
    prefs = {"q": "Q", "c": "good", "r": "bad"}
    _, (s,) = load(tmp_path, [prefs], input_key="q", chosen_key="c", rejected_key="r")
    assert pair_text(s, "chosen") == ("<user>Q|<assistant>good|", "good|")
    cfg = DataConfig(apply_chat_template=True)
    assert cfg.chat_template == "always"
    with pytest.raises(UserError, match=r"data.input_template must contain '\{\}'"):
        DataConfig(input_template="User: ").validate()


# ----------------------------------------------------------------- bad variants


BAD = [
    ({"prompt": "a", "completion": 5}, r"d\.jsonl:1: field 'completion' must be a string, got int"),
    (
        {"prompt": "a", "response": "b", "completion": "c"},
        r"d\.jsonl:1: ambiguous record: .*'response' and 'completion'",
    ),
    ({"text": "a", "prompt": "b", "completion": "c"}, r"d\.jsonl:1: ambiguous record: .*"),
    (
        {"prompt": [m(U, "a")], "completion": [m(U, "b")]},
        r"d\.jsonl:1: field 'completion' has no assistant turn",
    ),
    ({"chosen": "same", "rejected": "other"}, r"d\.jsonl:1: missing field 'prompt' \('chosen' and"),
    ({"chosen": "Q: a", "rejected": "Q: a b"}, r"d\.jsonl:1: missing field 'prompt'"),
    (
        {"messages": [m(U, "a"), {"role": A, "tool_calls": "calc"}]},
        r"d\.jsonl:1: field 'messages\[1\]\.tool_calls' must be a non-empty list",
    ),
    (
        {"messages": [m(U, "a"), m(A, "b")], "tools": "calc"},
        r"d\.jsonl:1: field 'tools' must be a list",
    ),
    ({"messages": [m(U, "a"), {"role": A}]}, r"d\.jsonl:1: missing field 'messages\[1\]\.content'"),
]


@pytest.mark.parametrize("rec,msg", BAD)
def test_bad_records_are_one_line_with_file_and_line(tmp_path, rec, msg):
    with pytest.raises(UserError, match=msg) as e:
        load(tmp_path, [rec])
    assert "\n" not in str(e.value)


def test_bad_second_line_named(tmp_path):
    recs = [{"prompt": "a", "completion": "b"}, {"prompt": "a", "completion": ["b"]}]
    with pytest.raises(UserError, match=r"d\.jsonl:2: field 'completion\[0\]' must be an object"):
        load(tmp_path, recs)
    p = write(
        tmp_path,
        "bad_pairs.jsonl",
        [{"prompt": "a", "chosen": "b", "rejected": "c"}, {"chosen": "x", "rejected": "y"}],
    )
    with pytest.raises(UserError, match=r"bad_pairs\.jsonl:2: missing field 'prompt'"):
        read_pairs(p)
