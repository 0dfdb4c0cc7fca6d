"""Reading data files record by record, each record with the place it came from.

:func:`read_raw` returns ``(where, object)`` pairs, ``where`` being ``file:line`` (JSON
lines; a JSON list keeps each record's line too), ``file: row N`` (parquet) or
``folder[split]: row N`` (a ``datasets`` ``save_to_disk`` folder), so validation errors in
:mod:`trainkit.llm.data` can name the line. Bad bytes, bad JSON and unreadable files raise
one :class:`~trainkit.common.errors.UserError` with the file and line.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from trainkit.common.errors import UserError


def _utf8(raw: bytes, path: Path) -> str:
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        col = e.start - (raw.rfind(b"\n", 0, e.start) + 1) + 1
        raise UserError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[e.start]:02x} at column {col})"
        ) from None
    return text[1:] if text.startswith("\ufeff") else text


def _json_error(path: Path, line: int, e: Exception) -> UserError:
    if isinstance(e, json.JSONDecodeError):
        return UserError(f"{path}:{line}: invalid JSON: {e.msg} (column {e.colno})")
    if isinstance(e, RecursionError):
        return UserError(f"{path}:{line}: invalid JSON: nesting too deep")
    msg = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
    if "digits" in msg:  # Python refuses int literals over sys.get_int_max_str_digits()
        msg = "a number has too many digits"
    return UserError(f"{path}:{line}: invalid JSON: {msg}")


def _read_jsonl(path: Path, text: str) -> list[tuple[str, Any]]:
    out = []
    for i, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except (ValueError, RecursionError) as e:
            raise _json_error(path, i, e) from None
        out.append((f"{path}:{i}", obj))
    return out


def _read_json_list(path: Path, text: str) -> list[tuple[str, Any]]:
    """Walk a top-level JSON list element by element so each record keeps its line."""
    dec = json.JSONDecoder()
    n = len(text)

    def skip(i: int) -> int:
        while i < n and text[i] in " \t\r\n":
            i += 1
        return i

    def line_of(i: int) -> int:
        return text.count("\n", 0, i) + 1

    i = skip(0)
    if i < n and text[i] == "{":
        return _read_jsonl(path, text)  # a .json file holding JSON lines
    if i >= n or text[i] != "[":
        raise UserError(
            f"{path}:{line_of(i)}: expected a JSON list of records ('[...]') or JSON lines"
        )
    out = []
    i = skip(i + 1)
    if i < n and text[i] == "]":
        i += 1
    else:
        while True:
            start = i
            try:
                obj, i = dec.raw_decode(text, i)
            except json.JSONDecodeError as e:
                raise UserError(
                    f"{path}:{e.lineno}: invalid JSON: {e.msg} (column {e.colno})"
                ) from None
            except (ValueError, RecursionError) as e:
                raise _json_error(path, line_of(start), e) from None
            out.append((f"{path}:{line_of(start)} (record {len(out) + 1})", obj))
            i = skip(i)
            if i < n and text[i] == ",":
                i = skip(i + 1)
                continue
            if i < n and text[i] == "]":
                i += 1
                break
            raise UserError(
                f"{path}:{line_of(i)}: invalid JSON: expected ',' or ']' after a record"
            )
    if skip(i) != n:
        raise UserError(f"{path}:{line_of(skip(i))}: invalid JSON: extra data after the list")
    return out


def _read_parquet(path: Path) -> list[tuple[str, Any]]:
    try:
        import pyarrow.parquet as pq

        rows = pq.read_table(path).to_pylist()
    except ImportError:
        raise UserError("reading parquet needs pyarrow: pip install 'trainkit[llm]'") from None
    except Exception as e:  # pyarrow raises many types for a corrupt file
        raise UserError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from None
    return [(f"{path}: row {i}", r) for i, r in enumerate(rows, start=1)]


def _read_hf_folder(path: Path, split: str) -> list[tuple[str, Any]]:
    markers = ("dataset_info.json", "state.json", "dataset_dict.json")
    if not any((path / m).is_file() for m in markers):
        raise UserError(
            f"{path}: a folder but not a `datasets` save_to_disk folder "
            "(expected dataset_info.json or dataset_dict.json inside)"
        )
    try:
        import datasets

        ds = datasets.load_from_disk(str(path))
    except ImportError:
        raise UserError(
            "reading a datasets folder needs `datasets`: pip install 'trainkit[llm]'"
        ) from None
    except Exception as e:
        raise UserError(f"{path}: cannot load datasets folder ({type(e).__name__}: {e})") from None
    if isinstance(ds, datasets.DatasetDict):
        if split not in ds:
            raise UserError(f"{path}: no split '{split}'; splits here: {', '.join(ds)}")
        ds, where = ds[split], f"{path}[{split}]"
    else:
        where = str(path)
    return [(f"{where}: row {i}", r) for i, r in enumerate(ds.to_list(), start=1)]


def read_raw(path: str, split: str = "train") -> list[tuple[str, Any]]:
    """Read ``(where, object)`` pairs from a jsonl / json / parquet file or datasets folder."""
    if not path:
        raise UserError(
            "data.path is empty: set it to a .jsonl/.json/.parquet file or a datasets folder"
        )
    p = Path(path).expanduser()
    if not p.exists():
        raise UserError(f"data file not found: {p}")
    if p.is_dir():
        return _read_hf_folder(p, split)
    suffix = p.suffix.lower()
    if suffix == ".parquet":
        return _read_parquet(p)
    if suffix not in (".jsonl", ".json", ".ndjson"):
        raise UserError(
            f"{p}: unsupported data file type '{suffix}'; "
            "expected .jsonl, .json, .parquet or a datasets folder"
        )
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise UserError(f"{p}: cannot read ({e.strerror})") from None
    text = _utf8(raw, p)
    return _read_json_list(p, text) if suffix == ".json" else _read_jsonl(p, text)
