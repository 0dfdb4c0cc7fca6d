"""Preference pairs and pieces shared by the reward-model and DPO recipes.

``{"prompt", "chosen", "rejected"}`` records (TRL's standard, conversational and
implicit-prompt layouts, read with file:line errors, or generated from a built-in task), the held-out split, the chat-template prompt, the optimizer and
the backbone's LoRA config; the DPO pair encoding and
response log-probs.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from trainkit.common.errors import UserError

IGNORE = -100
# the data-section options naming the pair fields (OpenRLHF's names), with defaults
KEYS = (("input_key", "prompt"), ("chosen_key", "chosen"), ("rejected_key", "rejected"))


def read_pairs(
    path: str | Path,
    prompt_key: str = "prompt",
    chosen_key: str = "chosen",
    rejected_key: str = "rejected",
) -> list[dict]:
    """Read preference pairs from a jsonl / json / parquet file or datasets folder.

    Every layout of :func:`trainkit.llm.data_formats.preference_record` is accepted (TRL's
    standard and conversational forms, implicit prompts); records come back as
    ``{"prompt": str | messages, "chosen": str, "rejected": str}``.

    Raises:
        UserError: missing file, non-UTF-8 bytes, bad JSON, a record that is not an
            object, a missing/mistyped field or a lone surrogate (file and line); or
            no records.
    """
    from trainkit.llm.data_files import read_raw
    from trainkit.llm.data_formats import preference_record

    p = Path(path)
    if not p.exists():
        raise UserError(f"preference data file not found: {p}")
    out = []
    for where, rec in read_raw(str(p)):
        if not isinstance(rec, dict):
            raise UserError(
                f"{where}: expected an object with {prompt_key}, {chosen_key}, {rejected_key}"
            )
        out.append(preference_record(rec, where, prompt_key, chosen_key, rejected_key))
    if not out:
        raise UserError(f"{p}: no preference records")
    return out


def load_split(data: Any, seed: int, out_dir: Path) -> tuple[list[dict], list[dict]]:
    """Train and held-out pairs from a data section (``path``/``eval_path``/...).

    An empty ``path`` generates the built-in preference data (see
    :func:`builtin_pairs`) into ``out_dir/data``.
    """
    path, eval_path = data.path, data.eval_path
    if not path:
        path, eval_path = builtin_pairs(out_dir / "data", data, seed)
    keys = [getattr(data, k, d) for k, d in KEYS]
    train = read_pairs(path, *keys)
    if eval_path:
        held = read_pairs(eval_path, *keys)
    else:
        idx = list(range(len(train)))
        random.Random(seed).shuffle(idx)
        n_eval = max(1, int(round(len(train) * data.eval_fraction))) if data.eval_fraction else 0
        held = [train[i] for i in idx[:n_eval]]
        train = [train[i] for i in sorted(idx[n_eval:])]
    if data.limit:
        train = train[: data.limit]
    if not train:
        raise UserError("no training pairs left after the held-out split")
    return train, held


def builtin_pairs(folder: Path, data: Any, seed: int) -> tuple[str, str]:
    """Write the default preference data (train + held-out jsonl); return both paths.

    Uses :func:`trainkit.rlhf.tasks.write_preference_data`: arithmetic prompts asking for
    the bare number; with ``kind="format"`` chosen = the correct bare number and rejected
    = a wordy reply, the behaviour the DPO recipe's ``number_only`` rule checks.
    """
    from trainkit.rlhf.tasks import write_preference_data

    tp, hp = write_preference_data(
        folder,
        n=data.generate_n,
        seed=seed,
        n_heldout=data.generate_heldout,
        kind=data.kind,
        task=data.task,
    )
    return str(tp), str(hp)


def chat_prompt(tok: Any, prompt: str | list[dict]) -> str:
    """``prompt`` (a user turn, or a message list) in the model's chat template, ready for
    the answer; without a template, the message contents one per line."""
    from trainkit.llm.data_formats import prompt_messages

    msgs = prompt_messages(prompt, None)
    if getattr(tok, "chat_template", None):
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    return "\n".join(m["content"] for m in msgs) + "\n"


def check_lora_targets(model: Any, lora: Any) -> None:
    """Raise a one-line UserError when a ``lora.target_modules`` name is not in ``model``."""
    import torch

    names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
    missing = [t for t in lora.target_modules if t not in names]
    if missing:
        linear = {
            n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)
        }
        raise UserError(
            f"lora.target_modules {missing} not found in the model; "
            f"linear layers there include: {sorted(linear)}"
        )


# ------------------------------------------------------------------ DPO batching
def encode_pair(tok: Any, rec: dict, max_prompt_len: int, max_len: int) -> dict:
    """Token ids of one pair: the shared prompt, then each response plus EOS.

    Returns ``{"chosen": ids, "rejected": ids, "prompt_len": int}`` (Python lists); the
    prompt is left-truncated to ``max_prompt_len``, responses cut to fit ``max_len``.
    """
    prompt = tok(chat_prompt(tok, rec["prompt"]), add_special_tokens=False)["input_ids"]
    prompt = prompt[-max_prompt_len:]
    room = max(1, max_len - len(prompt))
    out = {"prompt_len": len(prompt)}
    for side in ("chosen", "rejected"):
        resp = tok(rec[side], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        out[side] = prompt + resp[:room]
    return out


def collate(encoded: list[dict], pad_id: int) -> dict:
    """``[2B, T]`` ``input_ids``, ``attention_mask``, ``labels`` (chosen rows first).

    ``labels`` hold the response token ids and ``-100`` on prompt and padding;
    ``prompt_len`` is ``[2B]``.
    """
    import torch

    seqs = [e["chosen"] for e in encoded] + [e["rejected"] for e in encoded]
    plens = [e["prompt_len"] for e in encoded] * 2
    T = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), T), pad_id, dtype=torch.long)
    att = torch.zeros((len(seqs), T), dtype=torch.long)
    lab = torch.full((len(seqs), T), IGNORE, dtype=torch.long)
    for i, (s, p) in enumerate(zip(seqs, plens)):
        ids[i, : len(s)] = torch.tensor(s)
        att[i, : len(s)] = 1
        lab[i, p : len(s)] = torch.tensor(s[p:])
    return {
        "input_ids": ids,
        "attention_mask": att,
        "labels": lab,
        "prompt_len": torch.tensor(plens, dtype=torch.long),
    }


def batch_logps(model: Any, batch: dict, average: bool) -> Any:
    """Sequence log-probs ``[2B]`` of the response tokens of a collated batch."""
    from trainkit.rlhf.losses import sequence_logps, token_logps

    dev = next(model.parameters()).device
    ids, att, lab = (batch[k].to(dev) for k in ("input_ids", "attention_mask", "labels"))
    T = ids.shape[1]
    # Logits only where a response token is predicted: the last K positions, with K
    # reaching back to the shortest prompt's last token. The [*, T, vocab] logits of
    # the prompt would dominate time and memory (vocab 49152, prompts of ~40 tokens).
    K = min(T, T - int(batch["prompt_len"].min()) + 1)
    logits = model(
        input_ids=ids, attention_mask=att, use_cache=False, logits_to_keep=K
    ).logits  # [2B, K, V]: positions T-K .. T-1
    labels = lab[:, T - K + 1 :]  # logits at t predict token t + 1
    lp = token_logps(logits[:, :-1], labels)  # [2B, K-1]
    return sequence_logps(lp, None, labels != IGNORE, average=average)
