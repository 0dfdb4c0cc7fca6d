"""Built-in dataset names for recipe configs (``data.path: builtin:<name>``).

Generated locally (no download) into ``<cache>/data/toy-chat-<key>/`` the first time they
are used, the key a hash of the generator's source (:func:`trainkit.llm.models.cache_key`
of :mod:`trainkit.llm.toy_data`), so editing the generator writes a fresh folder:

- ``builtin:toy-chat`` / ``builtin:toy-chat-eval``: the train (200) and held-out (40)
  splits of :mod:`trainkit.llm.toy_data`, chat examples whose answers all follow one fixed
  style (``"Answer: <short>. -- trainkit bot"``), so an SFT run's effect shows in held-out
  loss and in generations (:func:`trainkit.llm.toy_data.matches_style`).
"""

from __future__ import annotations

from trainkit.common.errors import UserError

BUILTIN_DATA = {"toy-chat": "train.jsonl", "toy-chat-eval": "eval.jsonl"}


def resolve_data_path(path: str | None) -> str | None:
    """``builtin:<name>`` -> a generated file in the cache; other paths unchanged."""
    if not path or not path.startswith("builtin:"):
        return path
    name = path.split(":", 1)[1]
    if name not in BUILTIN_DATA:
        raise UserError(
            f"data path '{path}': unknown built-in dataset; known: "
            + ", ".join(f"builtin:{k}" for k in BUILTIN_DATA)
        )
    from trainkit.llm import toy_data
    from trainkit.llm.models import cache_dir, cache_key

    folder = cache_dir() / "data" / f"toy-chat-{cache_key(toy_data)}"
    target = folder / BUILTIN_DATA[name]
    if not target.is_file():
        toy_data.write_toy_chat(folder)
    return str(target)
