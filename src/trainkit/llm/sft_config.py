"""The config of the SFT recipe (:mod:`trainkit.llm.sft`, ``trainkit rlhf sft``): the
``model``, ``optim`` and ``train`` sections and :class:`SFTConfig`, which adds ``data``
(:class:`trainkit.llm.data.DataConfig`) and ``lora`` (:class:`trainkit.llm.lora.LoraSection`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trainkit.llm.data import DataConfig
from trainkit.llm.lora import LoraSection


@dataclass
class ModelSection:
    """The ``model`` section: which causal LM to fine-tune and how to load it.

    Attributes:
        gradient_checkpointing: recompute activations in the backward pass (non-reentrant)
            to save memory at the cost of extra compute.
    """

    name: str = field(
        default="smollm2-135m-instruct", metadata={"help": "built-in name, HF folder or .gguf file"}
    )
    dtype: str = field(default="auto", metadata={"help": "auto | float32 | bfloat16"})
    quantization: Literal["nf4", "int8"] | None = field(
        default=None, metadata={"help": "bitsandbytes base quantization (QLoRA: nf4 + lora)"}
    )
    gradient_checkpointing: bool = False


@dataclass
class OptimSection:
    """The ``optim`` section: AdamW and the learning-rate schedule.

    Attributes:
        lr: peak learning rate of AdamW (reached after ``warmup_steps``).
        weight_decay: AdamW decoupled weight decay; 0: none.
        betas: AdamW ``(beta1, beta2)`` moment decay rates.
        eps: AdamW epsilon added to the denominator for numerical stability.
        schedule: lr after warmup: cosine decay or linear decay to ``min_lr_ratio * lr`` at
            ``train.max_steps``, or constant.
        warmup_steps: optimizer steps of linear warmup from ``lr / warmup_steps`` to ``lr``
            (the default 0: no warmup).
    """

    lr: float = 2e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    max_grad_norm: float = field(default=1.0, metadata={"help": "<= 0: no clipping"})
    schedule: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = 0
    min_lr_ratio: float = field(default=0.0, metadata={"help": "final lr / peak lr"})


@dataclass
class TrainSection:
    """The ``train`` section: steps, batching, distribution, logging and checkpoints.

    Attributes:
        max_steps: optimizer steps to train (>= 1); also the length of the lr schedule.
        eval_batch_size: held-out sequences per eval forward pass, per rank.
        keep_last: keep only this many newest checkpoints under ``output_dir/checkpoints``;
            <= 0: keep all.
        seed: seeds Python, NumPy and torch (LoRA init, dropout) and the batch shuffle order.
        strategy: single: one process, one device; fsdp2: FSDP2 data parallel over
            ``torchrun`` processes.
        mixed_precision: bf16: bfloat16 compute (autocast on CUDA with single; bf16 params,
            fp32 gradient reduce with fsdp2); no: compute in the model dtype.
        device: device to train on, e.g. cpu or cuda:0; null: cuda when available, else cpu
            (fsdp2 uses each rank's local GPU unless it is set to something other than cuda).
        progress: show a progress bar (on the main rank).
        tensorboard: also write the metrics to ``output_dir/tb`` for TensorBoard (when
            installed); metrics.jsonl is always written.
    """

    max_steps: int = 100
    batch_size: int = field(default=8, metadata={"help": "sequences per optimizer step, all ranks"})
    micro_batch_size: int = field(default=2, metadata={"help": "sequences per forward, per rank"})
    eval_every: int = field(default=50, metadata={"help": "steps between evals (0: only at end)"})
    eval_batch_size: int = 8
    save_every: int = field(default=0, metadata={"help": "steps between checkpoints (0: end only)"})
    keep_last: int = 2
    seed: int = 0
    strategy: Literal["single", "fsdp2"] = "single"
    mixed_precision: Literal["no", "bf16"] = "no"
    loss_chunk_size: int = field(default=1024, metadata={"help": "0: plain full-logits loss"})
    device: str | None = None
    progress: bool = True
    tensorboard: bool = False
    merge_lora: bool = field(default=False, metadata={"help": "also write a merged HF folder"})
    nonfinite: Literal["skip", "stop"] = field(
        default="skip", metadata={"help": "NaN/inf loss or grad norm: skip the step, or stop"}
    )
    max_nonfinite: int = field(
        default=5, metadata={"help": "with skip: stop after this many non-finite steps in a row"}
    )
    resume: bool = field(
        default=False, metadata={"help": "continue from the newest checkpoint in output_dir"}
    )


@dataclass
class SFTConfig:
    """Config of ``trainkit rlhf sft``: supervised fine-tuning of a causal LM.

    Attributes:
        output_dir: run folder: config.yaml, metrics.jsonl, checkpoints/, final/ (model or
            LoRA adapter) and merged/ with ``train.merge_lora``.
    """

    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(
        default_factory=lambda: DataConfig(path="builtin:toy-chat", max_length=256)
    )
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimSection = field(default_factory=OptimSection)
    train: TrainSection = field(default_factory=TrainSection)
    output_dir: str = "runs/sft"
