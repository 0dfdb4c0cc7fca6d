"""trainkit.llm.data / collate / toy_data: loading, validation, tokenisation, batching."""

import json
import string
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from trainkit.common.errors import UserError
from trainkit.llm.collate import (
    IGNORE_INDEX,
    Batches,
    ResumableSampler,
    collate,
    pad_batch,
    summarize_stats,
    tokenize_chat,
    tokenize_records,
)
from trainkit.llm.data import (
    DataCheckConfig,
    DataConfig,
    build_datasets,
    check,
    load_records,
    read_raw,
    validate_record,
)
from trainkit.llm.toy_data import SIGN_OFF, make_examples, matches_style, write_toy_chat

FIX = Path(__file__).parent / "fixtures"
CHAT = [
    {"role": "system", "content": "S"},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello there"},
    {"role": "user", "content": "Q2"},
    {"role": "assistant", "content": "A2"},
]


@pytest.fixture(scope="module")
def tok():
    """The SmolLM2-135M-Instruct tokenizer (ChatML template, eos = <|im_end|> = 2)."""
    from trainkit.llm.models import load_tokenizer

    return load_tokenizer("smollm2-135m-instruct")


class CharTok:
    """A char-level tokenizer without offsets (exercises the slow-tokenizer path).

    Template: ``<role>content|`` per message, ``|`` is the EOS token (id 1).
    """

    eos_token_id, pad_token_id = 1, None
    chat_template = "<role>content|"

    def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=False):
        return "".join(f"<{m['role']}>{m['content']}|" for m in msgs) + (
            "<assistant>" if add_generation_prompt else ""
        )

    def __call__(self, text, add_special_tokens=True, return_offsets_mapping=False):
        if return_offsets_mapping:
            raise NotImplementedError
        return {"input_ids": [1 if c == "|" else ord(c) + 2 for c in text]}

    def decode(self, ids):
        return "".join("|" if i == 1 else chr(i - 2) for i in ids)


def _labelled(tok, s):
    """Decoded runs of consecutive labelled tokens."""
    runs, cur = [], []
    for t, lab in zip(s["input_ids"], s["labels"]):
        if lab != IGNORE_INDEX:
            assert lab == t
            cur.append(t)
        elif cur:
            runs.append(tok.decode(cur))
            cur = []
    if cur:
        runs.append(tok.decode(cur))
    return runs


def _write(tmp_path, name, text, mode="w"):
    p = tmp_path / name
    if isinstance(text, bytes):
        p.write_bytes(text)
    else:
        p.write_text(text, encoding="utf-8")
    return str(p)


# --------------------------------------------------------------------------- chat tokenisation


def test_chat_labels_exactly_assistant_content_and_eot(tok):
    s = tokenize_chat(tok, CHAT, "x")
    # same ids as the tokenizer's own chat template
    assert s["input_ids"] == list(tok.apply_chat_template(CHAT, tokenize=True)["input_ids"])
    assert len(s["input_ids"]) == 35
    assert _labelled(tok, s) == ["Hello there<|im_end|>", "A2<|im_end|>"]
    assert [i for i, x in enumerate(s["labels"]) if x != IGNORE_INDEX] == [16, 17, 18, 31, 32, 33]
    # the "\n" after each <|im_end|> is not labelled; ids 2 = <|im_end|>
    assert s["labels"][16:20] == [19556, 665, 2, IGNORE_INDEX]


OTHER_STYLE = (  # BOS text, "role:" headers, trimmed content, end-of-turn <|endoftext|> (not eos)
    "{{ bos_token }}{% for m in messages %}<|im_start|>{{ m['role'] }}:\n"
    "{{ m['content'] | trim }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant:\n{% endif %}"
)


class OtherTemplate:
    """The SmolLM2 tokenizer with another chat template (end-of-turn != eos, BOS, trim)."""

    def __init__(self, tok, template):
        self.tok, self.chat_template = tok, template

    def apply_chat_template(self, msgs, **kw):
        return self.tok.apply_chat_template(msgs, chat_template=self.chat_template, **kw)

    def __call__(self, *a, **kw):
        return self.tok(*a, **kw)

    def __getattr__(self, name):
        return getattr(self.tok, name)


