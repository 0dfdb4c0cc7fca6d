"""DPO recipe: ln 2 at step 0, learning, references (copy / adapter-disabled / table)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from trainkit.common.errors import UserError
from trainkit.config import load_config
from trainkit.rlhf.trainers.dpo import RULES, DPOConfig, collate, encode_pair, train_dpo

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "rlhf"


TASK = "arithmetic_number_only:high=19"


def write_pairs(folder: Path, n: int, n_heldout: int, seed: int = 0) -> tuple[Path, Path]:
    """Format preference from trainkit.rlhf.tasks: chosen = bare number, rejected = wordy."""
    from trainkit.rlhf.tasks import write_preference_data

    return write_preference_data(folder, n=n, n_heldout=n_heldout, seed=seed, task=TASK)


@pytest.fixture(scope="module")
def pref_data(tmp_path_factory):
    return write_pairs(tmp_path_factory.mktemp("dpo_pref"), 64, 24)


def _cfg(pref_data, out, *extra):
    return load_config(
        DPOConfig,
        None,
        [
            f"data.path={pref_data[0]}",
            f"data.eval_path={pref_data[1]}",
            "model.name=tiny-llama",
            "train.batch_size=4",
            "train.log_every=1",
            "train.progress=false",
            "data.max_len=64",
            "eval.batch_size=24",
            "eval.num_prompts=4",
            "eval.max_new_tokens=4",
            f"output_dir={out}",
            *extra,
        ],
    )


# one step on 8 pairs, no held-out split, no generation, nothing saved
NO_EVAL = (
    "data.limit=8",
    "data.eval_path=",
    "data.eval_fraction=0",
    "eval.generate=false",
    "train.save=none",
)


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]


def _run(cfg):
    import torch

    snap = {}

    def hook(model):
        for n, p in model.named_parameters():
            snap[n] = (p, p.detach().clone(), p.requires_grad)

    s = train_dpo(cfg, on_model=hook)
    moved = {n: not torch.equal(p.detach(), p0) for n, (p, p0, _) in snap.items()}
    trainable = {n for n, (_, _, g) in snap.items() if g}
    return s, moved, trainable


def test_dpo_full_finetune_frozen_copy(pref_data, tmp_path):
    out = tmp_path / "full"
    s, moved, trainable = _run(
        _cfg(pref_data, out, "train.max_steps=6", "optim.lr=1e-3", "train.save=none")
    )
    first = next(r for r in _records(out) if r["step"] == 1 and "loss" in r)
    assert abs(first["loss"] - math.log(2)) < 1e-5  # policy == reference at step 0
    assert first["margin"] == 0.0
    step0 = next(r for r in _records(out) if r["step"] == 0)
    assert step0["eval/accuracy"] == 0.5  # every implicit reward is 0: all ties
    base = step0["eval/base_logp_accuracy"]  # the base model's own ranking: the "before"
    assert 0.0 <= base <= 1.0 and s["heldout_accuracy_before"] == s["base_logp_accuracy"] == base
    assert 0.0 <= s["heldout_logp_accuracy"] <= 1.0
    assert s["base_mean_logp_accuracy"] == step0["eval/base_mean_logp_accuracy"]
    assert 0.0 <= s["base_mean_logp_accuracy"] <= 1.0
    assert s["heldout_accuracy"] >= 0.9
    assert s["heldout_margin"] > 0.5
    assert len(trainable) > 10 and all(moved[n] for n in trainable), [
        n for n in trainable if not moved[n]
    ]
    assert 0.0 <= s["follow_rate_before"] <= 1.0 and len(s["samples_after"]) == 4


def test_dpo_lora_adapter_disabled_reference(pref_data, tmp_path):
    out = tmp_path / "lora"
    s, moved, trainable = _run(
        _cfg(
            pref_data,
            out,
            "lora.enabled=true",
            "lora.r=8",
            "lora.alpha=16",
            "lora.dropout=0",
            "train.max_steps=6",
            "optim.lr=5e-3",
            "eval.generate=false",
        )
    )
    first = next(r for r in _records(out) if r["step"] == 1 and "loss" in r)
    assert abs(first["loss"] - math.log(2)) < 1e-5
    assert all("lora_" in n for n in trainable) and len(trainable) == 2 * 2 * 7
    assert all(moved[n] for n in trainable)
    assert not any(moved[n] for n in moved if n not in trainable)  # base stays the reference
    step0 = next(r for r in _records(out) if r["step"] == 0)
    assert step0["eval/accuracy"] == 0.5 and s["heldout_accuracy"] >= 0.9
    assert 0.0 <= s["heldout_accuracy_before"] == step0["eval/base_logp_accuracy"] <= 1.0
    assert (out / "adapter" / "adapter_config.json").is_file()


def test_ipo_precomputed_reference_step0_value(pref_data, tmp_path):
    # IPO at step 0: (delta - 1/(2 beta))^2 with delta = 0 and beta = 0.1 -> 25.
    out = tmp_path / "ipo"
    train_dpo(
        _cfg(
            pref_data,
            out,
            "train.loss_type=ipo",
            "train.ref=precompute",
            "train.max_steps=1",
            "optim.lr=1e-4",
            *NO_EVAL,
        )
    )
    first = next(r for r in _records(out) if r["step"] == 1 and "loss" in r)
    assert first["loss"] == pytest.approx(25.0, abs=1e-4)


def test_cdpo_step0_is_ln2_and_average_logps(pref_data, tmp_path):
    out = tmp_path / "cdpo"
    train_dpo(
        _cfg(
            pref_data,
            out,
            "train.label_smoothing=0.2",
            "train.average_logps=true",
            "train.max_steps=1",
            *NO_EVAL,
        )
    )
    first = next(r for r in _records(out) if r["step"] == 1 and "loss" in r)
    assert abs(first["loss"] - math.log(2)) < 1e-5
    assert -20 < first["logp_chosen"] < 0  # a per-token mean, not a sum


def test_base_logp_accuracy_literal_values(monkeypatch):
    """The "before" figure: the untrained model's summed log-probs rank the pairs."""
    from types import SimpleNamespace

    import torch

    from trainkit.rlhf.trainers import dpo_eval

    # (sum log p(chosen), sum log p(rejected)) per held-out pair, chosen has 1 response
    # token and rejected 2: wins 1, 0, 1/2 (tie), 1 -> 2.5 / 4. Per-token means rank
    # them -3 < -2.5, -4 < -1, -1.5 < -0.75, -2 > -3.625: 1 / 4.
    before = [(-3.0, -5.0), (-4.0, -2.0), (-1.5, -1.5), (-2.0, -7.25)]
    # sums: wins 1, 0, 1, 1; means (-1, -3), (-4.5, -1), (-1, -1), (-2, -4): 1, 0, 1/2, 1
    after = [(-1.0, -6.0), (-4.5, -2.0), (-1.0, -2.0), (-2.0, -8.0)]
    assert dpo_eval.logp_accuracy(before) == 0.625
    assert dpo_eval.logp_accuracy(after) == 0.75
    assert math.isnan(dpo_eval.logp_accuracy([]))
    table = {"lp": before}

    def fake_logps(model, batch, average):
        assert not average and batch["input_ids"].shape[0] == 8  # sums; chosen then rejected
        return torch.tensor([c for c, _ in table["lp"]] + [r for _, r in table["lp"]])

    monkeypatch.setattr(dpo_eval, "batch_logps", fake_logps)
    enc = [{"chosen": [1, 2, 3], "rejected": [1, 2, 3, 4], "prompt_len": 2}] * 4
    model = torch.nn.Linear(1, 1)
    # implicit-reward margin after: beta * mean((a_c - b_c) - (a_r - b_r)) of the sums, or
    # of the per-token means (rejected / 2) with average_logps
    for avg, margin in ((False, 0.10625), (True, 0.078125)):
        cfg = SimpleNamespace(
            eval=SimpleNamespace(batch_size=4), train=SimpleNamespace(beta=0.1, average_logps=avg)
        )
        table["lp"] = before
        m, ref = dpo_eval.evaluate(model, enc, None, 0, cfg)
        assert m["base_logp_accuracy"] == 0.625  # summed, whatever average_logps says
        assert m["base_mean_logp_accuracy"] == 0.25
        assert m["accuracy"] == 0.5 and m["margin"] == 0.0 and m["n"] == 4
        assert ref[1] == ((-4.0, -1.0) if avg else (-4.0, -2.0))  # the implicit reward's
        table["lp"] = after
        m, _ = dpo_eval.evaluate(model, enc, ref, 0, cfg)
        assert "base_logp_accuracy" not in m and m["logp_accuracy"] == 0.75
        assert m["mean_logp_accuracy"] == 0.625
        assert m["accuracy"] == 0.75 and m["margin"] == pytest.approx(margin, abs=1e-6)


