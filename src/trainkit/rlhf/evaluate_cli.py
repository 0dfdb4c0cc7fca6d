"""``trainkit rlhf evaluate --model M --task T --samples N --seed S --out F.json``.

Greedy multi-turn episodes of any model on the held-out problems of an environment task
(:data:`trainkit.rlhf.envs.builtin.TASKS`): the environment follows from the task
(``products`` -> ``tool_math``, ``guess_number`` -> ``guess_number``), the episodes are
played by :meth:`trainkit.rlhf.trainers.rl_env.EpisodeRunner.evaluate` on the in-process
HF engine, exactly as the RL loop evaluates its policy. ``--no-tools`` asks the same
questions with no tool offered (``env.tools=[]``).

The model is a built-in name, an HF model folder (base or merged) or a LoRA adapter
folder (``adapter_config.json``; its base is ``base_model_name_or_path``, merged in
memory). The figures are written atomically as one JSON object: ``accuracy``,
``tool_call_rate``, ``mean_turns`` (plus ``reward``, ``truncated_frac``), the settings and
the wall time.

This module stays light: ``add_args`` is imported when the CLI is built, torch and
transformers only when the command runs.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from trainkit.common.errors import UserError

#: env task (``--task``) -> the environment that plays it
TASK_ENVS = {"products": "tool_math", "guess_number": "guess_number"}


def add_args(parser: Any) -> None:
    """The flags of ``evaluate`` (argparse)."""
    parser.add_argument(
        "--model",
        required=True,
        help="built-in name, HF model folder (base or merged) or LoRA adapter folder",
    )
    parser.add_argument(
        "--task", default="products", help=f"env task: {', '.join(TASK_ENVS)} (default products)"
    )
    parser.add_argument("--samples", type=int, default=50, help="held-out problems (default 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the held-out set (default 0)")
    parser.add_argument("--out", required=True, help="result JSON file (written atomically)")
    parser.add_argument(
        "--no-tools", action="store_true", help="offer no tool (env.tools=[]): the same questions"
    )
    parser.add_argument("--max-turns", type=int, default=4, help="replies per episode (default 4)")
    parser.add_argument(
        "--max-new-tokens", type=int, default=96, help="tokens per reply (default 96)"
    )
    parser.add_argument(
        "--batch-size", type=int, default=16, help="episodes per generate call (default 16)"
    )
    parser.add_argument("--device", default=None, help="cpu, cuda, ... (default: cuda if present)")


def check_args(args: Any) -> list[dict]:
    """Validate the flags before anything heavy loads; the held-out records."""
    from trainkit.rlhf.envs.builtin import TASKS

    if args.task not in TASK_ENVS or args.task not in TASKS:
        raise UserError(f"--task: unknown task '{args.task}' (env tasks: {', '.join(TASK_ENVS)})")
    for flag, v in (
        ("--samples", args.samples),
        ("--max-turns", args.max_turns),
        ("--max-new-tokens", args.max_new_tokens),
        ("--batch-size", args.batch_size),
    ):
        if v < 1:
            raise UserError(f"{flag} must be >= 1, got {v}")
    out = Path(args.out)
    if out.is_dir():
        raise UserError(f"--out {out} is a folder; expected a .json file path")
    held = TASKS[args.task](args.seed)[1]
    if args.samples > len(held):
        raise UserError(
            f"--samples {args.samples}: task '{args.task}' has {len(held)} held-out problems"
        )
    return held[: args.samples]


def episode_config(args: Any) -> Any:
    """The RL config whose ``env`` / ``eval`` / ``rollout`` sections drive the episodes."""
    from trainkit.config import ConfigError, load_config
    from trainkit.rlhf.trainers.rl_config import GRPOConfig

    over = [
        f"env.name={TASK_ENVS[args.task]}",
        f"env.max_turns={args.max_turns}",
        f"env.max_tokens={max(512, args.max_turns * (args.max_new_tokens + 64))}",
        f"data.path={args.task}",
        f"eval.n_prompts={args.samples}",
        "eval.temperature=0",
        "eval.samples_per_prompt=1",
        f"eval.batch_size={args.batch_size}",
        f"eval.max_new_tokens={args.max_new_tokens}",
        f"rollout.max_new_tokens={args.max_new_tokens}",
    ]
    if args.no_tools:
        over.append("env.tools=[]")
    try:
        return load_config(GRPOConfig, None, over)
    except ConfigError as e:
        raise UserError(str(e)) from None


def load_eval_model(name: str, device: str | None = None) -> tuple[Any, Any]:
    """``(model, tokenizer)`` in eval mode: a built-in, an HF folder, or a LoRA adapter
    folder merged (in memory) into its base."""
    import torch

    from trainkit.llm.models import load_model, resolve

    p = Path(name).expanduser()
    adapter = p / "adapter_config.json"
    if p.is_dir() and adapter.is_file() and not (p / "config.json").is_file():
        from peft import PeftModel

        base = json.loads(adapter.read_text()).get("base_model_name_or_path")
        if not base:
            raise UserError(f"{adapter}: base_model_name_or_path is empty")
        model, tok = load_model(base)
        try:
            model = PeftModel.from_pretrained(model, str(p)).merge_and_unload()
        except (RuntimeError, ValueError, KeyError) as e:
            raise UserError(f"{p}: adapter does not fit its base model {base} ({e})") from None
        if (p / "tokenizer_config.json").is_file():
            tok = _folder_tokenizer(p)
    else:
        model, tok = load_model(resolve(name))
    dev = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    return model.to(dev).eval().requires_grad_(False), tok


def _folder_tokenizer(folder: Path) -> Any:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def evaluate_model(args: Any) -> dict[str, Any]:
    """Play the held-out episodes and return the result record (nothing written)."""
    import torch

    from trainkit.rlhf.rollout.hf import HFEngine
    from trainkit.rlhf.trainers.rl_build import eos_ids
    from trainkit.rlhf.trainers.rl_env import EpisodeRunner

    records = check_args(args)
    cfg = episode_config(args)
    t0 = time.perf_counter()
    model, tok = load_eval_model(args.model, args.device)
    load_s = time.perf_counter() - t0
    runner = EpisodeRunner(cfg, tok)
    engine = HFEngine(model, tok.pad_token_id, eos_ids(model, tok), max_batch=args.batch_size)
    t1 = time.perf_counter()
    with torch.no_grad():
        m = runner.evaluate(engine, records, seed=args.seed)
    eval_s = time.perf_counter() - t1
    return {
        "accuracy": m["eval_accuracy"],
        "tool_call_rate": m["eval_tool_call_rate"],
        "mean_turns": m["eval_turns"],
        "reward": m["eval_reward"],
        "truncated_frac": m["eval_truncated_frac"],
        "model": str(args.model),
        "task": args.task,
        "env": cfg.env.name,
        "samples": len(records),
        "seed": args.seed,
        "tools": [] if args.no_tools else sorted(runner.factory.tools),
        "max_turns": args.max_turns,
        "max_new_tokens": args.max_new_tokens,
        "renderer": runner.renderer.mode,
        "load_s": round(load_s, 2),
        "eval_s": round(eval_s, 2),
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }


def run(cfg: Any, args: Any) -> int:
    """``evaluate``: play the episodes, write ``--out``, print a one-line summary."""
    from trainkit.common.io import atomic_write_json

    res = evaluate_model(args)
    atomic_write_json(args.out, res)
    print(
        f"{res['model']} on {res['samples']} held-out {res['task']} problems "
        f"(tools: {', '.join(res['tools']) or 'none'}): accuracy {res['accuracy']:.3f}, "
        f"tool-call rate {res['tool_call_rate']:.3f}, mean turns {res['mean_turns']:.2f} "
        f"({res['eval_s']:.1f} s); wrote {args.out}",
        flush=True,
    )
    return 0
