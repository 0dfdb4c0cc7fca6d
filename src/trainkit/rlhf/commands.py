"""``trainkit rlhf <command>``: the RLHF recipes (kept free of heavy imports)."""

from trainkit.commands import Command
from trainkit.rlhf.envs.demos import add_args as _demos_args
from trainkit.rlhf.evaluate_cli import add_args as _evaluate_args
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
    "evaluate": Command(
        help="greedy multi-turn episodes of a model on held-out env-task problems -> JSON",
        description="Greedy episodes (tool_math, guess_number) of any model (built-in, HF "
        "folder, merged model or LoRA adapter folder) on the held-out problems of an env "
        "task; writes accuracy, tool_call_rate and mean_turns to --out (atomically).",
        run="trainkit.rlhf.evaluate_cli:run",
        add_args=_evaluate_args,
    ),
    "make-demos": Command(
        help="write calculator tool-use demonstrations (SFT chat data) for tool_math",
        description="Two-turn calculator transcripts on train-split 'products' problems, "
        "rendered as the episodes of env tool_math render them; the data of an SFT warm "
        "start (configs/rlhf/sft_calculator_smollm2.yaml).",
        run="trainkit.rlhf.envs.demos:run",
        add_args=_demos_args,
    ),
}
