"""The CPU experiment of issue 11 with the shipped tiny base (slow: ~10-15 min on 2 cores).

Targets: after theta x8 + the fixed fine-tune budget, >= 90% passkey and >= 80% kv averaged
over lengths 512..2048 x 5 depths, from <= 20% before; theta beats the same budget without
the theta change by >= 30 points at 2048 on both tasks; short-context (64..256) accuracy
and answer perplexity change by <= 5%.
"""

import pytest

from trainkit.longctx import tinybase


@pytest.mark.slow
def test_tiny_8x_experiment_targets():
    if not (tinybase.ASSET_DIR / "config.json").is_file():
        pytest.skip("no shipped tiny base")
    from trainkit.longctx.recipe import tiny_experiment

    res = tiny_experiment(steps=30, samples=4, ft_rules=("theta", "none"),
                          free_rules=("theta", "linear", "yarn"), threads=2, log=None)
    v, c = res["variants"], res["checks"]
    assert v["base"]["passkey"] <= 0.2 and v["base"]["kv"] <= 0.2
    assert v["theta+ft"]["passkey"] >= 0.9
    assert v["theta+ft"]["kv"] >= 0.8
    assert c["theta_beats_notheta_passkey_by_0.3"] and c["theta_beats_notheta_kv_by_0.3"]
    assert c["short_passkey_within_0.05"] and c["short_kv_within_0.05"]
    assert c["short_ppl_within_5%"]
    assert v["theta+ft"]["ft_seconds"] <= 20 * 60
