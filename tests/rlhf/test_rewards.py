"""Rule rewards, loading, combining, failure isolation and the remote client."""

import math
import textwrap
from fractions import Fraction

import pytest

from trainkit.common.errors import UserError
from trainkit.rlhf.rewards import (
    RemoteReward,
    RewardError,
    combine,
    extract_answer,
    format_reward,
    length_penalty,
    load_reward,
    math_closeness,
    math_exact,
    parse_number,
    score,
)


@pytest.mark.parametrize(
    "text,want",
    [
        ("3 + 4 = 7.\nAnswer: 7", 7),
        ("The answer is 42.", 42),
        ("so the total is \\boxed{-1,234}. Then 5", -1234),
        ("Answer: 1,234,567", 1234567),
        ("#### 72", 72),
        ("I get -3.", -3),
        ("first 3, then 5, so 8", 8),
        ("\\boxed{\\frac{7}{2}}", Fraction(7, 2)),
        ("Answer: 3.50", Fraction(7, 2)),
        ("Final answer: **12**", 12),
        ("Answer: −5", -5),  # unicode minus
        ("Answer: 12 (Answer: 13 was wrong)", 13),  # the last Answer wins
        ("1,2,3", 3),  # a list, not a thousands separator
        ("no digits here", None),
        ("\\boxed{x+1}", None),
    ],
)
def test_extract_answer(text, want):
    got = extract_answer(text)
    assert got == (None if want is None else Fraction(want))


def test_parse_number_exact():
    assert parse_number("3.0") == parse_number("3") == 3
    assert parse_number("1/2") == Fraction(1, 2) and parse_number("1/0") is None
    assert parse_number("abc") is None


def test_math_exact_and_closeness():
    comps = ["Answer: 8", "Answer: 9", "blah", "Answer: 8.0", "Answer: -8"]
    ans = [8, "8", 8, 8, -8]
    assert math_exact([""] * 5, comps, answer=ans) == [1.0, 0.0, 0.0, 1.0, 1.0]
    # closeness: 1 - |9 - 8| / 8 = 0.875 ; |-2 - 20| / 20 = 1.1 -> 0 ; |3 - 0| / max(1, 0) -> 0
    got = math_closeness(
        [""] * 4, ["Answer: 8", "Answer: 9", "Answer: -2", "3"], answer=[8, 8, 20, 0]
    )
    assert got == [1.0, 0.875, 0.0, 0.0]
    assert math_closeness([""], ["Answer: 5"], answer=[4]) == [0.75]  # 1 - 1/4


def test_format_and_length_penalty():
    f = format_reward()
    assert f([""] * 4, ["3+4=7\nAnswer: 7", "Answer: 7 apples", "answer: -12", "7"]) == [
        1.0,
        0.0,
        1.0,
        0.0,
    ]
    g = format_reward(r"^\d+$", fullmatch=True)
    assert g([""] * 2, ["42", "42 x"]) == [1.0, 0.0]
    with pytest.raises(UserError):
        format_reward("(unclosed")
    p = length_penalty(target=10, coef=0.5)
    # lengths 5, 15, 30: 0 ; -.5 * (5/10) = -.25 ; -.5 * min(1, 20/10) = -.5
    assert p([""] * 3, ["x" * 5, "x" * 15, "x" * 30]) == [0.0, -0.25, -0.5]


def test_combine_weighted_sum():
    f = combine([(math_exact, 1.0), (format_reward(), 0.5), (length_penalty(5), 2.0)])
    # "Answer: 3": exact 1 + .5 * format 1 + 2 * -min(1, 4/5) = 1.5 - 1.6 = -0.1
    # "4":         exact 0 + 0 + 2 * 0 = 0
    got = f(["", ""], ["Answer: 3", "4"], answer=[3, 3])
    assert got[0] == pytest.approx(-0.1) and got[1] == 0.0


