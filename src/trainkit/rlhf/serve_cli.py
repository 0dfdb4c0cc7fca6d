"""``trainkit rlhf serve-rm --model PATH --port 5000``: serve a reward model over HTTP.

Wires :func:`trainkit.rlhf.trainers.rm.score_texts` (a saved reward-model folder ->
``score(list[str]) -> list[float]``) into the HTTP server of :mod:`trainkit.rlhf.serve`
(``POST {"query": [...]}`` -> ``{"rewards": [...]}``, loopback by default, optional
bearer token, ``--allow-anonymous`` for token-less loopback clients such as OpenRLHF's,
request size limit). Online RL uses it as a remote reward.

This module stays light: ``add_args`` is imported when the CLI is built, torch and
transformers only when the command runs.
"""

from __future__ import annotations

import os
from typing import Any

from trainkit.common.errors import UserError


def add_args(parser: Any) -> None:
    """The flags of ``serve-rm`` (argparse)."""
    parser.add_argument("--model", required=True, help="reward-model folder (from `rlhf rm`)")
    parser.add_argument(
        "--host", default="127.0.0.1", help="bind address (default 127.0.0.1: this machine only)"
    )
    parser.add_argument("--port", type=int, default=5000, help="TCP port (default 5000)")
    parser.add_argument(
        "--token",
        default=None,
        help="require 'Authorization: Bearer TOKEN' (default: $TRAINKIT_RM_TOKEN)",
    )
    parser.add_argument(
        "--allow-anonymous",
        action="store_true",
        help="with a token, still serve requests without an Authorization header from "
        "this machine (loopback), e.g. OpenRLHF's client, which sends no token",
    )
    parser.add_argument(
        "--max-bytes",
        type=int,
        default=1 << 20,
        help="largest accepted request body in bytes (default 1 MiB)",
    )
    parser.add_argument("--batch-size", type=int, default=16, help="texts per forward pass")
    parser.add_argument(
        "--max-len", type=int, default=1024, help="tokens per text (left-truncated)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")


def build_server(args: Any):
    """Load the reward model named by ``args`` and bind (not start) its server."""
    from trainkit.rlhf.serve import make_server
    from trainkit.rlhf.trainers.rm import score_texts

    if not (0 <= args.port <= 65535):
        raise UserError(f"--port must be in 0..65535, got {args.port}")
    if args.max_bytes < 1:
        raise UserError(f"--max-bytes must be >= 1, got {args.max_bytes}")
    token = args.token if args.token is not None else os.environ.get("TRAINKIT_RM_TOKEN")
    score = score_texts(
        args.model, batch_size=args.batch_size, max_len=args.max_len, device=args.device
    )
    anonymous = bool(getattr(args, "allow_anonymous", False))  # without a token: moot
    return make_server(
        score,
        host=args.host,
        port=args.port,
        token=token,
        max_body_bytes=args.max_bytes,
        allow_anonymous=anonymous,
    )


def run(cfg: Any, args: Any) -> int:
    """``serve-rm``: load the reward model and serve it until Ctrl-C."""
    server = build_server(args)
    print(
        f"reward model {args.model} served on {server.url} "
        f'(POST {{"query": [...]}} -> {{"rewards": [...]}}; bearer token '
        f"{server.auth_mode}); Ctrl-C stops",
        flush=True,
    )
    server.serve_forever()
    return 0
