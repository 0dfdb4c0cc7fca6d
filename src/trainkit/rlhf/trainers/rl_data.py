"""Prompts, rewards and evaluation for the online-RL recipes.

A prompt record is ``{"prompt": str, <label>: value, ...}``; every key but the prompt is
a label handed to the reward functions (``answer`` for the math rewards). Prompts are
tokenised once, at load time (with the chat template when the tokenizer has one).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, NamedTuple

from trainkit.common.errors import UserError


@dataclass
class PromptSet:
    """Tokenised prompts with their texts and labels (all lists of the same length)."""

    texts: list[str]
    token_ids: list[list[int]]
    labels: list[dict[str, Any]]

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: list[int]) -> tuple[list[str], list[list[int]], dict[str, list]]:
        """Texts, token ids and per-key label lists of rows ``idx``."""
        keys = sorted({k for i in idx for k in self.labels[i]})
        labels = {k: [self.labels[i].get(k) for i in idx] for k in keys}
        return [self.texts[i] for i in idx], [self.token_ids[i] for i in idx], labels


def _jsonl_records(path: str, prompt_key: str) -> list[dict]:
    from trainkit.llm.data import read_raw

    out = []
    for where, obj in read_raw(path):
        if not isinstance(obj, dict):
            raise UserError(f"{where}: expected a JSON object with a '{prompt_key}' field")
        p = obj.get(prompt_key)
        if not isinstance(p, str) or not p.strip():
            raise UserError(f"{where}: field '{prompt_key}' must be a non-empty string")
        out.append({"prompt": p, **{k: v for k, v in obj.items() if k != prompt_key}})
    if not out:
        raise UserError(f"{path}: no prompt records")
    return out


def _task_records(name: str, seed: int) -> tuple[list[dict], list[dict]]:
    """``(train, held_out)`` records of a built-in task of :mod:`trainkit.rlhf.tasks`
    or of the environments' tasks (:data:`trainkit.rlhf.envs.builtin.TASKS`)."""
    from trainkit.rlhf.envs.builtin import TASKS

    if name in TASKS:
        return TASKS[name](seed)
    try:
        from trainkit.rlhf import tasks
    except ImportError:  # pragma: no cover - the tasks module ships with trainkit
        raise UserError(
            f"data.path '{name}' is not a file and no built-in tasks are available"
        ) from None
    return tasks.load_task(name, seed=seed)


def load_prompt_records(data: Any, seed: int = 0) -> tuple[list[dict], list[dict]]:
    """``(train, eval)`` prompt records from ``data`` (the config's data section)."""
    from pathlib import Path

    if Path(data.path).expanduser().exists():
        recs = _jsonl_records(data.path, data.prompt_key)
        if data.eval_path:
            return recs, _jsonl_records(data.eval_path, data.prompt_key)
        import random

        order = list(range(len(recs)))
        random.Random(seed).shuffle(order)
        n_eval = max(1, int(round(len(recs) * data.eval_fraction))) if len(recs) > 1 else 0
        ev = [recs[i] for i in order[:n_eval]]
        tr = [recs[i] for i in order[n_eval:]]
        return tr, ev
    if data.path.endswith((".jsonl", ".json", ".parquet")):
        raise UserError(f"data.path: file not found: {data.path}")
    train, held = _task_records(data.path, seed)
    if data.eval_path:
        held = _jsonl_records(data.eval_path, data.prompt_key)
    return train, held


def tokenize_prompts(records: list[dict], tokenizer: Any, data: Any) -> PromptSet:
    """Apply the chat template (when enabled and present) and tokenise, once."""
    use_chat = data.chat_template and getattr(tokenizer, "chat_template", None)
    texts, ids, labels, skipped = [], [], [], 0
    for r in records:
        if use_chat:
            msgs = (
                [{"role": "system", "content": data.system_prompt}] if data.system_prompt else []
            ) + [{"role": "user", "content": r["prompt"]}]
            s = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            toks = tokenizer(s, add_special_tokens=False).input_ids
        else:
            toks = tokenizer(r["prompt"]).input_ids
        if len(toks) > data.max_prompt_tokens:
            skipped += 1
            continue
        texts.append(r["prompt"])
        ids.append(list(toks))
        labels.append({k: v for k, v in r.items() if k != "prompt"})
    if skipped:
        print(
            f"warning: {skipped} prompts longer than data.max_prompt_tokens="
            f"{data.max_prompt_tokens} skipped",
            file=sys.stderr,
        )
    if not texts:
        raise UserError(
            "no prompts left after tokenisation (all longer than data.max_prompt_tokens?)"
        )
    return PromptSet(texts, ids, labels)


def build_reward(data: Any):
    """The reward callable of the data section (several rewards: weighted sum)."""
    from trainkit.rlhf.rewards import combine, load_reward

    fns = [load_reward(r) for r in data.reward]
    if len(fns) == 1 and not data.reward_weights:
        return fns[0]
    weights = data.reward_weights or [1.0] * len(fns)
    return combine(list(zip(fns, weights)))


def decode(tokenizer: Any, response_ids, action_mask) -> list[str]:
    """Completion texts from ``[B, R]`` ids and mask (special tokens dropped)."""
    rows = [ids[: int(m.sum())].tolist() for ids, m in zip(response_ids, action_mask)]
    return tokenizer.batch_decode(rows, skip_special_tokens=True)


