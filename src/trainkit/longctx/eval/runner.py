"""``evaluate(...)`` and ``trainkit longctx eval``: all tasks, results.json, heatmaps.

Output folder::

    results.json       {task: {"accuracy", "by_length", "by_depth", "grid", "n"}, "ppl": {...},
                        "config": {..., "rope": the model's RoPE settings as evaluated}}
    <task>.png         heatmap of accuracy, depth (rows) x length (columns)
    predictions.jsonl  one line per generated answer (task, length, depth, answer, prediction)

Every file is written atomically; the same seed gives the same haystacks, needles and
(greedy) answers.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from trainkit.common.errors import UserError
from trainkit.common.io import atomic_path, atomic_write_json, atomic_write_text
from trainkit.longctx.eval.scoring import SCORERS
from trainkit.longctx.haystack import Meter

GRID_TASKS = ("needle", "passkey", "kv", "topics")
ALL_TASKS = GRID_TASKS + ("ppl",)


@dataclass
class EvalConfig:
    """Config of ``trainkit longctx eval``: retrieval grids and perplexity of one model.

    Attributes:
        tasks: tasks to run, some of ``needle``, ``passkey``, ``kv``, ``topics`` (grids of
            length x depth) and ``ppl`` (held-out perplexity).
        depths: answer depths in [0, 1] (0 = start of the context, 1 = end); ``topics``
            always uses 0.
        seed: changes haystacks, needles and keys; the same seed gives the same samples.
        unit: what ``lengths`` count: ``tokens`` of the model's tokenizer or ``chars``.
        scorer: answer scoring: ``contains`` (the needle's fact inside the answer), ``exact``
            match, or ``rouge`` (ROUGE-L F).
        ppl_length: tokens per held-out window of the ``ppl`` task.
        ppl_windows: number of held-out windows for ``ppl`` (fewer if the text is too short).
        dtype: dtype the model is loaded in; ``auto`` = bfloat16 on a bf16 GPU, else float32.
        rope_method: RoPE rule applied to the loaded model without training
            (:func:`trainkit.longctx.rope.apply_rope`): ``none`` keeps the model's RoPE,
            ``theta`` raises rope_theta, ``linear`` position interpolation, ``dynamic`` NTK,
            ``yarn``, ``llama3``; all but ``none``/``theta`` need ``rope_factor``.
        rope_factor: extension ratio (target / original length) of the rule.
        rope_theta: new rope_theta for ``rope_method: theta`` (default: ``suggest_theta``).
        original_max_position: pretraining length the rule scales from (default: the
            config's ``max_position_embeddings``).
    """

    model: str = field(default="", metadata={"help": "model folder, .gguf or built-in name"})
    tasks: list[str] = field(default_factory=lambda: ["needle", "passkey", "kv", "topics", "ppl"])
    lengths: list[int] = field(
        default_factory=lambda: [256, 512, 1024, 2048],
        metadata={"help": "context lengths (in `unit`)"},
    )
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    samples: int = field(default=2, metadata={"help": "haystacks per grid cell"})
    seed: int = 0
    out: str = field(default="runs/longctx/eval", metadata={"help": "output folder"})
    unit: Literal["tokens", "chars"] = "tokens"
    scorer: Literal["contains", "exact", "rouge"] = "contains"
    source: Literal["stdlib", "bio", "repeat"] = field(
        default="stdlib", metadata={"help": "haystack text"}
    )
    n_keys: int = field(default=4, metadata={"help": "pairs per kv sample"})
    ppl_length: int = 256
    ppl_windows: int = 16
    dtype: str = "auto"
    rope_method: Literal["none", "theta", "linear", "dynamic", "yarn", "llama3"] = "none"
    rope_factor: float | None = None
    rope_theta: float | None = None
    original_max_position: int | None = None

    def validate(self) -> None:
        check_tasks(self.tasks)
        if any(not 0.0 <= d <= 1.0 for d in self.depths):
            raise UserError(f"depths must be in [0, 1], got {self.depths}")
        if not self.lengths or any(n <= 0 for n in self.lengths) or self.samples < 1:
            raise UserError("lengths must be positive numbers and samples >= 1")
        given = [k for k in ("rope_factor", "rope_theta") if getattr(self, k) is not None]
        if self.rope_method == "none" and given:
            raise UserError(f"{', '.join(given)} set but rope_method is none; set rope_method")
        if self.rope_method not in ("none", "theta") and self.rope_factor is None:
            raise UserError(f"rope_method={self.rope_method} needs rope_factor (e.g. 2)")


def check_tasks(tasks: list[str]) -> None:
    bad = [t for t in tasks if t not in ALL_TASKS]
    if bad:
        raise UserError(f"unknown eval task(s) {bad}; expected some of {', '.join(ALL_TASKS)}")
    if not tasks:
        raise UserError("no eval tasks given")


def heatmap(summary: dict, title: str, path: str | Path) -> Path:
    """Save a depth x length accuracy heatmap (red 0 .. green 1) to ``path`` (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    grid = summary["grid"]
    lengths = list(grid)
    depths = list(next(iter(grid.values())))
    data = np.array([[grid[L][d] for L in lengths] for d in depths], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(lengths), 1.0 + 0.45 * len(depths)))
    im = ax.imshow(data, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(lengths)), lengths)
    ax.set_yticks(range(len(depths)), [f"{float(d):.0%}" for d in depths])
    ax.set_xlabel("context length")
    ax.set_ylabel("depth")
    ax.set_title(f"{title}: {summary['accuracy']:.0%}")
    for i in range(len(depths)):
        for j in range(len(lengths)):
            if not math.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:.2f}", ha="center", va="center", fontsize=7)
    fig.colorbar(im, ax=ax, fraction=0.05)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return Path(path)


