"""``trainkit rlhf <command>``: the RLHF recipes (kept free of heavy imports)."""

from trainkit.commands import Command

COMMANDS = {
    "sft": Command(
        help="supervised fine-tuning (full, LoRA or QLoRA; single process or FSDP2)",
        description="Supervised fine-tuning of a causal LM on chat / prompt-response / text "
        "data. Multi-process: torchrun --nproc-per-node N -m trainkit.cli rlhf sft "
        "... train.strategy=fsdp2",
        run="trainkit.llm.sft:run",
        config="trainkit.llm.sft:SFTConfig",
        flags={
            "--model": "model.name",
            "--data": "data.path",
            "--max-steps": "train.max_steps",
            "--output-dir": "output_dir",
        },
    ),
}
