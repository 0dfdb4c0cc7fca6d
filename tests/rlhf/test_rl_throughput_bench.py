"""benchmarks/rl_throughput.py: the engine columns and the missing-vLLM-venv path."""

import importlib.util
import json
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "rl_throughput.py"


def _bench():
    spec = importlib.util.spec_from_file_location("rl_throughput", BENCH)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


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


def test_missing_vllm_venv_is_a_skipped_column(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    argv = ["--quick", "--steps", "2", "--n", "4", "--max-new-tokens", "4", "--threads", "1"]
    argv += ["--only", "trainkit", "--engines", "hf,vllm", "--vllm-python", str(tmp_path / "no")]
    assert _bench().main(argv) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    eng = res["rollout_engines"]
    assert eng["vllm"].startswith("skipped: no vLLM venv at") and "vllm_env.sh" in eng["vllm"]
    hf = eng["hf"]
    assert (
        0 < hf["gen_cpu_s"]
        and len(hf["steps_s"]) == 2
        and hf["gen_tokens_per_s"] > 0
        and hf["sync_s"] == 0.0
    )
    assert 0.0 <= hf["logprob_abs_diff_max"] < 1e-4  # HF engine, fp32
    assert "hf_over_vllm_s_per_step" not in res
