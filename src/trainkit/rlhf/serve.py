"""A hardened HTTP reward server: ``POST {"query": [...]}`` -> ``{"rewards": [...]}``.

The protocol is OpenRLHF's remote reward model (``--remote_rm_url``): the request is
``{"query": [...], "prompts": [...], "labels": [...]}`` (each query a full ``prompt +
completion`` text; ``prompts`` and ``labels`` optional, one per query, checked for length
and otherwise ignored: a reward model scores the whole text); the reply is
``{"rewards": [...], "scores": [...], "invalid": [...], "extra_logs": {"reward_invalid":
[...]}}``, one entry per query. A NaN/inf score is sent as :data:`INVALID_FILL` (0.0)
with ``invalid[i] = true`` (and ``reward_invalid[i] = 1.0``), never as ``null``: OpenRLHF
turns the lists into tensors, which a ``null`` breaks. The scorer is
any ``score(list[str]) -> list[float]`` (a reward model from
:func:`trainkit.rlhf.trainers.rm.score_texts`, or a rule such as
:func:`trainkit.rlhf.tasks.score_arithmetic_queries`). The CLI command ``trainkit rlhf
serve-rm`` lives in :mod:`trainkit.rlhf.serve_cli`.

Hardening (issue "Reliability and security"):

* binds 127.0.0.1 unless told otherwise (a warning when exposed without a token);
* optional bearer token (``Authorization: Bearer <t>``, constant-time compare) -> 401;
  with ``allow_anonymous`` a request *without* an Authorization header is served when it
  comes from a loopback address (OpenRLHF's client sends no token); a request that
  carries a header must carry the right token, and other peers always need it;
* Content-Length required (411) and capped (413); at most ``max_batch`` queries (413);
  bad UTF-8 / JSON / shape -> 400; unknown path -> 404;
* bounded concurrency: at most ``max_concurrency`` batches are scored at once, a request
  that cannot start within ``queue_timeout`` gets 503; at most ``max_connections`` open
  connections (beyond: 503 and close); each socket read times out (``socket_timeout``,
  slow clients get 408) and scoring that exceeds ``request_timeout`` answers 504;
* any exception in a handler becomes a 500 reply; the server keeps serving.

Endpoints: ``POST /``, ``POST /get_reward``, ``POST /score``; ``GET /health``.
"""

from __future__ import annotations

import hmac
import ipaddress
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from trainkit.common.errors import UserError

log = logging.getLogger(__name__)

Scorer = Callable[[list[str]], Sequence[float]]
POST_PATHS = ("/", "/get_reward", "/score")
INVALID_FILL = 0.0  # the reward sent for a NaN/inf score, flagged in ``invalid``


class _HTTPError(Exception):
    def __init__(self, code: int, msg: str):
        super().__init__(msg)
        self.code, self.msg = code, msg


