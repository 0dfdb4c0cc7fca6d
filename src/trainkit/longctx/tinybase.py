"""A tiny retrieval base model for the CPU context-extension experiment.

A ~1M-parameter Llama (4 layers, hidden 128, 4 heads of 32, the 64-token character
vocabulary of :mod:`trainkit.longctx.chartok`) is trained from scratch on passkey and
multi-key key-value retrieval in real-text haystacks (stdlib docstrings), with

* loss on the answer tokens only (and the ``<|end|>`` that closes them),
* a length curriculum: start at ``curriculum.start`` tokens and double the context
  whenever training-batch answer accuracy passes ``curriculum.threshold``, up to
  ``curriculum.max_len`` (the model's native window, e.g. 256),

following the setup that DESIGN.md reports to learn retrieval on 2 cores. Accuracy here is
teacher-forced exact match of the whole answer, which equals greedy-decoding exact match
(greedy reproduces the answer iff every answer token is the argmax given the previous ones).

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
from trainkit.longctx.haystack import Meter
from trainkit.longctx.tasks import make_sample


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
    start: int = 128
    max_len: int = 256
    threshold: float = 0.95
    window: int = 20  # steps averaged for the promotion test


@dataclass
class TinyTrainSection:
    tasks: list[str] = field(default_factory=lambda: ["passkey", "kv"])
    source: str = "stdlib"
    n_keys: list[int] = field(default_factory=lambda: [2, 4])
    batch: int = 16
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.0
    max_steps: int = 3000
    max_seconds: float = 3600.0
    extra_steps_at_max: int = 200  # keep training this long once at max_len and above threshold
    threads: int = 1


@dataclass
class TinyBaseConfig:
    model: TinyModelSection = field(default_factory=TinyModelSection)
    curriculum: CurriculumSection = field(default_factory=CurriculumSection)
    train: TinyTrainSection = field(default_factory=TinyTrainSection)
    seed: int = 0
    output_dir: str = "runs/longctx/tiny_base"
    init_from: str = field(default="", metadata={
        "help": "resume: a folder saved by this recipe (its trainkit_tiny_state gives the "
                "curriculum length and step)"})


def build_model(m: TinyModelSection, seed: int = 0):
    """A fresh ``LlamaForCausalLM`` for the char tokenizer (vocab 64, eos ``<|end|>``)."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from trainkit.longctx.chartok import SPECIALS, vocab

    if m.hidden % m.heads:
        raise UserError(f"model.hidden ({m.hidden}) must be divisible by model.heads ({m.heads})")
    v = vocab()
    cfg = LlamaConfig(vocab_size=len(v), hidden_size=m.hidden, intermediate_size=m.intermediate,
                      num_hidden_layers=m.layers, num_attention_heads=m.heads,
                      num_key_value_heads=m.heads, head_dim=m.hidden // m.heads,
                      max_position_embeddings=m.max_position, tie_word_embeddings=True,
                      rope_parameters={"rope_type": "default", "rope_theta": float(m.rope_theta)},
                      pad_token_id=v[SPECIALS[0]], bos_token_id=v["<s>"], eos_token_id=v["<|end|>"])
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg)


def encode_sample(tok: Any, rec: dict) -> tuple[list[int], list[int]]:
    """``(input_ids, labels)``: chat prompt + answer + ``<|end|>``; labels -100 on the prompt."""
    from trainkit.longctx.eval.common import prompt_ids

    prompt = prompt_ids(tok, rec["messages"][0]["content"])
    answer = tok(rec["messages"][1]["content"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return prompt + answer, [-100] * len(prompt) + answer


def make_batch(tok: Any, rng: random.Random, t: TinyTrainSection, length: int, seed: int,
               index0: int, batch: int):
    """A right-padded batch ``(input_ids, attention_mask, labels)`` of shape ``[batch, T]``."""
    import torch

    seqs = []
    for b in range(batch):
        task = t.tasks[(index0 + b) % len(t.tasks)]
        opts: dict[str, Any] = {"source": t.source}
        if task == "kv":
            opts["n_keys"] = rng.randint(min(t.n_keys), max(t.n_keys))
        rec = make_sample(task, seed=seed, index=index0 + b, length=length,
                          depth=round(rng.random(), 4), meter=Meter(), **opts)
        seqs.append(encode_sample(tok, rec))
    T = max(len(s[0]) for s in seqs)
    ids = torch.full((batch, T), tok.pad_token_id, dtype=torch.long)
    lab = torch.full((batch, T), -100, dtype=torch.long)
    att = torch.zeros((batch, T), dtype=torch.long)
    for i, (x, y) in enumerate(seqs):
        ids[i, :len(x)] = torch.tensor(x)
        lab[i, :len(y)] = torch.tensor(y)
        att[i, :len(x)] = 1
    return ids, att, lab


def answer_loss_and_accuracy(model: Any, ids, att, lab):
    """Mean cross-entropy over answer tokens and the fraction of samples whose every answer
    token is the argmax (= greedy exact match). Shapes: ``[B, T]`` in, scalars out."""
    import torch.nn.functional as F

    logits = model(input_ids=ids, attention_mask=att).logits[:, :-1]  # [B, T-1, V]
    target = lab[:, 1:]  # [B, T-1]
    mask = target != -100
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), target.reshape(-1), ignore_index=-100)
    hit = (logits.argmax(-1) == target) | ~mask
    acc = hit.all(dim=1).float().mean()
    return loss, acc


