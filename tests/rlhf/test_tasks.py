"""Arithmetic tasks and preference pairs: deterministic, disjoint splits, right answers."""

import json

import pytest

from trainkit.common.errors import UserError
from trainkit.rlhf.rewards import format_reward, math_exact
from trainkit.rlhf.tasks import (
    ArithmeticSpec,
    _is_heldout,
    evaluate_expression,
    load_task,
    make_arithmetic,
    parse_task,
    preference_pairs,
    score_arithmetic_queries,
    write_preference_data,
    write_task_data,
)


def test_evaluate_expression_precedence():
    assert evaluate_expression([3, 5], ["+"]) == 8
    assert evaluate_expression([2, 3, 4], ["+", "*"]) == 14  # 2 + 12
    assert evaluate_expression([2, 3, 4], ["*", "-"]) == 2  # 6 - 4
    assert evaluate_expression([10, 3, 2], ["-", "-"]) == 5  # left to right
    assert evaluate_expression([7, 0, 9], ["*", "*"]) == 0


def test_default_task_is_single_digit_sums_with_answer_line():
    train, held = load_task("arithmetic", seed=0, n_train=50, n_heldout=10)
    r = train[0]
    a, op, b = r["expression"].split()
    assert op == "+" and 0 <= int(a) <= 9 and 0 <= int(b) <= 9
    assert r["answer"] == int(a) + int(b)
    assert r["prompt"] == (
        f"What is {a} + {b}? Finish your reply with a line of the form 'Answer: <number>'."
    )
    # the reference answer in the requested format earns full reward
    comp = [f"Answer: {x['answer']}" for x in held]
    assert math_exact(None, comp, answer=[x["answer"] for x in held]) == [1.0] * len(held)
    assert format_reward()(None, comp) == [1.0] * len(held)


def test_deterministic_and_disjoint_splits():
    spec = ArithmeticSpec(high=19, ops="+-*", n_operands=3)
    a = make_arithmetic(200, seed=3, spec=spec)
    assert a == make_arithmetic(200, seed=3, spec=spec)
    assert a != make_arithmetic(200, seed=4, spec=spec)
    held = make_arithmetic(200, seed=3, split="heldout", spec=spec)
    assert len({r["expression"] for r in held}) == 200  # unique
    # no held-out problem is ever in train, whatever the seed
    train_exprs = {r["expression"] for s in range(3) for r in make_arithmetic(300, s, spec=spec)}
    assert not train_exprs & {r["expression"] for r in held}
    for r in held[:50]:
        toks = r["expression"].split()
        assert r["answer"] == evaluate_expression([int(x) for x in toks[::2]], toks[1::2])


def test_small_space_heldout_is_capped_not_infinite():
    # single-digit sums: 100 problems, ~20% held out
    held = make_arithmetic(1000, seed=0, split="heldout")
    assert 10 <= len(held) <= 30
    assert len(make_arithmetic(1000, seed=0, split="train")) == 1000  # train repeats
    # a one-problem space: "1 + 1" is in exactly one split; the other cannot be drawn
    one = ArithmeticSpec(low=1, high=1)
    home = "heldout" if _is_heldout("1 + 1", one.heldout_fraction) else "train"
    other = "train" if home == "heldout" else "heldout"
    assert [r["expression"] for r in make_arithmetic(5, spec=one, split=home, unique=True)] == [
        "1 + 1"
    ]
    with pytest.raises(UserError, match="cannot draw 5 " + other):
        make_arithmetic(5, spec=one, split=other)


def test_word_problems_non_negative():
    recs = make_arithmetic(100, seed=1, spec=parse_task("arithmetic_words"))
    assert all(r["answer"] >= 0 for r in recs)
    assert any("How many" in r["prompt"] for r in recs)


@pytest.mark.parametrize(
    "name,msg",
    [
        ("nope", "unknown task"),
        ("arithmetic:bogus=1", "bad option"),
        ("arithmetic:high=x", "expects int"),
        ("arithmetic:high=-5", "high"),
        ("arithmetic:ops=/", "ops"),
        ("arithmetic:n_operands=1", "n_operands"),
        ("arithmetic:words=maybe", "expects bool"),
    ],
)
def test_parse_task_errors(name, msg):
    with pytest.raises(UserError, match=msg):
        parse_task(name)


