"""The long-context demo section on the shipped tiny base (quick mode, one small cell grid)."""

import pytest

from trainkit.longctx import demo, tinybase, tinydata


def test_estimates():
    assert demo.ESTIMATE_S["quick"] <= 90 and demo.ESTIMATE_S["full"] <= 300


def test_shipped_base_retrieves_within_window():
    if not (tinybase.ASSET_DIR / "config.json").is_file():
        pytest.skip("no shipped tiny base")
    model, tok = tinybase.load_shipped()
    assert model.config.vocab_size == 64 and model.config.max_position_embeddings == 256
    t = tinybase.eval_section(model)
    g = tinybase.grid_accuracy(model, tok, t, "passkey", [128, 256], [0.0, 0.5, 1.0], 4, seed=3)
    assert g["accuracy"] >= 0.9
    # greedy generation through the plain tokenizer agrees with the teacher-forced check
    import torch

    from trainkit.longctx.chartok import vocab

    ids, lab = tinydata.sample_ids(tok, t, "passkey", 200, 0.5, 3, 0, 1)
    n = sum(1 for x in lab if x == -100)
    out = model.generate(
        torch.tensor([ids[:n]]),
        max_new_tokens=8,
        do_sample=False,
        eos_token_id=vocab()["<|end|>"],
        pad_token_id=0,
    )
    assert out[0, n:].tolist()[:6] == lab[n:]


@pytest.mark.slow
def test_demo_quick(tmp_path):
    if not (tinybase.ASSET_DIR / "config.json").is_file():
        pytest.skip("no shipped tiny base")
    sec = demo.run(tmp_path, quick=True)
    assert sec.headline and all((tmp_path / p).is_file() for _, p in sec.images)
