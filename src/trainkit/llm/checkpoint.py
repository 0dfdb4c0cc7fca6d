"""Training checkpoints: weights, optimizer, scheduler, RNG, data position, step.

Layout of ``<output_dir>/checkpoints/step-000123/``::

    model.safetensors   trainable parameters (all of them for full fine-tuning, the
                        adapter and modules_to_save for LoRA), full (unsharded) tensors
    optimizer.pt        optimizer state keyed by parameter names (portable across
                        single/fsdp2 and world sizes)
    scheduler.pt        LR scheduler state
    rng.pt              Python / NumPy / torch (CPU and CUDA) RNG states of every rank
    trainer_state.json  step, data position (sampler state) and extra trainer fields

Every checkpoint folder appears whole (written with :func:`atomic_dir` by rank 0 after
gathering), so a crash while saving leaves the previous checkpoints intact. After a
successful save only the newest ``keep_last`` folders are kept.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
from pathlib import Path

import torch

from trainkit.common.errors import UserError
from trainkit.common.io import atomic_dir

_STEP_RE = re.compile(r"^step-(\d+)$")


def rng_state() -> dict:
    """The RNG states of Python, NumPy and torch (CPU, and CUDA when present)."""
    import numpy as np

    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    import numpy as np

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def list_checkpoints(root: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(step, folder)`` of complete checkpoints under ``root``, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    out = []
    for p in root.iterdir():
        m = _STEP_RE.match(p.name)
        if m and (p / "trainer_state.json").is_file():
            out.append((int(m.group(1)), p))
    return sorted(out)


def latest_checkpoint(root: str | os.PathLike) -> Path | None:
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def save_checkpoint(
    root: str | os.PathLike,
    step: int,
    strategy,
    module,
    optimizer,
    scheduler=None,
    data_state: dict | None = None,
    extra: dict | None = None,
    keep_last: int = 2,
) -> Path:
    """Gather and write one checkpoint; collective under fsdp2 (every rank calls it).

    Args:
        root: the checkpoints folder (``<output_dir>/checkpoints``).
        step: the optimizer steps completed.
        strategy: a :class:`trainkit.llm.strategy.Strategy`.
        module: the wrapped training module (what the optimizer's params belong to).
        optimizer / scheduler: torch optimizer and LR scheduler.
        data_state: the data sampler's ``state_dict()``.
        extra: more JSON-able trainer fields.
        keep_last: keep this many newest checkpoints (``<= 0`` keeps all).

    Returns:
        The checkpoint folder.
    """
    from safetensors.torch import save_file

    weights = strategy.model_state_dict(module, trainable_only=True)
    optim = strategy.optimizer_state_dict(module, optimizer)
    rngs = strategy.all_gather_object(rng_state())
    path = Path(root) / f"step-{step:06d}"
    if strategy.is_main:
        with atomic_dir(path) as tmp:
            tmp = Path(tmp)
            save_file(
                {k: v.contiguous() for k, v in weights.items()}, str(tmp / "model.safetensors")
            )
            torch.save(optim, tmp / "optimizer.pt")
            if scheduler is not None:
                torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
            torch.save(rngs, tmp / "rng.pt")
            state = {
                "step": int(step),
                "world_size": strategy.world_size,
                "data": data_state or {},
                **(extra or {}),
            }
            (tmp / "trainer_state.json").write_text(json.dumps(state, indent=2))
        if keep_last > 0:
            for _, old in list_checkpoints(root)[:-keep_last]:
                shutil.rmtree(old, ignore_errors=True)
    strategy.barrier()
    return path


def load_checkpoint(path: str | os.PathLike, strategy, module, optimizer, scheduler=None) -> dict:
    """Restore a checkpoint into ``module`` / ``optimizer`` / ``scheduler`` and the RNGs.

    Returns:
        The ``trainer_state.json`` dict (``step``, ``data``, extra fields).
    """
    from safetensors.torch import load_file

    path = Path(path)
    state_file = path / "trainer_state.json"
    if not state_file.is_file():
        raise UserError(f"{path}: not a trainkit checkpoint (no trainer_state.json)")
    state = json.loads(state_file.read_text())
    weights = load_file(str(path / "model.safetensors"))
    expected = {n for n, p in module.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        missing = sorted(expected - set(weights))[:3]
        raise UserError(
            f"{path}: checkpoint parameters do not match the model "
            f"(e.g. missing {missing}); was it made with other model/lora settings?"
        )
    strategy.load_model_state_dict(module, weights, strict=False)
    optim = torch.load(path / "optimizer.pt", map_location="cpu", weights_only=False)
    strategy.load_optimizer_state_dict(module, optimizer, optim)
    if scheduler is not None and (path / "scheduler.pt").is_file():
        scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    rngs = torch.load(path / "rng.pt", weights_only=False)
    if len(rngs) == strategy.world_size:
        set_rng_state(rngs[strategy.rank])
    return state
