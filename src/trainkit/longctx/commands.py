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
            "--short-ratio": "data.short_ratio",
        },
    ),
    "make-teacher-data": Command(
        help="long-document QA written by a teacher LLM (OpenAI-compatible URL or local model)",
        run="trainkit.longctx.teacher:run",
        config="trainkit.longctx.teacher:TeacherDataConfig",
        flags={
            "--teacher-url": "teacher.url",
            "--teacher-model": "teacher.model",
            "--teacher-key-env": "teacher.key_env",
            "--teacher-local": "teacher.local",
            "--teacher-retries": "teacher.retries",
            "--teacher-timeout": "teacher.timeout",
            "--docs": "docs.source",
            "--chunk-tokens": "docs.chunk_tokens",
            "--qa-per-chunk": "docs.qa_per_chunk",
            "--tokenizer": "docs.tokenizer",
            "--short-ratio": "short_ratio",
            "--out": "out",
            "--seed": "seed",
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
