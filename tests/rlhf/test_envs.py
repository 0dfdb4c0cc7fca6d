"""Multi-turn RL: the calculator, tool calls, environments, rendering, episodes with holes
in the action mask, and the estimators on such masks."""

import json
import time

import pytest
import torch

from tiny_guess import guess_warm_start
from trainkit.common.errors import UserError
from trainkit.rlhf.envs.base import ToolEnv
from trainkit.rlhf.envs.builtin import GuessNumberEnv, ToolMathEnv, make_guess, make_products
from trainkit.rlhf.envs.calc import CalcError, calculate, format_number
from trainkit.rlhf.envs.render import Renderer, tool_system_prompt
from trainkit.rlhf.envs.tools import (
    Tool,
    ToolCall,
    calculator_tool,
    format_call,
    load_tools,
    parse_tool_calls,
    python_tool,
    run_tool,
)
from trainkit.rlhf.estimators import ESTIMATORS

# ------------------------------------------------------------------ calculator


@pytest.mark.parametrize(
    "expr, want",
    [
        ("347 * 86", 29842),  # 347*80 = 27760, 347*6 = 2082
        ("(1 + 2) / 4", 0.75),
        ("2 ** 10 - 1", 1023),
        ("-7 // 2", -4),  # floor division rounds down
        ("17 % 5", 2),
        ("1,234 * 2", 2468),  # thousands separators are read as digits
    ],
)
def test_calculate_exact(expr, want):
    assert calculate(expr) == want


def test_format_number():
    assert format_number(29842) == "29842"
    assert format_number(3.0) == "3"  # a float with an integer value prints as one
    assert format_number(0.75) == "0.75"


@pytest.mark.parametrize(
    "expr",
    [
        "__import__('os').system('true')",  # a call
        "x + 1",  # a name
        "(1).real",  # an attribute
        "9 ** 999",  # exponent past MAX_EXPONENT
        "10 ** 60 * 10 ** 60",  # an intermediate past MAX_DIGITS
        "1 / 0",
        "1 +",  # not an expression
        "1" * 300,  # past MAX_CHARS
        "[1, 2]",
    ],
)
def test_calculate_refuses(expr):
    with pytest.raises(CalcError):
        calculate(expr)


# ------------------------------------------------------------------ tool calls


def test_parse_tool_calls_forms():
    text = (
        "Let me compute. "
        + format_call("calculator", {"expression": "3 * 4"})
        + ' and <tool_call>{"name": "python", "arguments": "{\\"code\\": \\"print(1)\\"}"}'
        "</tool_call>"
    )
    calls = parse_tool_calls(text)
    assert [(c.name, c.arguments, c.error) for c in calls] == [
        ("calculator", {"expression": "3 * 4"}, None),
        ("python", {"code": "print(1)"}, None),  # a JSON-encoded string is decoded
    ]
    assert parse_tool_calls("no call here") == []
    # a reply cut short inside its block still counts as a call
    (cut,) = parse_tool_calls('<tool_call>{"name": "calculator", "arguments": {}}')
    assert cut.name == "calculator" and cut.error is None
    (bad,) = parse_tool_calls("<tool_call>{name: calculator}</tool_call>")
    assert bad.name is None and "not valid JSON" in bad.error
    (noname,) = parse_tool_calls('<tool_call>{"arguments": {}}</tool_call>')
    assert 'string "name"' in noname.error
    (badargs,) = parse_tool_calls('<tool_call>{"name": "c", "arguments": [1]}</tool_call>')
    assert badargs.name == "c" and "JSON object" in badargs.error


