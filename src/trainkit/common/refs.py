"""Load a user object named ``"package.module:name"`` or ``"path/to/file.py:name"``.

Reward functions, environments and tools are all given this way in configs.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Any


def import_object(ref: str, what: str, error: type[Exception], callable_: bool = False) -> Any:
    """The object ``name`` of ``ref = "target:name"``, importing ``target`` first.

    ``target`` is a file when it ends in ``.py`` or contains a path separator (loaded
    once under a private module name), otherwise an importable module.

    Args:
        ref: ``"module:name"`` or ``"file.py:name"``.
        what: a word for messages (``"reward"``, ``"environment"``).
        error: the exception class raised, with one line naming what is missing.
        callable_: require a callable (a function or a class).
    """
    if ":" not in ref:
        raise error(f"{what} '{ref}' must have the form 'module:name' or 'file.py:name'")
    target, _, name = ref.rpartition(":")
    if target.endswith(".py") or "/" in target or "\\" in target:
        path = Path(target).expanduser()
        if not path.is_file():
            raise error(f"{what} file not found: {path}")
        modname = f"_trainkit_{what}_{abs(hash(str(path.resolve())))}"
        mod = sys.modules.get(modname)
        if mod is None:
            spec = importlib.util.spec_from_file_location(modname, path)
            if spec is None or spec.loader is None:
                raise error(f"cannot load {what} file {path}")
            mod = importlib.util.module_from_spec(spec)
            sys.modules[modname] = mod
            try:
                spec.loader.exec_module(mod)
            except Exception as e:
                sys.modules.pop(modname, None)
                raise error(
                    f"{path}: importing the {what} file failed: {type(e).__name__}: {e}"
                ) from None
    else:
        try:
            mod = importlib.import_module(target)
        except ImportError as e:
            raise error(f"{what} module '{target}' cannot be imported: {e}") from None
    obj = getattr(mod, name, None)
    if obj is None or (callable_ and not callable(obj)):
        kind = "a callable" if callable_ else "defined"
        raise error(f"{what} '{ref}': '{name}' is not {kind} in {target}")
    return obj
