"""The config sections every LLM recipe shares: ``model``, ``optim`` and the common
``train`` keys.

SFT (:mod:`trainkit.llm.sft_config`), the reward model and DPO
(:mod:`trainkit.rlhf.trainers.rm`, :mod:`~trainkit.rlhf.trainers.dpo`), PPO/GRPO
(:mod:`trainkit.rlhf.trainers.rl_config`) and ``longctx extend``
(:mod:`trainkit.longctx.recipe`) build their sections from these classes, so one key
means one thing in every recipe. A recipe changes only default values
(``field(default_factory=lambda: OptimSection(lr=1e-4))``) or adds its own keys in a
subclass (the RL critic, ``model.full_finetune`` of ``longctx extend``).

* :class:`ModelSection` / :class:`QuantModelSection`: ``model.name``, ``model.dtype``,
  ``model.gradient_checkpointing`` (+ ``model.quantization`` where the recipe can train a
  quantised base through LoRA).
* :class:`OptimSection`: every ``optim`` key of :func:`trainkit.llm.optim.make_optimizer`
  (AdamW and the :func:`~trainkit.llm.optim.lr_factor` schedule).
* :class:`RunFields` (``train.max_steps``, ``train.seed``, ``train.progress``,
  ``train.report_to``) and
  :class:`TrainFields` (those plus the checkpoint and non-finite keys of
  :class:`trainkit.llm.train_control.SafetyFields`).

Help texts that a recipe words for itself live in the classes' ``Attributes:``
docstrings (a recipe subclass's docstring replaces them in docs/CONFIG.md); the others
are ``metadata["help"]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trainkit.common.trackers import TrackerName, check_installed
from trainkit.llm.train_control import SafetyFields


@dataclass
class ModelSection:
    """The ``model`` section: which causal LM to train and how to load it.

    Attributes:
        dtype: weight dtype: auto (bfloat16 on a bf16-capable GPU, else float32), float32,
            bfloat16, float16 or float64.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant)
            to save memory at the cost of extra compute.
    """

    name: str = field(
        default="tiny-llama", metadata={"help": "built-in name, HF folder or .gguf file"}
    )
    dtype: str = "auto"
    gradient_checkpointing: bool = False


@dataclass
class QuantModelSection(ModelSection):
    """The ``model`` section of a recipe that can train a quantised base through LoRA.

    Attributes:
        dtype: weight dtype: auto (bfloat16 on a bf16-capable GPU, else float32), float32,
            bfloat16, float16 or float64.
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant)
            to save memory at the cost of extra compute.
        quantization: bitsandbytes base quantization: nf4 (4-bit, QLoRA) or int8; the
            quantised base is frozen and trained through LoRA (needs lora.enabled); null: full
            precision.
    """

    quantization: Literal["nf4", "int8"] | None = None


@dataclass
class OptimSection:
    """The ``optim`` section: AdamW and its learning-rate schedule
    (:func:`trainkit.llm.optim.make_optimizer`).

    Attributes:
        lr: peak learning rate of AdamW (reached after ``warmup_steps``).
        weight_decay: AdamW decoupled weight decay; 0: none.
        max_grad_norm: clip the global gradient norm of the trainable parameters to this
            value before each step (torch ``clip_grad_norm_``); <= 0: no clipping.
        schedule: lr after warmup: cosine decay or linear decay to ``min_lr_ratio * lr`` at
            ``train.max_steps``, or constant.
        warmup_steps: optimizer steps of linear warmup from ``lr / warmup_steps`` to ``lr``;
            0: no warmup.
    """

    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = field(
        default=(0.9, 0.999), metadata={"help": "AdamW ``(beta1, beta2)`` moment decay rates."}
    )
    eps: float = field(
        default=1e-8,
        metadata={"help": "AdamW epsilon added to the denominator for numerical stability."},
    )
    max_grad_norm: float = 1.0
    schedule: Literal["cosine", "linear", "constant"] = "constant"
    warmup_steps: int = 0
    min_lr_ratio: float = field(
        default=0.0, metadata={"help": "final lr / peak lr of a cosine or linear schedule"}
    )


@dataclass
class RunFields:
    """``train`` keys of every LLM loop: its length, its seed and its progress bar.

    Attributes:
        max_steps: optimizer steps to train.
        seed: seeds Python, NumPy and torch.
        progress: show a progress bar.
        report_to: experiment trackers that also get every logged scalar, as TRL's
            ``report_to``: any of tensorboard, wandb, mlflow, trackio (each imported only
            when listed; :mod:`trainkit.common.trackers`). metrics.jsonl is always written.
    """

    max_steps: int = 100
    seed: int = 0
    progress: bool = True
    report_to: list[TrackerName] = field(
        default_factory=list,
        metadata={"help": "trackers that also get every logged scalar (TRL's report_to)"},
    )

    def validate(self) -> None:
        check_installed(self.report_to)
        parent = getattr(super(), "validate", None)
        if callable(parent):
            parent()


@dataclass
class TrainFields(RunFields, SafetyFields):
    """:class:`RunFields` plus the checkpoint and non-finite keys of
    :class:`trainkit.llm.train_control.SafetyFields` (the loops of sft, rm and dpo).

    Attributes:
        max_steps: optimizer steps to train.
        seed: seeds Python, NumPy and torch.
        progress: show a progress bar.
    """
