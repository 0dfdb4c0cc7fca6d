"""RL prompt files in TRL's prompt-only forms (standard, conversational) and with
OpenRLHF's field options (input_key, label_key, apply_chat_template, input_template);
and a trained reward model as an in-process reward (reward.models)."""

import json
import math
from pathlib import Path

import pytest

from trainkit.common.errors import UserError
from trainkit.config import ConfigError
from trainkit.rlhf.envs.base import ToolEnv
from trainkit.rlhf.trainers.rl_config import DataSection
from trainkit.rlhf.trainers.rl_data import load_prompt_records, prompt_record, tokenize_prompts


class Chars:
    """One token per character (``ord(c) + 2``); template ``<role>content|`` per message."""

    chat_template = "chars"

    def apply_chat_template(self, msgs, tokenize=False, add_generation_prompt=False):
        body = "".join(f"<{m['role']}>{m['content']}|" for m in msgs)
        return body + ("<assistant>" if add_generation_prompt else "")

    def __call__(self, text, add_special_tokens=True):
        class Enc:
            input_ids = ([0] if add_special_tokens else []) + [ord(c) + 2 for c in text]

        return Enc()


def ids(text, bos=False):
    return ([0] if bos else []) + [ord(c) + 2 for c in text]


def data(**kw):
    d = DataSection(**kw)
    d.validate()
    return d


def write(tmp_path, recs):
    p = tmp_path / "prompts.jsonl"
    p.write_text("".join(json.dumps(r) + "\n" for r in recs))
    return str(p)


U = lambda c: {"role": "user", "content": c}  # noqa: E731
S = lambda c: {"role": "system", "content": c}  # noqa: E731


def test_standard_and_conversational_prompts_render_once():
    d = data(system_prompt="Be brief.")
    recs = [
        {"prompt": "2+3?", "answer": 5},
        {"prompt": [U("2+3?")], "answer": 5},
        {"prompt": [S("Own."), U("hi"), {"role": "assistant", "content": "yo"}, U("2+3?")]},
    ]
    ps = tokenize_prompts(recs, Chars(), d)
    # a string prompt and its one-message list render the same; system_prompt goes first
    assert ps.token_ids[0] == ps.token_ids[1] == ids("<system>Be brief.|<user>2+3?|<assistant>")
    # a prompt with its own system message keeps it (data.system_prompt is not added)
    assert ps.token_ids[2] == ids("<system>Own.|<user>hi|<assistant>yo|<user>2+3?|<assistant>")
    # rewards see strings: the last user turn of a conversation
    assert ps.texts == ["2+3?", "2+3?", "2+3?"]
    assert ps.labels == [{"answer": 5}, {"answer": 5}, {}]
    assert ps.originals([1]) == [[U("2+3?")]]


def test_input_template_without_chat_template():
    d = data(apply_chat_template=False, input_template="Q: {}\nA: ")
    assert d.chat_template is False
    ps = tokenize_prompts([{"prompt": "2+3?"}], Chars(), d)
    assert ps.token_ids == [ids("Q: 2+3?\nA: ", bos=True)]
    with pytest.raises(UserError, match=r"^prompt 0: a list of messages needs the chat"):
        tokenize_prompts([{"prompt": [U("x")]}], Chars(), d)
    with pytest.raises(ConfigError, match=r"data.input_template must contain '\{\}'"):
        data(input_template="Q: ")


def test_openrlhf_input_and_label_keys(tmp_path):
    path = write(tmp_path, [{"question": "2+3?", "gt": "5", "source": "x"}] * 4)
    d = data(path=path, input_key="question", label_key="gt", eval_fraction=0.25)
    assert d.prompt_key == "question"
    train, ev = load_prompt_records(d)
    # only the label field is kept, as `answer` (what the built-in rewards read)
    assert train + ev == [{"prompt": "2+3?", "answer": "5"}] * 4
    assert (len(train), len(ev)) == (3, 1)
    d2 = data(path=path, input_key="question")  # no label_key: every other field is a label
    assert load_prompt_records(d2)[0][0] == {"prompt": "2+3?", "gt": "5", "source": "x"}


@pytest.mark.parametrize(
    "rec,msg",
    [
        ({"prompt": 3}, "field 'prompt' must be a string or a list of messages, got int"),
        ({"prompt": "  "}, "field 'prompt' is blank"),
        ({"question": "x"}, "missing field 'prompt'"),
        ({"prompt": [U("q"), {"role": "assistant", "content": "a"}]}, "ends with an assistant"),
        ({"prompt": [{"role": "robot", "content": "q"}]}, "field 'prompt[0].role' must be one of"),
        ({"prompt": []}, "field 'prompt' is an empty list"),
    ],
)
def test_bad_prompt_records_are_one_line_with_place(rec, msg):
    with pytest.raises(UserError) as e:
        prompt_record(rec, "f.jsonl:7", data())
    assert str(e.value).startswith("f.jsonl:7: ") and msg in str(e.value)
    assert "\n" not in str(e.value)


def test_label_key_missing_is_named(tmp_path):
    path = write(tmp_path, [{"prompt": "q", "answer": 1}])
    with pytest.raises(UserError, match=r"prompts.jsonl:1: missing field 'gt' \(data.label_key\)"):
        load_prompt_records(data(path=path, label_key="gt"))


def test_environment_starts_from_a_conversational_prompt():
    rec = {"prompt": [S("Own rules."), U("12*34?")], "answer": 408}
    env = ToolEnv(rec, {}, system="Tools: calculator.")
    # the environment's system text first, the prompt's own after a blank line
    assert env.reset() == [S("Tools: calculator.\n\nOwn rules."), U("12*34?")]
    env = ToolEnv({"prompt": [U("12*34?")]}, {}, system="Tools.")
    assert env.reset() == [S("Tools."), U("12*34?")]
    assert rec["prompt"][0]["content"] == "Own rules."  # the record is not modified


