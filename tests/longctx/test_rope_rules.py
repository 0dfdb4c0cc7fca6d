"""The one table of RoPE rules (longctx/rope.RULES) and everything that reads it: the
config types of `longctx extend` and `longctx eval`, their checks, rope_frequencies,
apply_rope / config_frequencies and the table in docs/papers.md."""

from pathlib import Path
from typing import get_args, get_type_hints

import pytest
import torch
from transformers import LlamaConfig

from trainkit.common.errors import UserError
from trainkit.config import ConfigError, load_config
from trainkit.longctx import rope
from trainkit.longctx.eval.runner import EvalConfig
from trainkit.longctx.recipe import ExtendConfig, RopeSection

ROOT = Path(__file__).resolve().parents[2]
D, THETA, L, S = 16, 10000.0, 64, 4.0


def test_table_rows():
    assert rope.METHODS == ("theta", "linear", "dynamic", "yarn", "llama3")
    assert [n for n, r in rope.RULES.items() if not r.needs_factor] == ["theta"]
    assert [n for n, r in rope.RULES.items() if r.keeps_length] == ["dynamic"]
    assert {r.rope_type for r in rope.RULES.values()} == {
        "default",
        "linear",
        "dynamic",
        "yarn",
        "llama3",
    }


def test_config_types_follow_the_table():
    extend = get_args(get_type_hints(RopeSection)["method"])
    evalc = get_args(get_type_hints(EvalConfig)["rope_method"])
    for args in (extend, evalc):
        assert "none" in args
        assert tuple(a for a in args if a != "none") == rope.METHODS
    with pytest.raises(ConfigError, match="must be one of") as e:
        load_config(ExtendConfig, None, ["rope.method=longrope"])
    assert "\n" not in str(e.value)


def test_factor_checks_follow_the_table():
    for name, r in rope.RULES.items():
        cfg = load_config(ExtendConfig, None, [f"rope.method={name}", "data.synthetic=random"])
        ev = EvalConfig(model="m", rope_method=name)
        if r.needs_factor:
            with pytest.raises(UserError, match="needs rope.factor"):
                cfg.check()
            with pytest.raises(UserError, match="needs rope_factor"):
                ev.validate()
        else:
            cfg.check()
            ev.validate()


def test_unknown_rule_is_one_line_user_error():
    for call in (
        lambda: rope.rule("longrope"),
        lambda: rope.rope_frequencies("longrope", D, THETA, factor=S, original_max_position=L),
        lambda: rope.apply_rope(_config(), "longrope", factor=S),
    ):
        with pytest.raises(UserError, match="expected one of theta, linear") as e:
            call()
        assert "\n" not in str(e.value)


def _config() -> LlamaConfig:
    return LlamaConfig(
        hidden_size=32,
        num_attention_heads=2,
        num_key_value_heads=2,
        intermediate_size=64,
        num_hidden_layers=1,
        vocab_size=32,
        max_position_embeddings=L,
        rope_parameters={"rope_type": "default", "rope_theta": THETA},
    )


@pytest.mark.parametrize("name", rope.METHODS)
def test_each_row_drives_frequencies_and_configs(name):
    r = rope.RULES[name]
    inv, scale = rope.rope_frequencies(name, D, THETA, factor=S, original_max_position=L)
    assert inv.shape == (D // 2,) and scale >= 1.0
    if r.needs_original:
        with pytest.raises(UserError, match="needs original_max_position"):
            rope.rope_frequencies(name, D, THETA, factor=S)
    cfg = rope.apply_rope(_config(), name, factor=S)
    assert cfg.rope_parameters["rope_type"] == r.rope_type
    assert cfg.max_position_embeddings == (L if r.keeps_length else int(L * S))
    back, back_scale = rope.config_frequencies(cfg)
    torch.testing.assert_close(back, inv, rtol=1e-6, atol=0)
    assert back_scale == pytest.approx(scale)
    if r.needs_factor:
        with pytest.raises(UserError, match="needs factor"):
            rope.apply_rope(_config(), name)
        with pytest.raises(UserError, match="only used by method 'theta'"):
            rope.apply_rope(_config(), name, factor=S, theta=1e6)


def test_docs_hold_the_table():
    assert rope.markdown_table() in (ROOT / "docs/papers.md").read_text()
