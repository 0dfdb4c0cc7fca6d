"""Asynchronous RL (``rollout.async``): the fixed-lag schedule, exact resume, the engine
process and the off-policy correction (pure functions with literal values)."""

import json
import math

import pytest
import torch

from tiny_rl import TINY_GRPO, VARIED_REWARD
from trainkit.config import ConfigError, load_config
from trainkit.rlhf.losses import actor_loss, ratio_mask, truncated_is_weights
from trainkit.rlhf.trainers.ppo import GRPOConfig, train

ASYNC = ["rollout.async=true", "algo.recompute_old_logp=true"]


def _cfg(out, *over):
    base = [
        *TINY_GRPO,
        "model.name=tiny-llama",
        "train.save_model=false",
        f"output_dir={out}",
        f"data.reward={VARIED_REWARD}",
        "optim.lr=1e-3",
    ]
    return load_config(GRPOConfig, None, base + list(over))


def _steps(d):
    rec = [json.loads(x) for x in (d / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in rec if "loss" in r}


# ------------------------------------------------------------------ correction


def test_truncated_is_weights_values():
    # ratios pi_old / pi_engine: 0.5/0.25 = 2, 0.2/0.4 = 0.5, 0.9/0.3 = 3; cap C = 2.5
    # -> w = min(r, C) = [2, 0.5, 2.5]; one of three tokens was above C
    t = torch.tensor([[0.5, 0.2, 0.9]]).log()
    e = torch.tensor([[0.25, 0.4, 0.3]]).log()
    w, frac = truncated_is_weights(t, e, torch.ones(1, 3), cap=2.5)
    assert w.tolist()[0] == pytest.approx([2.0, 0.5, 2.5], rel=1e-6)
    assert frac == pytest.approx(1 / 3)
    # the third token is padding: weight 0, and no masked token exceeds C
    w, frac = truncated_is_weights(t, e, torch.tensor([[1, 1, 0]]), cap=2.5)
    assert w.tolist()[0] == pytest.approx([2.0, 0.5, 0.0], rel=1e-6) and frac == 0.0
    with pytest.raises(ValueError, match="cap"):
        truncated_is_weights(t, e, torch.ones(1, 3), cap=0.0)


def test_ratio_mask_values():
    # same ratios [2, 0.5, 3] in [0.6, 2.5]: keep only the first; 2 of 3 dropped
    t = torch.tensor([[0.5, 0.2, 0.9]]).log()
    e = torch.tensor([[0.25, 0.4, 0.3]]).log()
    keep, frac = ratio_mask(t, e, torch.ones(1, 3), 0.6, 2.5)
    assert keep.tolist() == [[True, False, False]] and frac == pytest.approx(2 / 3)
    keep, frac = ratio_mask(t, e, torch.tensor([[0, 1, 1]]), 0.4, 5.0)
    assert keep.tolist() == [[False, True, True]] and frac == 0.0
    with pytest.raises(ValueError):
        ratio_mask(t, e, torch.ones(1, 3), 1.0, 2.0)


def test_policy_loss_weighted_per_token():
    # logp = old: ratio 1, no clipping; obj = A = [1, -2]; weights [2, 0.5]
    # -> -mean(w * obj) = -(2 * 1 + 0.5 * -2) / 2 = -0.5 (unweighted: -(1 - 2) / 2 = 0.5)
    lp = torch.zeros(1, 2, requires_grad=True)
    adv, m = torch.tensor([[1.0, -2.0]]), torch.ones(1, 2)
    loss, st = actor_loss(lp, lp.detach(), adv, m, is_weight=torch.tensor([[2.0, 0.5]]))
    assert float(loss.detach()) == pytest.approx(-0.5) and st["policy_loss"] == pytest.approx(-0.5)
    plain, _ = actor_loss(lp, lp.detach(), adv, m)
    assert float(plain.detach()) == pytest.approx(0.5)
    loss.backward()  # d/dlogp_t of -w_t A_t rho_t / 2 at rho = 1: -w_t A_t / 2
    assert lp.grad.tolist()[0] == pytest.approx([-1.0, 0.5])


def test_experience_carries_the_correction():
    from types import SimpleNamespace

    from trainkit.rlhf.trainers.experience import off_policy_correction

    t = torch.tensor([[0.5, 0.2, 0.9]]).log()
    e = torch.tensor([[0.25, 0.4, 0.3]]).log()
    stats = {}
    algo = SimpleNamespace(tis_cap=2.5, is_mask=[0.4, 2.8])
    keep, w = off_policy_correction(t, e, torch.ones(1, 3, dtype=torch.bool), algo, stats)
    # the mask drops the third token (3 > 2.8); TIS then weighs the kept two: [2, 0.5]
    assert keep.tolist() == [[True, True, False]]
    assert w.tolist()[0] == pytest.approx([2.0, 0.5, 0.0], rel=1e-6)
    assert stats["rollout/is_masked_frac"] == pytest.approx(1 / 3)
    assert stats["rollout/is_truncated_frac"] == 0.0
    assert stats["rollout/is_weight_mean"] == pytest.approx(1.25)


@pytest.mark.parametrize(
    "over, msg",
    [
        (["rollout.async=true"], "needs algo.recompute_old_logp=true"),
        (["algo.tis_cap=2"], "needs algo.recompute_old_logp=true"),
        ([*ASYNC, "rollout.max_staleness=0"], "max_staleness must be >= 1"),
        (["algo.recompute_old_logp=true", "algo.tis_cap=-1"], "tis_cap must be > 0"),
        (["algo.recompute_old_logp=true", "algo.is_mask=[2, 5]"], "is_mask must be"),
        ([*ASYNC, "ray.enabled=true", "ray.weight_sync=broadcast"], "object_store"),
    ],
)
def test_async_config_errors(over, msg):
    with pytest.raises(ConfigError, match=msg):
        load_config(GRPOConfig, None, over)


def test_async_key_reads_and_writes_as_async():
    from trainkit.config import to_dict

    cfg = load_config(GRPOConfig, None, ASYNC)
    assert cfg.rollout.async_ is True and to_dict(cfg)["rollout"]["async"] is True


# ------------------------------------------------------------------ the loop


def test_async_runs_on_the_fixed_lag_and_resumes_exactly(tmp_path):
    # k = 2: step s is sampled by version max(0, s - 2): staleness 0, 1, 2, 2
    over = [
        *ASYNC,
        "rollout.max_staleness=2",
        "train.keep_last=0",
        "train.max_steps=4",
        "train.save_every=1",
    ]
    s = train(_cfg(tmp_path / "a", *over))
    a = _steps(tmp_path / "a")
    assert [a[i]["async/staleness"] for i in (1, 2, 3, 4)] == [0, 1, 2, 2]
    assert s["staleness"] == {"0": 1, "1": 1, "2": 2}
    # the batches sampled ahead of the checkpoint are saved with it
    saved = torch.load(
        tmp_path / "a" / "checkpoints" / "step-000002" / "async_batches.pt", weights_only=True
    )
    assert [(b["step"], b["version"]) for b in saved] == [(2, 0), (3, 1)]
    # the run as if it had died after the checkpoint of step 2, resumed: steps 3 and 4
    # (sampled by versions 1 and 2, one of them restored) equal the uninterrupted run's
    import shutil

    shutil.copytree(tmp_path / "a", tmp_path / "b")
    for late in ("step-000003", "step-000004"):
        shutil.rmtree(tmp_path / "b" / "checkpoints" / late)
    train(_cfg(tmp_path / "b", *over, "train.resume=true"))
    b = _steps(tmp_path / "b")  # the resumed records come last in metrics.jsonl
    for step in (3, 4):
        for k in ("reward", "loss", "grad_norm", "async/staleness"):
            assert b[step][k] == pytest.approx(a[step][k], rel=1e-5, abs=1e-7), (step, k)
    from safetensors.torch import load_file

    wa = load_file(str(tmp_path / "a" / "checkpoints" / "step-000004" / "model.safetensors"))
    wb = load_file(str(tmp_path / "b" / "checkpoints" / "step-000004" / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_async_is_reproducible_and_differs_from_sync(tmp_path):
    over = [*ASYNC, "train.max_steps=3"]
    train(_cfg(tmp_path / "a", *over))
    train(_cfg(tmp_path / "b", *over))
    train(_cfg(tmp_path / "s", "algo.recompute_old_logp=true", "train.max_steps=3"))
    a, b, s = (_steps(tmp_path / x) for x in "abs")
    assert [a[i]["loss"] for i in (1, 2, 3)] == [b[i]["loss"] for i in (1, 2, 3)]
    # step 1 is sampled by version 0 in both modes; later async batches are one behind
    assert a[1]["reward"] == s[1]["reward"]
    assert "async/staleness" not in s[1] and a[3]["async/staleness"] == 1
    assert all(math.isfinite(a[i]["async/wait_s"]) for i in (1, 2, 3))


def test_engine_process_failures_are_one_line(tmp_path):
    from trainkit.rlhf.rollout.process import EngineProcess

    cfg = _cfg(tmp_path, *ASYNC)
    eng = EngineProcess(cfg, threads=1)
    try:
        ro = eng.generate([[1, 2, 3]], n=2, max_new_tokens=3, seed=0)
        assert ro.response_ids.shape[0] == 2 and ro.info["actor_cpu_s"] > 0
        with pytest.raises(RuntimeError, match="failed in update_weights: KeyError"):
            eng.update_weights({"no.such.weight": torch.zeros(1)})
        eng._proc.kill()
        eng._proc.join(5)
        with pytest.raises(RuntimeError, match="rollout engine process died"):
            eng.generate([[1, 2, 3]], n=1, max_new_tokens=2, seed=0)
    finally:
        eng.close()


def test_ctrl_c_checkpoints_the_batches_in_flight_and_resume_matches(tmp_path):
    """A terminal's Ctrl-C (SIGINT to the process group, the engine process included)
    during an async CLI run: the step finishes, the checkpoint holds the batch sampled
    ahead, exit 130; the resumed run ends on the uninterrupted run's weights."""
    import os
    import signal
    import subprocess
    import sys
    import time

    from safetensors.torch import load_file

    steps = 6
    over = [*ASYNC, f"train.max_steps={steps}", "train.save_every=0", "train.keep_last=0"]
    train(_cfg(tmp_path / "ref", *over))
    out = tmp_path / "run"
    base = [*TINY_GRPO, "model.name=tiny-llama", "train.save_model=false", "optim.lr=1e-3"]
    args = [sys.executable, "-m", "trainkit.cli", "rlhf", "grpo", *base, *over]
    args += [f"data.reward={VARIED_REWARD}", f"output_dir={out}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    metrics, deadline = out / "metrics.jsonl", time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any('"loss"' in x for x in metrics.read_text().splitlines()):
            break
        time.sleep(0.1)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "engine process" not in err, err[-3000:]
    stopped = json.loads((out / "summary.json").read_text())["steps"]
    assert 1 <= stopped < steps
    ck = out / "checkpoints" / f"step-{stopped:06d}"
    saved = torch.load(ck / "async_batches.pt", weights_only=True)
    assert [(b["step"], b["version"]) for b in saved] == [(stopped, stopped - 1)]
    train(_cfg(out, *over, "train.resume=true"))
    last = f"step-{steps:06d}"
    wa = load_file(str(tmp_path / "ref" / "checkpoints" / last / "model.safetensors"))
    wb = load_file(str(out / "checkpoints" / last / "model.safetensors"))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.slow  # ~60 s: a warm start (replies that end), then two 3-step async runs
def test_async_multiturn_episodes_on_the_fixed_lag(tmp_path):
    """Multi-turn episodes (feedback turns inside the response) take the same path: the
    pipeline's thread plays the next step's episodes through the engine process."""
    from tiny_guess import guess_warm_start
    from trainkit.llm.models import load_model
    from trainkit.rlhf.envs.builtin import make_guess

    data = tmp_path / "guess.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_guess(60, 5, "train", high=4)))
    warm = guess_warm_start(tmp_path / "warm", load_model("tiny-llama"), 4)
    over = [*ASYNC, f"model.name={warm}", f"data.path={data}", "env.name=guess_number"]
    over += ["env.max_turns=3", "rollout.n=4", "rollout.prompts_per_step=4"]
    over += ["rollout.max_new_tokens=3", "train.max_steps=3"]
    s = train(_cfg(tmp_path / "a", *over))
    train(_cfg(tmp_path / "b", *over))
    a, b = _steps(tmp_path / "a"), _steps(tmp_path / "b")
    assert [a[i]["async/staleness"] for i in (1, 2, 3)] == [0, 1, 1]
    assert s["staleness"] == {"0": 1, "1": 2}
    assert all(a[i]["env/turns"] >= 1 for i in (1, 2, 3))
    assert max(a[i]["env/episode_len"] for i in (1, 2, 3)) > 3  # observations inside
    assert [a[i]["loss"] for i in (1, 2, 3)] == [b[i]["loss"] for i in (1, 2, 3)]


def test_rollouts_travel_as_json_and_safetensors():
    from trainkit.rlhf.rollout.base import Rollout
    from trainkit.rlhf.rollout.process import decode_rollout, encode_rollout

    ro = Rollout(
        torch.tensor([[0, 5]]),
        torch.tensor([[0, 1]]),
        torch.tensor([[7, 2]]),
        torch.tensor([[1, 1]]),
        torch.tensor([[-0.5, -1.25]]),
        torch.tensor([False]),
        n=1,
        info={"gen_s": 0.5, "gen_tokens": 2},
    )
    head, tensors = encode_rollout(ro)
    assert head == {"n": 1, "info": {"gen_s": 0.5, "gen_tokens": 2}}
    assert sorted(tensors) == sorted(
        ["prompt_ids", "prompt_mask", "response_ids", "action_mask", "logprobs", "truncated"]
    )
    back = decode_rollout(json.loads(json.dumps(head)), tensors)
    assert back.response_mask is None and back.logprobs.tolist() == [[-0.5, -1.25]]
    assert back.truncated.dtype == torch.bool and back.info["gen_tokens"] == 2