# ----------------------------------------------------------------- reward.models


@pytest.fixture(scope="module")
def reward_model(tmp_path_factory):
    """A tiny reward model folder (one training step), with its reward statistics."""
    from trainkit.cli import main

    out = tmp_path_factory.mktemp("rm")
    cfg = Path(__file__).resolve().parents[2] / "configs/rlhf/rm_tiny.yaml"
    args = ["rlhf", "rm", "--config", str(cfg), "train.max_steps=1"]
    args += ["data.generate_n=16", "data.generate_heldout=8", f"output_dir={out}"]
    assert main(args) == 0
    return out / "model"


def test_model_reward_scores_like_the_reward_model(reward_model):
    from trainkit.rlhf.reward_model import ModelReward, RewardModelSpec
    from trainkit.rlhf.trainers.rm import score_texts

    meta = json.loads((reward_model / "config.json").read_text())
    assert meta["normalize_reward"] is True
    mean, std = meta["reward_mean"], meta["reward_std"]
    raw = ModelReward(RewardModelSpec(path=str(reward_model)))
    norm = ModelReward(RewardModelSpec(path=str(reward_model), normalize=True, clip=0.5))
    prompts, comps = ["1+2=", "3+4=", "5+6="], ["3", "7", "I think it is 12"]
    r = raw(prompts, comps)
    # the same texts through the RM's own scorer (which applies its statistics)
    from trainkit.rlhf.trainers.pairs import chat_prompt

    ref = score_texts(reward_model, device="cpu")
    want = ref([chat_prompt(raw.tok, p) + c for p, c in zip(prompts, comps)])
    assert [(v - mean) / std for v in r] == pytest.approx(want, abs=1e-5)
    got = norm(prompts, comps)
    assert got == pytest.approx([min(max((v - mean) / std, -0.5), 0.5) for v in r], abs=1e-6)
    assert all(math.isfinite(v) for v in r)
    # batching does not change the scores
    small = ModelReward(RewardModelSpec(path=str(reward_model), batch_size=1))
    assert small(prompts, comps) == pytest.approx(r, abs=1e-5)


def test_model_reward_transform_literal(reward_model):
    from trainkit.rlhf.reward_model import ModelReward, RewardModelSpec

    m = ModelReward(RewardModelSpec(path=str(reward_model), normalize=True, clip=1.0))
    m.mean_std = (2.0, 4.0)
    # (10 - 2) / 4 = 2 -> clipped to 1; (0 - 2) / 4 = -0.5; (-10 - 2) / 4 = -3 -> -1
    assert [m.transform(v) for v in (10.0, 0.0, -10.0)] == [1.0, -0.5, -1.0]


def test_reward_model_config_errors(tmp_path):
    from trainkit.rlhf.reward_model import ModelReward, RewardModelSpec

    with pytest.raises(UserError, match="every entry needs a path"):
        RewardModelSpec().validate()
    with pytest.raises(UserError, match="clip must be > 0"):
        RewardModelSpec(path="x", clip=0.0).validate()
    with pytest.raises(UserError, match="is not a reward-model folder"):
        ModelReward(RewardModelSpec(path=str(tmp_path)))
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(UserError, match="recorded no reward statistics"):
        ModelReward(RewardModelSpec(path=str(tmp_path), normalize=True))


def test_scorer_mixes_reward_models_with_rule_rewards(reward_model):
    from trainkit.rlhf.reward_model import ModelReward, RewardModelSpec
    from trainkit.rlhf.reward_rules import math_closeness
    from trainkit.rlhf.trainers.rl_config import RewardSection
    from trainkit.rlhf.trainers.rl_data import Scorer

    spec = RewardModelSpec(path=str(reward_model), weight=0.5, clip=2.0)
    sc = Scorer(data(reward=["math_closeness"]), RewardSection(models=[spec]))
    prompts, comps, answers = ["1+2=", "3+4="], ["3", "9"], [3, 7]
    got = sc(prompts, comps, {"answer": answers})
    rm = ModelReward(RewardModelSpec(path=str(reward_model), clip=2.0))(prompts, comps)
    rule = math_closeness(prompts, comps, answer=answers)  # [1.0, 1 - 2/7]
    assert rule == pytest.approx([1.0, 5 / 7])
    assert got.rewards == pytest.approx([r + 0.5 * m for r, m in zip(rule, rm)], abs=1e-5)
    assert got.valid == [True, True]


def test_grpo_cli_takes_reward_models(reward_model, tmp_path, monkeypatch):
    from trainkit.cli import main

    cfg = Path(__file__).resolve().parents[2] / "configs/rlhf/grpo_tiny.yaml"
    monkeypatch.chdir(tmp_path)
    args = ["rlhf", "grpo", "--config", str(cfg), "train.max_steps=1", "rollout.n=2"]
    args += ["rollout.prompts_per_step=2", "eval.n_prompts=0", f"output_dir={tmp_path}/run"]
    args += [f"reward.models=[{{path: {reward_model}, weight: 1.0, normalize: true}}]"]
    assert main(args) == 0
    recs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    (step,) = [r for r in recs if "policy_loss" in r]
    assert math.isfinite(step["reward"]) and step["reward_invalid"] == 0
    bad = args[:-1] + ["reward.models=[{weight: 1.0}]"]
    assert main(bad) == 2
