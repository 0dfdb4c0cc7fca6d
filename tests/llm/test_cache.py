"""Cache folders are keyed by what builds them: a changed key rebuilds, the same key reuses."""

from __future__ import annotations

import json

import pytest

from trainkit.llm import demo_data, models


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TRAINKIT_CACHE", str(tmp_path))
    return tmp_path


def _counting_build(calls: list):
    def build(out):
        calls.append(out)
        (out / "config.json").write_text(json.dumps({"n": len(calls)}))

    return build


def test_cache_key_follows_source_text_reprs_and_version(monkeypatch):
    def f():
        return 1

    def g():
        return 2

    assert models.cache_key(f, "x") == models.cache_key(f, "x")
    assert len(models.cache_key(f)) == 10
    assert models.cache_key(f) != models.cache_key(g)  # another source text
    assert models.cache_key(f, "x") != models.cache_key(f, "y")
    assert models.lib_versions("torch", "no-such-dist")[1] == "no-such-dist==?"
    assert models.lib_versions("torch")[0].startswith("torch==2.")
    k = models.cache_key(f)
    monkeypatch.setattr(models, "CACHE_VERSION", models.CACHE_VERSION + 1)
    assert models.cache_key(f) != k


def test_file_fingerprint_is_content_not_mtime(tmp_path):
    import os

    p = tmp_path / "w.gguf"
    p.write_bytes(b"a" * 3_000_000)
    fp = models.file_fingerprint(p)
    os.utime(p, ns=(1, 1))  # a reinstall: same bytes, another mtime
    assert models.file_fingerprint(p) == fp
    data = bytearray(p.read_bytes())
    data[-10] = ord("b")  # same size, last MiB differs
    p.write_bytes(bytes(data))
    assert models.file_fingerprint(p) != fp


def test_materialise_reuses_same_key_and_rebuilds_on_a_new_one(cache):
    calls: list = []
    build = _counting_build(calls)
    a = models._materialise("thing", "k1", build)
    assert a == str(cache / "models" / "thing-k1") and len(calls) == 1
    assert models._materialise("thing", "k1", build) == a and len(calls) == 1  # reused
    b = models._materialise("thing", "k2", build)
    assert b != a and len(calls) == 2  # a new key builds a new folder
    assert json.loads((cache / "models" / "thing-k2" / "config.json").read_text())["n"] == 2


def test_builtin_tiny_folder_is_keyed_and_old_unhashed_folder_ignored(cache, monkeypatch):
    calls: list = []
    fake = _counting_build(calls)
    monkeypatch.setattr(models, "_build_tiny", lambda name, out: fake(out))
    old = cache / "models" / "tiny-llama"  # the layout of earlier trainkit versions
    old.mkdir(parents=True)
    (old / "config.json").write_text("{}")
    first = models.resolve("tiny-llama")
    assert first != str(old) and first.startswith(str(cache / "models" / "tiny-llama-"))
    assert models.resolve("tiny-llama") == first and len(calls) == 1  # same inputs: reused
    monkeypatch.setattr(models, "TINY_SEED", models.TINY_SEED + 1)  # a key input changes
    second = models.resolve("tiny-llama")
    assert second != first and len(calls) == 2
    monkeypatch.setattr(models, "CACHE_VERSION", models.CACHE_VERSION + 1)
    assert models.resolve("tiny-llama") not in (first, second) and len(calls) == 3
    assert models.resolve("tiny-qwen2") != models.resolve("tiny-llama")


def test_gguf_key_follows_libraries_and_content(monkeypatch, tmp_path):
    p = tmp_path / "m.gguf"
    p.write_bytes(b"gguf" * 1000)
    k = models._gguf_key(p)
    assert models._gguf_key(p) == k
    with monkeypatch.context() as m:
        m.setattr(models, "lib_versions", lambda *d: tuple(f"{x}==0" for x in d))
        assert models._gguf_key(p) != k  # another transformers/gguf: converted again
    p.write_bytes(b"GGUF" * 1000)
    assert models._gguf_key(p) != k


def test_builtin_data_folder_is_keyed_by_the_generator(cache, monkeypatch):
    from trainkit.llm import toy_data

    calls: list = []
    real = toy_data.write_toy_chat
    monkeypatch.setattr(toy_data, "write_toy_chat", lambda d: calls.append(d) or real(d))
    train = demo_data.resolve_data_path("builtin:toy-chat")
    held = demo_data.resolve_data_path("builtin:toy-chat-eval")
    assert train.startswith(str(cache / "data" / "toy-chat-")) and held.endswith("eval.jsonl")
    assert len(calls) == 1 and demo_data.resolve_data_path("builtin:toy-chat") == train
    monkeypatch.setattr(models, "CACHE_VERSION", models.CACHE_VERSION + 1)
    again = demo_data.resolve_data_path("builtin:toy-chat")
    assert again != train and len(calls) == 2
    assert open(again).read() == open(train).read()  # the same generator, the same data