def test_chat_labels_with_another_template(tok):
    t = OtherTemplate(tok, OTHER_STYLE)
    msgs = CHAT[1:3] + [{"role": "user", "content": "Q2"}, {"role": "assistant", "content": " A2 "}]
    s = tokenize_chat(t, msgs, "x")
    assert tok.decode(s["input_ids"]).startswith("<|im_start|><|im_start|>user:\nHi<|endoftext|>")
    assert _labelled(tok, s) == ["Hello there<|endoftext|>", "A2<|endoftext|>"]


def test_chat_labels_without_offsets_fallback():
    t = CharTok()
    s = tokenize_chat(
        t,
        [
            {"role": "user", "content": "ab"},
            {"role": "assistant", "content": "xy"},
            {"role": "user", "content": "c"},
            {"role": "assistant", "content": "z"},
        ],
        "x",
    )
    assert t.decode(s["input_ids"]) == "<user>ab|<assistant>xy|<user>c|<assistant>z|"
    assert _labelled(t, s) == ["xy|", "z|"]


def test_chat_without_template_is_a_clear_error(tmp_path):
    t = CharTok()
    t.chat_template = None
    recs, fmt = load_records(str(FIX / "chat_small.jsonl"), DataConfig())
    with pytest.raises(
        UserError, match=r"chat_small.jsonl:1: chat data needs a tokenizer with a chat template"
    ):
        tokenize_records(recs, fmt, t, DataConfig())


def test_template_rejecting_record_is_user_error():
    class Strict(CharTok):
        def apply_chat_template(self, msgs, **kw):
            raise ValueError("Conversation roles must alternate")

    with pytest.raises(UserError, match="f.jsonl:3: the tokenizer's chat template rejected"):
        tokenize_chat(Strict(), CHAT, "f.jsonl:3")


def test_prompt_response_with_and_without_template(tok):
    cfg = DataConfig(format="prompt_response")
    recs = [validate_record({"prompt": "Hi", "response": "Yes"}, "f:1", "prompt_response", cfg)]
    (s,), _ = tokenize_records(recs, "prompt_response", tok, cfg)
    assert _labelled(tok, s) == ["Yes<|im_end|>"]
    assert tok.decode(s["input_ids"]).startswith("<|im_start|>system\n")
    cfg = DataConfig(format="prompt_response", chat_template="never", separator=" ->")
    (s,), _ = tokenize_records(recs, "prompt_response", tok, cfg)
    assert tok.decode(s["input_ids"]) == "Hi ->Yes<|im_end|>"
    assert _labelled(tok, s) == ["Yes<|im_end|>"]


def test_text_format_labels_everything(tok):
    cfg = DataConfig()
    recs = [validate_record({"text": "hello world"}, "f:1", "text", cfg)]
    (s,), st_ = tokenize_records(recs, "text", tok, cfg)
    assert s["input_ids"] == s["labels"] == [28120, 905, 2]
    assert st_ == {
        "records": 1,
        "kept": 1,
        "truncated": 0,
        "dropped": 0,
        "tokens": 3,
        "label_tokens": 3,
        "max_tokens": 3,
    }


def test_preference_pairs_share_prompt(tok):
    recs, fmt = load_records(str(FIX / "prefs.json"), DataConfig())
    assert fmt == "preference"
    pairs, stats = tokenize_records(recs, fmt, tok, DataConfig())
    p = pairs[1]
    n = p["prompt_length"]
    assert p["chosen_input_ids"][:n] == p["rejected_input_ids"][:n]
    assert tok.decode(p["chosen_input_ids"][:n]).endswith(
        "Capital of Italy?<|im_end|>\n<|im_start|>assistant\n"
    )
    assert _labelled(tok, {"input_ids": p["chosen_input_ids"], "labels": p["chosen_labels"]}) == [
        "Rome.<|im_end|>"
    ]
    assert _labelled(
        tok, {"input_ids": p["rejected_input_ids"], "labels": p["rejected_labels"]}
    ) == ["Milan.<|im_end|>"]
    assert stats["kept"] == 2
    b = collate(pairs, pad_id=2)
    L = max(len(q[k]) for q in pairs for k in ("chosen_input_ids", "rejected_input_ids"))
    assert b["chosen_input_ids"].shape == b["rejected_labels"].shape == (2, L)
    assert b["prompt_lengths"].tolist() == [pairs[0]["prompt_length"], n]
    assert b["rejected_attention_mask"][1].sum().item() == len(p["rejected_input_ids"])


