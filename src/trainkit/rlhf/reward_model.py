"""A trained reward model as an in-process RL reward (``reward.models`` of an RL config).

Each entry ``{path, weight, normalize, clip}`` names a folder written by
``trainkit rlhf rm`` (a value-head model). :class:`ModelReward` scores every completion as
the reward model was trained: ``chat_prompt(prompt) + completion`` in the reward model's
own tokenizer and template, batched, on the policy's device (CUDA when present), without
gradients. The value ``r`` becomes

    r' = clip((r - mean) / std, -clip, clip)      (normalize: true; mean/std from the RM)
    r' = clip(r, -clip, clip)                     (normalize: false)

with ``mean``/``std`` the training-set reward statistics the RM recorded in its
``config.json`` (``rlhf rm`` with ``train.normalize_reward=true``) and no clipping when
``clip`` is null. The weighted sum with the rule rewards of ``data.reward`` is
:func:`trainkit.rlhf.reward_rules.combine` (OpenRLHF's ``reward_clip_range`` and
``normalize_reward`` are the same two knobs).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trainkit.common.errors import UserError


@dataclass
class RewardModelSpec:
    """One reward model of ``reward.models``.

    Attributes:
        path: a reward-model folder (``output_dir/model`` of ``trainkit rlhf rm``).
        weight: its weight in the sum with the other rewards.
        normalize: standardise with the mean/std the RM recorded at training time.
        clip: clip the (normalised) reward to ``[-clip, clip]``; null: no clipping.
        batch_size: completions per forward pass.
        max_len: tokens per scored text (left-truncated, as in RM training).
    """

    path: str = ""
    weight: float = 1.0
    normalize: bool = False
    clip: float | None = None
    batch_size: int = 16
    max_len: int = 1024

    def validate(self) -> None:
        if not self.path:
            raise UserError("reward.models: every entry needs a path (a reward-model folder)")
        if self.clip is not None and self.clip <= 0:
            raise UserError(f"reward.models: clip must be > 0 or null, got {self.clip}")
        if self.batch_size < 1 or self.max_len < 2:
            raise UserError("reward.models: batch_size must be >= 1 and max_len >= 2")


def rm_statistics(path: Path) -> tuple[float, float] | None:
    """``(mean, std)`` recorded by RM training with ``normalize_reward``, else None."""
    meta = json.loads((path / "config.json").read_text())
    if not meta.get("normalize_reward"):
        return None
    return float(meta.get("reward_mean", 0.0)), float(meta.get("reward_std", 1.0))


class ModelReward:
    """``f(prompts, completions, **labels) -> rewards`` from a reward-model folder.

    Args:
        spec: the entry of ``reward.models``.
        device: where the model runs; default CUDA when available, else CPU.
    """

    def __init__(self, spec: RewardModelSpec, device: str | None = None):
        import torch

        from trainkit.llm.models import load_tokenizer
        from trainkit.llm.value_head import ValueHeadModel

        spec.validate()
        path = Path(spec.path).expanduser()
        if not (path / "config.json").is_file():
            raise UserError(f"reward.models: {path} is not a reward-model folder (no config.json)")
        stats = rm_statistics(path)
        if spec.normalize and stats is None:
            raise UserError(
                f"reward.models: {path} recorded no reward statistics; train it with "
                "train.normalize_reward=true or set normalize: false"
            )
        self.spec, self.mean_std = spec, stats if spec.normalize else None
        self.tok = load_tokenizer(path)
        self.model = ValueHeadModel.from_pretrained(path)
        dev = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(dev).eval()
        self.lock = threading.Lock()
        self.__name__ = f"ModelReward({path.name})"

    def transform(self, raw: float) -> float:
        """Normalise then clip one raw score (the equations of the module docstring)."""
        r = raw
        if self.mean_std is not None:
            mean, std = self.mean_std
            r = (r - mean) / std
        c = self.spec.clip
        return r if c is None else min(max(r, -c), c)

    def __call__(
        self, prompts: Sequence[str], completions: Sequence[str], **labels: Any
    ) -> list[float]:
        import torch

        from trainkit.rlhf.trainers.pairs import chat_prompt
        from trainkit.rlhf.trainers.rm import batch_scores

        texts = [chat_prompt(self.tok, p) + c for p, c in zip(prompts, completions)]
        out: list[float] = []
        bs = self.spec.batch_size
        with self.lock, torch.no_grad():
            for i in range(0, len(texts), bs):
                s = batch_scores(self.model, self.tok, texts[i : i + bs], self.spec.max_len)
                out += [self.transform(float(v)) for v in s.float().cpu()]
        return out
