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
from trainkit.llm.sections import OptimSection as SharedOptimSection
from trainkit.llm.sections import QuantModelSection, RunFields
from trainkit.rlhf import estimators as E
from trainkit.rlhf.envs.config import EnvSection
from trainkit.rlhf.ray.config import RaySection
from trainkit.rlhf.reward_model import RewardModelSpec
from trainkit.rlhf.trainers.rl_sections import AlgoSection, RolloutSection

__all__ = ["AlgoSection", "GRPOConfig", "PPOConfig", "RLConfig", "RolloutSection"]


@dataclass
class ModelSection(QuantModelSection):
    """The policy model (and the critic of estimator=gae).

    Attributes:
        dtype: weight dtype of the policy, its reference and the critic: auto (bfloat16 on a
            bf16-capable GPU, else float32), float32, bfloat16, float16 or float64.
        gradient_checkpointing: recompute the policy's activations in backward (less memory,
            more compute); also turns off train.share_prompt, which needs a KV cache.
        quantization: bitsandbytes base quantization of the policy: nf4 (4-bit, QLoRA) or
            int8; the quantised base is frozen and trained through LoRA (needs lora.enabled);
            null: full precision.
    """

    critic: str | None = field(
        default="auto",
        metadata={
            "help": "critic init, used by estimator=gae only: 'auto' (= model.name), a model "
            "name/folder, or null (no critic)"
        },
    )


@dataclass
class DataSection:
    """Training/held-out prompts and the reward functions that score completions.

    Attributes:
        eval_fraction: share of a jsonl data.path held out for eval (seeded shuffle, at least
            one record) when eval_path is empty; unused for built-in tasks.
        prompt_key: field holding the prompt: a string, or a list of messages (TRL's
            conversational prompt-only form; rendered with the chat template). The
            record's other fields are passed to the reward functions as labels.
        system_prompt: system message put before each prompt when the chat template is
            applied and the prompt has no system message of its own; null: none.
        input_key: OpenRLHF's name of ``prompt_key`` (overrides it when set).
        label_key: OpenRLHF's label field: when set, only this field is a label, handed
            to the reward functions as ``answer`` (the built-in rewards' label) and sent
            as ``labels`` by remote rewards; the record's other fields are not passed.
        apply_chat_template: OpenRLHF's switch, the same as ``chat_template``.
        input_template: e.g. ``"User: {}\nAssistant: "``: a string prompt is put in place
            of ``{}`` when no chat template is applied.
        max_invalid_fraction: raise an error when more than this share of a step's samples
            fail to get a reward (failed ones stay in their group but get no loss tokens).
    """

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
    input_key: str | None = None
    label_key: str | None = None
    apply_chat_template: bool | None = None
    input_template: str | None = None
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

    def validate(self) -> None:
        """Apply the OpenRLHF aliases onto trainkit's names; check ``input_template``."""
        if self.input_key:
            self.prompt_key = self.input_key
        if self.apply_chat_template is not None:
            self.chat_template = self.apply_chat_template
        if self.input_template is not None and "{}" not in self.input_template:
            raise ConfigError(
                f"data.input_template must contain '{{}}' (where the prompt goes), "
                f"got {self.input_template!r}"
            )
        if self.label_key is not None and not self.label_key:
            raise ConfigError("data.label_key must be a field name or null, got ''")


@dataclass
class RewardSection:
    """Trained reward models scored in-process, added to the ``data.reward`` functions.

    Attributes:
        models: ``[{path, weight, normalize, clip}, ...]``: folders written by
            ``trainkit rlhf rm``, each scored on the policy's device and weighted into the
            sum with the rule rewards (:mod:`trainkit.rlhf.reward_model`).
    """

    models: list[RewardModelSpec] = field(default_factory=list)

    def validate(self) -> None:
        for m in self.models:
            m.validate()


@dataclass
class OptimSection(SharedOptimSection):
    """AdamW optimizers of the policy and the critic (the default: constant LR after a linear
    warmup).

    Attributes:
        lr: peak AdamW learning rate of the policy (reached after ``warmup_steps``).
        critic_lr: peak AdamW learning rate of the critic (estimator=gae only).
        weight_decay: AdamW decoupled weight decay (policy and critic); 0: none.
        max_grad_norm: max global gradient norm per optimizer step, policy and critic clipped
            separately.
        schedule: lr after warmup (policy and critic): cosine decay or linear decay to
            ``min_lr_ratio * lr`` over ``train.max_steps`` optimizer steps (the scheduler
            steps once per applied optimizer step, up to ppo_epochs * mini_batches per
            training step; it then stays at ``min_lr_ratio * lr``), or constant.
        warmup_steps: linear LR warmup from ``lr / warmup_steps`` to ``lr`` over this many
            optimizer steps (ppo_epochs * mini_batches per training step); 0: no warmup.
    """

    lr: float = 1e-5
    critic_lr: float = 1e-5


@dataclass
class TrainSection(RunFields):
    """Training loop length, seeding, checkpoints and failure handling.

    Attributes:
        max_steps: RL steps to run (each: rollout, experience, ppo_epochs of updates).
        seed: seeds everything (eval split, prompt order, sampling, mini-batch shuffles), so
            a run and its resume are reproducible.
        keep_last: newest checkpoints kept in output_dir/checkpoints (<= 0: keep all).
        progress: show a progress bar on stderr.
        nonfinite: on a non-finite loss or grad norm, skip: drop that optimizer step, warn
            and count (error after 5 in a row); stop: raise at the first one.
    """

    max_steps: int = 50
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
    cpus: list[int] = field(
        default_factory=list,
        metadata={"help": "CPU cores the trainer process is pinned to (empty: not pinned)"},
    )
    nonfinite: Literal["skip", "stop"] = "skip"
    save_model: bool = field(
        default=True, metadata={"help": "write the final policy to output_dir/final (as sft does)"}
    )


