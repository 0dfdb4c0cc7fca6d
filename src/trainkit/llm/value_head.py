"""A transformer backbone with a scalar head: reward models and PPO critics.

``ValueHeadModel`` = ``AutoModel`` backbone (no LM head) + ``Linear(hidden, 1, bias=False)``.
``forward`` gives one value per token ``[batch, seq]`` (critic, as in OpenRLHF's
``CriticModel``); :meth:`ValueHeadModel.score` picks the value at each row's last
non-padding token ``[batch]`` (reward model, as in OpenRLHF's ``RewardModel``).

Saved folders use the layout of transformers' ``<Arch>ForSequenceClassification`` with
``num_labels=1`` (backbone under ``model.``, head as ``score.weight``), so
``AutoModelForSequenceClassification.from_pretrained(folder)`` loads a trainkit reward
model and gives the same scores; :meth:`ValueHeadModel.from_pretrained` loads it back.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from trainkit.common.io import atomic_dir

HEAD_FILE = "value_head.safetensors"


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last attended position of each row.

    Args:
        attention_mask: ``[batch, seq]`` of 0/1 (left or right padding).

    Returns:
        ``[batch]`` long tensor: the largest ``t`` with ``attention_mask[b, t] == 1``.
    """
    seq = attention_mask.shape[-1]
    pos = torch.arange(seq, device=attention_mask.device).expand_as(attention_mask)
    return torch.where(attention_mask.bool(), pos, torch.full_like(pos, -1)).amax(-1).clamp_min(0)


class ValueHeadModel(nn.Module):
    """Backbone + scalar head.

    Args:
        backbone: a transformers base model (``AutoModel``), returning hidden states
            ``[batch, seq, hidden]``.
        head: optional ``Linear(hidden, 1, bias=False)``; a new one is initialised with
            std ``1 / (hidden + 1)`` (OpenRLHF's value-head init) when omitted.
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear | None = None):
        super().__init__()
        self.backbone = backbone
        hidden = backbone.config.hidden_size
        if head is None:
            head = nn.Linear(hidden, 1, bias=False)
            nn.init.normal_(head.weight, std=1.0 / (hidden + 1))
        self.score_head = head.to(dtype=next(backbone.parameters()).dtype)

    @property
    def config(self):
        return self.backbone.config

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kw: Any
    ) -> torch.Tensor:
        """Per-token values ``[batch, seq]`` (float32) for ``input_ids`` ``[batch, seq]``."""
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **kw)
        h = out.last_hidden_state  # [batch, seq, hidden]
        return self.score_head(h.to(self.score_head.weight.dtype)).squeeze(-1).float()

    def score(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Sequence scores ``[batch]``: the value at each row's last non-pad token."""
        values = self.forward(input_ids, attention_mask)  # [batch, seq]
        idx = last_token_index(attention_mask)
        return values.gather(1, idx[:, None]).squeeze(1)

    def gradient_checkpointing_enable(self, **kw):
        self.backbone.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False}, **kw
        )

    def save_pretrained(self, out_dir: str | os.PathLike, tokenizer=None) -> Path:
        """Save as a ``*ForSequenceClassification`` (num_labels=1) folder, atomically."""
        from safetensors.torch import save_file

        backbone = self.backbone
        if hasattr(backbone, "merge_and_unload"):  # a peft-wrapped backbone
            backbone = backbone.merge_and_unload()
        cfg = backbone.config.to_dict()
        arch = type(backbone).__name__.removesuffix("Model")
        cfg["architectures"] = [f"{arch}ForSequenceClassification"]
        cfg["num_labels"] = 1
        cfg["id2label"] = {"0": "LABEL_0"}
        cfg["label2id"] = {"LABEL_0": 0}
        if cfg.get("pad_token_id") is None and tokenizer is not None:
            cfg["pad_token_id"] = tokenizer.pad_token_id
        state = {
            f"model.{k}": v.detach().contiguous().cpu() for k, v in backbone.state_dict().items()
        }
        state["score.weight"] = self.score_head.weight.detach().contiguous().cpu()
        with atomic_dir(out_dir) as tmp:
            save_file(state, str(Path(tmp) / "model.safetensors"), metadata={"format": "pt"})
            (Path(tmp) / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
            if tokenizer is not None:
                tokenizer.save_pretrained(tmp)
        return Path(out_dir)

    @classmethod
    def from_pretrained(
        cls, name_or_path: str | os.PathLike, *, dtype: Any = None, attn: str | None = None
    ) -> ValueHeadModel:
        """Load from a causal-LM folder/built-in (new head) or a saved value-head folder."""
        from safetensors import safe_open
        from transformers import AutoModel

        from trainkit.llm.models import attn_implementation, resolve, to_dtype

        path = Path(resolve(name_or_path))
        torch_dtype = to_dtype(dtype)
        backbone = AutoModel.from_pretrained(
            str(path), dtype=torch_dtype, attn_implementation=attn or attn_implementation()
        )
        head = None
        cfg = json.loads((path / "config.json").read_text())
        if any(a.endswith("ForSequenceClassification") for a in cfg.get("architectures") or []):
            for f in sorted(path.glob("*.safetensors")):
                with safe_open(str(f), framework="pt") as sf:
                    if "score.weight" in sf.keys():
                        w = sf.get_tensor("score.weight")
                        head = nn.Linear(w.shape[1], 1, bias=False)
                        with torch.no_grad():
                            head.weight.copy_(w)
        return cls(backbone, head)
