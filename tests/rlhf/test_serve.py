"""The reward server on loopback: right answers under load, and every bad request is a 4xx."""

import http.client
import json
import socket
import threading
import time

import pytest

from trainkit.common.errors import UserError
from trainkit.rlhf.rewards import RemoteReward, score
from trainkit.rlhf.serve import RewardServer, make_server
from trainkit.rlhf.tasks import make_arithmetic, parse_task, score_arithmetic_queries

TOKEN = "s3cret-token"


def post(srv, body, headers=None, path="/get_reward", raw=False):
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=10)
    data = body if raw else json.dumps(body).encode()
    h = {"Content-Type": "application/json"}
    h.update(headers or {})
    c.request("POST", path, body=data, headers=h)
    r = c.getresponse()
    out = r.status, json.loads(r.read() or b"null")
    c.close()
    return out


def ok(rewards, invalid=None):
    """The reply body of a 200 (OpenRLHF's shape)."""
    bad = invalid or [False] * len(rewards)
    return {
        "rewards": rewards,
        "scores": rewards,
        "invalid": bad,
        "extra_logs": {"reward_invalid": [float(b) for b in bad]},
    }


def auth(t=TOKEN):
    return {"Authorization": f"Bearer {t}"}


def _queries(n, seed):
    """Half right, half wrong answers to hard arithmetic problems, with expected rewards."""
    recs = make_arithmetic(n, seed=seed, spec=parse_task("arithmetic_hard"))
    qs, want = [], []
    for i, r in enumerate(recs):
        ok = i % 2 == 0
        qs.append(r["prompt"] + f"\nAnswer: {r['answer'] if ok else r['answer'] + 1}")
        want.append(1.0 if ok else 0.0)
    return qs, want


@pytest.fixture
def srv():
    s = RewardServer(
        score_arithmetic_queries,
        token=TOKEN,
        max_body_bytes=64_000,
        max_batch=64,
        max_concurrency=4,
        socket_timeout=1.0,
    ).start()
    yield s
    s.stop()


def test_scores_and_health(srv):
    qs, want = _queries(10, 0)
    assert post(srv, {"query": qs}, auth()) == (200, ok(want))
    assert post(srv, {"query": []}, auth()) == (200, ok([]))
    c = http.client.HTTPConnection("127.0.0.1", srv.port, timeout=5)
    c.request("GET", "/health")
    assert c.getresponse().status == 200
    assert srv.host == "127.0.0.1"  # loopback by default


def test_token_required(srv):
    qs, _ = _queries(2, 1)
    assert post(srv, {"query": qs})[0] == 401
    assert post(srv, {"query": qs}, auth("wrong"))[0] == 401
    assert post(srv, {"query": qs}, {"Authorization": TOKEN})[0] == 401  # no "Bearer"
    assert post(srv, {"query": qs}, auth())[0] == 200


@pytest.mark.parametrize(
    "body,code,msg",
    [
        (b"{not json", 400, "malformed JSON"),
        (b"\xff\xfe\x00garbage", 400, "not UTF-8"),
        (b'{"queries": ["x"]}', 400, "'query' list"),
        (b'{"query": [1, 2]}', 400, "list of strings"),
        (b"[1, 2]", 400, "'query' list"),
        (b'{"query": ' + json.dumps(["x"] * 65).encode() + b"}", 413, "exceed the limit of 64"),
        (b'{"query": ["' + b"x" * 70_000 + b'"]}', 413, "exceeds the limit of 64000"),
        # a client that sends a 5 MB body before reading still gets the 413 (bounded drain)
        (b'{"query": ["' + b"x" * 5_000_000 + b'"]}', 413, "exceeds the limit of 64000"),
    ],
)
def test_bad_bodies_get_4xx(srv, body, code, msg):
    status, reply = post(srv, body, auth(), raw=True)
    assert status == code and msg in reply["error"]


def test_missing_length_unknown_path_and_server_survives(srv):
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.sendall(b"POST /get_reward HTTP/1.0\r\nAuthorization: Bearer " + TOKEN.encode() + b"\r\n\r\n")
    assert s.recv(100).startswith(b"HTTP/1.0 411")
    s.close()
    assert post(srv, {"query": ["x"]}, auth(), path="/admin")[0] == 404
    # a client that sends half a request and goes silent is dropped after socket_timeout
    s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
    s.sendall(
        b"POST /get_reward HTTP/1.0\r\nContent-Length: 100\r\nAuthorization: Bearer "
        + TOKEN.encode()
        + b'\r\n\r\n{"query"'
    )
    t0 = time.monotonic()
    assert s.recv(100).startswith(b"HTTP/1.0 408")
    assert time.monotonic() - t0 < 3
    s.close()
    qs, want = _queries(4, 2)
    assert post(srv, {"query": qs}, auth()) == (200, ok(want))


def test_concurrent_load_all_correct_and_bounded():
    """500 requests from 8 threads: every answer right, threads and memory bounded."""
    import resource

    srv = RewardServer(score_arithmetic_queries, max_concurrency=4, max_connections=16).start()
    threads_before = threading.active_count()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    batches = [_queries(8, seed) for seed in range(50)]
    wrong, errors = [], []

    def worker(k):
        for i in range(k, 500, 8):
            qs, want = batches[i % 50]
            try:
                st, rep = post(srv, {"query": qs})
                if st != 200 or rep != ok(want):
                    wrong.append((i, st, rep))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(repr(e))

    t0 = time.monotonic()
    ts = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    secs = time.monotonic() - t0
    try:
        assert not errors and not wrong, (errors[:3], wrong[:3])
        assert srv.stats[200] == 500
        # connection threads end with their request; the pool holds at most 4 workers
        time.sleep(0.2)
        assert threading.active_count() <= threads_before + 4
        growth_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        assert growth_mb < 50, growth_mb
        assert secs < 60
    finally:
        srv.stop()


