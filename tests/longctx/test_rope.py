"""RoPE rules: literal frequencies (head_dim 8, theta 1e4, L 64, s 4), agreement with
transformers' own ROPE_INIT_FUNCTIONS, and reload of saved configs with plain transformers."""

import math

import pytest
import torch

from trainkit.common.errors import UserError
from trainkit.longctx import rope

D, THETA, L, S = 8, 10000.0, 64, 4.0

# Hand-derived (see each rule's docstring); e.g. theta: 1e4 * 4**(8/6) = 63496.04,
# yarn: ramp lo=floor(-0.497)->0, hi=ceil(1.008)=2 -> gamma = [0, .5, 1, 1],
# llama3: pair 1 has wavelength 62.83 in [16, 64]: mu = (64/62.83 - 1)/3 = 0.0061969.
EXPECTED = {
    "default": [1.0, 0.1, 0.01, 0.001],
    "theta": [1.0, 0.0629960522, 0.0039685029, 0.00025],
    "linear": [0.25, 0.025, 0.0025, 0.00025],
    "dynamic": [1.0, 0.1, 0.01, 0.001],  # unchanged until the sequence outgrows L
    "yarn": [1.0, 0.0625, 0.0025, 0.00025],
    "llama3": [1.0, 0.0254647899, 0.0025, 0.00025],
}


def _base_config(max_pos=L):
    from transformers import LlamaConfig

    return LlamaConfig(
        hidden_size=32,
        num_attention_heads=4,
        num_key_value_heads=4,
        intermediate_size=64,
        num_hidden_layers=1,
        vocab_size=64,
        max_position_embeddings=max_pos,
        rope_parameters={"rope_type": "default", "rope_theta": THETA},
    )


def test_literal_frequencies_pure_functions():
    close = dict(rtol=1e-6, atol=1e-9)
    torch.testing.assert_close(
        rope.default_inv_freq(D, THETA), torch.tensor(EXPECTED["default"]), **close
    )
    torch.testing.assert_close(
        rope.default_inv_freq(D, rope.suggest_theta(256, D, THETA, L)),
        torch.tensor(EXPECTED["theta"]),
        **close,
    )
    torch.testing.assert_close(
        rope.linear_inv_freq(D, THETA, S), torch.tensor(EXPECTED["linear"]), **close
    )
    torch.testing.assert_close(
        rope.dynamic_inv_freq(D, THETA, S, L), torch.tensor(EXPECTED["dynamic"]), **close
    )
    # at n = 2L: theta' = 1e4 * (4*2 - 3)**(4/3) = 85498.8
    torch.testing.assert_close(
        rope.dynamic_inv_freq(D, THETA, S, L, seq_len=128),
        torch.tensor([1.0, 0.0584803522, 0.0034199520, 0.0002]),
        **close,
    )
    inv, scale = rope.yarn_inv_freq(D, THETA, S, L)
    torch.testing.assert_close(inv, torch.tensor(EXPECTED["yarn"]), **close)
    assert scale == pytest.approx(0.1 * math.log(4) + 1) == pytest.approx(1.1386294361)
    torch.testing.assert_close(
        rope.llama3_inv_freq(D, THETA, S, L), torch.tensor(EXPECTED["llama3"]), **close
    )


def test_rope_frequencies_by_name():
    for method in rope.METHODS:
        inv, _ = rope.rope_frequencies(method, D, THETA, factor=S, original_max_position=L)
        torch.testing.assert_close(inv, torch.tensor(EXPECTED[method]), rtol=1e-6, atol=1e-9)
    inv, _ = rope.rope_frequencies("theta", D, THETA, new_theta=1e6)
    torch.testing.assert_close(inv, torch.tensor([1.0, 0.0316227766, 0.001, 0.0000316227766]))
    with pytest.raises(UserError):
        rope.rope_frequencies("theta", D, THETA, factor=4)


def test_suggest_theta_values():
    assert rope.suggest_theta(256, 8, 1e4, 64) == pytest.approx(63496.0421, rel=1e-9)
    # Llama-3-8B 8K -> 80K: 5e5 * 10**(128/126)
    assert rope.suggest_theta(81920, 128, 5e5, 8192) == pytest.approx(5186125.48, rel=1e-8)
    assert rope.suggest_theta(100, 8, 1e4, 200) == 1e4
    # the rule: slowest wavelength / length is kept
    d, t = 32, 1e4
    t2 = rope.suggest_theta(2048, d, t, 256)
    wl = lambda th: 2 * math.pi / float(rope.default_inv_freq(d, th)[-1])  # noqa: E731
    assert wl(t2) / 2048 == pytest.approx(wl(t) / 256, rel=1e-5)