def test_conversational_preference_records(tok):
    cfg = DataConfig()
    q = [{"role": "user", "content": "Capital of Italy?"}]
    trl = validate_record(
        {
            "prompt": q,
            "chosen": [{"role": "assistant", "content": "Rome."}],
            "rejected": [{"role": "assistant", "content": "Milan."}],
        },
        "f:1",
        "preference",
        cfg,
    )
    hh = validate_record(
        {
            "chosen": q + [{"role": "assistant", "content": "Rome."}],
            "rejected": q + [{"role": "assistant", "content": "Milan."}],
        },
        "f:2",
        "preference",
        cfg,
    )
    flat = validate_record(
        {"prompt": "Capital of Italy?", "chosen": "Rome.", "rejected": "Milan."},
        "f:3",
        "preference",
        cfg,
    )
    assert trl.data == hh.data == {"prompt": q, "chosen": "Rome.", "rejected": "Milan."}
    pairs, _ = tokenize_records([trl, hh, flat], "preference", tok, cfg)
    assert pairs[0] == pairs[1] == pairs[2]
    with pytest.raises(
        UserError, match="f:4: fields 'chosen' and 'rejected' differ before their last turn"
    ):
        validate_record(
            {
                "chosen": q + [{"role": "assistant", "content": "a"}],
                "rejected": [
                    {"role": "user", "content": "other"},
                    {"role": "assistant", "content": "b"},
                ],
            },
            "f:4",
            "preference",
            cfg,
        )
    with pytest.raises(UserError, match="f:5: field 'chosen' must end with an assistant turn"):
        validate_record(
            {
                "prompt": "p",
                "chosen": [{"role": "assistant", "content": "a"}, {"role": "user", "content": "b"}],
                "rejected": "x",
            },
            "f:5",
            "preference",
            cfg,
        )
    with pytest.raises(UserError, match="f:6: missing field 'prompt'"):
        validate_record({"chosen": "a", "rejected": "b"}, "f:6", "preference", cfg)


# --------------------------------------------------------------------------- length policy


def test_truncation_and_drop_counts():
    t = CharTok()
    cfg_r = DataConfig(max_length=4, truncation="right")
    recs = [
        validate_record({"text": x}, f"f:{i}", "text", cfg_r)
        for i, x in enumerate(["ab", "abcdef", "abc"])
    ]
    out, st_ = tokenize_records(recs, "text", t, cfg_r)
    assert [t.decode(s["input_ids"]) for s in out] == ["ab|", "abcd", "abc|"]
    assert (st_["kept"], st_["truncated"], st_["dropped"], st_["tokens"]) == (3, 1, 0, 11)
    out, st_ = tokenize_records(recs, "text", t, DataConfig(max_length=4, truncation="left"))
    assert t.decode(out[1]["input_ids"]) == "def|"
    out, st_ = tokenize_records(recs, "text", t, DataConfig(max_length=4, truncation="drop"))
    assert (st_["kept"], st_["truncated"], st_["dropped"]) == (2, 0, 1)
    assert summarize_stats(st_) == (
        "2/3 samples kept (0 truncated, 1 dropped), 7 tokens, 7 with loss, longest 4"
    )
    with pytest.raises(UserError, match=r"f:1: sample has 7 tokens > data.max_length=4"):
        tokenize_records(recs, "text", t, DataConfig(max_length=4, truncation="error"))


def test_chat_truncated_before_the_answer_is_dropped():
    t = CharTok()
    cfg = DataConfig(max_length=12)
    rec = validate_record(
        {
            "messages": [
                {"role": "user", "content": "a long question"},
                {"role": "assistant", "content": "x"},
            ]
        },
        "f:1",
        "chat",
        cfg,
    )
    out, st_ = tokenize_records([rec], "chat", t, cfg)
    assert out == [] and st_["dropped"] == 1


# --------------------------------------------------------------------------- reading / validation


def test_read_formats_and_line_numbers(tmp_path):
    recs, fmt = load_records(str(FIX / "chat_small.jsonl"), DataConfig())
    assert fmt == "chat" and [r.where.rsplit(":", 1)[1] for r in recs] == ["1", "3", "4"]
    recs, fmt = load_records(str(FIX / "prefs.json"), DataConfig())
    assert [r.where.split("prefs.json:")[1] for r in recs] == ["2 (record 1)", "3 (record 2)"]
    # parquet
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.Table.from_pylist([{"q": "a", "a": "b"}, {"q": "c", "a": "d"}]), tmp_path / "d.parquet"
    )
    recs, fmt = load_records(
        str(tmp_path / "d.parquet"), DataConfig(prompt_field="q", response_field="a")
    )
    assert fmt == "prompt_response" and recs[1].data == {"prompt": "c", "response": "d"}
    assert recs[1].where.endswith("d.parquet: row 2")


