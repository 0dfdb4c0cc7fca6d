"""The config of the SFT recipe (:mod:`trainkit.llm.sft`, ``trainkit rlhf sft``): the
``model``, ``optim`` and ``train`` sections and :class:`SFTConfig`, which adds ``data``
(:class:`trainkit.llm.data.DataConfig`) and ``lora`` (:class:`trainkit.llm.lora.LoraSection`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from trainkit.llm.data import DataConfig
from trainkit.llm.lora import LoraSection
from trainkit.llm.sections import OptimSection, QuantModelSection, TrainFields

__all__ = ["ModelSection", "OptimSection", "SFTConfig", "TrainSection"]


ModelSection = QuantModelSection  # the SFT ``model`` section (re-exported by llm.sft)


@dataclass
class TrainSection(TrainFields):
    """The ``train`` section: steps, batching, distribution, logging and checkpoints.

    Attributes:
        max_steps: optimizer steps to train (>= 1); also the length of the lr schedule.
        seed: seeds Python, NumPy and torch (LoRA init, dropout) and the batch shuffle order.
        progress: show a progress bar (on the main rank).
        eval_batch_size: held-out sequences per eval forward pass, per rank.
        strategy: single: one process, one device; fsdp2: FSDP2 data parallel over
            ``torchrun`` processes.
        mixed_precision: bf16: bfloat16 compute (autocast on CUDA with single; bf16 params,
            fp32 gradient reduce with fsdp2); no: compute in the model dtype.
        device: device to train on, e.g. cpu or cuda:0; null: cuda when available, else cpu
            (fsdp2 uses each rank's local GPU unless it is set to something other than cuda).
        tensorboard: also write the metrics to ``output_dir/tb`` for TensorBoard (when
            installed); metrics.jsonl is always written.
    """

    # SFT also checkpoints after the last step (train_control.TrainControl save_last)
    save_every: int = field(default=0, metadata={"help": "steps between checkpoints (0: end only)"})
    batch_size: int = field(default=8, metadata={"help": "sequences per optimizer step, all ranks"})
    micro_batch_size: int = field(default=2, metadata={"help": "sequences per forward, per rank"})
    eval_every: int = field(default=50, metadata={"help": "steps between evals (0: only at end)"})
    eval_batch_size: int = 8
    strategy: Literal["single", "fsdp2"] = "single"
    mixed_precision: Literal["no", "bf16"] = "no"
    loss_chunk_size: int = field(default=1024, metadata={"help": "0: plain full-logits loss"})
    device: str | None = None
    tensorboard: bool = False
    merge_lora: bool = field(default=False, metadata={"help": "also write a merged HF folder"})


@dataclass
class SFTConfig:
    """Config of ``trainkit rlhf sft``: supervised fine-tuning of a causal LM.

    Attributes:
        output_dir: run folder: config.yaml, metrics.jsonl, checkpoints/, final/ (model or
            LoRA adapter) and merged/ with ``train.merge_lora``.
    """

    model: QuantModelSection = field(
        default_factory=lambda: QuantModelSection(name="smollm2-135m-instruct")
    )
    data: DataConfig = field(
        default_factory=lambda: DataConfig(path="builtin:toy-chat", max_length=256)
    )
    lora: LoraSection = field(default_factory=LoraSection)
    optim: OptimSection = field(default_factory=lambda: OptimSection(lr=2e-4, schedule="cosine"))
    train: TrainSection = field(default_factory=TrainSection)
    output_dir: str = "runs/sft"
