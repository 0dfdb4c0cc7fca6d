"""Shared utilities: errors, atomic files, run directories, metrics logging, seeding."""

from trainkit.common.errors import UserError
from trainkit.common.io import atomic_dir, atomic_write_bytes, atomic_write_json, atomic_write_text

__all__ = [
    "UserError",
    "atomic_dir",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
]