def test_saturation_503_then_recovers():
    gate = threading.Event()

    def slow(qs):
        gate.wait(10)
        return [1.0] * len(qs)

    srv = RewardServer(slow, max_concurrency=1, queue_timeout=0.2).start()
    try:
        first = []
        t = threading.Thread(target=lambda: first.append(post(srv, {"query": ["a"]})))
        t.start()
        time.sleep(0.3)  # the first request holds the only slot
        st, rep = post(srv, {"query": ["b"]})
        assert st == 503 and "busy" in rep["error"]
        gate.set()
        t.join()
        assert first == [(200, ok([1.0]))]
        assert post(srv, {"query": ["c"]}) == (200, ok([1.0]))
    finally:
        gate.set()
        srv.stop()


def test_connection_limit():
    srv = RewardServer(lambda qs: [0.0] * len(qs), max_connections=2, socket_timeout=3).start()
    try:
        idle = [socket.create_connection(("127.0.0.1", srv.port)) for _ in range(2)]
        time.sleep(0.2)
        s = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
        assert s.recv(100).startswith(b"HTTP/1.0 503")
        for x in idle + [s]:
            x.close()
        time.sleep(0.3)
        assert post(srv, {"query": ["x"]}) == (200, ok([0.0]))
    finally:
        srv.stop()


def test_scorer_faults_are_500_504_and_flagged():
    def scorer(qs):
        if qs[0] == "raise":
            raise RuntimeError("model exploded")
        if qs[0] == "sleep":
            time.sleep(1.0)
        if qs[0] == "short":
            return [1.0]
        return [float("nan") if q == "nan" else 2.0 for q in qs]

    srv = RewardServer(scorer, request_timeout=0.3).start()
    try:
        st, rep = post(srv, {"query": ["raise"]})
        assert st == 500 and "model exploded" in rep["error"]
        assert post(srv, {"query": ["sleep"]})[0] == 504
        assert post(srv, {"query": ["short", "x"]})[0] == 500
        assert post(srv, {"query": ["ok", "nan"]}) == (200, ok([2.0, 0.0], [False, True]))
        assert post(srv, {"query": "single"}) == (200, ok([2.0]))
    finally:
        srv.stop()


def test_remote_reward_end_to_end(srv):
    recs = make_arithmetic(6, seed=5)
    prompts = [r["prompt"] for r in recs]
    comps = [f"\nAnswer: {r['answer'] + (i % 2)}" for i, r in enumerate(recs)]
    f = RemoteReward(srv.url, timeout=5, retries=1, token=TOKEN, batch_size=4)
    assert f(prompts, comps) == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    # the same through a config string, the token from the environment
    import os
    from unittest import mock

    from trainkit.rlhf.rewards import load_reward

    with mock.patch.dict(os.environ, {"TRAINKIT_RM_TOKEN": TOKEN}):
        g = load_reward(srv.url)
    assert score(g, prompts, comps).rewards == [1.0, 0.0, 1.0, 0.0, 1.0, 0.0]
    bad = RemoteReward(srv.url, timeout=5, retries=3, token="nope", backoff=0.01)
    res = score(bad, prompts[:2], comps[:2], max_invalid_fraction=1.0)
    assert res.valid == [False, False] and "HTTP 401" in res.errors[0]


def test_remote_reward_retries_on_503():
    calls = []

    def flaky(qs):
        calls.append(1)
        if len(calls) < 3:
            raise RuntimeError("warming up")  # 500: retried
        return [3.0] * len(qs)

    srv = RewardServer(flaky).start()
    try:
        f = RemoteReward(srv.url, timeout=5, retries=3, backoff=0.01)
        assert f(["p"], ["c"]) == [3.0] and len(calls) == 3
    finally:
        srv.stop()


def test_make_server_and_bind_errors():
    srv = make_server(score_arithmetic_queries, token="")
    assert srv.token is None and srv.server_address[0] == "127.0.0.1"
    srv.start()
    try:
        assert post(srv, {"query": ["What is 2 + 2? 4"]}) == (200, ok([1.0]))
        with pytest.raises(UserError, match="cannot bind"):
            RewardServer(lambda q: q, port=srv.port)
    finally:
        srv.stop()
        srv.server_close()  # idempotent


def test_fuzzed_bodies_never_crash_the_server(srv):
    """Random bytes and random JSON: always a 200 or a 4xx, and the server keeps serving."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    codes = set()

    @settings(max_examples=60, deadline=None)
    @given(
        st.one_of(
            st.binary(max_size=300),
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=20),
                lambda c: (
                    st.lists(c, max_size=4)
                    | st.dictionaries(st.sampled_from(["query", "x"]), c, max_size=2)
                ),
                max_leaves=8,
            ).map(lambda o: json.dumps(o).encode()),
        )
    )
    def one(body):
        status, _ = post(srv, body, auth(), raw=True)
        codes.add(status)
        assert status == 200 or 400 <= status < 500

    one()
    assert 400 in codes
    qs, want = _queries(4, 9)
    assert post(srv, {"query": qs}, auth()) == (200, ok(want))
