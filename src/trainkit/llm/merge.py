"""Merging a saved LoRA adapter into its base model: a plain HF folder that needs no peft.

Apart from :mod:`trainkit.llm.lora` because it loads the base (:mod:`trainkit.llm.models`),
which itself applies adapters when a model is loaded with ``lora=``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from trainkit.common.errors import UserError
from trainkit.common.io import atomic_dir
from trainkit.llm.models import load_tokenizer, resolve, to_dtype


def merge_adapter(
    adapter_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    base: str | os.PathLike | None = None,
    dtype: Any = "float32",
) -> Path:
    """Merge a saved adapter into a full-precision base and save a plain HF folder.

    QLoRA adapters are merged into the unquantised base weights (merging into NF4
    weights would round them again). The result loads with
    ``AutoModelForCausalLM.from_pretrained`` and needs no peft.

    Args:
        adapter_dir: a folder written by :func:`trainkit.llm.lora.save_adapter`.
        out_dir: the merged model folder (replaced atomically).
        base: the base model (default: ``base_model_name_or_path`` of the adapter).
        dtype: dtype of the merged weights.
    """
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    cfg_file = Path(adapter_dir) / "adapter_config.json"
    if not cfg_file.is_file():
        raise UserError(f"{adapter_dir}: no adapter_config.json (not a LoRA adapter folder)")
    base = base or json.loads(cfg_file.read_text()).get("base_model_name_or_path")
    if not base:
        raise UserError(f"{cfg_file}: base_model_name_or_path is empty; pass the base model")
    base_path = resolve(base)
    model = AutoModelForCausalLM.from_pretrained(base_path, dtype=to_dtype(dtype))
    try:
        merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    except (RuntimeError, ValueError, KeyError) as e:
        lines = [x.strip() for x in str(e).splitlines() if x.strip()]
        raise UserError(
            f"{adapter_dir}: adapter does not fit the base model {base} "
            f"({lines[-1] if lines else type(e).__name__})"
        ) from None
    tok = load_tokenizer(base_path)
    with atomic_dir(out_dir) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return Path(out_dir)
