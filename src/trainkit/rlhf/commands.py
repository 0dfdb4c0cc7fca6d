"""``trainkit rlhf <command>``: the RLHF recipes (kept free of heavy imports)."""

from trainkit.commands import Command
from trainkit.rlhf.serve_cli import add_args as _serve_args

_FLAGS = {
    "--model": "model.name",
    "--data": "data.path",
    "--max-steps": "train.max_steps",
    "--output-dir": "output_dir",
}

COMMANDS = {
    "sft": Command(
        help="supervised fine-tuning (full, LoRA or QLoRA; single process or FSDP2)",
        description="Supervised fine-tuning of a causal LM on chat / prompt-response / text "
        "data. Multi-process: torchrun --nproc-per-node N -m trainkit.cli rlhf sft "
        "... train.strategy=fsdp2",
        run="trainkit.llm.sft:run",
        config="trainkit.llm.sft:SFTConfig",
        flags=_FLAGS,
    ),
    "rm": Command(
        help="train a pairwise reward model (value head on the last token)",
        run="trainkit.rlhf.trainers.rm:run",
        config="trainkit.rlhf.trainers.rm:RMConfig",
        flags=_FLAGS,
    ),
    "dpo": Command(
        help="DPO / IPO / cDPO preference training (frozen, adapter-disabled or precomputed "
        "reference)",
        run="trainkit.rlhf.trainers.dpo:run",
        config="trainkit.rlhf.trainers.dpo:DPOConfig",
        flags=_FLAGS,
    ),
    "grpo": Command(
        help="online RL with group advantages (GRPO defaults; also dr_grpo, rloo, reinforce)",
        run="trainkit.rlhf.trainers.ppo:run_cli",
        config="trainkit.rlhf.trainers.rl_config:GRPOConfig",
        flags=_FLAGS,
    ),
    "ppo": Command(
        help="online RL with a critic and GAE (PPO defaults)",
        run="trainkit.rlhf.trainers.ppo:run_cli",
        config="trainkit.rlhf.trainers.rl_config:PPOConfig",
        flags=_FLAGS,
    ),
    "serve-rm": Command(
        help="serve a reward model over HTTP (loopback by default, optional bearer token)",
        run="trainkit.rlhf.serve_cli:run",
        add_args=_serve_args,
    ),
}
