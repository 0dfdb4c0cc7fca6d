"""Saving and loading KANs: a folder with ``model.safetensors`` and ``config.json``.

The folder appears atomically (:func:`trainkit.common.io.atomic_dir`). ``config.json``
holds the constructor arguments, the format version, and each layer's symbolic function
names; the safetensors file holds every parameter and buffer (grids, masks).
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


def load(path: str | os.PathLike, device=None):
    """Read a folder written by :func:`save`; returns a :class:`trainkit.kan.KAN`."""
    from safetensors.torch import load_file

    from trainkit.kan.model import KAN

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
    dtype = getattr(torch, cfg.get("dtype", "float32"))
    model = KAN(
        width=cfg["width"],
        grid=cfg["grid"],
        k=cfg["k"],
        seed=cfg.get("seed", 0),
        grid_range=tuple(cfg["grid_range"]),
        dtype=dtype,
        **cfg.get("layer_kw", {}),
    )
    state = load_file(str(w_file))
    # layers may have been refined to different sizes: adopt the stored shapes first
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
    return model.to(device) if device is not None else model