def test_encode_pair_masks_prompt_and_appends_eos():
    from trainkit.llm.models import load_tokenizer

    tok = load_tokenizer("tiny-llama")
    e = encode_pair(
        tok,
        {"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "It is 5."},
        max_prompt_len=512,
        max_len=512,
    )
    p = e["prompt_len"]
    assert e["chosen"][:p] == e["rejected"][:p]
    assert e["chosen"][-1] == e["rejected"][-1] == tok.eos_token_id
    assert tok.decode(e["chosen"][p:-1]) == "5"
    b = collate([e], pad_id=tok.pad_token_id)
    lab = b["labels"]
    assert lab.shape == (2, len(e["rejected"]))
    assert (lab[0] != -100).sum().item() == len(e["chosen"]) - p == 2
    assert (lab[1] != -100).sum().item() == len(e["rejected"]) - p
    assert b["attention_mask"][0].sum().item() == len(e["chosen"])
    assert b["prompt_len"].tolist() == [p, p]


def test_batch_logps_response_only_logits_match_full_logits():
    import torch

    from trainkit.llm.models import load_model
    from trainkit.rlhf.losses import sequence_logps, token_logps
    from trainkit.rlhf.trainers.dpo import batch_logps

    model, tok = load_model("tiny-llama")
    model.eval()
    recs = [
        {"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "It is 5, I think."},
        {"prompt": "A much longer prompt: what is 12 + 3?", "chosen": "15", "rejected": "15"},
    ]
    b = collate([encode_pair(tok, r, 512, 512) for r in recs], tok.pad_token_id)
    with torch.no_grad():
        fast = batch_logps(model, b, average=False)
        logits = model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits
        lab = b["labels"][:, 1:]
        full = sequence_logps(token_logps(logits[:, :-1], lab), None, lab != -100)
    assert fast.shape == (4,)
    assert torch.allclose(fast, full, atol=1e-4)
    assert fast[1].item() == pytest.approx(fast[3].item(), abs=1e-5)  # same response "15"


def test_generation_rules():
    rec = {"prompt": "What is 2 + 3?", "chosen": "5", "rejected": "Let me think. It is 5."}
    assert [RULES["number_only"](g, rec) for g in ("5", " 42\n", "-7", "5.", "It is 5")] == [
        True,
        True,
        True,
        False,
        False,
    ]
    assert [RULES["match_chosen"](g, rec) for g in ("5", " 5 ", "6")] == [True, True, False]
    assert RULES["not_rejected_prefix"]("Let me think about it", rec) is False
    assert RULES["not_rejected_prefix"]("5", rec) is True


def test_dpo_configs_parse_and_validate():
    for name in ("dpo_tiny.yaml", "dpo_smollm2.yaml"):
        cfg = load_config(DPOConfig, CONFIGS / name)
        assert cfg.train.beta > 0
    assert load_config(DPOConfig, CONFIGS / "dpo_smollm2.yaml").lora.enabled
    with pytest.raises(UserError, match="label_smoothing"):
        load_config(DPOConfig, None, ["train.label_smoothing=0.5"])
    with pytest.raises(UserError, match="eval.rule"):
        load_config(DPOConfig, None, ["eval.rule=nope"])


@pytest.mark.slow
def test_dpo_lora_smollm2_raises_heldout_accuracy_and_following(tmp_path):
    out = tmp_path / "out"
    s = train_dpo(
        load_config(
            DPOConfig,
            CONFIGS / "dpo_smollm2.yaml",
            [f"output_dir={out}", "train.progress=false", "train.save=none"],
        )
    )
    print(
        "smollm2 DPO held-out accuracy (base log-probs -> implicit reward)",
        s["heldout_accuracy_before"],
        "->",
        s["heldout_accuracy"],
        "log-prob ranking after",
        s["heldout_logp_accuracy"],
        "follow rate",
        s["follow_rate_before"],
        "->",
        s["follow_rate"],
    )
    step0 = next(r for r in _records(out) if r["step"] == 0)
    assert step0["eval/accuracy"] == pytest.approx(0.5)  # policy == reference: all ties
    assert 0.0 <= s["heldout_accuracy_before"] == s["base_logp_accuracy"] <= 1.0
    assert s["heldout_accuracy"] >= 0.8
    assert s["follow_rate"] > s["follow_rate_before"]


def test_demo_margin_plot_is_a_png(tmp_path):
    from trainkit.rlhf.demo_pref import plot_margins

    m = tmp_path / "metrics.jsonl"
    m.write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"step": 0, "eval/margin": 0.0},
                {"step": 1, "margin": 0.0, "chosen_reward": 0.0, "rejected_reward": 0.0},
                {"step": 2, "margin": 0.5, "chosen_reward": 0.1, "rejected_reward": -0.4},
                {"step": 2, "eval/margin": 0.4},
            ]
        )
        + "\n"
    )
    png = plot_margins(m, tmp_path / "margins.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*"))  # written atomically, no temp file left


@pytest.mark.gpu
def test_dpo_lora_on_cuda_bf16(pref_data, tmp_path):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    out = tmp_path / "cuda"
    s = train_dpo(
        _cfg(
            pref_data,
            out,
            "lora.enabled=true",
            "lora.dropout=0",
            "optim.lr=5e-3",
            "train.max_steps=6",
            "model.dtype=bfloat16",
        )
    )
    first = next(r for r in _records(out) if r["step"] == 1 and "loss" in r)
    assert abs(first["loss"] - math.log(2)) < 1e-3
    assert s["heldout_accuracy"] >= 0.9