def test_read_datasets_folder(tmp_path):
    datasets = pytest.importorskip("datasets")
    dd = datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list([{"text": "a"}, {"text": "b"}]),
            "test": datasets.Dataset.from_list([{"text": "c"}]),
        }
    )
    dd.save_to_disk(str(tmp_path / "ds"))
    assert [o for _, o in read_raw(str(tmp_path / "ds"))] == [{"text": "a"}, {"text": "b"}]
    assert [o for _, o in read_raw(str(tmp_path / "ds"), "test")] == [{"text": "c"}]
    with pytest.raises(UserError, match=r"no split 'dev'; splits here: train, test"):
        read_raw(str(tmp_path / "ds"), "dev")
    datasets.Dataset.from_list([{"text": "z"}]).save_to_disk(str(tmp_path / "plain"))
    assert [(w.rsplit(":", 1)[1], o) for w, o in read_raw(str(tmp_path / "plain"))] == [
        (" row 1", {"text": "z"})
    ]


def test_split_and_max_samples():
    recs, _ = load_records(str(FIX / "chat_small.jsonl"), DataConfig(max_samples=2))
    assert len(recs) == 2
    from trainkit.llm.data import split_records

    tr, ev = split_records(recs * 5, 0.3, seed=0)
    assert (len(tr), len(ev)) == (7, 3)
    with pytest.raises(UserError, match="eval_fraction=0.6 leaves no training records out of 1"):
        split_records(recs[:1], 0.6, seed=0)


BAD = [
    (
        "a.jsonl",
        '{"text": "a"}\n{"text": "b"\n',
        r"a\.jsonl:2: invalid JSON: Expecting ',' delimiter",
    ),
    (
        "a.jsonl",
        '{"prompt": "a", "response": "b"}\n{"prompt": "c"}\n',
        r"a\.jsonl:2: missing field 'response'",
    ),
    (
        "a.jsonl",
        '{"text": "a"}\n{"text": ["x"]}\n',
        r"a\.jsonl:2: field 'text' must be a string, got list",
    ),
    ("a.jsonl", '{"text": "a"}\n[1, 2]\n', r"a\.jsonl:2: a record must be a JSON object, got list"),
    ("a.jsonl", "\n  \n", r"a\.jsonl: the dataset is empty"),
    ("a.json", "[]", r"a\.json: the dataset is empty"),
    (
        "a.jsonl",
        '{"messages": [{"role": "bot", "content": "x"}]}\n',
        r"a\.jsonl:1: field 'messages\[0\]\.role' must be one of system, user, assistant, tool; got 'bot'",
    ),
    (
        "a.jsonl",
        '{"messages": [{"role": "user", "content": "x"}]}\n',
        r"a\.jsonl:1: field 'messages' has no assistant turn",
    ),
    (
        "a.jsonl",
        '{"messages": [{"role": "user"}]}\n',
        r"a\.jsonl:1: missing field 'messages\[0\]\.content'",
    ),
    ("a.jsonl", '{"messages": []}\n', r"a\.jsonl:1: field 'messages' is an empty list"),
    ("a.jsonl", '{"foo": 1}\n', r"a\.jsonl:1: cannot tell the data format from keys \['foo'\]"),
    ("a.jsonl", '"just text"\n', r"a\.jsonl:1: a record must be a JSON object, got string"),
    ("a.json", '[{"text": "a"},\n {"text": }]', r"a\.json:2: invalid JSON: Expecting value"),
    ("a.json", '[{"text": "a"} {"text": "b"}]', r"a\.json:1: invalid JSON: expected ',' or ']'"),
    ("a.json", '"hello"', r"a\.json:1: expected a JSON list of records"),
    ("a.csv", "text\na\n", r"unsupported data file type '\.csv'"),
    (
        "a.jsonl",
        b'{"text": "ok"}\n{"text": "\xff"}\n',
        r"a\.jsonl:2: not UTF-8 text \(byte 0xff at column 11\)",
    ),
    ("a.jsonl", "[" * 100000 + "\n", r"a\.jsonl:1: invalid JSON: nesting too deep"),
    ("a.parquet", b"PAR1 not really", r"a\.parquet: not a readable parquet file"),
    (
        "a.jsonl",
        '{"text": ' + "9" * 5000 + "}\n",
        r"a\.jsonl:1: invalid JSON: a number has too many digits",
    ),
    (
        "a.json",
        '[{"text": ' + "9" * 5000 + "}]",
        r"a\.json:1: invalid JSON: a number has too many digits",
    ),
    (
        "a.jsonl",
        '{"text": "a\\ud800"}\n',
        r"a\.jsonl:1: field 'text' holds an invalid unicode escape",
    ),
    (
        "a.jsonl",
        '{"messages": [{"role": "user", "content": "\\udfff"}]}\n',
        r"a\.jsonl:1: field 'messages\[0\]\.content' holds an invalid unicode escape",
    ),
]


