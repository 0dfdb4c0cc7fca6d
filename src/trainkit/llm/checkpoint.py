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
successful save only the newest ``keep_last`` folders are kept; an old folder is first
renamed to a hidden name, then deleted, so a kill during deletion never leaves a
half-deleted ``step-*`` folder behind. Hidden leftovers of a killed save or deletion are
cleaned up (or, for a folder moved aside mid-swap, put back) at the next save.

Safe loading: tensors come from safetensors, and every ``.pt`` file is read with
``torch.load(weights_only=True)`` (no arbitrary pickle): the RNG states are stored as
tensors, ints and tuples only.
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


_LEFTOVER_RE = re.compile(r"^\.(step-\d+)\.(?:.*\.tmp|old\.\d+|del)$")


def rng_state() -> dict:
    """The RNG states of Python, NumPy and torch (CPU, and CUDA when present).

    Only tensors, ints, floats, strings and tuples, so ``torch.load(weights_only=True)``
    reads it back (NumPy's key array is stored as an int64 tensor).
    """
    import numpy as np

    name, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Restore what :func:`rng_state` returned."""
    import numpy as np

    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
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
    """The newest complete checkpoint folder under ``root``, or None."""
    found = list_checkpoints(root)
    return found[-1][1] if found else None


def clean_leftovers(root: str | os.PathLike) -> None:
    """Remove hidden leftovers of killed saves/deletions under ``root``.

    A folder moved aside during an :func:`atomic_dir` swap (``.step-N.old.PID``) whose
    ``step-N`` is missing is put back instead of deleted.
    """
    root = Path(root)
    if not root.is_dir():
        return
    for p in root.iterdir():
        m = _LEFTOVER_RE.match(p.name)
        if not m:
            continue
        target = root / m.group(1)
        if ".old." in p.name and not target.exists():
            os.replace(p, target)
        else:
            shutil.rmtree(p, ignore_errors=True)


def _load_pt(path: Path):
    """``torch.load`` with ``weights_only=True``; a bad file is a one-line UserError."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means a bad file
        raise UserError(
            f"{path}: cannot be read safely ({type(e).__name__}); a corrupt checkpoint or "
            "one written by an older trainkit"
        ) from None


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
        clean_leftovers(root)
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
                gone = old.parent / f".{old.name}.del"
                os.replace(old, gone)  # atomic: the folder is either whole or hidden
                shutil.rmtree(gone, ignore_errors=True)
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
    try:
        state = json.loads(state_file.read_text())
        weights = load_file(str(path / "model.safetensors"))
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file
        raise UserError(f"{path}: unreadable checkpoint ({type(e).__name__}: {e})") from None
    expected = {n for n, p in module.named_parameters() if p.requires_grad}
    if set(weights) != expected:
        missing, extra = sorted(expected - set(weights)), sorted(set(weights) - expected)
        what = f"missing {missing[0]!r}" if missing else f"unexpected {extra[0]!r}"
        raise UserError(
            f"{path}: checkpoint parameters do not match the model ({len(missing)} missing, "
            f"{len(extra)} unexpected, e.g. {what}); was it made with other model/lora settings?"
        )
    strategy.load_model_state_dict(module, weights, strict=False)
    optim = _load_pt(path / "optimizer.pt")
    strategy.load_optimizer_state_dict(module, optimizer, optim)
    if scheduler is not None and (path / "scheduler.pt").is_file():
        scheduler.load_state_dict(_load_pt(path / "scheduler.pt"))
    rngs = _load_pt(path / "rng.pt")
    if len(rngs) == strategy.world_size:
        set_rng_state(rngs[strategy.rank])
    return state