def is_loopback(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8, ``::1`` and IPv4-mapped loopback addresses."""
    if host == "localhost":
        return True
    try:
        ip = ipaddress.ip_address(host.split("%")[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 from a dual-stack socket
    return ip.is_loopback or bool(mapped and mapped.is_loopback)


_BUSY_BODY = b'{"error": "too many connections"}'
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Content-Length: "
    + str(len(_BUSY_BODY)).encode()
    + b"\r\nConnection: close\r\n\r\n"
    + _BUSY_BODY
)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    allow_reuse_address = True
    owner: RewardServer

    def process_request(self, request, client_address):
        # bound the number of connection threads: past the limit, refuse at once
        if not self.owner._conn_sem.acquire(blocking=False):
            self.owner._count(503)
            try:
                request.sendall(_BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.owner._conn_sem.release()

    def handle_error(self, request, client_address):  # never print tracebacks to stderr
        log.debug("connection error from %s", client_address, exc_info=True)


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.0"  # one request per connection: simple and bounded
    server_version = "trainkit-reward/1"
    sys_version = ""

    def setup(self):
        self.timeout = self.server.owner.socket_timeout
        super().setup()

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)

    def _reply(self, code: int, obj: dict) -> None:
        body = json.dumps(obj).encode("utf-8")
        # counted before the bytes go out: a client holding its answer must find it in
        # ``stats`` (counting after the write raced with fast clients: 499 of 500)
        self.server.owner._count(code)
        try:
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            if code == 401:
                self.send_header("WWW-Authenticate", 'Bearer realm="trainkit"')
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(body)
        except OSError:  # the client went away
            pass

    def _guard(self, fn: Callable[[], dict]) -> None:
        self._discard = 0
        try:
            self._reply(200, fn())
        except _HTTPError as e:
            self._reply(e.code, {"error": e.msg})
            self._drain()
        except TimeoutError:
            self._reply(408, {"error": "request timed out while reading"})
        except Exception as e:  # the server must survive anything a request does
            log.warning("reward server: internal error: %s: %s", type(e).__name__, e)
            self._reply(500, {"error": f"internal error: {type(e).__name__}"})

    def _drain(self) -> None:
        """After refusing an oversized body, read (a bounded part of) it and throw it away,
        so a client that sends the whole body before reading sees the 413, not a reset."""
        left, deadline = self._discard, time.monotonic() + 2.0
        try:
            self.connection.settimeout(0.5)
            while left > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(left, 1 << 16))
                if not chunk:
                    break
                left -= len(chunk)
        except (OSError, ValueError):
            pass

    def _auth(self) -> None:
        own = self.server.owner
        token = own.token
        if not token:
            return
        got = self.headers.get("Authorization")
        if got is None and own.allow_anonymous and is_loopback(self.client_address[0]):
            own._count("anonymous")
            return
        got = got or ""
        scheme, _, value = got.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            value.strip().encode("utf-8", "replace"), token.encode("utf-8")
        ):
            raise _HTTPError(401, "missing or invalid bearer token")

    def do_GET(self) -> None:  # noqa: N802 (http.server naming)
        def health() -> dict:
            if self.path.split("?")[0] != "/health":
                raise _HTTPError(404, f"no such endpoint: GET {self.path[:100]}")
            return {"status": "ok"}

        self._guard(health)

    def do_POST(self) -> None:  # noqa: N802
        self._guard(self._score)

    def _read_json(self) -> Any:
        own = self.server.owner
        raw_len = self.headers.get("Content-Length")
        if raw_len is None:
            raise _HTTPError(411, "Content-Length is required")
        try:
            n = int(raw_len)
        except ValueError:
            raise _HTTPError(400, "bad Content-Length") from None
        if n < 0:
            raise _HTTPError(400, "bad Content-Length")
        if n > own.max_body_bytes:
            self._discard = min(n, 32 << 20)
            raise _HTTPError(413, f"body of {n} bytes exceeds the limit of {own.max_body_bytes}")
        body = self.rfile.read(n)
        if len(body) != n:
            raise _HTTPError(400, "body shorter than Content-Length")
        try:
            return json.loads(body.decode("utf-8"))
        except UnicodeDecodeError:
            raise _HTTPError(400, "body is not UTF-8") from None
        except json.JSONDecodeError as e:
            raise _HTTPError(400, f"malformed JSON: {e.msg} at position {e.pos}") from None

    def _score(self) -> dict:
        own = self.server.owner
        if self.path.split("?")[0] not in POST_PATHS:
            raise _HTTPError(404, f"no such endpoint: POST {self.path[:100]}")
        self._auth()
        obj = self._read_json()
        if not isinstance(obj, dict) or "query" not in obj:
            raise _HTTPError(400, "expected a JSON object with a 'query' list of strings")
        q = obj["query"]
        if isinstance(q, str):
            q = [q]
        if not isinstance(q, list) or not all(isinstance(x, str) for x in q):
            raise _HTTPError(400, "'query' must be a list of strings")
        if len(q) > own.max_batch:
            raise _HTTPError(413, f"{len(q)} queries exceed the limit of {own.max_batch}")
        for k in ("prompts", "labels"):  # OpenRLHF sends both, one per query; not used
            v = obj.get(k)
            if isinstance(v, list) and len(v) != len(q):
                raise _HTTPError(400, f"'{k}' has {len(v)} entries for {len(q)} queries")
        return reply(own._run_scorer(q) if q else [])


def reply(vals: Sequence[float]) -> dict:
    """The reply body for scores ``vals``: NaN/inf become :data:`INVALID_FILL`, flagged."""
    bad = [not math.isfinite(v) for v in vals]
    rewards = [INVALID_FILL if b else float(v) for v, b in zip(vals, bad)]
    return {
        "rewards": rewards,
        "scores": list(rewards),
        "invalid": bad,
        "extra_logs": {"reward_invalid": [float(b) for b in bad]},
    }


@dataclass
class RewardServer:
    """A reward server running in background threads (or blocking, :meth:`serve_forever`).

    Args:
        score: ``score(queries) -> rewards``; called from worker threads, at most
            ``max_concurrency`` at a time (use ``max_concurrency=1`` for a model that is
            not thread-safe).
        host: bind address (127.0.0.1 by default).
        port: 0 picks a free port (see :attr:`port` after :meth:`start`).
        token: bearer token; None or "" disables authentication.
        allow_anonymous: with a token, still serve requests that carry no Authorization
            header when they come from a loopback address (counted in
            ``stats["anonymous"]``); a wrong token is still 401.
        max_body_bytes: request body limit.
        max_batch: queries per request limit.
        max_concurrency: batches scored at the same time.
        max_connections: open connections (threads) at most.
        queue_timeout: seconds a request may wait for a scoring slot before 503.
        request_timeout: seconds of scoring before 504.
        socket_timeout: seconds of client silence before the connection is dropped.

    Example:
        >>> with RewardServer(lambda qs: [float(len(q)) for q in qs]) as srv:  # doctest: +SKIP
        ...     print(srv.url)
    """

    score: Scorer
    host: str = "127.0.0.1"
    port: int = 0
    token: str | None = None
    allow_anonymous: bool = False
    max_body_bytes: int = 1 << 20
    max_batch: int = 1024
    max_concurrency: int = 4
    max_connections: int = 64
    queue_timeout: float = 1.0
    request_timeout: float = 60.0
    socket_timeout: float = 10.0
    stats: Counter = field(default_factory=Counter, init=False, repr=False)

    def __post_init__(self):
        if self.max_concurrency < 1 or self.max_connections < 1:
            raise UserError("reward server: max_concurrency and max_connections must be >= 1")
        if not is_loopback(self.host) and not self.token:
            log.warning(
                "reward server bound to %s without a token: anyone who can reach "
                "this address can use it",
                self.host,
            )
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(self.max_concurrency)
        self._conn_sem = threading.BoundedSemaphore(self.max_connections)
        self._pool = ThreadPoolExecutor(self.max_concurrency, thread_name_prefix="reward")
        try:
            self._httpd = _Server((self.host, self.port), _Handler, bind_and_activate=True)
        except OSError as e:
            self._pool.shutdown(wait=False)
            raise UserError(
                f"reward server: cannot bind {self.host}:{self.port}: {e.strerror or e}"
            ) from None
        self._httpd.owner = self
        self.port = self._httpd.server_address[1]
        self._thread: threading.Thread | None = None
        self._closed = False

    @property
    def server_address(self) -> tuple[str, int]:
        """``(host, port)`` actually bound."""
        return self._httpd.server_address[:2]

    @property
    def auth_mode(self) -> str:
        """``off``, ``required`` or ``required, except token-less loopback clients``."""
        if not self.token:
            return "off"
        return (
            "required, except token-less loopback clients" if self.allow_anonymous else "required"
        )

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/get_reward"

    def _count(self, code: int | str) -> None:
        with self._lock:
            self.stats[code] += 1
            if code != "anonymous":
                self.stats["requests"] += 1

    def _run_scorer(self, queries: list[str]) -> list[float]:
        if not self._slots.acquire(timeout=self.queue_timeout):
            raise _HTTPError(503, "server busy: too many concurrent requests, retry later")
        try:
            fut = self._pool.submit(self.score, queries)
        except BaseException:
            self._slots.release()
            raise
        # the slot is freed when scoring really ends, even if we stop waiting (504)
        fut.add_done_callback(lambda _f: self._slots.release())
        try:
            vals = fut.result(timeout=self.request_timeout)
        except FutureTimeout:
            raise _HTTPError(504, f"scoring took longer than {self.request_timeout:g} s") from None
        except Exception as e:
            log.warning("reward server: scorer failed: %s: %s", type(e).__name__, e)
            raise _HTTPError(500, f"scorer failed: {type(e).__name__}: {str(e)[:200]}") from None
        try:
            vals = [float(v) for v in vals]
        except (TypeError, ValueError):
            raise _HTTPError(500, "scorer returned non-numeric rewards") from None
        if len(vals) != len(queries):
            raise _HTTPError(500, f"scorer returned {len(vals)} rewards for {len(queries)} queries")
        return vals

    def start(self) -> RewardServer:
        """Serve in a daemon thread; returns self."""
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.1},
                name="reward-server",
                daemon=True,
            )
            self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in this thread until Ctrl-C (or :meth:`stop` from another thread)."""
        log.info("reward server on %s (token %s)", self.url, self.auth_mode)
        try:
            self._httpd.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            pass
        finally:
            self.close()

    def stop(self) -> None:
        """Stop serving and free the port."""
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self.close()

    def close(self) -> None:
        """Free the port and the worker pool (idempotent)."""
        if self._closed:
            return
        self._closed = True
        self._httpd.server_close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    server_close = close  # the http.server name, for callers written against it

    def __enter__(self) -> RewardServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ------------------------------------------------------------------------- API


def make_server(
    score: Scorer, host: str = "127.0.0.1", port: int = 0, token: str | None = None, **limits: Any
) -> RewardServer:
    """A bound (not yet serving) :class:`RewardServer`; ``limits`` are its other fields.

    Call ``serve_forever()`` (blocking; Ctrl-C stops it) or ``start()`` (background).
    """
    return RewardServer(score, host=host, port=port, token=token or None, **limits)
