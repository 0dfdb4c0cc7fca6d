"""Evaluation: scorer literal values, grid summaries, an oracle model with a known
context limit, and the mechanics on a tiny random LlamaForCausalLM."""

import json
import math
import re

import pytest
import torch

from trainkit.common.errors import UserError
from trainkit.longctx.chartok import char_tokenizer
from trainkit.longctx.eval import scoring
from trainkit.longctx.eval.common import summarize
from trainkit.longctx.eval.runner import EvalConfig, evaluate


def test_scoring_literals():
    assert scoring.normalize("  The Pass-Key: 71432! ") == "the pass key 71432"
    assert scoring.exact_match("71432.", "71432") == 1.0
    assert scoring.exact_match("The key is 71432.", "71432") == 0.0
    assert scoring.contains_match("The key is 71432.", "71432") == 1.0
    assert scoring.contains_match("714320", "71432") == 0.0
    assert scoring.contains_match("anything", "") == 0.0
    assert scoring.lcs_length(list("abcbdab"), list("bdcaba")) == 4
    r = scoring.rouge_l("the cat sat on the mat", "the cat is on the mat")
    assert r["precision"] == pytest.approx(5 / 6) and r["f"] == pytest.approx(5 / 6)
    r = scoring.rouge_l("a b c d", "a c e")  # LCS "a c": P 1/2, R 2/3, F 4/7
    assert (r["precision"], r["recall"], r["f"]) == pytest.approx((0.5, 2 / 3, 4 / 7))
    assert scoring.rouge_l("", "a")["f"] == 0.0
    assert scoring.score("x 12 y", "12", "rouge") == pytest.approx(0.5)


def test_summarize_literals():
    rows = [
        {"length_target": L, "depth_target": d, "score": s}
        for L, d, s in [
            (100, 0.0, 1.0),
            (100, 0.0, 0.0),
            (100, 1.0, 1.0),
            (200, 0.0, 0.0),
            (200, 1.0, 1.0),
        ]
    ]
    s = summarize(rows, [100, 200], [0.0, 1.0])
    assert s["grid"] == {"100": {"0.0": 0.5, "1.0": 1.0}, "200": {"0.0": 0.0, "1.0": 1.0}}
    assert s["by_length"] == {"100": 0.75, "200": 0.5}
    assert s["by_depth"] == {"0.0": 0.25, "1.0": 1.0}
    assert s["accuracy"] == pytest.approx(0.625) and s["n"] == 5


class OracleModel:
    """Answers passkey/kv prompts correctly up to ``limit`` prompt tokens, else '0'."""

    training = False
    device = torch.device("cpu")

    def __init__(self, tok, limit):
        self.tok, self.limit = tok, limit

    def eval(self):
        return self

    def generate(self, ids, max_new_tokens, **kw):
        text = self.tok.decode(ids[0])
        asked = re.search(r"value of key (\w+)\?", text)
        pat = rf"key {asked.group(1)} is (\d+)" if asked else r"pass key is (\d+)"
        ans = re.search(pat, text).group(1) if ids.shape[1] <= self.limit else "0"
        new = self.tok(ans, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]
        return torch.cat([ids, torch.tensor([new])], dim=1)


def test_oracle_grid_values():
    tok = char_tokenizer()
    res = evaluate(
        OracleModel(tok, limit=300),
        tok,
        ["passkey", "kv"],
        [200, 600],
        [0.0, 0.5, 1.0],
        3,
        None,
        samples=2,
    )
    for task in ("passkey", "kv"):
        assert res[task]["by_length"] == {"200": 1.0, "600": 0.0}
        assert res[task]["by_depth"] == {"0.0": 0.5, "0.5": 0.5, "1.0": 0.5}
        assert res[task]["accuracy"] == 0.5 and res[task]["n"] == 12


def _tiny_model():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = char_tokenizer()
    cfg = LlamaConfig(
        vocab_size=64,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        pad_token_id=0,
        bos_token_id=2,
        eos_token_id=tok.eos_token_id,
    )
    return LlamaForCausalLM(cfg).eval(), tok


def test_evaluate_tiny_model_files_and_reproducible(tmp_path):
    model, tok = _tiny_model()
    tasks = ["needle", "passkey", "kv", "topics", "ppl"]
    res = evaluate(
        model, tok, tasks, [96, 160], [0.0, 0.5, 1.0], 0, tmp_path, ppl_length=64, ppl_windows=4
    )
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["kv"] == res["kv"]
    assert set(saved) == set(tasks) | {"config"}
    for t in ("needle", "passkey", "kv", "topics"):
        assert (tmp_path / f"{t}.png").read_bytes()[:4] == b"\x89PNG"
        assert {"accuracy", "by_length", "by_depth"} <= set(saved[t])
        assert 0.0 <= saved[t]["accuracy"] <= 1.0
        assert set(saved[t]["by_length"]) == {"96", "160"}
    assert set(saved["needle"]["by_depth"]) == {"0.0", "0.5", "1.0"}
    assert saved["topics"]["by_depth"].keys() == {"0.0"}
    # a random 64-token model is near uniform: ppl within a factor 2 of the vocabulary size
    assert 32 < saved["ppl"]["ppl"] < 128 and math.isfinite(saved["ppl"]["nll"])
    preds = (tmp_path / "predictions.jsonl").read_text().splitlines()
    assert len(preds) == 6 * 3 + 2
    again = evaluate(model, tok, ["passkey"], [96, 160], [0.0, 0.5, 1.0], 0, None)
    assert again["passkey"] == saved["passkey"]
    first = [json.loads(x) for x in preds if '"passkey"' in x]
    other = evaluate(model, tok, ["passkey"], [96], [0.5], 1, tmp_path / "o")
    o_pred = json.loads((tmp_path / "o" / "predictions.jsonl").read_text())
    assert o_pred["answer"] != next(
        r["answer"] for r in first if r["length_target"] == 96 and r["depth_target"] == 0.5
    )
    assert other["passkey"]["n"] == 1