def test_run_tool_never_raises():
    def crash(**kw):
        raise RuntimeError("boom\nsecond line")

    def hang(**kw):
        time.sleep(30)

    tools = {
        "calculator": calculator_tool(),
        "crash": Tool("crash", "crashes", {"type": "object"}, crash),
        "hang": Tool("hang", "hangs", {"type": "object"}, hang, timeout_s=0.2),
        "obj": Tool("obj", "returns a dict", {"type": "object"}, lambda: {"a": 1}),
    }
    assert run_tool(tools, ToolCall("calculator", {"expression": "347 * 86"})) == ("29842", True)
    assert run_tool(tools, ToolCall("obj", {})) == ('{"a": 1}', True)
    text, ok = run_tool(tools, ToolCall("calculator", {"expression": "x"}))
    assert not ok and text.startswith("error: calculator failed: CalcError")
    text, ok = run_tool(tools, ToolCall("calculator", {"expr": "1"}))
    assert not ok and "bad arguments for calculator" in text
    text, ok = run_tool(tools, ToolCall("nope", {}))
    assert not ok and "unknown tool 'nope'" in text and "calculator" in text
    text, ok = run_tool(tools, ToolCall("crash", {}))
    assert (text, ok) == ("error: crash failed: RuntimeError: boom", False)  # first line only
    t = time.perf_counter()
    text, ok = run_tool(tools, ToolCall("hang", {}))
    assert not ok and "did not finish within 0.2 s" in text
    assert time.perf_counter() - t < 5  # abandoned after its timeout, not 30 s
    text, ok = run_tool(tools, ToolCall(None, error="the tool call is not valid JSON (x)"))
    assert (text, ok) == ("error: the tool call is not valid JSON (x)", False)


def test_python_tool_runs_in_the_sandbox():
    tools = {"python": python_tool(timeout_s=2.0)}
    assert run_tool(tools, ToolCall("python", {"code": "print(6 * 7)"})) == ("42\n", True)
    text, ok = run_tool(tools, ToolCall("python", {"code": "while True: pass"}))
    assert not ok and text.startswith("error: python failed")
    text, ok = run_tool(tools, ToolCall("python", {"code": "raise ValueError('v')"}))
    assert not ok and "ValueError" in text


def test_load_tools_and_schema(tmp_path):
    tools = load_tools(["calculator"])
    s = tools["calculator"].schema()
    assert s["type"] == "function" and s["function"]["name"] == "calculator"
    assert s["function"]["parameters"]["required"] == ["expression"]
    (tmp_path / "mytool.py").write_text(
        "from trainkit.rlhf.envs.tools import Tool\n"
        "def make():\n"
        "    return Tool('echo', 'echo', {'type': 'object'}, lambda text: text)\n"
    )
    assert list(load_tools([f"{tmp_path}/mytool.py:make"])) == ["echo"]
    with pytest.raises(UserError, match="unknown tool 'abacus'"):
        load_tools(["abacus"])


# ------------------------------------------------------------------ environments


def test_tool_math_env_episode():
    rec = {"prompt": "What is 347 * 86?", "answer": 29842}
    env = ToolMathEnv(rec, load_tools(["calculator"]), system="Be brief.")
    assert env.reset() == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 347 * 86?"},
    ]
    st = env.step(format_call("calculator", {"expression": "347 * 86"}))
    assert not st.done and st.reward == 0.0
    assert st.observation == [{"role": "tool", "name": "calculator", "content": "29842"}]
    assert st.info == {"tool_calls": 1, "tool_errors": 0}
    st = env.step("<tool_call>oops</tool_call>")
    assert st.info == {"tool_calls": 1, "tool_errors": 1}
    assert st.observation[0]["content"].startswith("error: the tool call is not valid JSON")
    st = env.step("The product is 29842.\nAnswer: 29842")
    assert st.done and st.reward == 1.0 and st.info["correct"] is True
    st = ToolMathEnv(rec, {}).step("Answer: 29841")
    assert st.done and st.reward == 0.0 and st.info["correct"] is False


def test_guess_number_env_rewards():
    env = GuessNumberEnv({"prompt": "guess", "secret": 5, "high": 8}, {})
    assert env.step("3").observation == "higher"
    assert env.step("no idea").observation == "Reply with one number."
    assert env.step("I say 7").observation == "lower"
    st = env.step("5")
    # found on the 4th reply: 1 - 0.1 * (4 - 1) = 0.7
    assert st.done and st.reward == pytest.approx(0.7) and st.info["correct"] is True


def test_tasks_are_split_and_exact():
    train, held = make_products(300, 0, "train"), make_products(50, 0, "heldout")
    assert not {r["expression"] for r in train} & {r["expression"] for r in held}
    for r in train[:20]:
        a, b = (int(x) for x in r["expression"].split(" * "))
        assert 100 <= a <= 999 and 10 <= b <= 99 and r["answer"] == a * b
    g = make_guess(100, 3, "train")
    assert {r["secret"] for r in g} <= set(range(1, 9)) and len({r["secret"] for r in g}) == 8


