"""``trainkit llm <command>``: model conversion and inspection (heavy imports are lazy)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from trainkit.commands import Command
from trainkit.common.errors import UserError


def _convert_args(p):
    p.add_argument(
        "model",
        help="built-in name (smollm2-135m-instruct, tiny-llama, ...), HF folder or .gguf file",
    )
    p.add_argument(
        "--out", default=None, help="also copy the converted folder here (default: only the cache)"
    )
    p.add_argument(
        "--merge-adapter",
        default=None,
        metavar="ADAPTER_DIR",
        help="merge this LoRA adapter into the model and save to --out",
    )


def _info_args(p):
    p.add_argument("--model", required=True, help="built-in name, HF folder or .gguf file")
    p.add_argument("--json", action="store_true", help="print JSON")


def convert(cfg: Any, args: Any) -> int:
    """Resolve (convert once) a model; optionally copy it or merge an adapter into it."""
    from trainkit.common.io import atomic_dir
    from trainkit.llm.models import resolve

    path = resolve(args.model)
    if args.merge_adapter:
        if not args.out:
            raise UserError("--merge-adapter needs --out (where the merged model goes)")
        from trainkit.llm.merge import merge_adapter

        merge_adapter(args.merge_adapter, args.out, base=path)
        print(args.out)
        return 0
    if args.out:
        out = Path(args.out)
        with atomic_dir(out) as tmp:
            for f in Path(path).iterdir():
                if f.is_file():
                    shutil.copy2(f, Path(tmp) / f.name)
        path = str(out)
    print(path)
    return 0


def info(cfg: Any, args: Any) -> int:
    """Print :func:`trainkit.llm.models.describe_model` of ``--model``."""
    from trainkit.llm.models import describe_model

    d = describe_model(args.model)
    if args.json:
        print(json.dumps(d, indent=2))
    else:
        for k, v in d.items():
            print(f"{k:>24}: {v}")
    return 0


COMMANDS = {
    "convert": Command(
        help="convert a built-in or GGUF model to a cached safetensors HF folder",
        run="trainkit.llm.commands:convert",
        add_args=_convert_args,
    ),
    "info": Command(
        help="show a model's architecture, size, context length and chat template",
        run="trainkit.llm.commands:info",
        add_args=_info_args,
    ),
    "data-check": Command(
        help="validate and tokenise a dataset; print length/packing stats",
        run="trainkit.llm.data:check",
        config="trainkit.llm.data:DataCheckConfig",
        flags={"--data": "data.path", "--model": "model"},
    ),
}
