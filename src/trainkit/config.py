"""YAML -> nested dataclasses, with dotted overrides and strict checking.

A recipe's config is a dataclass whose fields may be other dataclasses (sections).
``load_config(Cls, "file.yaml", ["optim.lr=1e-4"])`` fills it from YAML, then applies
``key.sub=value`` overrides (values parsed as YAML scalars: ``8``, ``1e-4``, ``true``,
``null``, ``[1,2]``; text that YAML reads as a mapping or list, such as ``User: {}``,
stays text where the key expects a string). An unknown key or a value of the wrong type raises
:class:`ConfigError` naming the key, where it came from and the valid keys.
"""

from __future__ import annotations

import dataclasses
import functools
import keyword
import os
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin

import yaml

from trainkit.common.errors import UserError


class ConfigError(UserError):
    """A bad config file, key or value."""


def _is_dc(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str, src: str) -> Any:
    """Check ``value`` against type ``tp`` and convert where lossless."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key, src)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{src}: '{key}' expects {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in get_args(tp):
            return value
        choices = ", ".join(repr(a) for a in get_args(tp))
        raise ConfigError(f"{src}: '{key}' must be one of {choices}, got {value!r}")
    if origin in (list, tuple) or tp in (list, tuple):
        if (
            isinstance(value, (str, int, float))
            and not isinstance(value, bool)
            and origin is not None
        ):
            # allow "a,b,c" on the command line for lists of scalars
            value = (
                [v.strip() for v in str(value).split(",")] if isinstance(value, str) else [value]
            )
            value = [_scalar(v) if isinstance(v, str) else v for v in value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{src}: '{key}' expects a list, got {value!r}")
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{src}: '{key}' expects {len(args)} items, got {len(value)}")
            return tuple(
                _coerce(v, a, f"{key}[{i}]", src) for i, (v, a) in enumerate(zip(value, args))
            )
        inner = args[0] if args else Any
        out = [_coerce(v, inner, f"{key}[{i}]", src) for i, v in enumerate(value)]
        return tuple(out) if (origin is tuple or tp is tuple) else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: '{key}' expects a mapping, got {value!r}")
        return dict(value)
    if _is_dc(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{src}: '{key}' is a section; expected a mapping, got {value!r}")
        return _build(tp, value, src, prefix=key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{src}: '{key}' expects true/false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{src}: '{key}' expects an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)  # YAML 1.1 reads "1e-4" as a string
            except ValueError:
                pass
        raise ConfigError(f"{src}: '{key}' expects a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{src}: '{key}' expects a string, got {value!r}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{src}: '{key}' expects {_type_name(tp)}, got {value!r}")


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def key_of(name: str) -> str:
    """The config key of dataclass field ``name``: a Python keyword cannot be a field, so
    a field ``async_`` is the key ``async`` (in YAML, overrides, saved configs and docs)."""
    return name[:-1] if name.endswith("_") and keyword.iskeyword(name[:-1]) else name


def field_names(cls: type) -> list[str]:
    """The config keys of ``cls`` (see :func:`key_of`)."""
    return [key_of(f.name) for f in dataclasses.fields(cls)]


def _build(cls: type, data: dict, src: str, prefix: str = "", base: Any = None) -> Any:
    """Make a ``cls`` from ``data``; fields absent from ``data`` keep ``base``'s or defaults."""
    hints = _hints(cls)
    names = field_names(cls)
    for k in data:
        if k not in names:
            raise ConfigError(
                f"{src}: unknown key '{prefix}{k}'; valid keys here: {', '.join(names)}"
            )
    kwargs = {}
    for f in dataclasses.fields(cls):
        cur = getattr(base, f.name) if base is not None else None
        key = key_of(f.name)
        if key in data:
            tp = hints[f.name]
            if _is_dc(tp) and isinstance(data[key], dict):
                kwargs[f.name] = _build(tp, data[key], src, prefix + key + ".", cur)
            else:
                kwargs[f.name] = _coerce(data[key], tp, prefix + key, src)
        elif base is not None:
            kwargs[f.name] = cur
    return cls(**kwargs)


def _validate(obj: Any) -> None:
    """Call ``validate()`` on every section, innermost first, then on ``obj``."""
    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            _validate(v)
    check = getattr(obj, "validate", None)
    if callable(check):
        check()


def _read_yaml(path: str | os.PathLike) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{p}:{where} invalid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def _scalar(text: str) -> Any:
    """One list item of a ``a,b,c`` override, read as YAML (the text itself if it is not)."""
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-4"`` -> ``(["optim", "lr"], 1e-4)``."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' is not of the form key.sub=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override '{text}' has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def _nest(parts: list[str], value: Any) -> dict:
    out: Any = value
    for p in reversed(parts):
        out = {p: out}
    return out