def test_env_factory_errors():
    from trainkit.rlhf.envs.config import EnvFactory, EnvSection

    with pytest.raises(UserError, match="unknown environment 'nope'"):
        EnvFactory(EnvSection(name="nope"))
    f = EnvFactory(EnvSection(name="guess_number", kwargs={"bogus": 1}))
    with pytest.raises(UserError, match="env.kwargs do not fit GuessNumberEnv"):
        f({"prompt": "p", "secret": 1})
    f = EnvFactory(EnvSection(name="tool_math"))
    assert list(f.tools) == ["calculator"]  # the default tool of tool_math
    assert isinstance(f({"prompt": "p", "answer": 1}), ToolEnv)


# ------------------------------------------------------------------ rendering


@pytest.fixture(scope="module")
def tok():
    from trainkit.llm.models import load_model

    return load_model("tiny-llama")[1]  # SmolLM2's tokenizer and chat template


def test_fallback_rendering_equals_the_template(tok):
    """SmolLM2's template has no tool support: the tools go in the system message, tool
    results in user messages, and the tokens of an episode (first messages, the policy's
    reply with its EOS, the continuation) decode to the template's text of the whole
    conversation."""
    tools = load_tools(["calculator"])
    r = Renderer(tok, tools)
    assert r.mode == "fallback"
    msgs = [{"role": "user", "content": "What is 347 * 86?"}]
    reply = format_call("calculator", {"expression": "347 * 86"})
    obs = [{"role": "tool", "name": "calculator", "content": "29842"}]
    ids = (
        r.first(msgs)
        + tok(reply, add_special_tokens=False).input_ids
        + [tok.eos_token_id]
        + r.continuation(obs)
    )
    convo = [
        {"role": "system", "content": tool_system_prompt(tools)},
        *msgs,
        {"role": "assistant", "content": reply},
        {"role": "user", "content": "<tool_response>\n29842\n</tool_response>"},
    ]
    want = tok.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)
    assert tok.decode(ids) == want
    assert '"name": "calculator"' in want and "<tool_call>" in want


def test_plain_rendering(tok):
    r = Renderer(tok, {}, chat_template=False)
    assert r.mode == "plain"
    first = r.first([{"role": "user", "content": "guess"}])
    assert tok.decode(first) == "user: guess\nassistant:"
    cont = r.continuation([{"role": "user", "content": "higher"}])
    assert tok.decode(cont) == "\nuser: higher\nassistant:"


# ------------------------------------------------------------------ episodes


class ScriptedEngine:
    """A policy that plays fixed replies (one list per episode), for exact token checks."""

    def __init__(self, tok, scripts):
        self.tok, self.scripts, self.calls = tok, scripts, []

    def generate(self, ids, n, max_new_tokens, seed):
        from trainkit.rlhf.rollout.base import Rollout, pad_left

        self.calls.append((len(ids), n))
        turn = len(self.calls) - 1
        rows = [i for i in range(len(self.scripts)) if len(self.scripts[i]) > turn]
        outs = []
        for i in rows:
            t = self.tok(self.scripts[i][turn], add_special_tokens=False).input_ids
            outs.append((t + [self.tok.eos_token_id])[:max_new_tokens])
        R = max(len(o) for o in outs)
        resp = torch.full((len(outs), R), self.tok.pad_token_id)
        act = torch.zeros(len(outs), R, dtype=torch.long)
        for k, o in enumerate(outs):
            resp[k, : len(o)], act[k, : len(o)] = torch.tensor(o), 1
        trunc = torch.tensor([o[-1] != self.tok.eos_token_id for o in outs])
        pid, pm = pad_left([list(x) for x in ids for _ in range(n)], self.tok.pad_token_id)
        lp = -0.5 * act.float()
        return Rollout(pid, pm, resp, act, lp, trunc, n, {"gen_tokens": int(act.sum())})


