"""``trainkit rlhf evaluate`` (held-out episodes -> JSON) and ``rlhf make-demos`` (tool-use
SFT demonstrations), on the tiny random model: seconds each."""

import json

import pytest

from trainkit.cli import main

KEYS = {
    "accuracy",
    "tool_call_rate",
    "mean_turns",
    "model",
    "task",
    "samples",
    "seed",
    "tools",
    "date",
}


def _eval(tmp_path, *extra, name="r.json"):
    out = tmp_path / name
    argv = ["rlhf", "evaluate", "--model", "tiny-llama", "--samples", "3", "--seed", "1"]
    argv += ["--max-new-tokens", "8", "--max-turns", "2", "--out", str(out), *extra]
    return main(argv), out


def test_evaluate_products_writes_json(tmp_path):
    rc, out = _eval(tmp_path, "--task", "products")
    assert rc == 0
    res = json.loads(out.read_text())
    assert KEYS <= set(res)
    assert res["model"] == "tiny-llama" and res["task"] == "products"
    assert res["env"] == "tool_math" and res["tools"] == ["calculator"]
    assert res["samples"] == 3 and res["seed"] == 1
    assert 0.0 <= res["accuracy"] <= 1.0 and 0.0 <= res["tool_call_rate"] <= 1.0
    assert 1.0 <= res["mean_turns"] <= 2.0
    assert not list(tmp_path.glob(".*.tmp"))  # atomic: no temp file left


def test_evaluate_no_tools_and_deterministic(tmp_path):
    rc, out = _eval(tmp_path, "--task", "products", "--no-tools")
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["tools"] == [] and res["tool_call_rate"] == 0.0
    rc2, out2 = _eval(tmp_path, "--task", "products", "--no-tools", name="r2.json")
    res2 = json.loads(out2.read_text())
    for k in ("accuracy", "tool_call_rate", "mean_turns", "reward"):
        assert res2[k] == res[k]  # greedy: the same figures again


