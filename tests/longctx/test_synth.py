"""Synthetic data: determinism by seed, answers really at the stated depth, lengths on target."""

import json

import pytest

from trainkit.common.errors import UserError
from trainkit.config import load_config
from trainkit.longctx import haystack, tasks
from trainkit.longctx.data import MakeDataConfig, generate, run

RETRIEVAL = ("passkey", "needle", "kv")


def test_stdlib_pool_is_real_prose():
    pool = haystack.stdlib_paragraphs()
    assert len(pool) > 500
    mods = {m for m, _ in pool}
    assert {"json", "random", "threading"} & mods
    assert all(60 <= len(p) <= 700 and p.endswith((".", "?", "!")) for _, p in pool)


@pytest.mark.parametrize("task", list(tasks.TASKS))
def test_deterministic_by_seed(task):
    a = tasks.make_sample(task, seed=3, index=5, length=1500, depth=0.4)
    b = tasks.make_sample(task, seed=3, index=5, length=1500, depth=0.4)
    c = tasks.make_sample(task, seed=4, index=5, length=1500, depth=0.4)
    assert a == b
    assert a["messages"][0]["content"] != c["messages"][0]["content"]
    assert a["messages"][1]["content"] == a["meta"]["answer"]
    assert abs(a["meta"]["length"] - 1500) <= 0.02 * 1500  # chars


@pytest.mark.parametrize("task", RETRIEVAL)
@pytest.mark.parametrize("depth", [0.0, 0.25, 0.5, 0.9, 1.0])
@pytest.mark.parametrize("length", [400, 3000])
def test_needle_at_stated_depth(task, depth, length):
    rec = tasks.make_sample(task, seed=1, index=2, length=length, depth=depth)
    meta, user = rec["meta"], rec["messages"][0]["content"]
    context, question = user.rsplit("\n\n", 1)
    pos = context.find(meta["needle"])
    assert pos >= 0 and meta["answer"] in meta["needle"]
    assert context.count(meta["answer"]) >= 1 and meta["answer"] not in question
    # depth = haystack characters before the needle / all haystack characters
    inserted = [f"The value of key {k} is {v}." for k, v in meta.get("keys", {}).items()] or [
        meta["needle"]
    ]

    def hay(text):
        for line in inserted:
            text = text.replace(" " + line, "").replace(line, "")
        return text.strip()

    assert len(hay(context[:pos])) / len(hay(context)) == pytest.approx(meta["depth"], abs=0.02)
    assert meta["depth"] == pytest.approx(depth, abs=0.06)
    assert abs(meta["length"] - length) <= max(8, 0.02 * length)


def test_kv_has_all_keys_and_the_asked_one():
    rec = tasks.make_sample("kv", seed=0, index=0, length=2000, depth=0.5, n_keys=6)
    user = rec["messages"][0]["content"]
    keys = rec["meta"]["keys"]
    assert len(keys) == 6 and len(set(keys.values())) == 6
    for k, v in keys.items():
        assert f"The value of key {k} is {v}." in user
    asked = user.rsplit("key ", 1)[1].split("?")[0]
    assert keys[asked] == rec["meta"]["answer"]


def test_bio_tasks_facts_in_context():
    s = tasks.make_sample("single_qa", seed=0, index=7, length=3000, depth=0.6)
    ctx = s["messages"][0]["content"]
    assert s["meta"]["fact"] in ctx and s["meta"]["answer"] in s["meta"]["fact"]
    assert s["meta"]["depth"] == pytest.approx(0.6, abs=0.12)  # paragraph granularity
    long_ctx = tasks.make_sample("single_qa", seed=0, index=8, length=30000, depth=0.5)
    pars = long_ctx["messages"][0]["content"].split("\n\n")[:-2]  # drop the cut tail + question
    assert len(pars) > 90 and len(set(pars)) == len(pars)  # no biography repeats
    m = tasks.make_sample("multi_qa", seed=0, index=3, length=4000, depth=0.1, gap=0.7)
    d1, d2 = m["meta"]["depths"]
    assert d2 - d1 > 0.5
    assert all(f in m["messages"][0]["content"] for f in m["meta"]["facts"])
    sm = tasks.make_sample("summary", seed=0, index=1, length=2000, depth=0.3)
    born = sm["meta"]["answer"].split(" was born in ")[1][:4]
    assert f"was born in {born}" in sm["messages"][0]["content"]


def test_topics_first_topic():
    r = tasks.make_sample("topics", seed=2, index=0, length=3000, depth=0.0)
    user = r["messages"][0]["content"]
    assert user.startswith(f"Topic: the {r['meta']['answer']} module.")
    assert len(r["meta"]["topics"]) >= 3


def test_token_lengths_with_char_tokenizer():
    from trainkit.longctx.chartok import char_tokenizer

    meter = haystack.Meter(char_tokenizer())
    for task in ("passkey", "kv", "single_qa"):
        r = tasks.make_sample(task, seed=0, index=0, length=512, depth=0.5, meter=meter)
        assert r["meta"]["unit"] == "tokens"
        assert 490 <= r["meta"]["length"] <= 512


def test_mixing_ratio_and_cli_file(tmp_path):
    cfg = load_config(
        MakeDataConfig,
        None,
        [
            "data.tasks=[passkey,kv]",
            "data.lengths=[600]",
            "data.samples_per_task=6",
            "data.short_ratio=0.25",
            f"out={tmp_path / 'd.jsonl'}",
            "seed=9",
        ],
    )
    recs = generate(cfg)
    assert len(recs) == 16  # 12 long + 4 short (4/16 = 0.25)
    assert sum(1 for r in recs if "text" in r or r["meta"].get("short")) == 4
    assert run(cfg) == 0
    lines = (tmp_path / "d.jsonl").read_text().splitlines()
    assert [json.loads(x) for x in lines] == generate(cfg)
    with pytest.raises(UserError, match="unknown task"):
        load_config(MakeDataConfig, None, ["data.tasks=[nope]"])
    with pytest.raises(UserError, match="depth"):
        tasks.make_sample("passkey", seed=0, index=0, length=100, depth=1.5)


def test_config_files_parse():
    from pathlib import Path

    for p in Path(__file__).parents[2].glob("configs/longctx/make_data*.yaml"):
        load_config(MakeDataConfig, p)