def test_episode_tokens_masks_and_rewards(tok):
    from trainkit.rlhf.rollout.episodes import run_episodes

    tools = load_tools(["calculator"])
    rec = {"prompt": "What is 347 * 86?", "answer": 29842}
    call = format_call("calculator", {"expression": "347 * 86"})
    scripts = [
        [call, "Answer: 29842"],  # a tool call, then the right answer: reward 1
        ["Answer: 29000"],  # a wrong answer at once: reward 0
        ["<tool_call>{bad}</tool_call>", "Answer: 29842"],  # a failed call, then right
    ]
    eng = ScriptedEngine(tok, scripts)
    r = Renderer(tok, tools)
    envs = [ToolMathEnv(rec, tools) for _ in scripts]
    ep = run_episodes(
        eng.generate,
        tok,
        r,
        envs,
        n=3,
        max_turns=4,
        max_new_tokens=64,
        max_tokens=512,
        seed=0,
        tool_call_reward=0.1,
        tool_error_reward=-0.2,
    )
    assert eng.calls == [(1, 3), (2, 1)]  # turn 1: one prompt x 3; turn 2: two live episodes
    assert ep.rewards == pytest.approx([1.1, 0.0, 0.8])  # 1 + 0.1; 0; 1 - 0.2
    assert ep.correct == [True, False, True]
    assert ep.replies == ["Answer: 29842", "Answer: 29000", "Answer: 29842"]
    assert ep.stats["env/turns"] == pytest.approx(5 / 3)
    assert ep.stats["env/tool_calls"] == pytest.approx(2 / 3)
    assert ep.stats["env/tool_errors"] == pytest.approx(1 / 3)
    assert ep.stats["env/tool_call_rate"] == pytest.approx(2 / 3)
    assert ep.stats["env/truncated_frac"] == 0.0
    ro = ep.rollout
    # row 0: [call + EOS] [observation] [answer + EOS]; 1 = action, 0 = hole
    a = tok(call, add_special_tokens=False).input_ids + [tok.eos_token_id]
    o = r.continuation([{"role": "tool", "name": "calculator", "content": "29842"}])
    b = tok("Answer: 29842", add_special_tokens=False).input_ids + [tok.eos_token_id]
    L = len(a) + len(o) + len(b)
    assert ro.response_ids[0, :L].tolist() == a + o + b
    assert ro.action_mask[0, :L].tolist() == [1] * len(a) + [0] * len(o) + [1] * len(b)
    assert ro.response_mask[0].sum() == L and ro.action_mask[0, L:].sum() == 0
    assert ro.logprobs[0, :L].tolist() == [-0.5] * len(a) + [0.0] * len(o) + [-0.5] * len(b)
    # the whole row is the template's rendering of the conversation
    assert tok.decode(ro.prompt_ids[0][ro.prompt_mask[0].bool()].tolist() + a + o + b) == (
        tok.apply_chat_template(
            [
                {"role": "system", "content": tool_system_prompt(tools)},
                {"role": "user", "content": rec["prompt"]},
                {"role": "assistant", "content": call},
                {"role": "user", "content": "<tool_response>\n29842\n</tool_response>"},
                {"role": "assistant", "content": "Answer: 29842"},
            ],
            tokenize=False,
        ).rstrip("\n")
    )
    # attention covers the observations, the action mask does not
    assert ro.attention_mask.sum() == ro.prompt_mask.sum() + ro.response_mask.sum()


def test_episode_limits(tok):
    from trainkit.rlhf.rollout.episodes import run_episodes

    rec = {"prompt": "guess", "secret": 5, "high": 8}
    r = Renderer(tok, {}, chat_template=False)

    def play(scripts, **kw):
        args = {"max_turns": 3, "max_new_tokens": 16, "max_tokens": 512, "seed": 0}
        return run_episodes(
            ScriptedEngine(tok, scripts).generate,
            tok,
            r,
            [GuessNumberEnv(rec, {}) for _ in scripts],
            n=len(scripts),
            **{**args, **kw},
        )

    ep = play([["1", "2", "3", "5"], ["4", "5"]])
    # row 0 runs out of turns (truncated, reward 0); row 1 finds it on turn 2: 1 - 0.1
    assert ep.rewards == pytest.approx([0.0, 0.9])
    assert ep.rollout.truncated.tolist() == [True, False]
    assert ep.stats["env/turns"] == 2.5
    # a reply cut by max_new_tokens ends the episode before the environment sees it
    ep = play([["1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18"]], max_new_tokens=4)
    assert ep.rollout.truncated.tolist() == [True] and ep.stats["env/turns"] == 1.0
    # an observation that would pass max_tokens is not added
    ep = play([["1", "5"]], max_tokens=3)
    assert ep.rollout.truncated.tolist() == [True] and ep.rollout.action_mask.sum() == 2
    with pytest.raises(ValueError, match="groups of n"):
        run_episodes(
            None,
            tok,
            r,
            [GuessNumberEnv(rec, {})] * 3,
            2,
            **{"max_turns": 1, "max_new_tokens": 1, "max_tokens": 9, "seed": 0},
        )


