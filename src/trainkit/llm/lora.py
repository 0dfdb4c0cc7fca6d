"""LoRA and QLoRA adapters through peft.

LoRA (Hu et al. 2021, arXiv 2106.09685) adds ``W + (alpha / r) * B @ A`` with
``A: [r, in]``, ``B: [out, r]`` (``B`` starts at zero) to the target linear layers and
trains only ``A``, ``B`` and the ``modules_to_save``. QLoRA (Dettmers et al. 2023,
arXiv 2305.14314) keeps the frozen base in 4-bit NormalFloat (NF4) with double
quantization of the scales; on CPU bitsandbytes 0.50 runs it, so it is tested here.

Functions: :func:`peft_config` (dataclass section -> ``peft.LoraConfig``),
:func:`apply_lora`, :func:`save_adapter`. Merging a saved adapter into its base (which
loads the base model) is :func:`trainkit.llm.merge.merge_adapter`.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from trainkit.common.errors import UserError
from trainkit.common.io import atomic_dir

LLAMA_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


@dataclass
class LoraSection:
    """The ``lora:`` section of a recipe config.

    Attributes:
        enabled: train LoRA adapters (Hu et al. 2021) instead of all weights; false: full
            fine-tuning. Required for a quantised (QLoRA) base.
        dropout: dropout probability on the adapter input (peft ``lora_dropout``), in [0, 1).
        target_modules: names of the linear layers that get adapters (peft
            ``target_modules``); default: the Llama attention and MLP projections.
    """

    enabled: bool = False
    r: int = field(default=16, metadata={"help": "adapter rank"})
    alpha: float = field(default=32.0, metadata={"help": "scale is alpha / r"})
    dropout: float = 0.05
    target_modules: list[str] = field(default_factory=lambda: list(LLAMA_TARGETS))
    modules_to_save: list[str] = field(
        default_factory=list, metadata={"help": "fully trained modules, e.g. embed_tokens"}
    )

    def validate(self) -> None:
        if self.r < 1:
            raise UserError(f"lora.r must be >= 1, got {self.r}")
        if not 0.0 <= self.dropout < 1.0:
            raise UserError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise UserError("lora.target_modules must name at least one module")


def peft_config(lora: Any, task_type: str | None = "CAUSAL_LM"):
    """A ``peft.LoraConfig`` from a :class:`LoraSection`, dict or LoraConfig; ``task_type``
    ``None`` is for a bare backbone without an LM head (the reward model's)."""
    from peft import LoraConfig

    if isinstance(lora, LoraConfig):
        return lora
    if isinstance(lora, dict):
        lora = LoraSection(**{k: v for k, v in lora.items()})
    lora.validate()
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        modules_to_save=list(lora.modules_to_save) or None,
        bias="none",
        **({"task_type": task_type} if task_type else {}),
    )


def apply_lora(model, lora: Any, *, quantized: bool = False, gradient_checkpointing: bool = False):
    """Wrap ``model`` with LoRA adapters; only adapter (and ``modules_to_save``) train.

    Args:
        model: a transformers causal LM (possibly bitsandbytes-quantised).
        lora: see :func:`peft_config`.
        quantized: the base is 4/8-bit: run ``peft.prepare_model_for_kbit_training``
            (norms and head in float32, input grads enabled).
        gradient_checkpointing: recompute activations in backward (non-reentrant).

    Returns:
        A ``peft.PeftModel``.
    """
    from peft import get_peft_model, prepare_model_for_kbit_training

    cfg = peft_config(lora)
    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in cfg.target_modules if t not in names]
    if missing:
        raise UserError(
            f"lora.target_modules {missing} not found in the model; "
            f"linear layers there include: {sorted(_linear_names(model))}"
        )
    gc_kwargs = {"use_reentrant": False}
    if quantized:
        model = prepare_model_for_kbit_training(
            model,
            use_gradient_checkpointing=gradient_checkpointing,
            gradient_checkpointing_kwargs=gc_kwargs,
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
        model.enable_input_require_grads()
    if gradient_checkpointing:
        model.config.use_cache = False
    return get_peft_model(model, cfg)


def _linear_names(model) -> set[str]:
    import torch

    return {
        n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
    }


def trainable_parameters(model) -> tuple[int, int]:
    """``(trainable, total)`` parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def save_adapter(model, out_dir: str | os.PathLike, tokenizer=None) -> Path:
    """Save a PeftModel's adapter (``adapter_config.json`` + safetensors), atomically."""
    with atomic_dir(out_dir) as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
    return Path(out_dir)


def section_dict(lora: LoraSection) -> dict:
    return asdict(lora)