def test_evaluate_guess_number(tmp_path):
    rc, out = _eval(tmp_path, "--task", "guess_number")
    assert rc == 0
    res = json.loads(out.read_text())
    assert res["env"] == "guess_number" and res["tools"] == []
    assert res["tool_call_rate"] == 0.0 and 1.0 <= res["mean_turns"] <= 2.0


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--task", "sums"], "--task"),
        (["--task", "products", "--samples", "0"], "--samples"),
        (["--task", "products", "--samples", "100000"], "held-out problems"),
        (["--task", "products", "--max-turns", "0"], "--max-turns"),
    ],
)
def test_evaluate_bad_flags_exit_2(tmp_path, capsys, extra, needle):
    out = tmp_path / "bad.json"
    argv = ["rlhf", "evaluate", "--model", "tiny-llama", "--out", str(out), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("trainkit: error:") and needle in err[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_evaluate_missing_model_exit_2(tmp_path, capsys):
    out = tmp_path / "sub" / "m.json"
    argv = ["rlhf", "evaluate", "--model", str(tmp_path / "nope"), "--task", "products"]
    assert main(argv + ["--samples", "2", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not found" in err[0]
    assert not out.exists()


def test_evaluate_lora_adapter_folder(tmp_path):
    """An adapter folder (no config.json) is merged into its base in memory."""
    from trainkit.llm.lora import LoraSection
    from trainkit.llm.models import load_model

    model, tok = load_model("tiny-llama", lora=LoraSection(enabled=True, r=4, alpha=8))
    adir = tmp_path / "adapter"
    model.save_pretrained(str(adir))
    tok.save_pretrained(str(adir))
    assert (adir / "adapter_config.json").is_file() and not (adir / "config.json").exists()
    out = tmp_path / "a.json"
    argv = ["rlhf", "evaluate", "--model", str(adir), "--task", "products", "--samples", "2"]
    assert main(argv + ["--max-new-tokens", "4", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["model"] == str(adir) and res["samples"] == 2


# ------------------------------------------------------------------ demonstrations


def test_demos_render_as_episodes():
    """A demo rendered by the chat template is the episode's token text (first messages,
    the call + EOS, the renderer's continuation with the tool result, the answer + EOS)."""
    from trainkit.llm.models import load_tokenizer
    from trainkit.rlhf.envs.builtin import TASKS
    from trainkit.rlhf.envs.config import EnvFactory, EnvSection
    from trainkit.rlhf.envs.demos import make_demos
    from trainkit.rlhf.envs.render import Renderer

    tok = load_tokenizer("tiny-llama")  # the SmolLM2 tokenizer and chat template
    demos = make_demos(tok, 4, seed=0)
    factory = EnvFactory(EnvSection(name="tool_math"))
    renderer = Renderer(tok, factory.tools)
    assert renderer.mode == "fallback"
    eos = tok.eos_token
    for rec, demo in zip(TASKS["products"](0)[0], demos):
        m = demo["messages"]
        assert [x["role"] for x in m] == ["system", "user", "assistant", "user", "assistant"]
        assert m[2]["content"] == (
            '<tool_call>{"name": "calculator", "arguments": {"expression": "'
            + rec["expression"]
            + '"}}</tool_call>'
        )
        assert m[4]["content"] == f"Answer: {rec['answer']}"
        tool_msg = [{"role": "tool", "name": "calculator", "content": str(rec["answer"])}]
        ids = renderer.first(factory(rec).reset())
        ids += tok(m[2]["content"] + eos, add_special_tokens=False).input_ids
        ids += renderer.continuation(tool_msg)
        ids += tok(m[4]["content"] + eos, add_special_tokens=False).input_ids
        episode = tok.decode(ids, skip_special_tokens=False)
        demo_text = tok.apply_chat_template(m, tokenize=False)
        assert demo_text in (episode, episode + "\n")


def test_make_demos_cli_and_sft_labels(tmp_path, capsys):
    from trainkit.llm.collate import IGNORE_INDEX, tokenize_chat
    from trainkit.llm.models import load_tokenizer

    out = tmp_path / "demos.jsonl"
    argv = ["rlhf", "make-demos", "--model", "tiny-llama", "--n", "5", "--out", str(out)]
    assert main(argv) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 5
    tok = load_tokenizer("tiny-llama")
    s = tokenize_chat(tok, json.loads(lines[0])["messages"], "demos.jsonl:1")
    trained = [t for t, lab in zip(s["input_ids"], s["labels"]) if lab != IGNORE_INDEX]
    text = tok.decode(trained, skip_special_tokens=False)
    # loss on the two assistant turns (and their end-of-turn tokens) only
    assert "<tool_call>" in text and "Answer: " in text
    assert "<tool_response>" not in text and "What is" not in text
    assert main(["rlhf", "make-demos", "--n", "0", "--out", str(tmp_path / "x.jsonl")]) == 2
    assert not (tmp_path / "x.jsonl").exists()


def test_make_demos_direct_fraction(tmp_path, capsys):
    """--direct-fraction p: exactly round(p * n) demos answer directly in one turn (the
    correct 'Answer: N', no tool call); the rest are the two-turn calculator transcripts."""
    from trainkit.rlhf.envs.builtin import TASKS

    out = tmp_path / "demos.jsonl"
    argv = ["rlhf", "make-demos", "--model", "tiny-llama", "--n", "10", "--out", str(out)]
    assert main(argv + ["--direct-fraction", "0.5"]) == 0
    demos = [json.loads(line)["messages"] for line in out.read_text().splitlines()]
    assert len(demos) == 10
    direct = [m for m in demos if len(m) == 3]
    assert len(direct) == 5
    for rec, m in zip(TASKS["products"](0)[0], demos):
        assert m[-1]["content"] == f"Answer: {rec['answer']}"
        if len(m) == 3:
            assert [x["role"] for x in m] == ["system", "user", "assistant"]
        else:
            assert m[2]["content"].startswith("<tool_call>")
    assert "5 calculator, 5 direct" in capsys.readouterr().out
    assert main(argv + ["--direct-fraction", "1.0"]) == 0
    assert all(len(json.loads(x)["messages"]) == 3 for x in out.read_text().splitlines())
    assert main(argv + ["--direct-fraction", "1.5"]) == 2


@pytest.mark.parametrize(
    "cls, path",
    [
        ("trainkit.llm.sft:SFTConfig", "configs/rlhf/sft_calculator_smollm2.yaml"),
        (
            "trainkit.rlhf.trainers.rl_config:GRPOConfig",
            "configs/rlhf/grpo_calculator_smollm2.yaml",
        ),
    ],
)
def test_calculator_recipes_load(cls, path):
    from pathlib import Path

    from trainkit.commands import resolve
    from trainkit.config import load_config

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(resolve(cls), root / path)
    if "grpo" in path:
        assert cfg.env.name == "tool_math" and cfg.data.path == "products"
        assert cfg.model.name == "runs/sft_calculator_smollm2/merged"
    else:
        assert cfg.data.format == "chat" and cfg.train.merge_lora and cfg.lora.enabled
