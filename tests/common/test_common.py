"""Atomic files, run directories, metrics logging, seeding."""

import json
import os

import pytest

from trainkit.common.io import atomic_dir, atomic_path, atomic_write_json, atomic_write_text
from trainkit.common.logging import MetricsLogger
from trainkit.common.run import make_run_dir
from trainkit.common.seed import seed_everything


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    p = tmp_path / "sub" / "a.txt"
    atomic_write_text(p, "one")
    atomic_write_text(p, "two")
    assert p.read_text() == "two"
    assert sorted(os.listdir(p.parent)) == ["a.txt"]
    atomic_write_json(tmp_path / "b.json", {"x": 1})
    assert json.loads((tmp_path / "b.json").read_text()) == {"x": 1}


def test_atomic_path_failure_keeps_old_file(tmp_path):
    p = tmp_path / "m.bin"
    p.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(p) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("crash mid-write")
    assert p.read_bytes() == b"old"
    assert sorted(os.listdir(tmp_path)) == ["m.bin"]


def test_atomic_dir_swaps_whole_folder(tmp_path):
    d = tmp_path / "ckpt"
    with atomic_dir(d) as tmp:
        (tmp / "a").write_text("1")
    with pytest.raises(ValueError), atomic_dir(d) as tmp:
        (tmp / "b").write_text("2")
        raise ValueError
    assert sorted(os.listdir(d)) == ["a"]
    with atomic_dir(d) as tmp:
        (tmp / "c").write_text("3")
    assert sorted(os.listdir(d)) == ["c"]
    assert sorted(os.listdir(tmp_path)) == ["ckpt"]


def test_run_dir_unique_and_saves_config(tmp_path):
    from dataclasses import dataclass

    @dataclass
    class C:
        lr: float = 0.5

    a = make_run_dir("exp", root=tmp_path, config=C())
    b = make_run_dir("exp", root=tmp_path)
    assert a != b and a.parent == b.parent == tmp_path / "exp"
    assert (a / "config.yaml").read_text() == "lr: 0.5\n"


def test_metrics_logger_jsonl(tmp_path):
    import torch

    with MetricsLogger(tmp_path, tensorboard=False) as log:
        log.log(1, loss=torch.tensor(0.5), lr=1e-3)
        log.log(2, loss=float("nan"))
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2]
    assert lines[0]["loss"] == 0.5 and lines[0]["lr"] == 1e-3
    assert lines[1]["loss"] == "nan"


def test_seed_everything_repeats():
    import random

    import numpy as np
    import torch

    seed_everything(3)
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    seed_everything(3)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def test_atomic_files_get_ordinary_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        atomic_write_text(tmp_path / "a.txt", "x")
        with atomic_path(tmp_path / "b.png") as tmp:
            tmp.write_bytes(b"png")
    finally:
        os.umask(mask)
    assert oct((tmp_path / "a.txt").stat().st_mode & 0o777) == "0o644"
    assert oct((tmp_path / "b.png").stat().st_mode & 0o777) == "0o644"


def test_hypothesis_profile_follows_ci():
    """Under CI=true property tests are derandomized; elsewhere they draw fresh examples."""
    import os

    from hypothesis import settings

    ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    if "HYPOTHESIS_PROFILE" not in os.environ:
        assert settings.default.derandomize is ci
        assert (settings.default.database is None) or not ci
