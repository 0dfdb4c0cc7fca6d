"""The data layouts TRL and OpenRLHF users bring, one small file per format, each taken
through the CLI of the recipe that reads it for one step (tiny model); bad variants of
each give one line on stderr and exit code 2, with no run folder left behind."""

import json
import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
CFG = ROOT / "configs/rlhf"


def msg(role, content, **kw):
    return {"role": role, "content": content, **kw}


U, A = (lambda c: msg("user", c)), (lambda c: msg("assistant", c))
CALL = {"type": "function", "function": {"name": "calc", "arguments": {"expression": "2+2"}}}
SCHEMA = {
    "type": "function",
    "function": {
        "name": "calc",
        "description": "arithmetic",
        "parameters": {"type": "object", "properties": {"expression": {"type": "string"}}},
    },
}

SFT_FORMATS = {
    "text": ({"text": "2+2 is 4."}, []),
    "messages": ({"messages": [U("2+2?"), A("4")]}, []),
    "messages-tool-calls": (
        {
            "messages": [
                U("2+2?"),
                {"role": "assistant", "content": None, "tool_calls": [CALL]},
                msg("tool", "4", name="calc"),
                A("4"),
            ],
            "tools": [SCHEMA],
        },
        [],
    ),
    "prompt-completion": ({"prompt": "2+2?", "completion": "4"}, []),
    "prompt-completion-conversational": ({"prompt": [U("2+2?")], "completion": [A("4")]}, []),
    "openrlhf": (
        {"question": "2+2?", "reply": "4"},
        [
            "data.input_key=question",
            "data.output_key=reply",
            "data.apply_chat_template=false",
            "data.input_template=User: {}\nAssistant: ",
        ],
    ),
}
SFT_BAD = {
    "prompt-only": ({"prompt": "2+2?"}, [], "nothing to learn from here"),
    "bad-role": ({"messages": [msg("robot", "hi"), A("4")]}, [], "messages[0].role"),
    "completion-number": ({"prompt": "2+2?", "completion": 4}, [], "'completion'"),
    "openrlhf-missing-key": ({"q": "2+2?", "reply": "4"}, ["data.input_key=question"], ""),
}

PREF_FORMATS = {
    "standard": ({"prompt": "2+2?", "chosen": "4", "rejected": "5"}, []),
    "conversational": (
        {"prompt": [U("2+2?")], "chosen": [A("4")], "rejected": [A("5")]},
        [],
    ),
    "implicit-prompt": ({"chosen": "2+2 is 4", "rejected": "2+2 is 5"}, []),
    "implicit-conversational": (
        {"chosen": [U("2+2?"), A("4")], "rejected": [U("2+2?"), A("5")]},
        [],
    ),
    "openrlhf": (
        {"context": "2+2?", "good": "4", "bad": "5"},
        ["data.input_key=context", "data.chosen_key=good", "data.rejected_key=bad"],
    ),
}
PREF_BAD = {
    "no-rejected": ({"prompt": "2+2?", "chosen": "4"}, [], "rejected"),
    "rejected-number": ({"prompt": "2+2?", "chosen": "4", "rejected": 5}, [], "rejected"),
    "chosen-not-assistant": (
        {"prompt": [U("2+2?")], "chosen": [U("4")], "rejected": [A("5")]},
        [],
        "chosen",
    ),
}

RL_FORMATS = {
    "prompt-only": ({"prompt": "What is 2+2?", "answer": 4}, []),
    "prompt-only-conversational": (
        {"prompt": [msg("system", "Answer with a number."), U("What is 2+2?")], "answer": 4},
        ["data.chat_template=true"],
    ),
    "openrlhf": (
        {"input": "What is 2+2?", "label": "4", "source": "gsm"},
        [
            "data.input_key=input",
            "data.label_key=label",
            "data.apply_chat_template=false",
            "data.input_template=Q: {}\nA: ",
        ],
    ),
    "env-conversational": (
        {"prompt": [msg("system", "Be brief."), U("What is 12*34?")], "answer": 408},
        ["data.chat_template=true", "env.name=tool_math", "env.tools=[calculator]"]
        + ["env.max_turns=2"],
    ),
}
RL_BAD = {
    "prompt-number": ({"prompt": 4, "answer": 4}, [], "field 'prompt' must be a string or"),
    "ends-with-assistant": ({"prompt": [U("2+2?"), A("4")]}, [], "ends with an assistant"),
    "label-key-missing": ({"input": "2+2?"}, ["data.input_key=input", "data.label_key=gt"], "gt"),
    "template-without-slot": ({"prompt": "2+2?"}, ["data.input_template=Q:"], "input_template"),
    "messages-without-template": ({"prompt": [U("2+2?")]}, [], "needs the chat template"),
}