def test_eval_config_errors():
    from trainkit.config import load_config

    with pytest.raises(UserError, match="unknown eval task"):
        load_config(EvalConfig, None, ["tasks=[needle,foo]"])
    with pytest.raises(UserError, match="depths"):
        load_config(EvalConfig, None, ["depths=[0.5,2]"])
    cfg = load_config(EvalConfig, None, ["lengths=256,512", "tasks=passkey"])
    assert cfg.lengths == [256, 512] and cfg.tasks == ["passkey"]


def test_cli_eval_and_make_data(tmp_path, capsys):
    from trainkit.cli import main

    model, tok = _tiny_model()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    rc = main(
        [
            "longctx",
            "eval",
            "--model",
            str(tmp_path / "m"),
            "--tasks",
            "passkey,ppl",
            "--lengths",
            "96",
            "--depths",
            "0.5",
            "--out",
            str(tmp_path / "e"),
            "--seed",
            "2",
            "ppl_length=64",
            "ppl_windows=2",
        ]
    )
    assert rc == 0
    res = json.loads((tmp_path / "e" / "results.json").read_text())
    assert res["config"]["seed"] == 2 and set(res) == {"passkey", "ppl", "config"}
    assert main(["longctx", "eval", "--model", str(tmp_path / "nope")]) == 2
    assert (
        main(
            [
                "longctx",
                "make-data",
                "--out",
                str(tmp_path / "d.jsonl"),
                "--tasks",
                "passkey",
                "--lengths",
                "300",
                "data.samples_per_task=3",
            ]
        )
        == 0
    )
    assert len((tmp_path / "d.jsonl").read_text().splitlines()) == 3
    assert "not found" in capsys.readouterr().err


def test_eval_rope_rule_applied_training_free(tmp_path):
    """`--rope-method linear --rope-factor 2` halves every rotary frequency of the loaded model
    (w_i = 10000^(-2i/32) / 2), leaves the weights alone, and results.json records the rule."""
    from trainkit.cli import main
    from trainkit.config import load_config
    from trainkit.longctx.eval.runner import load_for_eval

    model, tok = _tiny_model()
    model.save_pretrained(tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    base = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = load_config(
        EvalConfig, None, [f"model={tmp_path / 'm'}", "rope_method=linear", "rope_factor=2"]
    )
    ext, _ = load_for_eval(cfg)
    inv = ext.model.rotary_emb.inv_freq
    assert inv.shape == (16,)
    assert inv[0].item() == pytest.approx(0.5)
    assert inv[1].item() == pytest.approx(0.5 * 10000 ** (-2 / 32), rel=1e-6)  # 0.2811707
    assert inv[15].item() == pytest.approx(0.5 * 10000 ** (-30 / 32), rel=1e-6)  # 8.889e-5
    assert ext.config.max_position_embeddings == 512
    assert all(torch.equal(base[k], v) for k, v in ext.state_dict().items() if k in base)
    # theta rule: the new base is used as given
    cfg = load_config(
        EvalConfig, None, [f"model={tmp_path / 'm'}", "rope_method=theta", "rope_theta=40000"]
    )
    ext, _ = load_for_eval(cfg)
    assert ext.model.rotary_emb.inv_freq[1].item() == pytest.approx(40000 ** (-1 / 16), rel=1e-6)
    rc = main(
        [
            "longctx",
            "eval",
            "--model",
            str(tmp_path / "m"),
            "--tasks",
            "passkey",
            "--lengths",
            "96",
            "--depths",
            "0.5",
            "--out",
            str(tmp_path / "e"),
            "--rope-method",
            "yarn",
            "--rope-factor",
            "4",
            "--original-max-position",
            "128",
        ]
    )
    assert rc == 0
    rope = json.loads((tmp_path / "e" / "results.json").read_text())["config"]["rope"]
    assert rope["rope_parameters"]["rope_type"] == "yarn"
    assert rope["rope_parameters"]["factor"] == 4.0
    assert rope["rope_parameters"]["original_max_position_embeddings"] == 128
    assert rope["max_position_embeddings"] == 512
    assert rope["trainkit_longctx"]["method"] == "yarn"
    assert rope["trainkit_longctx"]["base_rope_theta"] == 10000.0
    with pytest.raises(UserError, match="needs rope_factor"):
        load_config(EvalConfig, None, ["rope_method=llama3"])
    with pytest.raises(UserError, match="rope_method is none"):
        load_config(EvalConfig, None, ["rope_factor=2"])