def test_theta_in_range_values():
    # d=32, 1e4, 256 -> 2048: pairs 7..15 turn less than once in 256 tokens; 1e4 * 8**(16/7)
    assert rope.theta_in_range(2048, 32, 1e4, 256) == pytest.approx(1159326.29, rel=1e-6)
    # Llama-3-8B 8K -> 80K: i_min = 35 of 64, 5e5 * 10**(64/35)
    assert rope.theta_in_range(81920, 128, 5e5, 8192) == pytest.approx(33693135.84, rel=1e-6)
    assert rope.theta_in_range(100, 32, 1e4, 200) == 1e4
    assert rope.theta_in_range(2048, 32, 1.5, 256) == 1.5  # every pair turns within 256
    with pytest.raises(UserError):
        rope.theta_in_range(40, 32, 1e4, 4)
    # the rule: at 2048 the first partially seen pair reaches exactly the angle it had at 256
    t2 = rope.theta_in_range(2048, 32, 1e4, 256)
    w, w2 = rope.default_inv_freq(32, 1e4), rope.default_inv_freq(32, t2)
    assert 2048 * float(w2[7]) == pytest.approx(256 * float(w[7]), rel=1e-5)
    assert 256 * float(w[6]) > 2 * math.pi > 256 * float(w[7])  # pair 6 turned fully, 7 not


@pytest.mark.parametrize("method", rope.METHODS)
def test_matches_transformers_and_reloads(method, tmp_path):
    from transformers import AutoConfig, LlamaForCausalLM
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    base = _base_config()
    cfg = rope.apply_rope(base, method, factor=S)
    assert base.rope_parameters == {"rope_type": "default", "rope_theta": THETA}  # not mutated
    assert cfg.max_position_embeddings == (L if method == "dynamic" else 256)
    assert cfg.trainkit_longctx["method"] == method
    assert cfg.trainkit_longctx["original_max_position_embeddings"] == L

    cfg.save_pretrained(tmp_path)
    re = AutoConfig.from_pretrained(tmp_path)
    assert re.rope_parameters == cfg.rope_parameters
    assert re.trainkit_longctx == cfg.trainkit_longctx
    rt = re.rope_parameters["rope_type"]
    if rt == "default":
        hf_inv, hf_scale = LlamaForCausalLM(re).model.rotary_emb.compute_default_rope_parameters(re)
    else:
        hf_inv, hf_scale = ROPE_INIT_FUNCTIONS[rt](re)
    mine, scale = rope.config_frequencies(re)
    torch.testing.assert_close(mine, hf_inv, rtol=1e-6, atol=0)
    torch.testing.assert_close(mine, torch.tensor(EXPECTED[method]), rtol=1e-6, atol=1e-9)
    assert scale == pytest.approx(hf_scale)
    # the model built from the reloaded config uses these frequencies
    model = LlamaForCausalLM(re)
    torch.testing.assert_close(model.model.rotary_emb.inv_freq, mine, rtol=1e-6, atol=0)
    if method == "dynamic":
        torch.testing.assert_close(
            rope.config_frequencies(re, seq_len=200)[0],
            ROPE_INIT_FUNCTIONS["dynamic"](re, seq_len=200)[0],
            rtol=1e-6,
            atol=0,
        )


def test_paper_setting_llama3_8b():
    cfg = rope.apply_rope(_base_config(8192), "theta", theta=2e8, factor=10)
    assert cfg.rope_parameters == {"rope_type": "default", "rope_theta": 2e8}
    assert cfg.max_position_embeddings == 81920


def test_one_rounding_of_the_target_length():
    # 3000 * 2.3 = 6899.999999999999 in binary floating point: int() gave 6899 where the
    # saved config said 6900, so the theta rule and apply_rope disagreed by ~1e-3
    assert 3000 * 2.3 < 6900 and rope.target_length(3000, 2.3) == 6900
    cfg = rope.apply_rope(_base_config(3000), "theta", factor=2.3)
    assert cfg.max_position_embeddings == 6900
    inv, _ = rope.rope_frequencies("theta", D, THETA, factor=2.3, original_max_position=3000)
    want = rope.suggest_theta(6900, D, THETA, 3000)
    assert cfg.rope_parameters["rope_theta"] == pytest.approx(want, rel=1e-12)
    assert torch.allclose(inv, rope.default_inv_freq(D, want), rtol=1e-12, atol=0)


def test_user_errors():
    base = _base_config()
    with pytest.raises(UserError, match="unknown rope method"):
        rope.apply_rope(base, "longrope", factor=2)
    with pytest.raises(UserError, match="needs factor"):
        rope.apply_rope(base, "yarn")
    with pytest.raises(UserError, match=">= 1"):
        rope.apply_rope(base, "linear", factor=0.5)
    with pytest.raises(UserError, match="already uses"):
        rope.apply_rope(rope.apply_rope(base, "linear", factor=2), "yarn", factor=2)