SFT = ["rlhf", "sft", "--config", str(CFG / "sft_tiny.yaml"), "train.max_steps=1"]
SFT += ["train.eval_every=0", "train.save_every=0", "train.batch_size=2"]
SFT += ["train.micro_batch_size=2"]
DPO = ["rlhf", "dpo", "--config", str(CFG / "dpo_tiny.yaml"), "train.max_steps=1"]
DPO += ["train.batch_size=2", "eval.every=0", "data.eval_fraction=0"]
RM = ["rlhf", "rm", "--config", str(CFG / "rm_tiny.yaml"), "train.max_steps=1"]
RM += ["train.batch_size=2", "data.eval_fraction=0"]
GRPO = ["rlhf", "grpo", "--config", str(CFG / "grpo_tiny.yaml"), "train.max_steps=1"]
GRPO += ["rollout.n=2", "rollout.prompts_per_step=2", "eval.every=0", "data.eval_fraction=0"]


def _write(tmp_path: Path, rec: dict) -> str:
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps(rec) + "\n" for _ in range(4)))
    return str(p)


def _run(recipe: list[str], rec: dict, extra: list[str], tmp_path: Path, monkeypatch) -> int:
    from trainkit.cli import main

    monkeypatch.chdir(tmp_path)
    out = tmp_path / "run"
    return main(recipe + [f"data.path={_write(tmp_path, rec)}", f"output_dir={out}"] + extra)


def _steps(tmp_path: Path) -> list[dict]:
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "loss" in r or "policy_loss" in r]


def _check_bad(rc, capsys, tmp_path, want):
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 2 and len(err) == 1, err
    assert want in err[0], err
    assert not (tmp_path / "run").exists()


def _finite_loss(tmp_path):
    recs = _steps(tmp_path)
    assert recs, "no step logged"
    key = "loss" if "loss" in recs[-1] else "policy_loss"
    assert math.isfinite(recs[-1][key])


@pytest.mark.parametrize("name", list(SFT_FORMATS))
def test_sft_takes_each_format(name, tmp_path, monkeypatch):
    rec, extra = SFT_FORMATS[name]
    assert _run(SFT, rec, extra, tmp_path, monkeypatch) == 0
    _finite_loss(tmp_path)


@pytest.mark.parametrize("name", list(SFT_BAD))
def test_sft_bad_variants_are_one_line(name, tmp_path, monkeypatch, capsys):
    rec, extra, want = SFT_BAD[name]
    rc = _run(SFT, rec, extra, tmp_path, monkeypatch)
    _check_bad(rc, capsys, tmp_path, want or "data.jsonl:1")


@pytest.mark.parametrize("recipe", ["dpo", "rm"])
@pytest.mark.parametrize("name", list(PREF_FORMATS))
def test_dpo_and_rm_take_each_preference_format(recipe, name, tmp_path, monkeypatch):
    rec, extra = PREF_FORMATS[name]
    argv = DPO if recipe == "dpo" else RM
    assert _run(argv, rec, extra, tmp_path, monkeypatch) == 0
    _finite_loss(tmp_path)


@pytest.mark.parametrize("recipe", ["dpo", "rm"])
@pytest.mark.parametrize("name", list(PREF_BAD))
def test_preference_bad_variants_are_one_line(recipe, name, tmp_path, monkeypatch, capsys):
    rec, extra, want = PREF_BAD[name]
    rc = _run(DPO if recipe == "dpo" else RM, rec, extra, tmp_path, monkeypatch)
    _check_bad(rc, capsys, tmp_path, want)


@pytest.mark.parametrize("name", list(RL_FORMATS))
def test_grpo_takes_each_prompt_format(name, tmp_path, monkeypatch):
    rec, extra = RL_FORMATS[name]
    assert _run(GRPO, rec, extra, tmp_path, monkeypatch) == 0
    (step,) = _steps(tmp_path)
    assert math.isfinite(step["policy_loss"])
    if name == "openrlhf":  # the label reached the reward as `answer`
        assert "accuracy" in step


@pytest.mark.parametrize("name", list(RL_BAD))
def test_grpo_bad_variants_are_one_line(name, tmp_path, monkeypatch, capsys):
    rec, extra, want = RL_BAD[name]
    rc = _run(GRPO, rec, extra, tmp_path, monkeypatch)
    _check_bad(rc, capsys, tmp_path, want)
