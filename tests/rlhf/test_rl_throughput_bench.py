"""benchmarks/rl_throughput.py: equal settings and lengths on both sides, the rep
statistics, the engine columns, the missing-vLLM-venv path and a 2-step TRL smoke run."""

import importlib.util
import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "rl_throughput.py"


def _bench():
    spec = importlib.util.spec_from_file_location("rl_throughput", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(autouse=True)
def _keep_torch_threads():
    """main() sets torch's thread count for the process: restore it for later tests."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _last_json(capsys) -> dict:
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_engine_summary_medians_skip_the_warmup_step():
    mod = _bench()
    keys = ("gen_s", "gen_cpu_s", "exp_s", "train_s", "sync_s", "step_s", "tokens_per_s")
    keys += ("response_len", mod.MISMATCH)
    rows = [
        (9.0, 5.0, 0.1, 3.0, 0.0, 12.0, 10.0, 20.0, 5e-7),
        (2.0, 1.5, 0.1, 1.0, 0.5, 4.0, 40.0, 30.0, 2e-6),
        (4.0, 2.5, 0.3, 3.0, 0.7, 8.0, 20.0, 10.0, 1e-6),
    ]
    parts = [dict(zip(keys, r)) for r in rows]
    s = mod.engine_summary([13.0, 4.5, 8.5], [6.0, 2.0, 3.0], parts)
    assert s["s_per_step"] == 6.5 and s["cpu_s_per_step"] == 2.5
    assert (
        s["gen_s"] == 3.0 and s["gen_cpu_s"] == 2.0 and s["sync_s"] == 0.6 and s["train_s"] == 2.0
    )
    # generated tokens / generation seconds: 160 / 2 = 80 and 160 / 4 = 40 -> median 60
    assert s["gen_tokens_per_s"] == 60.0
    assert s["mean_completion_len"] == 20.0 and s["logprob_abs_diff_max"] == 2e-6
    # several runs: each run's first step is dropped, the rest pooled
    pooled = mod.pooled_summary(
        [([13.0, 4.5], [6.0, 2.0], parts[:2]), ([9.0, 8.5], [5.0, 3.0], parts[1:])]
    )
    assert pooled["steps_s"] == [4.5, 8.5] and pooled["s_per_step"] == 6.5
    assert pooled["cpu_s_per_step"] == 2.5 and pooled["gen_s"] == 3.0


def _args(**kw):
    a = dict(n=4, max_new_tokens=6, lora_r=8, steps=3, threads=1, merge_lora=True)
    return SimpleNamespace(**{**a, "gradient_checkpointing": "off", "model_name": "tiny", **kw})


@pytest.mark.parametrize("gc", ["off", "on"])
def test_both_configs_carry_the_same_settings(gc, tmp_path):
    """The flag reaches trainkit's model.gradient_checkpointing and TRL's GRPOConfig, and
    every other setting read back from the two configs is equal too."""
    from trainkit.config import load_config
    from trainkit.rlhf.trainers.rl_config import GRPOConfig

    mod = _bench()
    a = _args(gradient_checkpointing=gc)
    cfg = load_config(GRPOConfig, None, mod.trainkit_overrides("tiny", tmp_path / "p", a, tmp_path))
    assert cfg.model.gradient_checkpointing is (gc == "on")
    assert cfg.rollout.min_new_tokens == cfg.rollout.max_new_tokens == 6
    args, peft_cfg = mod.trl_config(a, tmp_path)
    assert args.gradient_checkpointing is (gc == "on")
    assert args.generation_kwargs == {"min_new_tokens": 6}
    tk = mod.trainkit_settings(cfg, "tiny")
    trl = mod.trl_settings(args, peft_cfg, torch.nn.Linear(2, 2), "tiny")
    assert tk == trl
    assert tk["gradient_checkpointing"] is (gc == "on") and tk["n"] == 4 and tk["lr"] == 1e-5
    assert tk["optimizer"].startswith("torch.optim.AdamW(betas=(0.9, 0.999), eps=1e-08")
    assert tk["lora"] == "r=8 alpha=16.0 dropout=0.0" and len(tk["lora_targets"]) == 7
    assert tk["dtype"] == "float32" and tk["kl_beta"] == 0.0 and tk["loss"] == "token_mean"


def _fake_runs(mod, monkeypatch, trl_lens=None, trl_gc=False):
    """Replace both sides by fakes: 3 steps, n=2, 4 tokens; returns the call order."""
    calls = []
    tk_wall, tk_cpu = iter([2.0, 1.0, 3.0]), iter([1.0, 0.5, 1.5])
    trl_wall, trl_cpu = iter([4.0, 3.0, 9.0]), iter([3.0, 3.0, 3.0])
    lens = iter(trl_lens or [[4.0] * 3] * 3)
    part = {k: 1.0 for k in mod.PART_KEYS} | {"response_len": 4.0}

    def run_trainkit(path, recs, a, out, engine="hf"):
        calls.append("trainkit")
        w, c = next(tk_wall), next(tk_cpu)
        return [9.0, w, w], [9.0, c, c], [part] * 3, {"n": 2, "gradient_checkpointing": False}

    def run_trl(path, recs, a, out):
        calls.append("trl")
        w, c = next(trl_wall), next(trl_cpu)
        return [9.0, w, w], [9.0, c, c], next(lens), {"n": 2, "gradient_checkpointing": trl_gc}

    monkeypatch.setattr(mod, "run_trainkit", run_trainkit)
    monkeypatch.setattr(mod, "run_trl", run_trl)
    return calls


ARGV = ["--quick", "--steps", "3", "--n", "2", "--max-new-tokens", "4", "--threads", "1"]


def test_interleaved_reps_give_medians_ranges_and_per_rep_ratios(monkeypatch, capsys):
    mod = _bench()
    calls = _fake_runs(mod, monkeypatch)
    assert mod.main(ARGV) == 0  # --reps 3 is the default
    res = _last_json(capsys)
    assert calls == res["order"] == ["trainkit", "trl"] * 3
    tk, trl = res["trainkit"], res["trl"]
    assert tk["s_per_step"] == {"median": 2.0, "range": [1.0, 3.0]}
    assert trl["s_per_step"] == {"median": 4.0, "range": [3.0, 9.0]}
    assert tk["cpu_s_per_token"] == {"median": 1.0 / 8, "range": [0.5 / 8, 1.5 / 8]}  # n*4 tokens
    assert len(tk["reps"]) == 3 and tk["reps"][1]["steps_s"] == [9.0, 1.0, 1.0]
    # per-rep ratios: wall 4/2, 3/1, 9/3 -> 2, 3, 3; CPU 3/1, 3/0.5, 3/1.5 -> 3, 6, 2
    assert res["speedup"]["s_per_step"] == {"median": 3.0, "range": [2.0, 3.0]}
    assert res["speedup"]["cpu_s_per_step"] == {"median": 3.0, "range": [2.0, 6.0]}
    assert res["speedup"]["cpu_s_per_token"]["range"] == [2.0, 6.0]
    assert res["speedup_cpu_per_token"] == 3.0
    assert res["lengths_equal"] is True and tk["mean_completion_len"] == 4.0
    assert res["steps_complete"] is True
    assert res["settings"]["equal"] is True and res["settings"]["differ"] == {}
    assert res["rollout_engines"]["hf"]["steps_s"] == [2.0, 2.0, 1.0, 1.0, 3.0, 3.0]


def test_unequal_lengths_or_settings_fail_the_run(monkeypatch, capsys):
    mod = _bench()
    _fake_runs(mod, monkeypatch, trl_lens=[[4.0] * 3, [4.0, 3.5, 4.0], [4.0] * 2])
    assert mod.main(ARGV) == 1
    out = capsys.readouterr()
    res = json.loads(out.out.strip().splitlines()[-1])
    assert res["lengths_equal"] is False and "did not do the same work" in out.err
    assert res["steps_complete"] is False  # rep 3 logged 2 of its 3 steps
    assert res["trl"]["reps"][1]["completion_lens"] == [4.0, 3.5, 4.0]
    mod = _bench()
    _fake_runs(mod, monkeypatch, trl_gc=True)
    assert mod.main(ARGV + ["--reps", "1"]) == 1
    res = _last_json(capsys)
    assert res["lengths_equal"] is True and res["settings"]["equal"] is False
    assert res["settings"]["differ"] == {"gradient_checkpointing": [False, True]}


def test_missing_vllm_venv_is_a_skipped_column(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = ["--quick", "--steps", "2", "--n", "4", "--max-new-tokens", "4", "--threads", "1"]
    argv += ["--only", "trainkit", "--engines", "hf,vllm", "--vllm-python", str(tmp_path / "no")]
    assert _bench().main(argv + ["--reps", "1"]) == 0
    res = _last_json(capsys)
    eng = res["rollout_engines"]
    assert eng["vllm"].startswith("skipped: no vLLM venv at") and "vllm_env.sh" in eng["vllm"]
    hf = eng["hf"]
    assert (
        0 < hf["gen_cpu_s"]
        and len(hf["steps_s"]) == 1  # the warm step (the first is dropped)
        and hf["gen_tokens_per_s"] > 0
        and hf["sync_s"] == 0.0
    )
    assert 0.0 <= hf["logprob_abs_diff_max"] < 1e-4  # HF engine, fp32
    assert "hf_over_vllm_s_per_step" not in res and "trl" not in res and "speedup" not in res
    assert res["trainkit"]["reps"][0]["completion_lens"] == [4.0, 4.0]  # forced length


def test_trl_and_trainkit_smoke_run_the_same_work(capsys, monkeypatch):
    """Both sides for real, 2 steps each (the TRL path cannot break unseen)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = ["--quick", "--steps", "2", "--n", "2", "--max-new-tokens", "3", "--threads", "1"]
    assert _bench().main(argv + ["--reps", "1"]) == 0
    res = _last_json(capsys)
    assert res["order"] == ["trainkit", "trl"]
    for side in ("trainkit", "trl"):
        rep = res[side]["reps"][0]
        assert len(rep["steps_s"]) == 2 and len(rep["cpu_steps_s"]) == 2
        assert rep["completion_lens"] == [3.0, 3.0] and res[side]["mean_completion_len"] == 3.0
        assert rep["cpu_s_per_token"] == pytest.approx(rep["cpu_s_per_step"] / 6)
    st = res["settings"]
    assert st["equal"] is True and st["trainkit"] == st["trl"]
    assert st["trl"]["gradient_checkpointing"] is False  # not TRL's default (on)
    assert st["trl"]["threads"] == 1 and st["trl"]["min_new_tokens"] == 3
    assert res["lengths_equal"] is True and res["steps_complete"] is True
    ratio = res["speedup_cpu_per_token"]
    assert math.isfinite(ratio) and ratio > 0
    assert ratio == pytest.approx(res["speedup"]["cpu_s_per_step"]["median"])  # equal tokens