@pytest.mark.parametrize("name,text,msg", BAD)
def test_bad_inputs_are_one_line_user_errors(tmp_path, name, text, msg):
    path = _write(tmp_path, name, text)
    with pytest.raises(UserError, match=msg) as e:
        load_records(path, DataConfig())
    assert "\n" not in str(e.value)


def test_bad_fixture_files():
    with pytest.raises(
        UserError,
        match=r"bad_record.json:3 \(record 2\): field 'response' must be a string, got int",
    ):
        load_records(str(FIX / "bad_record.json"), DataConfig())
    with pytest.raises(
        UserError, match=r"latin1.jsonl:2: not UTF-8 text \(byte 0xe9 at column 14\)"
    ):
        load_records(str(FIX / "latin1.jsonl"), DataConfig())


def test_path_errors(tmp_path):
    with pytest.raises(UserError, match="data file not found: .*nope.jsonl"):
        load_records(str(tmp_path / "nope.jsonl"), DataConfig())
    with pytest.raises(UserError, match="data.path is empty"):
        load_records("", DataConfig())
    with pytest.raises(UserError, match="not a `datasets` save_to_disk folder"):
        load_records(str(tmp_path), DataConfig())


def test_forced_format_names_missing_field(tmp_path):
    p = _write(tmp_path, "a.jsonl", '{"text": "a"}\n')
    with pytest.raises(UserError, match=r"a.jsonl:1: missing field 'chosen'"):
        load_records(p, DataConfig(format="preference", prompt_field="text"))


def test_data_config_loads_as_a_recipe_section(tmp_path):
    from trainkit.config import ConfigError, load_config

    p = tmp_path / "c.yaml"
    p.write_text("path: d.jsonl\nroles: [user, assistant, tool]\nmax_length: 64\n")
    cfg = load_config(DataConfig, p, ["truncation=drop", "eval_fraction=0.1"])
    assert (cfg.path, cfg.roles, cfg.max_length, cfg.truncation, cfg.eval_fraction) == (
        "d.jsonl",
        ["user", "assistant", "tool"],
        64,
        "drop",
        0.1,
    )
    with pytest.raises(ConfigError, match="'truncation' must be one of"):
        load_config(DataConfig, None, ["truncation=middle"])
    with pytest.raises(ConfigError, match="unknown key 'mesages_field'"):
        load_config(DataConfig, None, ["mesages_field=m"])


def test_config_validation():
    with pytest.raises(UserError, match="eval_fraction"):
        DataConfig(eval_fraction=1.5).validate()
    with pytest.raises(UserError, match="exclusive"):
        DataConfig(eval_fraction=0.1, eval_path="x").validate()


