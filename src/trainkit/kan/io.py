"""Saving and loading KANs: a folder with ``model.safetensors`` and ``config.json``.

The folder appears atomically (:func:`trainkit.common.io.atomic_dir`). ``config.json``
holds the constructor arguments, the format version, and each layer's symbolic function
names; the safetensors file holds every parameter and buffer (grids, masks).

This module knows the folder format, not the class: :meth:`trainkit.kan.KAN.load` builds
the model from :func:`read`'s config and fills it with :func:`restore`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from trainkit.common.errors import UserError
from trainkit.common.io import atomic_dir

FORMAT = "trainkit-kan"
VERSION = 1


def save(model, path: str | os.PathLike) -> Path:
    """Write ``model`` (a :class:`trainkit.kan.KAN`) to the folder ``path``."""
    from safetensors.torch import save_file

    path = Path(path)
    cfg = {
        "format": FORMAT,
        "version": VERSION,
        **model.config(),
        "sym_fns": [layer.sym_fns for layer in model.layers],
    }
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    with atomic_dir(path) as tmp:
        save_file(state, str(tmp / "model.safetensors"))
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2) + "\n", encoding="utf-8")
    return path


def read(path: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor]]:
    """``(config, tensors)`` of a folder written by :func:`save`; the config's format is
    checked. :meth:`trainkit.kan.KAN.load` builds the model from them."""
    from safetensors.torch import load_file

    path = Path(path)
    cfg_file, w_file = path / "config.json", path / "model.safetensors"
    if not cfg_file.is_file() or not w_file.is_file():
        raise UserError(f"{path}: not a saved KAN (expected config.json and model.safetensors)")
    try:
        cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{cfg_file}: line {e.lineno}: invalid JSON ({e.msg})") from None
    if cfg.get("format") != FORMAT:
        raise UserError(f"{cfg_file}: field 'format' must be '{FORMAT}', got {cfg.get('format')!r}")
    return cfg, load_file(str(w_file))


def restore(model: nn.Module, cfg: dict, state: dict[str, torch.Tensor]) -> nn.Module:
    """Put the saved ``state`` and symbolic names into ``model``, freshly built from ``cfg``
    (returned, same object). Layers refined after construction have other shapes than a
    fresh model: each stored shape is adopted before the state dict is loaded."""
    dtype = getattr(torch, cfg.get("dtype", "float32"))
    for name, tensor in state.items():
        mod_name, _, attr = name.rpartition(".")
        mod = model.get_submodule(mod_name)
        cur = getattr(mod, attr)
        if cur.shape != tensor.shape:
            if isinstance(cur, nn.Parameter):
                setattr(mod, attr, nn.Parameter(tensor.to(dtype), requires_grad=cur.requires_grad))
            else:
                setattr(mod, attr, tensor.to(dtype))
    model.load_state_dict(state)
    for layer, fns in zip(model.layers, cfg.get("sym_fns", [])):
        layer.sym_fns = [list(r) for r in fns]
    return model
