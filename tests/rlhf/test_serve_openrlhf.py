"""OpenRLHF's remote-reward protocol on loopback, both ways, real HTTP, no mocks.

OpenRLHF's client POSTs ``{"query", "prompts", "labels"}`` with no Authorization header
(``requests.post(url, json=...)``) and turns ``rewards`` into a tensor; its servers reply
``{"rewards", "scores", "extra_logs"}``. Here: that client against trainkit's server
(a NaN score, a token-less client), and trainkit's client against a small server of
that style written with ``http.server``.
"""

import json
import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from trainkit.rlhf.rewards import RemoteReward, score
from trainkit.rlhf.serve import INVALID_FILL, RewardServer, is_loopback

TOKEN = "tok-42"


def length_or_nan(queries):
    """Reward = number of characters; a query containing 'NaN!' scores NaN."""
    return [float("nan") if "NaN!" in q else float(len(q)) for q in queries]


def openrlhf_post(url, queries, prompts, labels, headers=None):
    """What OpenRLHF's request_api_wrapper does: json body, no token."""
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    r = requests.post(
        url, json={"query": queries, "prompts": prompts, "labels": labels}, headers=h, timeout=10
    )
    return r.status_code, r.json()


@pytest.fixture
def tk_server():
    srv = RewardServer(length_or_nan, token=TOKEN, allow_anonymous=True).start()
    yield srv
    srv.stop()


def test_openrlhf_client_against_trainkit_server(tk_server):
    import torch

    prompts = ["Q1 ", "Q2 ", "Q3 "]
    resps = ["abc", "NaN!", "hello"]
    st, rep = openrlhf_post(
        tk_server.url, [p + r for p, r in zip(prompts, resps)], prompts, ["3", "x", "5"]
    )
    assert st == 200
    assert rep == {
        "rewards": [6.0, INVALID_FILL, 8.0],
        "scores": [6.0, 0.0, 8.0],
        "invalid": [False, True, False],
        "extra_logs": {"reward_invalid": [0.0, 1.0, 0.0]},
    }
    # what OpenRLHF does with the reply: tensors (a null here raised "Could not infer
    # dtype of NoneType"); its extra_logs become per-sample tensors too
    assert torch.tensor(rep["rewards"]).tolist() == [6.0, 0.0, 8.0]
    assert torch.tensor(rep["extra_logs"]["reward_invalid"]).sum().item() == 1.0
    assert tk_server.stats["anonymous"] == 1
    # the raw body holds no NaN/null literal
    raw = requests.post(tk_server.url, json={"query": ["NaN!"]}, timeout=10).text
    assert "NaN" not in raw and "null" not in raw and json.loads(raw)["rewards"] == [0.0]


def test_token_semantics(tk_server):
    q = ["ab"]
    # token-less from loopback: served (allow_anonymous); a wrong token is still refused
    assert openrlhf_post(tk_server.url, q, q, [""])[0] == 200
    bad = openrlhf_post(tk_server.url, q, q, [""], {"Authorization": "Bearer wrong"})
    assert bad[0] == 401
    good = openrlhf_post(tk_server.url, q, q, [""], {"Authorization": f"Bearer {TOKEN}"})
    assert good == (200, {**good[1], "rewards": [2.0]})
    # without allow_anonymous the token is required from everyone
    strict = RewardServer(length_or_nan, token=TOKEN).start()
    try:
        assert openrlhf_post(strict.url, q, q, [""])[0] == 401
        assert strict.auth_mode == "required"
    finally:
        strict.stop()
    assert tk_server.auth_mode == "required, except token-less loopback clients"
    # who counts as loopback (non-loopback peers always need the token)
    assert [is_loopback(h) for h in ("127.0.0.1", "127.8.9.1", "::1", "::ffff:127.0.0.1")] == [
        True
    ] * 4
    assert [is_loopback(h) for h in ("10.0.0.2", "0.0.0.0", "::ffff:10.0.0.2", "example.org")] == [
        False
    ] * 4


def test_prompts_and_labels_lengths_checked(tk_server):
    st, rep = openrlhf_post(tk_server.url, ["a", "b"], ["a"], ["", ""])
    assert st == 400 and rep["error"] == "'prompts' has 1 entries for 2 queries"
    st, rep = openrlhf_post(tk_server.url, ["a", "b"], ["a", "b"], [""])
    assert st == 400 and rep["error"] == "'labels' has 1 entries for 2 queries"


def test_trainkit_client_against_trainkit_server_flags_nan(tk_server):
    f = RemoteReward(tk_server.url, timeout=5, retries=0)  # token-less
    res = score(f, ["P:", "P:"], ["ok", "NaN!"], max_invalid_fraction=1.0)
    assert res.rewards == [4.0, 0.0] and res.valid == [True, False]
    assert res.errors[1] == "non-finite reward (flagged invalid by the server)"
    assert res.stats() == {"reward_invalid": 1, "reward_nan": 1, "reward_raised": 0}
    assert f.last_extra_logs == {"reward_invalid": [0.0, 1.0]}


