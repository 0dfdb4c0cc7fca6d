"""Config of the online-RL recipes (``trainkit rlhf ppo`` / ``trainkit rlhf grpo``).

One dataclass, :class:`RLConfig`, with sections model/data/rollout/algo/optim/lora/
train/eval; :class:`GRPOConfig` and :class:`PPOConfig` are the same fields with other
defaults (same trainer). ``validate()`` rejects combinations that cannot work.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trainkit.config import ConfigError
from trainkit.llm.lora import LoraSection
from trainkit.rlhf.ray.config import RaySection

Estimator = Literal["gae", "reinforce", "reinforce_baseline", "grpo", "dr_grpo", "rloo"]
GROUP = ("grpo", "dr_grpo", "rloo", "reinforce_baseline")


@dataclass
class ModelSection:
    name: str = field(default="tiny-llama", metadata={"help": "built-in name or HF folder"})
    dtype: str = field(default="auto", metadata={"help": "auto, float32, bfloat16"})
    quantization: str | None = field(
        default=None, metadata={"help": "null, nf4 or int8 (needs lora.enabled)"}
    )
    gradient_checkpointing: bool = False
    critic: str | None = field(
        default="auto",
        metadata={
            "help": "critic init, used by estimator=gae only: 'auto' (= model.name), a model "
            "name/folder, or null (no critic)"
        },
    )


@dataclass
class DataSection:
    path: str = field(
        default="arithmetic",
        metadata={
            "help": "jsonl of {prompt, <labels>...} or a built-in task name (trainkit.rlhf.tasks)"
        },
    )
    eval_path: str = field(
        default="",
        metadata={
            "help": "held-out jsonl; empty: the task's held-out split or eval_fraction of path"
        },
    )
    eval_fraction: float = 0.1
    prompt_key: str = "prompt"
    chat_template: bool = field(
        default=True,
        metadata={"help": "wrap prompts in the chat template when the tokenizer has one"},
    )
    system_prompt: str | None = None
    max_prompt_tokens: int = field(
        default=256, metadata={"help": "longer prompts are skipped (counted)"}
    )
    reward: list[str] = field(
        default_factory=lambda: ["math_closeness"],
        metadata={"help": "reward functions (built-in name, module:function, file.py:function)"},
    )
    reward_weights: list[float] = field(
        default_factory=list, metadata={"help": "one weight per reward (empty: all 1)"}
    )
    accuracy_reward: str = field(
        default="math_exact",
        metadata={"help": "reward whose value 1.0 counts as correct in eval accuracy ('' to skip)"},
    )
    max_invalid_fraction: float = 0.5


@dataclass
class RolloutSection:
    engine: Literal["hf", "vllm"] = field(
        default="hf",
        metadata={
            "help": "hf: in-process, shares the policy; vllm: separate engine, weights synced "
            "after every update (needs the vllm extra)"
        },
    )
    n: int = field(default=8, metadata={"help": "samples per prompt (group size)"})
    prompts_per_step: int = 1
    max_new_tokens: int = 32
    temperature: float = 1.0
    top_p: float = 1.0
    max_batch: int | None = field(default=None, metadata={"help": "rows per generate call"})
    merge_lora: bool = field(
        default=False,
        metadata={
            "help": "fold LoRA into the weights while generating (fewer matmuls per token; "
            "costs a transient copy of the adapted weights)"
        },
    )


@dataclass
class AlgoSection:
    estimator: Estimator = "grpo"
    kl_coef: float = field(default=0.0, metadata={"help": "beta; 0 skips the reference pass"})
    kl_kind: Literal["k1", "k2", "k3"] = "k3"
    kl_in_reward: bool = field(
        default=False,
        metadata={
            "help": "KL as a per-token reward (PPO/REINFORCE++) instead of a loss term (GRPO)"
        },
    )
    clip_low: float = 0.2
    clip_high: float = 0.2
    dual_clip: float | None = None
    value_clip: float | None = 0.5
    vf_coef: float = 1.0
    gamma: float = 1.0
    lam: float = 0.95
    entropy_coef: float = 0.0
    ppo_epochs: int = 1
    mini_batches: int = field(default=1, metadata={"help": "optimizer steps per ppo epoch"})
    loss_agg: Literal["auto", "token_mean", "seq_mean", "sum_norm"] = field(
        default="auto",
        metadata={"help": "auto: sum_norm (over max_new_tokens) for dr_grpo, else token_mean"},
    )
    dynamic_sampling: bool = field(
        default=False, metadata={"help": "drop groups whose rewards are all equal (DAPO)"}
    )
    recompute_old_logp: bool = field(
        default=False,
        metadata={
            "help": "recompute behaviour log-probs with a forward pass instead of the engine's"
        },
    )


@dataclass
class OptimSection:
    lr: float = 1e-5
    critic_lr: float = 1e-5
    weight_decay: float = 0.0
    grad_clip: float = 1.0
    warmup_steps: int = 0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])


@dataclass
class TrainSection:
    max_steps: int = 50
    seed: int = 0
    micro_batch_size: int = field(
        default=8, metadata={"help": "rows per forward/backward (rounded to whole prompt groups)"}
    )
    share_prompt: bool = field(
        default=True,
        metadata={
            "help": "encode each prompt once per group of n samples (same result, fewer FLOPs)"
        },
    )
    save_every: int = field(default=0, metadata={"help": "checkpoint every N steps (0: end)"})
    keep_last: int = 2
    resume: bool = field(
        default=False, metadata={"help": "continue from the newest checkpoint in output_dir"}
    )
    threads: int | None = field(default=None, metadata={"help": "torch CPU threads"})
    progress: bool = True
    nonfinite: Literal["skip", "stop"] = "skip"
    save_model: bool = field(default=True, metadata={"help": "write output_dir/model at the end"})


@dataclass
class EvalSection:
    every: int = field(
        default=10, metadata={"help": "evaluate every N steps (0: only at start and end)"}
    )
    n_prompts: int = 64
    max_new_tokens: int | None = field(default=None, metadata={"help": "null: rollout's"})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy"})
    samples_per_prompt: int = field(
        default=1,
        metadata={
            "help": "completions per held-out prompt (with temperature > 0: expected reward)"
        },
    )
    batch_size: int = 64


@dataclass
class RLConfig:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    algo: AlgoSection = field(default_factory=AlgoSection)
    optim: OptimSection = field(default_factory=OptimSection)
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    ray: RaySection = field(default_factory=RaySection)
    output_dir: str = "runs/rl"

    @property
    def uses_critic(self) -> bool:
        return self.algo.estimator == "gae"

    def validate(self) -> None:
        """Reject impossible combinations with one clear line each."""
        a, r = self.algo, self.rollout
        if a.estimator == "gae" and self.model.critic is None:
            raise ConfigError(
                "algo.estimator=gae needs a critic: set model.critic to 'auto' or a model name"
            )
        if a.estimator != "gae" and self.model.critic not in (None, "auto"):
            raise ConfigError(
                f"model.critic={self.model.critic!r} is only used by "
                f"algo.estimator=gae (got {a.estimator})"
            )
        if a.estimator in GROUP and r.n < 2:
            raise ConfigError(
                f"algo.estimator={a.estimator} compares samples of a prompt: "
                f"rollout.n must be >= 2, got {r.n}"
            )
        if a.kl_in_reward and a.estimator in ("grpo", "dr_grpo", "rloo"):
            raise ConfigError(
                f"algo.kl_in_reward=true needs a token-level estimator (gae, "
                f"reinforce, reinforce_baseline); {a.estimator} uses the KL loss"
            )
        if a.dynamic_sampling and r.n < 2:
            raise ConfigError("algo.dynamic_sampling needs rollout.n >= 2")
        if a.dual_clip is not None and a.dual_clip <= 1.0:
            raise ConfigError(f"algo.dual_clip must be > 1 or null, got {a.dual_clip}")
        if a.kl_coef < 0 or a.entropy_coef < 0:
            raise ConfigError("algo.kl_coef and algo.entropy_coef must be >= 0")
        if a.ppo_epochs < 1 or a.mini_batches < 1:
            raise ConfigError("algo.ppo_epochs and algo.mini_batches must be >= 1")
        if a.mini_batches > r.n * r.prompts_per_step:
            raise ConfigError(
                f"algo.mini_batches={a.mini_batches} exceeds the rows per step "
                f"(rollout.n * rollout.prompts_per_step = "
                f"{r.n * r.prompts_per_step})"
            )
        if r.n < 1 or r.prompts_per_step < 1 or r.max_new_tokens < 1:
            raise ConfigError(
                "rollout.n, rollout.prompts_per_step and rollout.max_new_tokens must be >= 1"
            )
        if r.temperature <= 0:
            raise ConfigError(
                f"rollout.temperature must be > 0 for RL sampling, got {r.temperature}"
            )
        if not 0.0 < r.top_p <= 1.0:
            raise ConfigError(f"rollout.top_p must be in (0, 1], got {r.top_p}")
        if self.model.quantization is not None and not self.lora.enabled:
            raise ConfigError(
                "model.quantization trains only through adapters: set lora.enabled=true"
            )
        if self.data.reward_weights and len(self.data.reward_weights) != len(self.data.reward):
            raise ConfigError(
                f"data.reward_weights has {len(self.data.reward_weights)} "
                f"values for {len(self.data.reward)} rewards"
            )
        if not self.data.reward:
            raise ConfigError("data.reward must name at least one reward function")
        if self.eval.samples_per_prompt < 1 or self.eval.n_prompts < 0:
            raise ConfigError("eval.samples_per_prompt must be >= 1 and eval.n_prompts >= 0")
        if self.eval.samples_per_prompt > 1 and self.eval.temperature == 0:
            raise ConfigError(
                "eval.samples_per_prompt > 1 needs eval.temperature > 0 "
                "(greedy samples are identical)"
            )
        if self.train.max_steps < 0 or self.train.micro_batch_size < 1:
            raise ConfigError("train.max_steps must be >= 0 and train.micro_batch_size >= 1")


@dataclass
class GRPOConfig(RLConfig):
    """GRPO defaults: group-normalised advantages, no critic, KL as a loss term."""

    output_dir: str = "runs/grpo"


@dataclass
class PPOConfig(RLConfig):
    """PPO defaults: critic + GAE, KL (k1) in the per-token reward."""

    algo: AlgoSection = field(
        default_factory=lambda: AlgoSection(
            estimator="gae", kl_coef=0.01, kl_kind="k1", kl_in_reward=True, ppo_epochs=1
        )
    )
    output_dir: str = "runs/ppo"
