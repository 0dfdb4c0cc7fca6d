"""benchmarks/kan_symbolic.py and kan_speed.py: tiny configurations, JSON keys and values."""

import importlib.util
import json
import os
from pathlib import Path

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _bench(name: str):
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _has_pykan() -> bool:
    return importlib.util.find_spec("kan") is not None


def _json(capsys) -> dict:
    out = capsys.readouterr().out
    return json.loads(out[out.index("{") :])


def _check_times(r: dict, reps: int) -> None:
    assert r["reps"] == reps and len(r["cpu_s_all"]) == reps and len(r["wall_s_all"]) == reps
    assert r["cpu_s"] > 0 and r["wall_s"] > 0 and r["user_s"] > 0 and r["sys_s"] >= 0
    assert r["cpu_s_range"][0] <= r["cpu_s"] <= r["cpu_s_range"][1]
    assert r["wall_s_range"][0] <= r["wall_s"] <= r["wall_s_range"][1]


def test_kan_symbolic_tiny_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # nothing may be written to the working directory
    argv = ["--width", "2,1,1", "--lamb", "0", "--grid", "3", "--grids", "3", "--steps", "2"]
    argv += ["--train-num", "40", "--lib", "x,x^2,sin", "--reps", "3", "--threads", "1"]
    res = _bench("kan_symbolic").main(argv)
    assert _json(capsys) == json.loads(json.dumps(res))
    assert res["network"]["width"] == [2, 1, 1] and res["threads"] == 1
    assert res["lib"]["trainkit"] == ["x", "x^2", "sin"]
    assert res["loadavg_start"] is None or len(res["loadavg_start"].split()) >= 3
    tk = res["trainkit"]
    _check_times(tk, 3)
    assert [e["edge"] for e in tk["edges"]] == [[0, 0, 0], [0, 1, 0], [1, 0, 0]]
    assert all(e["name"] in ("x", "x^2", "sin") and 0 <= e["r2"] <= 1 for e in tk["edges"])
    if _has_pykan():
        pk = res["pykan"]
        _check_times(pk, 3)
        assert res["network_max_abs_diff"] < 1e-10  # the same network in both libraries
        assert res["lib"]["pykan"] == res["lib"]["trainkit"]
        assert [e["edge"] for e in pk["edges"]] == [e["edge"] for e in tk["edges"]]
        assert all(e["name"] in ("x", "x^2", "sin") for e in pk["edges"])
        assert res["pykan_over_trainkit_cpu"] > 0 and isinstance(res["same_functions"], bool)
        assert len(res["per_edge_functions"]) == 3
        # first-layer edges are fitted on the same samples by both: same function, same R^2
        for a, b in zip(pk["edges"][:2], tk["edges"][:2]):
            assert a["name"] != b["name"] or abs(a["r2"] - b["r2"]) < 0.05
    assert os.listdir(tmp_path) == []


def test_kan_speed_quick_times_both_grids(capsys):
    argv = ["--quick", "--budget", "0.05", "--skip", "pykan_default,pykan_speed,cox_autograd"]
    res = _bench("kan_speed").main(argv)
    assert _json(capsys)["cases"][0]["width"] == [64, 64, 10]
    case = res["cases"][0]
    tk = case["impls"]["trainkit"]
    assert tk["uniform"]["grid_uniform"] == [True, True]
    assert tk["after_update_grid"]["grid_uniform"] == [False, False]
    for grid in ("uniform", "after_update_grid"):
        r = tk[grid]
        assert r["reps"] >= 3 and r["median_ms"] > 0 and r["cpu_median_ms"] > 0
        assert r["range_ms"][0] <= r["median_ms"] <= r["range_ms"][1]
        assert r["cpu_range_ms"][0] <= r["cpu_median_ms"] <= r["cpu_range_ms"][1]
    assert case["impls"]["mlp"]["after_update_grid"]["skipped"].startswith("not applicable")
    assert case["after_update_grid_over_uniform_time"]["trainkit"] > 0
    assert "mlp_time_over_trainkit" in case["ratios"]["uniform"]