# ------------------------------------------------ an OpenRLHF-style server (test code)


class _OpenRLHFStyle(BaseHTTPRequestHandler):
    """reward 1.0 when the response ends with the label; 'NaN' label -> NaN, 'null' -> None."""

    seen: list = []

    def log_message(self, *a):
        pass

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((body, self.headers.get("Authorization")))
        rewards, scores = [], []
        for q, p, lab in zip(body["query"], body["prompts"], body["labels"]):
            r = 1.0 if q[len(p) :].strip().endswith(str(lab)) else 0.0
            special = {"NaN": float("nan"), "null": None}
            rewards.append(special.get(lab, r) if isinstance(lab, str) else r)
            scores.append(r)
        out = json.dumps(
            {
                "rewards": rewards,
                "scores": scores,
                "extra_logs": {"len": [len(q) for q in body["query"]]},
            }
        ).encode()  # json.dumps writes NaN as the literal NaN, as Python servers do
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)


@pytest.fixture
def style_server():
    _OpenRLHFStyle.seen = []
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _OpenRLHFStyle)
    t = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/get_reward"
    httpd.shutdown()
    httpd.server_close()


def test_trainkit_client_reads_openrlhf_style_server(style_server):
    f = RemoteReward(style_server, timeout=5, retries=0, batch_size=2)
    prompts = ["1+1=", "2+2=", "3+3=", "4+4="]
    comps = [" 2", " 5", " 6", " 8"]
    answers = ["2", "4", "NaN", "null"]
    res = score(f, prompts, comps, labels={"answer": answers}, max_invalid_fraction=1.0)
    assert res.rewards == [1.0, 0.0, 0.0, 0.0]
    assert res.valid == [True, True, False, False]
    assert res.errors[2] == "non-finite reward nan"
    assert res.errors[3] == "non-finite reward (null by the server)"
    assert f.last_scores == [1.0, 0.0, 0.0, 0.0]
    assert f.last_extra_logs == {"len": [6, 6, 6, 6]}
    # two requests (batch_size 2), OpenRLHF's shape: labels one per sample, no token sent
    bodies = [b for b, _ in _OpenRLHFStyle.seen]
    assert [a for _, a in _OpenRLHFStyle.seen] == [None, None]
    assert bodies[0] == {
        "query": ["1+1= 2", "2+2= 5"],
        "prompts": ["1+1=", "2+2="],
        "labels": ["2", "4"],
    }
    assert bodies[1]["labels"] == ["NaN", "null"]


def test_trainkit_client_label_shapes(style_server):
    f = RemoteReward(style_server, timeout=5, retries=0)
    f(["a"], ["b"])  # no labels: "" per sample (OpenRLHF's default label)
    f(["a"], ["b"], answer=["b"], tests=["t"])  # several: one object per sample
    bodies = [b for b, _ in _OpenRLHFStyle.seen]
    assert bodies[0]["labels"] == [""]
    assert bodies[1]["labels"] == [{"answer": "b", "tests": "t"}]
    assert math.isnan(f(["a"], ["b"], answer=["NaN"])[0])


def test_grpo_logs_the_servers_extra_logs_per_step(style_server, tmp_path, monkeypatch):
    """One GRPO step on an OpenRLHF-layout prompt file scored by the OpenRLHF-style
    server: the label (label_key) is sent as OpenRLHF's `labels`, and the mean of
    extra_logs['len'] over the step's rows is in the step record as reward/len."""
    from pathlib import Path

    from trainkit.cli import main

    root = Path(__file__).resolve().parents[2]
    data = tmp_path / "prompts.jsonl"
    data.write_text(
        "".join(json.dumps({"q": f"{i}+1=", "gt": str(i + 1)}) + "\n" for i in range(4))
    )
    monkeypatch.chdir(tmp_path)
    args = ["rlhf", "grpo", "--config", str(root / "configs/rlhf/grpo_tiny.yaml")]
    args += ["train.max_steps=1", "rollout.n=2", "rollout.prompts_per_step=2", "eval.n_prompts=0"]
    args += [f"data.path={data}", "data.input_key=q", "data.label_key=gt", "data.eval_fraction=0"]
    args += [f"data.reward=[{style_server}]", "data.accuracy_reward=", f"output_dir={tmp_path}/run"]
    assert main(args) == 0
    recs = [json.loads(x) for x in (tmp_path / "run/metrics.jsonl").read_text().splitlines()]
    (step,) = [r for r in recs if "policy_loss" in r]
    (body,) = [b for b, _ in _OpenRLHFStyle.seen]
    assert set(body["labels"]) <= {"1", "2", "3", "4"} and len(body["labels"]) == 4
    want = sum(len(q) for q in body["query"]) / 4
    assert step["reward/len"] == pytest.approx(want)