def evaluate_accuracy(model: Any, tok: Any, t: TinyTrainSection, length: int, n: int, seed: int,
                      task: str | None = None) -> float:
    """Greedy exact-match accuracy on ``n`` fresh samples at ``length`` (teacher-forced check)."""
    import torch

    sub = TinyTrainSection(**{**t.__dict__, "tasks": [task] if task else list(t.tasks)})
    rng = random.Random(f"tiny-eval:{seed}:{length}:{task}")
    model.eval()
    hits = 0.0
    with torch.inference_mode():
        for start in range(0, n, 16):
            b = min(16, n - start)
            ids, att, lab = make_batch(tok, rng, sub, length, seed + 10_000, 10**7 + start, b)
            hits += float(answer_loss_and_accuracy(model, ids, att, lab)[1]) * b
    model.train()
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
    length, step0 = cfg.curriculum.start, 0
    if cfg.init_from:
        from transformers import LlamaForCausalLM

        if not (Path(cfg.init_from) / "config.json").is_file():
            raise UserError(f"init_from: {cfg.init_from} is not a model folder saved by this recipe")
        model = LlamaForCausalLM.from_pretrained(cfg.init_from)
        state = getattr(model.config, "trainkit_tiny_state", None) or {}
        length, step0 = int(state.get("length", length)), int(state.get("step", 0))
    else:
        model = build_model(cfg.model, cfg.seed)
    model.train()
    t = cfg.train
    opt = torch.optim.AdamW(model.parameters(), lr=t.lr, weight_decay=t.weight_decay, betas=(0.9, 0.98))
    if cfg.init_from and (Path(cfg.init_from) / "optimizer.pt").is_file():
        opt.load_state_dict(torch.load(Path(cfg.init_from) / "optimizer.pt"))
        for g in opt.param_groups:
            g["lr"] = t.lr
    warm = 0 if step0 else t.warmup
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, warm)))
    rng = random.Random(f"tiny-train:{cfg.seed}:{step0}")
    recent, history = [], []
    t0, at_max_ok = time.time(), 0
    for step in range(step0, step0 + t.max_steps):
        ids, att, lab = make_batch(tok, rng, t, length, cfg.seed, step * t.batch, t.batch)
        loss, acc = answer_loss_and_accuracy(model, ids, att, lab)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        loss, acc = loss.detach(), float(acc)
        recent = (recent + [acc])[-cfg.curriculum.window:]
        mean_acc = sum(recent) / len(recent)
        if step % 25 == 0:
            rec = {"step": step, "length": length, "loss": round(float(loss), 4),
                   "acc": round(mean_acc, 3), "seconds": round(time.time() - t0, 1)}
            history.append(rec)
            log(rec)
        full = len(recent) == cfg.curriculum.window and mean_acc >= cfg.curriculum.threshold
        if full and length < cfg.curriculum.max_len:
            length = min(cfg.curriculum.max_len, length * 2)
            recent = []
            log({"step": step, "promote_to": length})
        elif full:
            at_max_ok += 1
            if at_max_ok >= t.extra_steps_at_max:
                break
        if time.time() - t0 > t.max_seconds or not math.isfinite(float(loss)):
            break
    history.append({"step": step, "length": length, "final": True, "seconds": round(time.time() - t0, 1)})
    model.config.trainkit_tiny_state = {"length": length, "step": step + 1}
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
