"""``train.report_to``: TensorBoard, W&B (offline), MLflow (local SQLite store) and trackio
(local) each hold the logged scalars, the config and the run folder; every recipe's CLI
passes the list through; a bad tracker name is one line and exit code 2."""

import glob
import importlib.util
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trainkit.common.errors import UserError
from trainkit.common.trackers import check_installed, flatten_config, scalars_of

ROOT = Path(__file__).resolve().parents[2]
LOSSES = [3.0, 2.0, 1.0]

LOG_SCRIPT = textwrap.dedent(
    """
    import sys
    from trainkit.common.logging import MetricsLogger
    cfg = {"train": {"lr": 0.1, "grids": [3, 5]}, "output_dir": sys.argv[1]}
    with MetricsLogger(sys.argv[1], report_to=sys.argv[2].split(","), config=cfg) as log:
        for i, loss in enumerate([3.0, 2.0, 1.0]):
            log.log(i + 1, loss=loss, **{"eval/acc": 0.25 * i, "note": "text", "bad": float("nan")})
    """
)

TRACKIO_READ = textwrap.dedent(
    """
    import json, sys
    from trackio.sqlite_storage import SQLiteStorage
    logs = SQLiteStorage.get_logs("trainkit", sys.argv[1])
    print(json.dumps([{k: v for k, v in r.items() if k in ("step", "loss")} for r in logs]))
    """
)


def _env(tmp_path: Path) -> dict:
    env = dict(os.environ)
    env.update(
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        TRACKIO_DIR=str(tmp_path / "trackio"),
        HF_HUB_OFFLINE="1",
        PYTHONPATH=str(ROOT / "src"),
    )
    env.pop("MLFLOW_TRACKING_URI", None)
    return env