_junk_line = st.one_of(
    st.binary(max_size=40),
    st.sampled_from(
        [
            b'{"text": "\\ud83d"}',
            b'{"text": ' + b"7" * 4400 + b"}",
            b'{"prompt": "p", "chosen": "\\udc00", "rejected": "r"}',
        ]
    ),
    st.text(alphabet=string.printable + "é\u2028\x00", max_size=40).map(
        lambda s: s.encode("utf-8")
    ),
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | st.text(max_size=5),
        lambda c: (
            st.lists(c, max_size=3)
            | st.dictionaries(
                st.sampled_from(
                    [
                        "text",
                        "prompt",
                        "response",
                        "chosen",
                        "rejected",
                        "messages",
                        "role",
                        "content",
                        "x",
                    ]
                ),
                c,
                max_size=4,
            )
        ),
        max_leaves=12,
    ).map(lambda o: json.dumps(o).encode()),
)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    lines=st.lists(_junk_line, max_size=5),
    ext=st.sampled_from(["a.jsonl", "a.json"]),
    fmt=st.sampled_from(["auto", "chat", "text", "preference", "prompt_response"]),
)
def test_junk_never_raises_anything_but_user_error(tmp_path, lines, ext, fmt):
    p = tmp_path / ext
    p.write_bytes(b"\n".join(lines))
    try:
        recs, f = load_records(str(p), DataConfig(format=fmt))
        tokenize_records(recs, f, CharTok(), DataConfig(max_length=16))
    except UserError as e:
        assert str(e) and "\n" not in str(e)


_value = st.one_of(
    st.none(), st.integers(), st.text(max_size=6), st.lists(st.text(max_size=2), max_size=2)
)
_message = st.fixed_dictionaries(
    {},
    optional={
        "role": st.sampled_from(["system", "user", "assistant", "bot", 3]),
        "content": _value,
    },
)
_record = st.one_of(
    st.fixed_dictionaries({"messages": st.one_of(_value, st.lists(_message, max_size=4))}),
    st.dictionaries(
        st.sampled_from(["prompt", "response", "chosen", "rejected", "text"]), _value, max_size=4
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    rec=_record,
    fmt=st.sampled_from(["chat", "text", "preference", "prompt_response"]),
    trunc=st.sampled_from(["right", "left", "drop"]),
)
def test_near_valid_records_validate_or_user_error(rec, fmt, trunc):
    cfg = DataConfig(max_length=12, truncation=trunc)
    try:
        r = validate_record(rec, "f:1", fmt, cfg)
    except UserError as e:
        assert str(e).startswith("f:1: ") and "\n" not in str(e)
        return
    out, stats = tokenize_records([r], fmt, CharTok(), cfg)
    assert stats["kept"] + stats["dropped"] == 1 and len(out) == stats["kept"]
    for s in out:
        for k in [k for k in s if k.endswith("input_ids")]:
            ids, labels = s[k], s[k.replace("input_ids", "labels")]
            assert len(ids) == len(labels) <= 12
            assert any(x != IGNORE_INDEX for x in labels)
            assert all(x in (IGNORE_INDEX, t) for x, t in zip(labels, ids))


# --------------------------------------------------------------------------- collators and sampler


def test_pad_batch_values():
    b = pad_batch(
        [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}, {"input_ids": [8], "labels": [8]}],
        pad_id=0,
    )
    assert b["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert b["labels"].tolist() == [[-100, 6, 7], [8, -100, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert pad_batch([{"input_ids": [1], "labels": [1]}], 0, pad_to_multiple_of=8)[
        "input_ids"
    ].shape == (1, 8)


def test_sampler_is_deterministic_and_resumes_exactly():
    s = ResumableSampler(5, 2, seed=3)
    first = [s.next_batch() for _ in range(4)]
    assert sorted(sum(first[:3], [])) == [0, 1, 2, 3, 4]  # epoch 0 covers everything once
    assert [len(b) for b in first] == [2, 2, 1, 2]
    assert first == [s2 for s2, _ in zip(ResumableSampler(5, 2, seed=3), range(4))]
    assert first[:3] != [b for b, _ in zip(ResumableSampler(5, 2, seed=4), range(3))]
    full = ResumableSampler(7, 3, seed=1)
    ref = [full.next_batch() for _ in range(9)]
    a = ResumableSampler(7, 3, seed=1)
    for _ in range(4):
        a.next_batch()
    state = json.loads(json.dumps(a.state_dict()))
    assert state == {"epoch": 1, "index": 3, "seed": 1, "n": 7, "batch_size": 3}
    b = ResumableSampler(7, 3, seed=1)
    b.load_state_dict(state)
    assert [b.next_batch() for _ in range(5)] == ref[4:]
    with pytest.raises(UserError, match="n was 7, now 8"):
        ResumableSampler(8, 3, seed=1).load_state_dict(state)


