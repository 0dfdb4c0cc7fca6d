"""``trainkit <part> <command> [--config FILE.yaml] [key.sub=value ...]``.

Parts and their commands are listed in ``trainkit/<part>/commands.py``; nothing heavy
is imported until a command runs. User errors print one line and exit with code 2.
"""

from __future__ import annotations

import argparse
import sys

from trainkit import __version__
from trainkit.commands import part_commands, resolve
from trainkit.common.errors import UserError
from trainkit.common.guard import NonFiniteError

PARTS = {
    "kan": "Kolmogorov-Arnold Networks: fit, discover formulas",
    "llm": "shared LLM base: model conversion and inspection",
    "rlhf": "SFT, reward models, DPO family, PPO/GRPO/RLOO",
    "longctx": "context extension: RoPE rescaling, synthetic data, needle eval",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trainkit",
        description="trainkit: KANs, RLHF/RLVR and long-context extension on one PyTorch base.",
    )
    p.add_argument("--version", action="version", version=f"trainkit {__version__}")
    sub = p.add_subparsers(dest="part", metavar="<part>")
    d = sub.add_parser(
        "demo",
        help="run the demo report of every part",
        description="Run each part on the embedded defaults and write a report.",
    )
    d.add_argument("--quick", action="store_true", help="a shorter version (< 5 minutes)")
    d.add_argument("--out", default=None, help="report folder (default runs/demo/<timestamp>)")
    d.add_argument("--parts", default="kan,rlhf,longctx", help="comma-separated parts")
    for part, helptext in PARTS.items():
        pp = sub.add_parser(part, help=helptext, description=helptext)
        psub = pp.add_subparsers(dest="command", metavar="<command>")
        for name, cmd in part_commands(part).items():
            cp = psub.add_parser(name, help=cmd.help, description=cmd.description or cmd.help)
            cp.set_defaults(_cmd=cmd)
            if cmd.config is not None:
                cp.add_argument("--config", default=None, help="YAML config file")
                cp.add_argument(
                    "--print-config", action="store_true", help="print the resolved config and exit"
                )
            for flag, key in (cmd.flags or {}).items():
                cp.add_argument(
                    flag, dest="_flag_" + key, default=None, metavar="V", help=f"same as {key}=V"
                )
            if cmd.add_args is not None:
                cmd.add_args(cp)
            if cmd.config is not None:
                cp.add_argument(
                    "overrides", nargs="*", metavar="key.sub=value", help="config overrides"
                )
    return p


def _run(argv: list[str]) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # `key=value` overrides may sit between flags: argparse leaves the later ones over
    if extra:
        if hasattr(args, "overrides") and all("=" in a and not a.startswith("-") for a in extra):
            args.overrides = list(args.overrides) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if args.part is None:
        parser.print_help()
        return 0
    if args.part == "demo":
        from trainkit.demo import run_demo

        parts = [x.strip() for x in args.parts.split(",") if x.strip()]
        run_demo(parts=parts, quick=args.quick, out=args.out)
        return 0
    cmd = getattr(args, "_cmd", None)
    if cmd is None:
        parser.parse_args([args.part, "--help"])
        return 0
    cfg = None
    if cmd.config is not None:
        from trainkit.config import load_config, to_yaml

        flagged = [
            f"{key}={getattr(args, '_flag_' + key)}"
            for key in (cmd.flags or {}).values()
            if getattr(args, "_flag_" + key) is not None
        ]
        cfg = load_config(resolve(cmd.config), args.config, flagged + list(args.overrides))
        if args.print_config:
            sys.stdout.write(to_yaml(cfg))
            return 0
    result = resolve(cmd.run)(cfg, args)
    return int(result) if isinstance(result, int) else 0


def _quiet_libraries() -> None:
    """Silence library chatter that would put extra stderr lines around a one-line error:
    the weight-loading progress bar of transformers (read by huggingface_hub at import) and
    bitsandbytes' warning about optional CPU kernels."""
    import logging
    import os

    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    _quiet_libraries()
    try:
        return _run(argv)
    except (UserError, NonFiniteError) as e:
        print(f"trainkit: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("trainkit: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