def test_engine_logprobs_match_the_trainer_on_whole_episodes(tok):
    """Episodes sampled by the HF engine (fp32), their tokens re-scored by the trainer's
    forward pass over the whole sequence (observations attended to, prompts shared per
    group): the log-probs of the action tokens agree within 1e-4."""
    from trainkit.llm.models import load_model
    from trainkit.rlhf.rollout.episodes import run_episodes
    from trainkit.rlhf.rollout.hf import HFEngine
    from trainkit.rlhf.trainers.experience import forward_no_grad

    torch.manual_seed(0)
    model = load_model("tiny-llama")[0].float().eval()
    # a random model almost never samples EOS: end its replies at any even token id so
    # that episodes have several turns with observations between them
    eng = HFEngine(model, tok.pad_token_id, list(range(0, model.config.vocab_size, 2)))

    def gen(ids, n, max_new_tokens, seed):
        return eng.generate(ids, n=n, max_new_tokens=max_new_tokens, seed=seed)

    recs = [{"prompt": "guess a number", "secret": 9, "high": 8}]  # never found: 4 turns
    envs = [GuessNumberEnv(recs[0], {}) for _ in range(4)]
    ep = run_episodes(
        gen,
        tok,
        Renderer(tok, {}),
        envs,
        4,
        max_turns=4,
        max_new_tokens=6,
        max_tokens=400,
        seed=3,
    )
    ro = ep.rollout
    holes = (ro.response_mask.bool() & ~ro.action_mask.bool()).sum()
    assert holes > 0 and ep.stats["env/turns"] > 2
    mask = ro.action_mask.bool()
    for group in (1, 4):
        lp = forward_no_grad(model, ro.sequences, ro.attention_mask, mask, 1.0, 8, group)
        diff = (lp - ro.logprobs).abs()[mask]
        assert float(diff.max()) < 1e-4


# ------------------------------------------------------------------ estimators with holes


def test_gae_across_holes_literal():
    from trainkit.rlhf.advantages import gae, reinforce_returns

    # row: action, action, obs, obs, action (reward 1 on the last action)
    mask = torch.tensor([[1, 1, 0, 0, 1]])
    rewards = torch.tensor([[0.0, 0.0, 7.0, 7.0, 1.0]])  # rewards on holes are ignored
    values = torch.tensor([[0.5, 0.25, 9.0, 9.0, 0.5]])  # so are values on holes
    adv, ret = gae(rewards, values, mask, gamma=0.5, lam=1.0)
    # over the actions only: V = [.5, .25, .5], r = [0, 0, 1]
    # A2 = 1 - .5 = .5; A1 = (.5*.5 - .25) + .5*.5 = .25; A0 = (.5*.25 - .5) + .5*.25 = -.25
    assert adv.tolist() == [[-0.25, 0.25, 0.0, 0.0, 0.5]]
    assert ret.tolist() == [[0.25, 0.5, 0.0, 0.0, 1.0]]  # A + V
    # G = r + gamma G_next over the actions: [.25, .5, 1]
    assert reinforce_returns(rewards, mask, gamma=0.5).tolist() == [[0.25, 0.5, 0, 0, 1.0]]