def evaluate(
    engine: Any,
    tokenizer: Any,
    prompts: PromptSet,
    reward_fn: Any,
    acc_fn: Any,
    ev: Any,
    max_new_tokens: int,
    seed: int = 0,
) -> dict[str, float]:
    """Mean reward and exact accuracy on the first ``ev.n_prompts`` held-out prompts.

    Greedy when ``ev.temperature == 0``; otherwise ``ev.samples_per_prompt`` samples per
    prompt with a fixed seed (the same random numbers at every evaluation). Accuracy counts completions whose accuracy
    reward is 1.0. Returns ``eval_reward``, ``eval_accuracy``, ``eval_truncated_frac``.
    """
    from trainkit.rlhf.rewards import score

    n = min(ev.n_prompts, len(prompts))
    k = ev.samples_per_prompt
    rew, acc, trunc = [], [], []
    for s in range(0, n, max(1, ev.batch_size // k)):
        idx = [i for i in range(s, min(n, s + max(1, ev.batch_size // k))) for _ in range(k)]
        texts, ids, labels = prompts.take(idx)
        ro = engine.generate(
            ids,
            n=1,
            max_new_tokens=max_new_tokens,
            temperature=ev.temperature,
            top_p=1.0,
            seed=seed + s,
        )
        comps = decode(tokenizer, ro.response_ids, ro.action_mask)
        rew += score(reward_fn, texts, comps, labels, max_invalid_fraction=1.0).rewards
        if acc_fn is not None:
            acc += [
                float(v == 1.0)
                for v in score(acc_fn, texts, comps, labels, max_invalid_fraction=1.0).rewards
            ]
        trunc += ro.truncated.float().tolist()
    out = {
        "eval_reward": sum(rew) / max(len(rew), 1),
        "eval_truncated_frac": sum(trunc) / max(len(trunc), 1),
    }
    if acc_fn is not None:
        out["eval_accuracy"] = sum(acc) / max(len(acc), 1)
    return out


class Scores(NamedTuple):
    """The scores of one step's completions (``B`` rows; picklable for reward actors).

    Attributes:
        rewards: ``[B]`` rewards (an invalid row holds 0.0).
        valid: ``[B]`` False where the reward raised or was not finite.
        stats: failure counts for the step record (``reward_invalid``, ...).
        hits: ``[B]`` accuracy rewards (``data.accuracy_reward``), or None without one.
    """

    rewards: list[float]
    valid: list[bool]
    stats: dict[str, float]
    hits: list[float] | None


class Scorer:
    """The reward (``data.reward``) and accuracy (``data.accuracy_reward``) functions of
    a run, called on a batch of rows: ``scorer(prompts, completions, labels) -> Scores``.

    Args:
        data: the config's data section.
    """

    def __init__(self, data: Any):
        from trainkit.rlhf.rewards import load_reward

        self.reward_fn = build_reward(data)
        self.acc_fn = load_reward(data.accuracy_reward) if data.accuracy_reward else None
        self.max_invalid_fraction = data.max_invalid_fraction

    def __call__(self, prompts: list[str], completions: list[str], labels: dict) -> Scores:
        from trainkit.rlhf.rewards import score

        res = score(
            self.reward_fn,
            prompts,
            completions,
            labels,
            max_invalid_fraction=self.max_invalid_fraction,
        )
        hits = None
        if self.acc_fn is not None:
            hits = score(self.acc_fn, prompts, completions, labels, max_invalid_fraction=1.0)
            hits = list(hits.rewards)
        return Scores(list(res.rewards), list(res.valid), res.stats(), hits)


class HeldOut:
    """The held-out prompts of a run and their evaluation with any rollout engine
    (the single-process trainer's, or a Ray rollout actor's).

    Args:
        cfg: the RL config (``data``, ``eval``, ``rollout``, ``train.seed``).
        tokenizer: the policy's tokenizer.
    """

    def __init__(self, cfg: Any, tokenizer: Any):
        _, recs = load_prompt_records(cfg.data, cfg.train.seed)
        self.cfg, self.tok = cfg, tokenizer
        self.prompts = tokenize_prompts(recs, tokenizer, cfg.data) if recs else None
        self.records = recs
        self.episodes = None
        if getattr(cfg, "env", None) is not None and cfg.env.name:
            from trainkit.rlhf.trainers.rl_env import EpisodeRunner

            self.episodes = EpisodeRunner(cfg, tokenizer)
        self.scorer = Scorer(cfg.data)

    def __call__(self, engine: Any, seed: int) -> dict[str, float] | None:
        """:func:`evaluate` with the run's settings; None without held-out prompts or
        with ``eval.n_prompts = 0``."""
        ev = self.cfg.eval
        if self.prompts is None or ev.n_prompts == 0:
            return None
        if self.episodes is not None:  # multi-turn: held-out episodes
            return self.episodes.evaluate(engine, self.records, seed)
        tokens = ev.max_new_tokens or self.cfg.rollout.max_new_tokens
        s = self.scorer
        return evaluate(
            engine, self.tok, self.prompts, s.reward_fn, s.acc_fn, ev, tokens, seed=seed
        )


def episode_scores(ep: Any) -> Scores:
    """A step's :class:`~trainkit.rlhf.rollout.episodes.Episodes` as its :class:`Scores`:
    every row valid, ``hits`` 1.0 where the environment said correct (None when it never
    says), the ``env/*`` figures as stats."""
    hits = None
    if any(c is not None for c in ep.correct):
        hits = [1.0 if c else 0.0 for c in ep.correct]
    return Scores(list(ep.rewards), [True] * len(ep.rewards), dict(ep.stats), hits)
