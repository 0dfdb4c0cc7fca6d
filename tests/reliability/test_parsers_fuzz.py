"""Property-based tests (hypothesis) of the parsers not covered elsewhere: preference pairs
(``rlhf rm`` / ``dpo``), KAN CSVs and RL prompt records. Whatever the bytes, a parser
returns valid records or raises ``UserError`` with one line naming the file, never another
exception. (Configs, SFT data and formulas: tests/common/test_config.py,
tests/llm/test_data.py, tests/kan/test_formula.py.)"""

import contextlib
import json
import math
import tempfile
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from trainkit.common.errors import UserError

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=12)
_json_value = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | _text,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
    max_leaves=6,
)
_pair = st.fixed_dictionaries(
    {},
    optional={
        "prompt": _text | _json_value,
        "chosen": _text | _json_value,
        "rejected": _text | _json_value,
    },
)
_pair_line = st.one_of(
    _pair.map(json.dumps),
    _json_value.map(json.dumps),
    _text,
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),
    st.just('{"prompt": "\\ud800", "chosen": "a", "rejected": "b"}'),
    st.just('{"prompt": ' + "9" * 5000 + "}"),
)


@contextlib.contextmanager
def _written(data: bytes, suffix: str):
    with tempfile.TemporaryDirectory(prefix="fuzz-") as d:
        p = Path(d) / f"f{suffix}"
        p.write_bytes(data)
        yield p


def _one_line(e: UserError, p: Path) -> None:
    msg = str(e)
    assert "\n" not in msg and str(p) in msg, msg


@settings(max_examples=200, deadline=None)
@given(lines=st.lists(_pair_line, max_size=5), latin1=st.booleans())
def test_preference_pairs_parse_or_user_error(lines, latin1):
    from trainkit.rlhf.trainers.pairs import read_pairs

    text = "\n".join(lines)
    with _written(text.encode("latin-1" if latin1 else "utf-8", "replace"), ".jsonl") as p:
        try:
            recs = read_pairs(p)
        except UserError as e:
            _one_line(e, p)
            return
    assert recs and all(isinstance(r, dict) for r in recs)
    for r in recs:
        for k in ("prompt", "chosen", "rejected"):
            r[k].encode("utf-8")  # a real string: no lone surrogate survives


_cell = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.integers().map(str),
    _text,
    st.sampled_from(["", " ", "nan", "inf", "-inf", "1e999", '"1"', "\x00", "x,y"]),
)


@settings(max_examples=200, deadline=None)
@given(
    header=st.lists(st.sampled_from(["x", "y", "z", "", " y "]), max_size=4),
    rows=st.lists(st.lists(_cell, max_size=4), max_size=8),
    junk=st.binary(max_size=8),
)
def test_kan_csv_parse_or_user_error(header, rows, junk):
    from trainkit.kan.recipes import read_csv

    body = "\n".join([",".join(header), *(",".join(r) for r in rows)]).encode("utf-8") + junk
    with _written(body, ".csv") as p:
        try:
            names, xs, ys = read_csv(str(p), "y")
        except UserError as e:
            _one_line(e, p)
            return
    assert len(ys) >= 4 and len(xs) == len(ys) and "y" not in names
    assert all(len(r) == len(names) for r in xs)
    assert all(math.isfinite(v) for r in xs for v in r) and all(math.isfinite(v) for v in ys)


@settings(max_examples=100, deadline=None)
@given(lines=st.lists(_pair_line, max_size=4))
def test_rl_prompt_records_parse_or_user_error(lines):
    from trainkit.rlhf.trainers.rl_config import DataSection
    from trainkit.rlhf.trainers.rl_data import read_prompt_file

    with _written("\n".join(lines).encode("utf-8", "replace"), ".jsonl") as p:
        try:
            recs = read_prompt_file(str(p), DataSection())
        except UserError as e:
            _one_line(e, p)
            return
    assert recs and all(
        (isinstance(r["prompt"], str) and r["prompt"].strip())
        or (isinstance(r["prompt"], list) and r["prompt"][-1]["role"] != "assistant")
        for r in recs
    )


def test_the_parsers_accept_valid_files():
    """The success branches the properties check are reachable."""
    from trainkit.kan.recipes import read_csv
    from trainkit.rlhf.trainers.pairs import read_pairs
    from trainkit.rlhf.trainers.rl_config import DataSection
    from trainkit.rlhf.trainers.rl_data import read_prompt_file

    pair = json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"})
    with _written(f"{pair}\n\n{pair}\n".encode(), ".jsonl") as p:
        assert [r["chosen"] for r in read_pairs(p)] == ["c", "c"]
        assert [r["prompt"] for r in read_prompt_file(str(p), DataSection())] == ["p", "p"]
    with _written(b"x, y\n1,2\n2,4\n3,6.5\n4,-1e3\n", ".csv") as p:
        assert read_csv(str(p), "y") == (["x"], [[1.0], [2.0], [3.0], [4.0]], [2.0, 4.0, 6.5, -1e3])