@pytest.mark.parametrize("estimator", list(ESTIMATORS))
def test_estimators_on_holes_equal_the_compacted_rows(estimator):
    """Holes change nothing: every estimator on a mask with holes gives, on the action
    tokens, what it gives on the same rows with the holes cut out."""
    from trainkit.rlhf.trainers.experience import compute_advantages

    g = torch.Generator().manual_seed(0)
    B, T = 4, 9
    holed = torch.ones(B, T, dtype=torch.long)
    holed[:, 2:4] = 0  # an observation after two actions
    holed[1, 7:] = 0  # right padding
    holed[3, 5] = 0
    rewards = torch.tensor([1.0, 0.0, 0.5, 0.25])
    kl = torch.rand(B, T, generator=g)
    values = torch.rand(B, T, generator=g)
    # compacted: each row's actions moved to the left, right padded
    comp = torch.zeros_like(holed)
    ckl, cval = torch.zeros(B, T), torch.zeros(B, T)
    for i in range(B):
        k = int(holed[i].sum())
        comp[i, :k] = 1
        ckl[i, :k], cval[i, :k] = kl[i][holed[i].bool()], values[i][holed[i].bool()]
    kw = {"kl_coef": 0.1, "kl_in_reward": True, "gamma": 0.9, "lam": 0.8}
    a1, r1 = compute_advantages(estimator, rewards, holed, 2, kl=kl, values=values, **kw)
    a2, r2 = compute_advantages(estimator, rewards, comp, 2, kl=ckl, values=cval, **kw)
    for i in range(B):
        k = int(holed[i].sum())
        assert torch.allclose(a1[i][holed[i].bool()], a2[i, :k], atol=1e-6)
        if r1 is not None:
            assert torch.allclose(r1[i][holed[i].bool()], r2[i, :k], atol=1e-6)
    assert a1[~holed.bool()].abs().sum() == 0


def test_env_section_in_the_rl_config():
    from trainkit.config import ConfigError, load_config
    from trainkit.rlhf.trainers.ppo import GRPOConfig

    cfg = load_config(GRPOConfig, None, ["env.name=tool_math", "env.max_turns=2"])
    assert cfg.env.max_turns == 2 and cfg.env.tools is None
    with pytest.raises(ConfigError, match="env.max_turns"):
        load_config(GRPOConfig, None, ["env.name=tool_math", "env.max_turns=0"])
    assert json.loads(json.dumps(cfg.env.kwargs)) == {}


# ------------------------------------------------------------------ learning


def test_multiturn_grpo_improves_the_feedback_game(tmp_path):
    # Measured (2026-12-04, 2 shared cores): held-out reward 0.243 -> 0.343 in 10 steps
    # (~35 s after a ~40 s warm start; 0.203 -> 0.362 with another warm-start draw): the
    # policy stops wasting turns on empty replies.
    from trainkit.config import load_config
    from trainkit.llm.models import load_model
    from trainkit.rlhf.trainers.ppo import GRPOConfig, train

    high = 4
    data = tmp_path / "guess.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_guess(400, 5, "train", high=high)))
    warm = guess_warm_start(tmp_path / "warm", load_model("tiny-llama"), high)
    cfg = load_config(
        GRPOConfig,
        None,
        [
            f"model.name={warm}",
            f"data.path={data}",
            "data.eval_fraction=0.2",
            "data.chat_template=false",
            "env.name=guess_number",
            "env.max_turns=3",
            "rollout.max_new_tokens=3",
            "rollout.n=8",
            "rollout.prompts_per_step=8",
            "optim.lr=1e-3",
            "train.micro_batch_size=64",
            "train.max_steps=10",
            "train.progress=false",
            "train.save_model=false",
            "eval.every=0",
            "eval.n_prompts=64",
            "eval.temperature=1.0",
            "eval.samples_per_prompt=4",
            f"output_dir={tmp_path / 'run'}",
        ],
    )
    s = train(cfg)
    first, last = s["first_eval"], s["last_eval"]
    print(f"guess_number held-out reward {first['eval_reward']:.3f} -> {last['eval_reward']:.3f}")
    assert first["eval_reward"] < 0.3
    assert last["eval_reward"] > first["eval_reward"] + 0.08
    assert last["eval_truncated_frac"] < first["eval_truncated_frac"]
    recs = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in recs if "loss" in r]
    assert len(steps) == 10 and all(r["env/turns"] >= 1 for r in steps)
    assert max(r["env/episode_len"] for r in steps) > 3  # observations inside episodes
