"""``trainkit longctx <command>``: registered lazily (nothing heavy is imported here)."""

from trainkit.commands import Command

COMMANDS = {
    "make-data": Command(
        help="write synthetic long-context SFT data (JSONL, {'messages': [...]})",
        run="trainkit.longctx.data:run",
        config="trainkit.longctx.data:MakeDataConfig",
        flags={
            "--out": "out",
            "--seed": "seed",
            "--tasks": "data.tasks",
            "--lengths": "data.lengths",
            "--tokenizer": "data.tokenizer",
        },
    ),
    "eval": Command(
        help="needle/passkey/kv/topics/ppl evaluation of a model; writes results.json + heatmaps",
        run="trainkit.longctx.eval.runner:run",
        config="trainkit.longctx.eval.runner:EvalConfig",
        flags={
            "--model": "model",
            "--tasks": "tasks",
            "--lengths": "lengths",
            "--depths": "depths",
            "--out": "out",
            "--seed": "seed",
            "--samples": "samples",
            "--unit": "unit",
            "--rope-method": "rope_method",
            "--rope-factor": "rope_factor",
            "--rope-theta": "rope_theta",
            "--original-max-position": "original_max_position",
        },
    ),
    "extend": Command(
        help="extend a model's context: RoPE rule + (Q)LoRA fine-tune + merge (arXiv 2404.19553)",
        run="trainkit.longctx.recipe:run",
        config="trainkit.longctx.recipe:ExtendConfig",
        flags={
            "--model": "model.name",
            "--out": "output_dir",
            "--method": "rope.method",
            "--factor": "rope.factor",
            "--theta": "rope.theta",
            "--max-steps": "train.max_steps",
            "--max-seconds": "train.max_seconds",
        },
    ),
}