def test_batches_drop_last_and_state():
    samples = [{"input_ids": [i] * (i + 1), "labels": [i] * (i + 1)} for i in range(5)]
    it = Batches(samples, batch_size=2, pad_id=0, seed=0, drop_last=True)
    assert len(it.sampler) == 2
    got = [next(it)["input_ids"].shape[0] for _ in range(5)]
    assert got == [2, 2, 2, 2, 2]
    assert it.state_dict()["epoch"] == 2


# --------------------------------------------------------------------------- end to end + toy data


def test_toy_data_is_deterministic_and_disjoint(tmp_path):
    tr, ev = make_examples(200, 40, seed=0)
    assert (len(tr), len(ev)) == (200, 40)
    assert make_examples(200, 40, seed=0) == (tr, ev) and make_examples(200, 40, seed=1) != (tr, ev)
    q = lambda rs: {r["messages"][0]["content"] for r in rs}
    assert len(q(tr)) == 200 and not q(tr) & q(ev)
    assert all(matches_style(r["messages"][1]["content"]) for r in tr + ev)
    assert not matches_style("The answer is 4.") and SIGN_OFF == "-- trainkit bot"
    assert {"role": "assistant", "content": "Answer: 5. -- trainkit bot"} in [
        r["messages"][1] for r in tr + ev
    ]
    train_p, eval_p = write_toy_chat(tmp_path, n=20, n_eval=5, seed=0)
    assert len(train_p.read_text().splitlines()) == 20 and len(eval_p.read_text().splitlines()) == 5


def test_build_datasets_split_pack_stats(tok, tmp_path):
    train_p, eval_p = write_toy_chat(tmp_path, n=30, n_eval=6, seed=0)
    ds = build_datasets(DataConfig(path=str(train_p), eval_path=str(eval_p), max_length=128), tok)
    assert ds.format == "chat" and ds.kind == "sft" and len(ds.train) == 30 and len(ds.eval) == 6
    assert ds.stats["train"]["kept"] == 30 and ds.stats["train"]["dropped"] == 0
    for s in ds.train[:5]:
        (ans,) = _labelled(tok, s)
        assert ans.startswith("Answer: ") and ans.endswith(". -- trainkit bot<|im_end|>")
    ds2 = build_datasets(DataConfig(path=str(train_p), eval_fraction=0.2, seed=5), tok)
    assert (len(ds2.train), len(ds2.eval)) == (24, 6)
    ds3 = build_datasets(DataConfig(path=str(train_p), eval_fraction=0.2, seed=5), tok)
    assert ds3.eval == ds2.eval
    packed = build_datasets(DataConfig(path=str(train_p), max_length=256, packing=True), tok)
    pk = packed.stats["train"]["packing"]
    assert pk["samples"] == 30 and pk["rows"] < 30 and pk["fill"] > 0.8
    assert sum(len(r["input_ids"]) for r in packed.train) == ds.stats["train"]["tokens"]
    batch = collate(packed.train[:2], pad_id=2)
    assert set(batch) == {"input_ids", "labels", "position_ids"}
    with pytest.raises(UserError, match="no sample is left after length filtering"):
        build_datasets(DataConfig(path=str(train_p), max_length=8, truncation="drop"), tok)


def test_toy_dataset_tokenises_to_same_ids_as_template(tok):
    tr, _ = make_examples(5, 0, seed=2)
    for r in tr:
        s = tokenize_chat(tok, r["messages"], "x")
        assert s["input_ids"] == list(
            tok.apply_chat_template(r["messages"], tokenize=True)["input_ids"]
        )
        assert (
            sum(x != IGNORE_INDEX for x in s["labels"])
            == len(tok(r["messages"][1]["content"], add_special_tokens=False)["input_ids"]) + 1
        )
    assert torch.is_tensor(collate([tokenize_chat(tok, tr[0]["messages"], "x")], 2)["labels"])


def test_data_check_command(tmp_path, capsys):
    train_p, eval_p = write_toy_chat(tmp_path, n=10, n_eval=2, seed=0)
    out = tmp_path / "stats.json"
    cfg = DataCheckConfig(
        data=DataConfig(path=str(train_p), eval_path=str(eval_p)), stats_out=str(out)
    )
    assert check(cfg) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].endswith("train.jsonl: format chat")
    assert lines[1].startswith("train: 10/10 samples kept (0 truncated, 0 dropped)")
    assert lines[2].startswith("eval: 2/2 samples kept")
    stats = json.loads(out.read_text())
    assert stats["format"] == "chat" and stats["train"]["records"] == 10