def _wandb_records(path: str) -> list:
    """The protobuf records of a W&B ``.wandb`` file (a LevelDB-style log: 7-byte file
    header, 32 KiB blocks, records of crc32(4) length(2) type(1) + data; 1 = full record,
    2/3/4 = first/middle/last fragment)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, n, kind = struct.unpack("<IHB", data[pos : pos + 7])
        pos += 7
        if n == 0 and kind == 0:
            break
        buf += data[pos : pos + n]
        pos += n
        if kind in (1, 4):
            rec = pb.Record()
            rec.ParseFromString(buf)
            out.append(rec)
            buf = b""
    return out


def test_flatten_and_scalars_literal():
    assert flatten_config({"a": {"b": 1, "c": {"d": "x"}}, "e": [1, 2]}) == {
        "a.b": 1,
        "a.c.d": "x",
        "e": "[1, 2]",
    }
    rec = {"step": 3, "time": 1.5, "loss": 2, "ok": True, "s": "x", "n": float("inf"), "f": 0.5}
    assert scalars_of(rec) == {"loss": 2.0, "f": 0.5}


def test_each_tracker_writes_its_run(tmp_path):
    run = tmp_path / "myrun"
    env = _env(tmp_path)
    names = "tensorboard,wandb,mlflow,trackio"
    p = subprocess.run(
        [sys.executable, "-c", LOG_SCRIPT, str(run), names],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["loss"] for r in lines] == LOSSES and lines[0]["bad"] == "nan"

    # TensorBoard: the loss scalar per step, the config as text
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tb"), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("loss")] == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert [e.value for e in acc.Scalars("eval/acc")] == [0.0, 0.25, 0.5]
    assert "bad" not in acc.Tags()["scalars"]  # NaN stays in metrics.jsonl only
    text = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert str(run) in text and '"lr": 0.1' in text

    # W&B offline: the run folder in <run>/wandb, the config and every history row
    (wfile,) = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    recs = _wandb_records(wfile)
    (run_rec,) = [r.run for r in recs if r.WhichOneof("record_type") == "run"]
    assert run_rec.project == "trainkit" and run_rec.display_name == "myrun"
    config = {i.key: json.loads(i.value_json) for i in run_rec.config.update}
    assert config["train"] == {"lr": 0.1, "grids": [3, 5]} and config["run_dir"] == str(run)
    hist = [
        {(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
        for r in recs
        if r.WhichOneof("record_type") == "history"
    ]
    assert [(h["_step"], h["loss"]) for h in hist] == [(1, 3), (2, 2), (3, 1)]

    # MLflow: local SQLite store in the run folder; metrics, params (flattened), run_dir tag
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    exp = client.get_experiment_by_name("trainkit")
    (mrun,) = client.search_runs([exp.experiment_id])
    got = [(m.step, m.value) for m in client.get_metric_history(mrun.info.run_id, "loss")]
    assert sorted(got) == [(1, 3.0), (2, 2.0), (3, 1.0)]
    assert mrun.data.params["train.lr"] == "0.1" and mrun.data.params["train.grids"] == "[3, 5]"
    assert mrun.data.tags["run_dir"] == str(run) and mrun.info.status == "FINISHED"

    # trackio: the local project database under TRACKIO_DIR
    q = subprocess.run(
        [sys.executable, "-c", TRACKIO_READ, "myrun"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert q.returncode == 0, q.stderr[-2000:]
    rows = json.loads(q.stdout.strip().splitlines()[-1])
    assert [(r["step"], r["loss"]) for r in rows if "loss" in r] == [(1, 3.0), (2, 2.0), (3, 1.0)]


def test_missing_tracker_package_is_one_line(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "wandb" else real(n, *a)
    )
    with pytest.raises(UserError, match=r"^train.report_to lists 'wandb', .*pip install wandb$"):
        check_installed(["tensorboard", "wandb"])


SFT = ["rlhf", "sft", "--config", str(ROOT / "configs/rlhf/sft_tiny.yaml"), "train.max_steps=1"]
GRPO = ["rlhf", "grpo", "--config", str(ROOT / "configs/rlhf/grpo_tiny.yaml"), "train.max_steps=1"]
RM = ["rlhf", "rm", "--config", str(ROOT / "configs/rlhf/rm_tiny.yaml"), "train.max_steps=1"]
DPO = ["rlhf", "dpo", "--config", str(ROOT / "configs/rlhf/dpo_tiny.yaml"), "train.max_steps=1"]
EXT = ["longctx", "extend", "--config", str(ROOT / "configs/longctx/tiny_8x.yaml")]
EXT += [f"model.name={ROOT / 'src/trainkit/longctx/assets/tiny_base'}", "train.max_steps=2"]
KAN = [
    "kan",
    "fit",
    "--formula",
    "sin(x1)",
    "train.steps=2",
    "train.grids=[3]",
    "out.plot=false",
    "train.verbose=false",
]

RECIPES = [
    ("sft", SFT + ["output_dir={t}/run"], "{t}/run"),
    ("grpo", GRPO + ["output_dir={t}/run"], "{t}/run"),
    ("rm", RM + ["output_dir={t}/run"], "{t}/run"),
    ("dpo", DPO + ["output_dir={t}/run"], "{t}/run"),
    ("extend", EXT + ["output_dir={t}/run"], "{t}/run"),
    ("kan", KAN + ["out.root={t}", "out.name=run"], "{t}/run/*"),
]


@pytest.mark.parametrize("argv,run_glob", [r[1:] for r in RECIPES], ids=[r[0] for r in RECIPES])
def test_every_recipe_reports_to_tensorboard_and_mlflow(argv, run_glob, tmp_path, monkeypatch):
    from mlflow.tracking import MlflowClient
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from trainkit.cli import main

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    t = str(tmp_path)
    args = [a.replace("{t}", t) for a in argv] + ["train.report_to=[tensorboard,mlflow]"]
    assert main(args) == 0
    (run,) = glob.glob(run_glob.replace("{t}", t))
    run = Path(run)
    logged = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    acc = EventAccumulator(str(run / "tb"))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    loss_tags = [k for k in tags if "loss" in k]
    assert loss_tags, tags
    # every scalar of metrics.jsonl reached TensorBoard, with its value
    key = loss_tags[0]
    want = [(r["step"], r[key]) for r in logged if isinstance(r.get(key), (int, float))]
    got = [(e.step, e.value) for e in acc.Scalars(key)]
    assert want and [s for s, _ in got] == [s for s, _ in want]
    assert [v for _, v in got] == pytest.approx([v for _, v in want], rel=1e-6)
    client = MlflowClient(tracking_uri=f"sqlite:///{run / 'mlflow.db'}")
    (mrun,) = client.search_runs([client.get_experiment_by_name("trainkit").experiment_id])
    assert mrun.data.metrics[key] == pytest.approx(want[-1][1], rel=1e-6)
    assert mrun.data.tags["run_dir"] == str(run)


def test_unknown_tracker_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys):
    from trainkit.cli import main

    monkeypatch.chdir(tmp_path)
    rc = main(SFT + [f"output_dir={tmp_path}/run", "train.report_to=[neptune]"])
    err = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
    assert rc == 2 and len(err) == 1 and "report_to" in err[0], err
    assert not (tmp_path / "run").exists()


def test_a_tracker_that_refuses_its_settings_is_one_line(tmp_path, monkeypatch):
    # MLflow 3 refuses the file store unless MLFLOW_ALLOW_FILE_STORE=true: one line, no
    # traceback (the local default is the SQLite store in the run folder)
    from trainkit.common.trackers import open_trackers

    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"file://{tmp_path}/mlruns")
    monkeypatch.delenv("MLFLOW_ALLOW_FILE_STORE", raising=False)
    with pytest.raises(UserError, match=r"^train.report_to: mlflow could not start \(Mlflow") as e:
        open_trackers(["tensorboard", "mlflow"], tmp_path / "run")
    assert "\n" not in str(e.value)