#: Config keys renamed so that every recipe says the same thing the same way (old dotted
#: key -> new one). The old key is still read, with a one-line notice on stderr, until
#: the release named in the notice; giving both is an error.
RENAMED: dict[str, str] = {
    "resume": "train.resume",
    "optim.grad_clip": "optim.max_grad_norm",
    # longctx extend's optimizer keys, now its shared optim section (trainkit.llm.sections)
    "train.grad_clip": "optim.max_grad_norm",
    "train.lr": "optim.lr",
    "train.warmup_steps": "optim.warmup_steps",
    "train.schedule": "optim.schedule",
    "train.weight_decay": "optim.weight_decay",
    "train.max_grad_norm": "optim.max_grad_norm",
}
RENAMED_UNTIL = "0.2.0"


@functools.cache
def _leaf_keys(cls: type) -> frozenset[str]:
    """Every dotted leaf key of config class ``cls`` (computed once per class)."""
    return frozenset(k for k, *_ in describe(cls))


def _given(data: dict, key: str) -> bool:
    """Dotted ``key`` is set in the nested mapping ``data``."""
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            return False
        data = data[part]
    return True


def _rename(cls: type, data: dict, src: str, seen: dict[str, str] | None = None) -> dict:
    """``data`` with the :data:`RENAMED` keys that ``cls`` has moved rewritten.

    ``seen`` (new key -> the name it was given by, over every source of one load) makes an
    old name in one source and the new one in another an error too.
    """
    seen = {} if seen is None else seen

    def note(new: str, name: str) -> None:
        first = seen.setdefault(new, name)
        if first != name:
            old = first if name == new else name
            raise ConfigError(f"{src}: both '{old}' and its new name '{new}' are set")

    for new in set(RENAMED.values()) & _leaf_keys(cls):
        if _given(data, new):
            note(new, new)
    for old, new in RENAMED.items():
        *head, leaf = old.split(".")
        box = data
        for part in head:
            box = box.get(part) if isinstance(box, dict) else None
        if not isinstance(box, dict) or leaf not in box:
            continue
        if new not in _leaf_keys(cls) or old in _leaf_keys(cls):
            continue  # this recipe never had the old name, or still has it
        value = box.pop(leaf)
        *nhead, nleaf = new.split(".")
        dest = data
        for part in nhead:
            dest = dest.setdefault(part, {})
            if not isinstance(dest, dict):
                raise ConfigError(f"{src}: '{part}' must be a section")
        if nleaf in dest:
            raise ConfigError(f"{src}: both '{old}' and its new name '{new}' are set")
        note(new, old)
        dest[nleaf] = value
        print(
            f"warning: {src}: config key '{old}' is now '{new}' "
            f"(the old name is read until trainkit {RENAMED_UNTIL})",
            file=sys.stderr,
        )
    return data


def load_config(
    cls: type, path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> Any:
    """Build config ``cls`` from defaults, then ``path`` (YAML), then ``overrides``.

    Keys in :data:`RENAMED` are read under their old names too, with a notice; a key given
    by both its old and its new name (in one source or two) is an error.
    """
    obj = cls()
    seen: dict[str, str] = {}
    if path is not None:
        data = _rename(cls, _read_yaml(path), str(path), seen)
        obj = _build(cls, data, str(path), base=obj)
    for text in overrides:
        parts, value = parse_override(text)
        src = f"override '{text}'"
        try:
            obj = _build(cls, _rename(cls, _nest(parts, value), src, seen), src, base=obj)
        except ConfigError as first:
            if not isinstance(value, (dict, list)):
                raise
            # text YAML reads as a mapping or list ("User: {}") is kept as text where the
            # key expects a string; anything else keeps the first error
            try:
                obj = _build(cls, _nest(parts, text.split("=", 1)[1]), src, base=obj)
            except (ConfigError, yaml.YAMLError):
                raise first from None
    _validate(obj)  # once, after every override: cross-section checks see the final values
    return obj


def to_dict(obj: Any) -> dict:
    """A config dataclass as plain nested dicts (tuples become lists)."""

    def conv(v):
        if dataclasses.is_dataclass(v):
            return {key_of(f.name): conv(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return conv(obj)


def to_yaml(obj: Any) -> str:
    return yaml.safe_dump(to_dict(obj), sort_keys=False, default_flow_style=False)


def describe(cls: type, prefix: str = "", inst: Any = None) -> list[tuple[str, str, Any, str]]:
    """``(key, type, default, help)`` for every leaf field of ``cls``, for docs.

    The help text is a field's ``metadata["help"]`` when given. A section's defaults are
    its parent's (``field(default_factory=lambda: OptimSection(lr=...))``).
    """
    rows = []
    hints = _hints(cls)
    inst = cls() if inst is None else inst
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_dc(tp):
            rows += describe(tp, prefix + key_of(f.name) + ".", getattr(inst, f.name))
        else:
            rows.append(
                (
                    prefix + key_of(f.name),
                    _type_name(tp),
                    to_dict(getattr(inst, f.name))
                    if dataclasses.is_dataclass(getattr(inst, f.name))
                    else getattr(inst, f.name),
                    f.metadata.get("help", ""),
                )
            )
    return rows
