"""User-facing errors.

Anything a user can cause (a bad config key, a malformed data line, an unknown
formula symbol, a missing model path) raises :class:`UserError`. The CLI prints
its message on one line and exits with code 2, without a traceback.
"""

from __future__ import annotations

import importlib


class UserError(Exception):
    """An error caused by user input: printed as one line, exit code 2."""


def require(module: str, extra: str):
    """Import an optional dependency, or raise a one-line :class:`UserError`.

    Args:
        module: importable module name, e.g. ``"sympy"``.
        extra: the trainkit extra that installs it, e.g. ``"kan"``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise UserError(
            f"optional dependency '{module}' is missing: pip install 'trainkit[{extra}]' ({e})"
        ) from None
