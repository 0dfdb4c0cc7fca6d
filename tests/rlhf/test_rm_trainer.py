"""Reward-model recipe: learning, saving, normalisation, scoring, data errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from trainkit.common.errors import UserError
from trainkit.config import load_config
from trainkit.rlhf.trainers.rm import RMConfig, read_pairs, score_texts, train_rm

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "rlhf"


TASK = "arithmetic_number_only:high=19"  # 400 problems: enough distinct held-out ones


def write_pairs(folder: Path, n: int, n_heldout: int, seed: int = 0) -> tuple[Path, Path]:
    """Format preference from trainkit.rlhf.tasks: chosen = bare number, rejected = wordy."""
    from trainkit.rlhf.tasks import write_preference_data

    return write_preference_data(folder, n=n, n_heldout=n_heldout, seed=seed, task=TASK)


@pytest.fixture(scope="module")
def trained_rm(tmp_path_factory):
    """One tiny-llama RM run on the built-in generated data, shared by the tests below."""
    import torch

    out = tmp_path_factory.mktemp("rm")
    cfg = load_config(
        RMConfig,
        None,
        [
            "data.path=",
            "data.generate_n=240",
            "data.generate_heldout=48",
            f"data.task={TASK}",
            "model.name=tiny-llama",
            "train.max_steps=15",
            "train.batch_size=8",
            "optim.lr=1e-3",
            "train.progress=false",
            "train.normalize_reward=true",
            "data.max_len=96",
            "eval.batch_size=48",
            f"output_dir={out}",
        ],
    )
    snap = {}

    def hook(model):
        for n, p in model.named_parameters():
            if p.requires_grad:
                snap[n] = (p, p.detach().clone())

    summary = train_rm(cfg, on_model=hook)
    moved = {n: not torch.equal(p.detach(), p0) for n, (p, p0) in snap.items()}
    return summary, out, moved


def test_rm_tiny_reaches_90pct_heldout_accuracy(trained_rm):
    summary, out, _ = trained_rm
    assert summary["n_heldout"] == 48
    assert summary["heldout_accuracy_before"] < 0.75  # the random head does not know
    assert summary["heldout_accuracy"] >= 0.9
    assert summary["heldout_margin"] > 1.0
    recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in recs if "loss" in r]
    assert losses[-1] < 0.5 * losses[0]


def test_rm_every_trainable_parameter_moves(trained_rm):
    _, _, moved = trained_rm
    assert len(moved) > 10
    assert "score_head.weight" in moved
    assert all(moved.values()), [n for n, m in moved.items() if not m]


def test_rm_saved_folder_loads_in_transformers_with_same_scores(trained_rm):
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    _, out, _ = trained_rm
    folder = out / "model"
    meta = json.loads((folder / "config.json").read_text())
    assert meta["architectures"] == ["LlamaForSequenceClassification"]
    assert meta["normalize_reward"] is True and meta["reward_std"] > 0
    score = score_texts(folder)
    tok = AutoTokenizer.from_pretrained(folder)
    hf = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    texts = [
        tok.apply_chat_template(
            [{"role": "user", "content": "What is 2 + 3?"}],
            tokenize=False,
            add_generation_prompt=True,
        )
        + r
        for r in ("5", "Sure! The answer is 5.")
    ]
    got = score(texts)
    with torch.no_grad():
        raw = [
            hf(**tok(t, add_special_tokens=False, return_tensors="pt")).logits.item() for t in texts
        ]
    want = [(r - meta["reward_mean"]) / meta["reward_std"] for r in raw]
    assert got == pytest.approx(want, abs=1e-4)
    assert got[0] > got[1]  # the bare number is preferred


def test_rm_normalised_train_rewards_have_zero_mean_unit_std(trained_rm):
    import statistics

    from trainkit.llm.models import load_tokenizer
    from trainkit.rlhf.trainers.rm import pair_texts

    _, out, _ = trained_rm
    score = score_texts(out / "model", batch_size=64, max_len=96)
    pairs = read_pairs(out / "data" / "train.jsonl")
    vals = score(pair_texts(load_tokenizer(out / "model"), pairs))
    assert statistics.fmean(vals) == pytest.approx(0.0, abs=1e-3)
    assert statistics.stdev(vals) == pytest.approx(1.0, abs=1e-3)


def test_rm_bad_data_line_is_a_user_error(tmp_path):
    p = tmp_path / "bad.jsonl"
    p.write_text(
        '{"prompt": "a", "chosen": "b", "rejected": "c"}\n'
        '{"prompt": "a", "chosen": 3, "rejected": "c"}\n'
    )
    with pytest.raises(UserError, match=r"bad.jsonl:2: field 'chosen' must be a string"):
        read_pairs(p)
    p.write_text("{not json\n")
    with pytest.raises(UserError, match=r"bad.jsonl:1: invalid JSON"):
        read_pairs(p)


def test_rm_configs_parse():
    for name in ("rm_tiny.yaml", "rm_smollm2.yaml"):
        cfg = load_config(RMConfig, CONFIGS / name)
        assert cfg.train.max_steps > 0
    with pytest.raises(UserError, match="unknown key 'train.nope'"):
        load_config(RMConfig, None, ["train.nope=1"])


@pytest.mark.slow
def test_rm_smollm2_reaches_90pct_heldout_accuracy(tmp_path):
    cfg = load_config(
        RMConfig,
        CONFIGS / "rm_smollm2.yaml",
        [f"output_dir={tmp_path / 'out'}", "train.progress=false"],
    )
    s = train_rm(cfg)
    print("smollm2 RM held-out accuracy", s["heldout_accuracy_before"], "->", s["heldout_accuracy"])
    assert s["heldout_accuracy"] >= 0.9


def test_serve_rm_answers_concurrent_requests_and_checks_token(trained_rm):
    import argparse
    import urllib.error
    import urllib.request
    from concurrent.futures import ThreadPoolExecutor

    from trainkit.rlhf.serve_cli import add_args, build_server

    _, out, _ = trained_rm
    parser = argparse.ArgumentParser()
    add_args(parser)
    args = parser.parse_args(["--model", str(out / "model"), "--port", "0", "--token", "s3"])
    direct = score_texts(out / "model")
    queries = [
        [f"<|im_start|>user\nWhat is {i} + 1?<|im_end|>\n<|im_start|>assistant\n{a}"]
        for i in range(6)
        for a in ("7", "Sure! The answer is 7.")
    ]

    def post(q, token="s3"):
        req = urllib.request.Request(
            server.url,
            data=json.dumps({"query": q}).encode(),
            method="POST",
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        )
        with urllib.request.urlopen(req, timeout=30) as r:
            return json.loads(r.read())["rewards"]

    with build_server(args) as server:
        assert server.server_address[0] == "127.0.0.1"
        with ThreadPoolExecutor(4) as pool:
            got = list(pool.map(post, queries))
        with pytest.raises(urllib.error.HTTPError) as e:
            post(queries[0], token="wrong")
        assert e.value.code == 401
    want = [direct(q) for q in queries]
    assert [g[0] for g in got] == pytest.approx([w[0] for w in want], abs=1e-5)
    assert got[0][0] > got[1][0]  # the bare number outranks the wordy reply


# The registry entries proposed for trainkit/rlhf/commands.py (owned by the lead).
PROPOSED_COMMANDS = {
    "rm": dict(
        help="train a pairwise reward model (value head on the last token)",
        run="trainkit.rlhf.trainers.rm:run",
        config="trainkit.rlhf.trainers.rm:RMConfig",
        flags={
            "--model": "model.name",
            "--data": "data.path",
            "--max-steps": "train.max_steps",
            "--output-dir": "output_dir",
        },
    ),
    "dpo": dict(
        help="DPO / IPO / cDPO preference training (frozen, adapter-disabled or precomputed reference)",
        run="trainkit.rlhf.trainers.dpo:run",
        config="trainkit.rlhf.trainers.dpo:DPOConfig",
        flags={
            "--model": "model.name",
            "--data": "data.path",
            "--max-steps": "train.max_steps",
            "--output-dir": "output_dir",
        },
    ),
}


def test_cli_entries_parse_configs(monkeypatch, capsys):
    import trainkit.rlhf.commands as rc
    from trainkit.cli import main
    from trainkit.commands import Command
    from trainkit.rlhf.serve_cli import add_args

    for name, kw in PROPOSED_COMMANDS.items():
        monkeypatch.setitem(rc.COMMANDS, name, Command(**kw))
    monkeypatch.setitem(
        rc.COMMANDS,
        "serve-rm",
        Command(
            help="serve a reward model over HTTP",
            run="trainkit.rlhf.serve_cli:run",
            add_args=add_args,
        ),
    )
    assert main(["rlhf", "rm", "--print-config", "--max-steps", "3", "train.margin=0.5"]) == 0
    out = capsys.readouterr().out
    assert "max_steps: 3" in out and "margin: 0.5" in out
    assert (
        main(
            [
                "rlhf",
                "dpo",
                "--config",
                str(CONFIGS / "dpo_tiny.yaml"),
                "--print-config",
                "train.loss_type=ipo",
            ]
        )
        == 0
    )
    assert "loss_type: ipo" in capsys.readouterr().out
    assert main(["rlhf", "dpo", "train.loss_type=kto"]) == 2
    assert "train.loss_type" in capsys.readouterr().err
    assert main(["rlhf", "serve-rm", "--model", "/nonexistent/rm", "--port", "0"]) == 2