def evaluate(
    model: Any,
    tokenizer: Any,
    tasks: list[str],
    lengths: list[int],
    depths: list[float],
    seed: int,
    out_dir: str | Path | None,
    *,
    samples: int = 1,
    unit: str = "tokens",
    scorer: str = "contains",
    source: str = "stdlib",
    n_keys: int = 4,
    ppl_length: int = 256,
    ppl_windows: int = 16,
) -> dict:
    """Run ``tasks`` on ``model`` and return (and, with ``out_dir``, write) the results.

    Args:
        model: a causal LM (``generate`` and ``forward`` as in transformers).
        tokenizer: its tokenizer.
        tasks: subset of ``needle, passkey, kv, topics, ppl``.
        lengths: context lengths in ``unit`` (tokens of ``tokenizer`` or characters).
        depths: answer depths in [0, 1] (topics always uses 0).
        seed: changes haystacks, needles and keys.
        out_dir: folder for ``results.json``, ``<task>.png``, ``predictions.jsonl``.
        samples: haystacks per grid cell.
        scorer: ``contains`` (the needle's fact exactly, inside the answer), ``exact``
            or ``rouge`` (ROUGE-L F).

    Returns:
        ``{task: {"accuracy", "by_length", "by_depth", "grid", "n"}, "ppl": {...}}``.
    """
    from trainkit.longctx.eval.common import run_grid
    from trainkit.longctx.eval.ppl import perplexity

    check_tasks(list(tasks))
    if scorer not in SCORERS:
        raise UserError(f"scorer must be one of {', '.join(SCORERS)}, got {scorer!r}")
    meter = Meter(tokenizer) if unit == "tokens" else Meter()
    # The grid tasks (samples come from trainkit.longctx.tasks): needle in a haystack
    # (G. Kamradt 2023; the paper's 10 lengths x 10 depths), passkey (Mohtashami & Jaggi
    # 2023, arXiv 2305.16300), kv (n_keys key-value lines; the distractors make it harder
    # than passkey) and topics (LongChat: name the first topic, always at depth 0).
    options = {
        "needle": {"source": source},
        "passkey": {"source": source},
        "kv": {"source": source, "n_keys": n_keys},
        "topics": {},
    }
    was_training = getattr(model, "training", False)
    model.eval()
    results: dict[str, Any] = {}
    all_rows: list[dict] = []
    try:
        for task in tasks:
            if task == "ppl":
                results["ppl"] = perplexity(model, tokenizer, ppl_length, ppl_windows)
                continue
            summary, rows = run_grid(
                model,
                tokenizer,
                task,
                list(lengths),
                [0.0] if task == "topics" else list(depths),
                seed=seed,
                samples=samples,
                meter=meter,
                scorer=scorer,
                options=options[task],
            )
            results[task] = summary
            all_rows += rows
    finally:
        if was_training:
            model.train()
    results["config"] = {
        "tasks": list(tasks),
        "lengths": list(lengths),
        "depths": list(depths),
        "seed": seed,
        "samples": samples,
        "unit": unit,
        "scorer": scorer,
        "source": source,
        "n_keys": n_keys,
        "rope": rope_record(model),
    }
    if out_dir is not None:
        out = Path(out_dir)
        for task in tasks:
            if task != "ppl":
                heatmap(results[task], task, out / f"{task}.png")
        atomic_write_text(
            out / "predictions.jsonl", "".join(json.dumps(r) + "\n" for r in all_rows)
        )
        atomic_write_json(out / "results.json", results)
    return results


def rope_record(model: Any) -> dict | None:
    """The RoPE settings of ``model.config`` as evaluated (``None`` without a config):
    ``rope_parameters``, ``max_position_embeddings`` and, when a rule was applied by
    trainkit, ``trainkit_longctx`` (method, factor, original length, base theta)."""
    c = getattr(model, "config", None)
    if c is None:
        return None
    return {
        "rope_parameters": dict(getattr(c, "rope_parameters", None) or {}),
        "max_position_embeddings": getattr(c, "max_position_embeddings", None),
        "trainkit_longctx": getattr(c, "trainkit_longctx", None),
    }


def load_for_eval(cfg: EvalConfig):
    """``(model, tokenizer)`` of ``cfg.model``, with ``cfg.rope_method`` applied in place
    (training-free: the rotary tables are rebuilt, no weight changes)."""
    from trainkit.llm.models import load_model
    from trainkit.longctx.recipe import RopeSection, apply_rope_inplace

    model, tok = load_model(cfg.model, dtype=cfg.dtype)
    rope = RopeSection(
        method=cfg.rope_method,
        factor=cfg.rope_factor,
        theta=cfg.rope_theta,
        original_max_position=cfg.original_max_position,
    )
    apply_rope_inplace(model, rope)
    return model, tok


def run(cfg: EvalConfig, args=None) -> int:
    """CLI entry: load ``cfg.model`` with trainkit.llm (RoPE rule applied) and evaluate it."""
    if not cfg.model:
        raise UserError("no model given: use --model PATH (a model folder, .gguf or built-in name)")
    model, tok = load_for_eval(cfg)
    res = evaluate(
        model,
        tok,
        cfg.tasks,
        cfg.lengths,
        cfg.depths,
        cfg.seed,
        cfg.out,
        samples=cfg.samples,
        unit=cfg.unit,
        scorer=cfg.scorer,
        source=cfg.source,
        n_keys=cfg.n_keys,
        ppl_length=cfg.ppl_length,
        ppl_windows=cfg.ppl_windows,
    )
    line = {
        t: (round(v["accuracy"], 4) if "accuracy" in v else round(v["ppl"], 3))
        for t, v in res.items()
        if t != "config"
    }
    print(json.dumps({"out": cfg.out, **line}))
    return 0
