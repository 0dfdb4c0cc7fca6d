"""A tiny retrieval base model for the CPU context-extension experiment.

A ~1M-parameter Llama (4 layers, hidden 128, 4 heads of 32, the 64-token character
vocabulary of :mod:`trainkit.longctx.chartok`) is trained from scratch on passkey and
multi-key key-value retrieval, with

* loss on the answer tokens only (and the ``<|end|>`` that closes them),
* a length curriculum: start at ``curriculum.start`` tokens and double the context
  whenever training-batch answer accuracy passes ``curriculum.threshold`` (or, with
  ``curriculum.stage_steps``, after that many steps at a length), up to
  ``curriculum.max_len`` (the model's native window, e.g. 256); each batch mixes lengths
  in ``[length / 2, length]`` so shorter contexts are not forgotten,
* a constant learning rate (after warm-up) until the model passes the threshold at
  ``max_len``, then a linear decay to ``train.final_lr_frac`` over ``extra_steps_at_max``.

Multi-key retrieval is learned with ``train.key_alphabet=symbols`` (each key one symbol
never seen elsewhere), ``train.kv_echo`` (the answer repeats the key, so its first digit is
an induction copy: find the earlier occurrence of the key and continue it) and
``train.kv_queries`` (every key asked, in follow-up turns); without the echo a 1M model
copies *some* pair's value at chance (docs/RESULTS.md, long context).

Haystack ``train.source``: ``random`` (default; random letters and spaces, the setup
docs/papers.md reports to learn on 2 cores), ``prose`` (the same sample format in real text:
consecutive prose paragraphs of the standard library's docstrings, lower-cased, with digits
and every character that could be a key or a separator blanked) or a
:mod:`trainkit.longctx.tasks` source
(``stdlib`` real text, ``bio``, ``repeat``), which the first attempt used and which
plateaued at ~0.45 training accuracy (docs/RESULTS.md, long context).

Accuracy here is teacher-forced exact match of the whole answer, which equals greedy
exact match (greedy reproduces the answer iff every answer token is the argmax given the
previous ones), so grids are evaluated in batches without ``generate``.

``train(cfg)`` returns the model and a log; ``save(model, tokenizer, path)`` writes an HF
folder that plain ``AutoModelForCausalLM`` / ``AutoTokenizer`` load.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trainkit.common.errors import UserError
from trainkit.common.io import atomic_dir
from trainkit.longctx.tinydata import make_batch, pad_batch, sample_ids

#: the shipped checkpoint (trained by ``examples/train_tiny_retrieval.py``)
ASSET_DIR = Path(__file__).resolve().parent / "assets" / "tiny_base"


@dataclass
class TinyModelSection:
    layers: int = 4
    hidden: int = 128
    heads: int = 4
    intermediate: int = 512
    rope_theta: float = 10000.0
    max_position: int = 256


@dataclass
class CurriculumSection:
    start: int = 32
    max_len: int = 256
    threshold: float = 0.95
    window: int = 20  # steps averaged for the promotion test
    stage_steps: int = 0  # > 0: promote (or start the decay) after this many steps anyway


@dataclass
class TinyTrainSection:
    tasks: list[str] = field(default_factory=lambda: ["passkey", "kv"])
    source: str = field(
        default="random",
        metadata={
            "help": "random (letters), prose (stdlib docstrings, same format), or the "
            "make_sample sources stdlib, bio, repeat"
        },
    )
    n_keys: list[int] = field(default_factory=lambda: [2, 4])
    kv_echo: bool = field(
        default=False, metadata={"help": "kv answers repeat the key (random filler)"}
    )
    key_len: int = field(default=4, metadata={"help": "letters per kv key (random filler)"})
    kv_queries: int = field(
        default=1,
        metadata={
            "help": "training only: kv samples ask up to this many of their keys, the extra "
            "ones as follow-up chat turns with loss on every answer (denser signal)"
        },
    )
    key_alphabet: str = field(
        default="letters",
        metadata={
            "help": "kv keys (random filler): 'letters' (key_len filler letters) or 'symbols' "
            "(one of the 12 symbols " + repr("!-()/_=+*[]%") + ", never in the filler)"
        },
    )
    batch: int = 16
    lr: float = 1e-3
    final_lr_frac: float = 0.1
    warmup: int = 50
    weight_decay: float = 0.0
    max_steps: int = 6000
    max_seconds: float = 3600.0
    extra_steps_at_max: int = 300  # decay steps once at max_len and above threshold
    threads: int = 1
    resume_schedule: bool = field(
        default=True,
        metadata={
            "help": "with init_from: keep the saved curriculum length and LR phase (false: "
            "start again at curriculum.start with warm-up, e.g. to teach a new format)"
        },
    )


@dataclass
class TinyBaseConfig:
    model: TinyModelSection = field(default_factory=TinyModelSection)
    curriculum: CurriculumSection = field(default_factory=CurriculumSection)
    train: TinyTrainSection = field(default_factory=TinyTrainSection)
    seed: int = 0
    output_dir: str = "runs/longctx/tiny_base"
    init_from: str = field(
        default="",
        metadata={
            "help": "resume: a folder saved by this recipe (its trainkit_tiny_state gives the "
            "curriculum length and step)"
        },
    )


def build_model(m: TinyModelSection, seed: int = 0):
    """A fresh ``LlamaForCausalLM`` for the char tokenizer (vocab 64, eos ``<|end|>``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainkit.longctx.chartok import SPECIALS, vocab

    if m.hidden % m.heads:
        raise UserError(f"model.hidden ({m.hidden}) must be divisible by model.heads ({m.heads})")
    v = vocab()
    cfg = LlamaConfig(
        vocab_size=len(v),
        hidden_size=m.hidden,
        intermediate_size=m.intermediate,
        num_hidden_layers=m.layers,
        num_attention_heads=m.heads,
        num_key_value_heads=m.heads,
        head_dim=m.hidden // m.heads,
        max_position_embeddings=m.max_position,
        tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": float(m.rope_theta)},
        pad_token_id=v[SPECIALS[0]],
        bos_token_id=v["<s>"],
        eos_token_id=v["<|end|>"],
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def answer_loss_and_accuracy(model: Any, ids, att, lab):
    """Mean cross-entropy over answer tokens and the fraction of samples whose every answer
    token is the argmax (= greedy exact match). Shapes: ``[B, T]`` in, scalars out."""
    loss, hits = answer_stats(model, ids, att, lab)
    return loss, hits.float().mean()


def answer_stats(model: Any, ids, att, lab):
    """``(mean answer-token loss, per-sample exact-match bool [B])``."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]  # [B, T-1, V]
    target = lab[:, 1:]  # [B, T-1]
    mask = target != -100
    loss = F.cross_entropy(
        logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1), ignore_index=-100
    )
    hit = (logits.argmax(-1) == target) | ~mask
    return loss, hit.all(dim=1)


def grid_accuracy(
    model: Any,
    tok: Any,
    t: TinyTrainSection,
    task: str,
    lengths: list[int],
    depths: list[float],
    samples: int,
    seed: int,
    n_keys: int = 4,
    batch: int = 8,
) -> dict:
    """Exact-match accuracy on a lengths x depths grid (``samples`` fresh haystacks a cell).

    Returns the summary of :func:`trainkit.longctx.eval.common.summarize` plus ``nll``
    (mean answer-token loss over the grid, for an answer perplexity ``exp(nll)``).
    """
    import torch

    from trainkit.longctx.eval.common import cell_index, summarize

    rows, nll = [], []
    was = model.training
    model.eval()
    with torch.inference_mode():
        for L in lengths:
            for d in depths:
                for s0 in range(0, samples, batch):
                    idx = [cell_index(L, d, s) for s in range(s0, min(samples, s0 + batch))]
                    seqs = [sample_ids(tok, t, task, L, d, seed + 10_000, i, n_keys) for i in idx]
                    ids, att, lab = pad_batch(seqs, tok.pad_token_id)
                    loss, hit = answer_stats(model, ids, att, lab)
                    nll.append(float(loss))
                    rows += [
                        {"length_target": L, "depth_target": d, "score": float(h)} for h in hit
                    ]
    model.train(was)
    out = summarize(rows, list(lengths), list(depths))
    out["nll"] = sum(nll) / len(nll)
    return out


def evaluate_accuracy(
    model: Any,
    tok: Any,
    t: TinyTrainSection,
    length: int,
    n: int,
    seed: int,
    task: str | None = None,
) -> float:
    """Greedy exact-match accuracy on ``n`` fresh samples at ``length`` (teacher-forced check)."""
    import torch

    sub = TinyTrainSection(**{**t.__dict__, "tasks": [task] if task else list(t.tasks)})
    rng = random.Random(f"tiny-eval:{seed}:{length}:{task}")
    was = model.training
    model.eval()
    hits = 0.0
    with torch.inference_mode():
        for start in range(0, n, 16):
            b = min(16, n - start)
            ids, att, lab = make_batch(tok, rng, sub, length, seed + 10_000, 10**7 + start, b)
            hits += float(answer_loss_and_accuracy(model, ids, att, lab)[1]) * b
    model.train(was)
    return hits / n


def train(cfg: TinyBaseConfig, log=print) -> tuple[Any, Any, list[dict], Any]:
    """Train the tiny base with the curriculum.

    Returns:
        ``(model, tokenizer, history, optimizer)``; pass the optimizer to :func:`save` so
        that ``init_from`` resumes with its moments.
    """
    import torch

    from trainkit.longctx.chartok import char_tokenizer

    torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    tok = char_tokenizer()
    length, step0, decay_from = cfg.curriculum.start, 0, -1
    if cfg.init_from:
        from transformers import LlamaForCausalLM

        if not (Path(cfg.init_from) / "config.json").is_file():
            raise UserError(
                f"init_from: {cfg.init_from} is not a model folder saved by this recipe"
            )
        model = LlamaForCausalLM.from_pretrained(cfg.init_from)
        state = getattr(model.config, "trainkit_tiny_state", None) or {}
        length, step0 = int(state.get("length", length)), int(state.get("step", 0))
        decay_from = int(state.get("decay_from", -1))
        if not cfg.train.resume_schedule:
            length, decay_from = cfg.curriculum.start, -1
    else:
        model = build_model(cfg.model, cfg.seed)
    model.train()
    t = cfg.train
    opt = torch.optim.AdamW(
        model.parameters(), lr=t.lr, weight_decay=t.weight_decay, betas=(0.9, 0.98)
    )
    if cfg.init_from and (Path(cfg.init_from) / "optimizer.pt").is_file():
        opt.load_state_dict(
            torch.load(Path(cfg.init_from) / "optimizer.pt", map_location="cpu", weights_only=True)
        )
    warm = 0 if step0 and t.resume_schedule else t.warmup

    def lr_at(step: int) -> float:
        f = min(1.0, (step - step0 + 1) / max(1, warm)) if warm else 1.0
        if decay_from >= 0:
            frac = min(1.0, (step - decay_from) / max(1, t.extra_steps_at_max))
            f *= 1.0 - (1.0 - t.final_lr_frac) * frac
        return t.lr * f

    rng = random.Random(f"tiny-train:{cfg.seed}:{step0}")
    recent, history = [], []
    stage_start = step0
    t0 = time.time()
    step = step0
    for step in range(step0, step0 + t.max_steps):
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        ids, att, lab = make_batch(
            tok,
            rng,
            t,
            length,
            cfg.seed,
            step * t.batch,
            t.batch,
            min_length=max(cfg.curriculum.start, length // 2),
        )
        loss, acc = answer_loss_and_accuracy(model, ids, att, lab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss, acc = loss.detach(), float(acc)
        recent = (recent + [acc])[-cfg.curriculum.window :]
        mean_acc = sum(recent) / len(recent)
        if step % 25 == 0:
            rec = {
                "step": step,
                "length": length,
                "loss": round(float(loss), 4),
                "acc": round(mean_acc, 3),
                "lr": round(lr_at(step), 6),
                "seconds": round(time.time() - t0, 1),
            }
            history.append(rec)
            log(rec)
        full = len(recent) == cfg.curriculum.window and mean_acc >= cfg.curriculum.threshold
        if cfg.curriculum.stage_steps > 0 and step - stage_start >= cfg.curriculum.stage_steps:
            full = True
        if full and length < cfg.curriculum.max_len:
            length = min(cfg.curriculum.max_len, length * 2)
            recent, stage_start = [], step
            log({"step": step, "promote_to": length})
        elif full and decay_from < 0:
            decay_from = step
            log({"step": step, "decay_from": step})
        if decay_from >= 0 and step - decay_from >= t.extra_steps_at_max:
            break
        if time.time() - t0 > t.max_seconds or not math.isfinite(float(loss)):
            break
    history.append(
        {"step": step, "length": length, "final": True, "seconds": round(time.time() - t0, 1)}
    )
    model.config.trainkit_tiny_state = {
        "length": length,
        "step": step + 1,
        "decay_from": decay_from,
        "source": t.source,
        "kv_echo": t.kv_echo,
        "key_len": t.key_len,
        "key_alphabet": t.key_alphabet,
        "kv_queries": t.kv_queries,
    }
    return model, tok, history, opt


def save(model: Any, tok: Any, path: str | Path, optimizer: Any = None) -> Path:
    """Write the model (safetensors), tokenizer and optionally the optimizer state
    (``optimizer.pt``, for resuming) as one HF folder, atomically."""
    with atomic_dir(path) as tmp:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        if optimizer is not None:
            import torch

            torch.save(optimizer.state_dict(), Path(tmp) / "optimizer.pt")
    return Path(path)


def eval_section(model: Any) -> TinyTrainSection:
    """The sample format a tiny model was trained on (``trainkit_tiny_state`` in its config)."""
    state = getattr(model.config, "trainkit_tiny_state", None) or {}
    return TinyTrainSection(
        source=state.get("source", "random"),
        kv_echo=bool(state.get("kv_echo", False)),
        key_len=int(state.get("key_len", 4)),
        key_alphabet=state.get("key_alphabet", "letters"),
    )


def load_shipped(path: str | Path | None = None):
    """``(model, tokenizer)`` of the shipped tiny base (or of ``path``), float32, eval mode."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    p = Path(path) if path else ASSET_DIR
    if not (p / "config.json").is_file():
        raise UserError(
            f"no tiny base model at {p}: train one with "
            "examples/train_tiny_retrieval.py --config configs/longctx/tiny_base.yaml"
        )
    model = AutoModelForCausalLM.from_pretrained(p, dtype="float32")
    model.eval()
    return model, AutoTokenizer.from_pretrained(p)
