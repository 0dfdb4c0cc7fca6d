"""Tool-use demonstrations for an SFT warm start before multi-turn RL (``tool_math``).

For each train-split problem of ``products`` (:func:`trainkit.rlhf.envs.builtin.make_products`)
a two-turn transcript: the assistant calls the calculator,

    <tool_call>{"name": "calculator", "arguments": {"expression": "347 * 86"}}</tool_call>

the tool's result comes back, and the assistant replies ``Answer: 29842``. The messages
are written as the chat data of ``trainkit rlhf sft`` (``{"messages": [...]}``, loss on the
assistant turns only) and are exactly what an episode shows the policy: the system
message of :func:`~trainkit.rlhf.envs.render.tool_system_prompt` (the renderer's
``with_tools``) and, for templates without tool support (SmolLM2), the tool result as a
user message ``<tool_response>\\n...\\n</tool_response>``, as
:class:`~trainkit.rlhf.envs.render.Renderer` renders it. The tool's text is the tool's
own output (the environment's ``step``), so a demo and an episode agree
token for token except where the policy's sampled tokens differ.

With ``direct_fraction`` p > 0, the first ``round(p * n)`` demos (spread evenly over the
``n``) instead answer directly in one turn (``Answer: N``, the correct product, no tool
call): a warm start on the mix learns the call format but calls the tool only part of the
time, which leaves GRPO the choice to learn (only tool-using episodes get products right).

``trainkit rlhf make-demos --out demos.jsonl [--n 1024] [--seed 0] [--model M]
[--direct-fraction P]`` writes them (atomically, one JSON object per line).
"""

from __future__ import annotations

import json
from typing import Any

from trainkit.common.errors import UserError
from trainkit.rlhf.envs.tools import format_call


def observation_messages(renderer: Any, messages: list[dict]) -> list[dict]:
    """Observation messages as the renderer's chat template sees them: unchanged for a
    template with tool support, else ``role: tool`` -> a user ``<tool_response>`` message
    (the rule of ``Renderer`` for the fallback and plain modes)."""
    if renderer.mode == "tools":
        return messages
    out = []
    for m in messages:
        if m["role"] == "tool":
            text = f"<tool_response>\n{m['content']}\n</tool_response>"
            out.append({"role": "user", "content": text})
        else:
            out.append({"role": m["role"], "content": m["content"]})
    return out


def calculator_demo(record: dict, env: Any, renderer: Any) -> dict:
    """``{"messages": [...]}``: one ``tool_math`` episode played perfectly on ``record``
    (``expression`` and ``answer`` labels), through ``env`` (the environment of the
    record) so the tool result is the environment's own observation."""
    if renderer.mode == "tools":
        raise UserError(
            "make-demos: this chat template renders tools itself (tools=...), which "
            "`rlhf sft` chat data cannot pass; use a model whose template has no tool support"
        )
    call = format_call("calculator", {"expression": record["expression"]})
    final = f"Answer: {record['answer']}"
    msgs = renderer.with_tools(env.reset())
    msgs.append({"role": "assistant", "content": call})
    step = env.step(call)
    if step.done or not step.observation:
        raise UserError("make-demos: the environment did not answer the tool call")
    obs = step.observation
    obs = [{"role": "user", "content": obs}] if isinstance(obs, str) else list(obs)
    msgs += observation_messages(renderer, obs)
    msgs.append({"role": "assistant", "content": final})
    last = env.step(final)
    if not (last.done and last.info.get("correct")):
        raise UserError(f"make-demos: the demo answer {final!r} is not scored correct")
    return {"messages": msgs}


def direct_demo(record: dict, env: Any, renderer: Any) -> dict:
    """``{"messages": [...]}``: the tool prompt, then the correct answer in one turn
    (``Answer: N``, no tool call), checked by ``env`` as an episode would score it."""
    final = f"Answer: {record['answer']}"
    msgs = renderer.with_tools(env.reset())
    msgs.append({"role": "assistant", "content": final})
    last = env.step(final)
    if not (last.done and last.info.get("correct")):
        raise UserError(f"make-demos: the demo answer {final!r} is not scored correct")
    return {"messages": msgs}


def direct_indices(n: int, direct_fraction: float) -> set[int]:
    """The ``round(direct_fraction * n)`` demo indices that answer directly, spread evenly
    over ``0..n-1`` (deterministic)."""
    k = round(direct_fraction * n)
    return {int(i * n / k) for i in range(k)} if k else set()


def make_demos(
    tokenizer: Any,
    n: int,
    seed: int = 0,
    task: str = "products",
    direct_fraction: float = 0.0,
) -> list[dict]:
    """``n`` demonstrations on the train split of ``task`` (seed ``seed``): calculator
    transcripts, of which ``round(direct_fraction * n)`` answer directly instead."""
    from trainkit.rlhf.envs.builtin import TASKS
    from trainkit.rlhf.envs.config import EnvFactory, EnvSection
    from trainkit.rlhf.envs.render import Renderer

    if task != "products":
        raise UserError(f"make-demos: only the task 'products' has demonstrations, got {task!r}")
    train = TASKS[task](seed)[0]
    if not 1 <= n <= len(train):
        raise UserError(f"--n must be in 1..{len(train)} (train problems), got {n}")
    if not 0.0 <= direct_fraction <= 1.0:
        raise UserError(f"--direct-fraction must be in [0, 1], got {direct_fraction}")
    direct = direct_indices(n, direct_fraction)
    factory = EnvFactory(EnvSection(name="tool_math", tools=["calculator"]))
    renderer = Renderer(tokenizer, factory.tools)
    return [
        (direct_demo if i in direct else calculator_demo)(r, factory(r), renderer)
        for i, r in enumerate(train[:n])
    ]


# ------------------------------------------------------------------ CLI


def add_args(parser: Any) -> None:
    """The flags of ``make-demos`` (argparse)."""
    parser.add_argument("--out", required=True, help="JSONL file of chat records")
    parser.add_argument("--n", type=int, default=1024, help="demonstrations (default 1024)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train split")
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="model whose chat template the demos are for (tokenizer only)",
    )
    parser.add_argument(
        "--direct-fraction",
        type=float,
        default=0.0,
        help="fraction of demos that answer directly in one turn, no tool call (default 0)",
    )


def run(cfg: Any, args: Any) -> int:
    """``make-demos``: write ``--n`` demonstrations to ``--out``."""
    from trainkit.common.io import atomic_write_text
    from trainkit.llm.models import load_tokenizer

    if args.n < 1:
        raise UserError(f"--n must be >= 1, got {args.n}")
    frac = getattr(args, "direct_fraction", 0.0)
    demos = make_demos(load_tokenizer(args.model), args.n, args.seed, direct_fraction=frac)
    atomic_write_text(args.out, "".join(json.dumps(d) + "\n" for d in demos))
    n_direct = sum(len(d["messages"]) == 3 for d in demos)
    print(
        f"wrote {len(demos)} demonstrations ({len(demos) - n_direct} calculator, "
        f"{n_direct} direct) to {args.out}",
        flush=True,
    )
    return 0