@dataclass
class EvalSection:
    """Periodic evaluation on held-out prompts (mean reward and accuracy).

    Attributes:
        n_prompts: evaluate on the first N held-out prompts; 0 disables evaluation.
        batch_size: completions per generate call while evaluating (prompts per call:
            batch_size // samples_per_prompt, at least 1).
    """

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
    """Online-RL recipe config (PPO, REINFORCE++, GRPO, Dr. GRPO, RLOO in one trainer).

    Attributes:
        output_dir: run folder: config.yaml, metrics.jsonl, summary.json, checkpoints/
            (+ checkpoints_critic/ with estimator=gae) and model/ (train.save_model).
    """

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    rollout: RolloutSection = field(default_factory=RolloutSection)
    algo: AlgoSection = field(default_factory=AlgoSection)
    optim: OptimSection = field(default_factory=OptimSection)
    lora: LoraSection = field(default_factory=LoraSection)
    train: TrainSection = field(default_factory=TrainSection)
    eval: EvalSection = field(default_factory=EvalSection)
    ray: RaySection = field(default_factory=RaySection)
    env: EnvSection = field(default_factory=EnvSection)
    reward: RewardSection = field(default_factory=RewardSection)
    output_dir: str = "runs/rl"

    @property
    def uses_critic(self) -> bool:
        return self.algo.estimator == "gae"

    def validate(self) -> None:
        """Reject impossible combinations with one clear line each."""
        a, r = self.algo, self.rollout
        needs_critic = E.spec(a.estimator).critic
        if needs_critic and self.model.critic is None:
            raise ConfigError(
                f"algo.estimator={a.estimator} needs a critic: set model.critic to 'auto' "
                "or a model name"
            )
        if not needs_critic and self.model.critic not in (None, "auto"):
            raise ConfigError(
                f"model.critic={self.model.critic!r} is only used by "
                f"algo.estimator={'/'.join(n for n, x in E.ESTIMATORS.items() if x.critic)} "
                f"(got {a.estimator})"
            )
        if a.estimator in E.GROUP and r.n < 2:
            raise ConfigError(
                f"algo.estimator={a.estimator} compares samples of a prompt: "
                f"rollout.n must be >= 2, got {r.n}"
            )
        if a.kl_in_reward and a.estimator not in E.TOKEN_LEVEL:
            raise ConfigError(
                f"algo.kl_in_reward=true needs a token-level estimator "
                f"({', '.join(E.TOKEN_LEVEL)}); {a.estimator} uses the KL loss"
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
        if not 0 <= r.min_new_tokens <= r.max_new_tokens:
            raise ConfigError(
                f"rollout.min_new_tokens must be in [0, rollout.max_new_tokens="
                f"{r.max_new_tokens}], got {r.min_new_tokens}"
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
        self._check_async()
        self.env.validate()

    def _check_async(self) -> None:
        a, r = self.algo, self.rollout
        if r.max_staleness < 1:
            raise ConfigError(f"rollout.max_staleness must be >= 1, got {r.max_staleness}")
        if (r.async_ or a.tis_cap is not None or a.is_mask is not None) and not (
            a.recompute_old_logp
        ):
            what = "rollout.async=true" if r.async_ else "algo.tis_cap / algo.is_mask"
            raise ConfigError(
                f"{what} needs algo.recompute_old_logp=true (the trainer's old log-probs, "
                "compared with the engine's)"
            )
        if a.tis_cap is not None and a.tis_cap <= 0:
            raise ConfigError(f"algo.tis_cap must be > 0 or null, got {a.tis_cap}")
        if a.is_mask is not None and not (
            len(a.is_mask) == 2 and 0 <= a.is_mask[0] < 1 < a.is_mask[1]
        ):
            raise ConfigError(
                f"algo.is_mask must be [low, high] with 0 <= low < 1 < high, got {a.is_mask}"
            )
        if r.async_ and self.ray.enabled and self.ray.weight_sync == "broadcast":
            raise ConfigError(
                "rollout.async=true syncs weights through the object store: set "
                "ray.weight_sync=object_store (broadcast is a collective of the live weights)"
            )


@dataclass
class GRPOConfig(RLConfig):
    """GRPO defaults: group-normalised advantages, no critic, KL as a loss term.

    Attributes:
        output_dir: run folder: config.yaml, metrics.jsonl, summary.json, checkpoints/
            (+ checkpoints_critic/ with estimator=gae) and model/ (train.save_model).
    """

    output_dir: str = "runs/grpo"


@dataclass
class PPOConfig(RLConfig):
    """PPO defaults: critic + GAE, KL (k1) in the per-token reward.

    Attributes:
        output_dir: run folder: config.yaml, metrics.jsonl, summary.json, checkpoints/
            (+ checkpoints_critic/ with estimator=gae) and model/ (train.save_model).
    """

    algo: AlgoSection = field(
        default_factory=lambda: AlgoSection(
            estimator="gae", kl_coef=0.01, kl_kind="k1", kl_in_reward=True, ppo_epochs=1
        )
    )
    output_dir: str = "runs/ppo"