def test_parse_task_overrides():
    s = parse_task("arithmetic_medium:high=20,n_operands=3,words=true")
    assert (s.low, s.high, s.n_operands, s.ops, s.words) == (0, 20, 3, "+-", True)


def test_preference_pairs_kinds():
    recs = make_arithmetic(40, seed=0, spec=parse_task("arithmetic_number_only"))
    assert recs[0]["prompt"].endswith("Reply with only the final number.")
    fmt = preference_pairs(recs, kind="format")
    for p, r in zip(fmt, recs):
        assert p["chosen"] == str(r["answer"]) and len(p["rejected"].split()) > 5
    ans = preference_pairs(recs, kind="answer")
    for p, r in zip(ans, recs):
        assert p["chosen"] == str(r["answer"])
        assert 1 <= abs(int(p["rejected"]) - r["answer"]) <= 3
    mixed = preference_pairs(recs, kind="mixed")
    n_wordy = sum(len(p["rejected"].split()) > 5 for p in mixed)
    assert 5 < n_wordy < 35
    with pytest.raises(UserError):
        preference_pairs(recs, kind="other")


def test_write_preference_data(tmp_path):
    tp, hp = write_preference_data(tmp_path / "pairs", n=30, n_heldout=10, seed=1)
    train = [json.loads(x) for x in tp.read_text().splitlines()]
    held = [json.loads(x) for x in hp.read_text().splitlines()]
    assert len(train) == 30 and len(held) == 10
    assert set(train[0]) == {"prompt", "chosen", "rejected"}
    assert not {r["prompt"] for r in train} & {r["prompt"] for r in held}
    assert not list((tmp_path / "pairs").glob(".*tmp"))  # nothing half-written left
    tp2, hp2 = write_task_data(tmp_path / "rl", n_train=5, n_heldout=3)
    assert set(json.loads(tp2.read_text().splitlines()[0])) == {"prompt", "answer", "expression"}


def test_score_arithmetic_queries():
    q = "What is 6 - 24 * 54? Finish your reply with a line of the form 'Answer: <number>'."
    # 6 - 1296 = -1290
    chat = (
        "<|im_start|>user\nWhat is 3 + 4? Reply with only the final number.<|im_end|>\n"
        "<|im_start|>assistant\n7"
    )
    got = score_arithmetic_queries(
        [
            q + "\nAnswer: -1290",
            q + "\nAnswer: -1,290",
            q + "\nAnswer: 1290",
            q,
            "hello 3",
            chat,
            "What is 3 + 4? 3 + 4 = 7",
        ]
    )
    assert got == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0, 1.0]


@pytest.mark.slow
def test_smollm2_sometimes_solves_the_default_task():
    """The untrained SmolLM2-135M-Instruct earns some, not all, reward on `arithmetic`
    (measured 2026-11-27: greedy exact 0.71, sampled exact 0.12, closeness 0.50)."""
    import torch

    from trainkit.llm.models import load_model
    from trainkit.rlhf.rewards import math_closeness

    torch.manual_seed(0)
    model, tok = load_model("smollm2-135m-instruct")
    model.eval()
    tok.padding_side = "left"
    _, held = load_task("arithmetic", seed=0, n_heldout=24)
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": r["prompt"]}], tokenize=False, add_generation_prompt=True
        )
        for r in held
    ]
    enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False)
    ans = [r["answer"] for r in held]
    res = {}
    for name, kw in [
        ("greedy", {"do_sample": False}),
        ("sampled", {"do_sample": True, "temperature": 1.0, "top_p": 1.0}),
    ]:
        with torch.no_grad():
            out = model.generate(**enc, max_new_tokens=48, pad_token_id=tok.pad_token_id, **kw)
        comps = tok.batch_decode(out[:, enc["input_ids"].shape[1] :], skip_special_tokens=True)
        res[name] = (
            sum(math_exact(None, comps, answer=ans)) / len(ans),
            sum(math_closeness(None, comps, answer=ans)) / len(ans),
        )
    assert 0.3 <= res["greedy"][0] <= 0.95, res
    assert 0.0 < res["sampled"][0] < 0.9 and res["sampled"][1] > 0.2, res