def test_load_reward_forms(tmp_path):
    assert load_reward("math_exact") is math_exact
    assert load_reward("trainkit.rlhf.rewards:math_closeness") is math_closeness
    (tmp_path / "my_rw.py").write_text(
        "def r(prompts, completions, **kw):\n    return [len(c) for c in completions]\n"
    )
    f = load_reward(f"{tmp_path}/my_rw.py:r")
    assert f(["a"], ["abc"]) == [3]
    assert load_reward(len) is len
    remote = load_reward("http://127.0.0.1:5000/get_reward")
    assert isinstance(remote, RemoteReward) and remote.url.endswith(":5000/get_reward")
    from trainkit.rlhf.sandbox import SandboxedReward

    sb = load_reward(f"sandbox:{tmp_path}/my_rw.py:r")
    assert isinstance(sb, SandboxedReward) and sb.ref == f"{tmp_path}/my_rw.py:r"
    for bad, msg in [
        ("nope", "not a built-in"),
        ("no.such.module:f", "cannot be imported"),
        (f"{tmp_path}/missing.py:r", "not found"),
        (f"{tmp_path}/my_rw.py:absent", "is not a callable"),
        ("trainkit.rlhf.rewards:ANSWER_LINE", "is not a callable"),
    ]:
        with pytest.raises(RewardError, match=msg):
            load_reward(bad)
    (tmp_path / "broken.py").write_text("raise RuntimeError('bad import')\n")
    with pytest.raises(RewardError, match="RuntimeError: bad import"):
        load_reward(f"{tmp_path}/broken.py:r")


def _flaky(prompts, completions, **labels):
    out = []
    for c in completions:
        if c == "raise":
            raise KeyError("no such key")
        out.append(float("nan") if c == "nan" else (math.inf if c == "inf" else 1.0))
    return out


def test_score_isolates_raising_and_nan_samples(caplog):
    res = score(_flaky, ["p"] * 5, ["ok", "raise", "nan", "ok", "inf"], max_invalid_fraction=1.0)
    assert res.rewards == [1.0, 0.0, 0.0, 1.0, 0.0]
    assert res.valid == [True, False, False, True, False]
    assert res.errors[1] == "KeyError: 'no such key'"
    assert res.errors[2] == "non-finite reward nan" and res.errors[4] == "non-finite reward inf"
    assert (res.n_invalid, res.n_nan, res.n_raised) == (3, 2, 1)
    assert "3 of 5 samples invalid" in caplog.text  # loud: a warning per batch


def test_score_stops_the_run_past_the_limit():
    with pytest.raises(RewardError, match="failed on 2 of 3 samples"):
        score(_flaky, ["p"] * 3, ["raise", "nan", "ok"], max_invalid_fraction=0.5)
    # a reward with the wrong number of outputs is a bug: every sample fails loudly
    with pytest.raises(RewardError, match="returned 2 values for 1 completions"):
        score(lambda p, c: [1.0, 2.0], ["p"], ["c"])
    # a missing label names the label
    with pytest.raises(RewardError, match="label 'answer'"):
        score(math_exact, ["p"], ["Answer: 1"])
    assert score(_flaky, [], []).rewards == []
    with pytest.raises(ValueError, match="label 'answer' must hold one value per completion"):
        score(math_exact, ["p", "q"], ["1", "2"], {"answer": [1]})


def test_remote_reward_bad_url():
    with pytest.raises(UserError, match="http"):
        RemoteReward("ftp://x")


def test_remote_reward_retries_then_fails_on_closed_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()  # nothing listens there now
    f = RemoteReward(f"http://127.0.0.1:{port}/", timeout=1, retries=2, backoff=0.01)
    with pytest.raises(RuntimeError, match="after 3 attempts"):
        f(["p"], ["c"])
    res = score(f, ["p"], ["c"], max_invalid_fraction=1.0)  # inside score: a recorded error
    assert res.valid == [False] and "after 3 attempts" in res.errors[0]


def test_user_reward_file_used_through_score(tmp_path):
    (tmp_path / "r.py").write_text(
        textwrap.dedent("""
        def r(prompts, completions, answer):
            return [1.0 if c.strip() == str(a) else -1.0 for c, a in zip(completions, answer)]
    """)
    )
    f = load_reward(f"{tmp_path}/r.py:r")
    assert score(f, ["", ""], ["5", "6"], {"answer": [5, 5]}).rewards == [1.0, -1.0]


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=200, deadline=None)
@given(st.integers(-(10**9), 10**9), st.text(max_size=40))
def test_extract_answer_properties(n, noise):
    # never raises on arbitrary text; an "Answer:" line (with thousands commas) is read exactly
    extract_answer(noise)
    assert extract_answer(noise + f"\nAnswer: {n:,}") == n
    assert extract_answer(f"\\boxed{{{n}}} " + noise.replace("\\boxed{", "")) == n
