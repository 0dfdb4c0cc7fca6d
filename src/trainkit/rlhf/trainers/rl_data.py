"""Prompts, rewards and evaluation for the online-RL recipes.

A prompt record is ``{"prompt": str | messages, <label>: value, ...}`` (TRL's prompt-only
forms, standard and conversational; OpenRLHF's ``input_key``/``label_key`` select the
fields); every key but the prompt is a label handed to the reward functions (``answer``
for the math rewards), whose ``prompts`` are strings (:func:`prompt_text`). Prompts are
tokenised once, at load time (with the chat template when the tokenizer has one).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, NamedTuple

from trainkit.common.errors import UserError
from trainkit.llm.data_formats import prompt_messages, prompt_text


@dataclass
class PromptSet:
    """Tokenised prompts with their reward texts, labels and the prompts as given (all lists
    of the same length)."""

    texts: list[str]
    token_ids: list[list[int]]
    labels: list[dict[str, Any]]
    prompts: list[Any]  # as given: strings or message lists (environments)

    def __len__(self) -> int:
        return len(self.texts)

    def take(self, idx: list[int]) -> tuple[list[str], list[list[int]], dict[str, list]]:
        """Texts, token ids and per-key label lists of rows ``idx``."""
        keys = sorted({k for i in idx for k in self.labels[i]})
        labels = {k: [self.labels[i].get(k) for i in idx] for k in keys}
        return [self.texts[i] for i in idx], [self.token_ids[i] for i in idx], labels

    def originals(self, idx: list[int]) -> list[Any]:
        """The prompts of rows ``idx`` as given (message lists stay lists)."""
        return [self.prompts[i] for i in idx]


PROMPT_ROLES = ("system", "user", "assistant", "tool")


def prompt_record(obj: Any, where: str, data: Any) -> dict:
    """One prompt record, checked: ``{"prompt": str | messages, <labels>...}``.

    The prompt (field ``data.prompt_key``) is a non-empty string or a list of messages
    whose last one is not an assistant turn. With ``data.label_key`` only that field is
    kept, as ``answer``; otherwise every other field is a label under its own name.
    """
    from trainkit.llm.data_formats import message_list, string_field, tname

    key = data.prompt_key
    if not isinstance(obj, dict):
        raise UserError(f"{where}: expected a JSON object with a '{key}' field")
    if key not in obj:
        raise UserError(f"{where}: missing field '{key}'")
    if isinstance(obj[key], list):
        p: Any = message_list(obj, key, where, PROMPT_ROLES, need_assistant=False)
        if p[-1]["role"] == "assistant":
            raise UserError(
                f"{where}: field '{key}' ends with an assistant turn; a prompt ends with the "
                "turn the policy answers"
            )
    elif isinstance(obj[key], str):
        p = string_field(obj, key, where)
        if not p.strip():
            raise UserError(f"{where}: field '{key}' is blank")
    else:
        raise UserError(
            f"{where}: field '{key}' must be a string or a list of messages, got {tname(obj[key])}"
        )
    if data.label_key:
        if data.label_key not in obj:
            raise UserError(f"{where}: missing field '{data.label_key}' (data.label_key)")
        return {"prompt": p, "answer": obj[data.label_key]}
    return {"prompt": p, **{k: v for k, v in obj.items() if k != key}}


def read_prompt_file(path: str, data: Any) -> list[dict]:
    """Every record of a prompt file (jsonl, json, parquet) through :func:`prompt_record`."""
    from trainkit.llm.data import read_raw

    out = [prompt_record(obj, where, data) for where, obj in read_raw(path)]
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
        recs = read_prompt_file(data.path, data)
        if data.eval_path:
            return recs, read_prompt_file(data.eval_path, data)
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
        held = read_prompt_file(data.eval_path, data)
    return train, held


def check_prompt_records(data: Any, seed: int = 0) -> None:
    """Read every prompt record of the run (raises the one-line :class:`UserError` of the
    first bad one); message-list prompts need ``data.chat_template`` on."""
    train, held = load_prompt_records(data, seed)
    if not data.chat_template:
        for i, r in enumerate(train + held):
            if isinstance(r["prompt"], list):
                raise UserError(
                    f"{data.path}: record {i + 1} has a list of messages as its prompt, which "
                    "needs the chat template (data.chat_template=true)"
                )


def tokenize_prompts(records: list[dict], tokenizer: Any, data: Any) -> PromptSet:
    """Render each prompt once and tokenise it.

    A string prompt goes through the chat template when ``data.chat_template`` is on and
    the tokenizer has one (after ``data.system_prompt``), else through
    ``data.input_template`` (or as it is). A message-list prompt needs the chat template.
    """
    use_chat = data.chat_template and getattr(tokenizer, "chat_template", None)
    texts, prompts, ids, labels, skipped = [], [], [], [], 0
    for i, r in enumerate(records):
        p = r["prompt"]
        if use_chat:
            msgs = prompt_messages(p, data.system_prompt)
            s = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
            toks = tokenizer(s, add_special_tokens=False).input_ids
        elif isinstance(p, list):
            raise UserError(
                f"prompt {i}: a list of messages needs the chat template (data.chat_template="
                "true and a tokenizer with one)"
            )
        else:
            tpl = getattr(data, "input_template", None)
            toks = tokenizer(tpl.replace("{}", p) if tpl else p).input_ids
        if len(toks) > data.max_prompt_tokens:
            skipped += 1
            continue
        texts.append(prompt_text(p))
        prompts.append(p)
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
    return PromptSet(texts, ids, labels, prompts)


def reward_parts(data: Any, reward: Any = None) -> list[tuple[Any, float]]:
    """``[(reward callable, weight), ...]`` of the run: the ``data.reward`` functions and
    the reward models of ``reward.models``."""
    from trainkit.rlhf.rewards import load_reward

    fns = [load_reward(r) for r in data.reward]
    weights = list(data.reward_weights or [1.0] * len(fns))
    if reward is not None and reward.models:
        from trainkit.rlhf.reward_model import ModelReward

        fns += [ModelReward(m) for m in reward.models]
        weights += [m.weight for m in reward.models]
    return list(zip(fns, weights))


def build_reward(parts: list[tuple[Any, float]]):
    """The reward callable of :func:`reward_parts` (several parts: their weighted sum)."""
    from trainkit.rlhf.rewards import combine

    if len(parts) == 1 and parts[0][1] == 1.0:
        return parts[0][0]
    return combine(parts)


def extra_log_stats(parts: list[tuple[Any, float]], n: int) -> dict[str, float]:
    """``reward/<key>``: the batch mean of each numeric ``extra_logs`` entry a remote
    reward returned for all ``n`` rows of its last call (OpenRLHF's reply field)."""
    out: dict[str, float] = {}
    for fn, _ in parts:
        for k, vals in (getattr(fn, "last_extra_logs", None) or {}).items():
            nums = [float(v) for v in vals if isinstance(v, (int, float))]
            if len(vals) == n and len(nums) == n and all(math.isfinite(v) for v in nums):
                out[f"reward/{k}"] = sum(nums) / n
    return out


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
        reward: the config's reward section (``reward.models``), or None.
    """

    def __init__(self, data: Any, reward: Any = None):
        from trainkit.rlhf.rewards import load_reward

        self.parts = reward_parts(data, reward)
        self.reward_fn = build_reward(self.parts)
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
        stats = {**res.stats(), **extra_log_stats(self.parts, len(completions))}
        return Scores(list(res.rewards), list(res.valid), stats, hits)


class HeldOut:
    """The held-out prompts of a run and their evaluation with any rollout engine
    (the single-process trainer's, or a Ray rollout actor's).

    Args:
        cfg: the RL config (``data``, ``eval``, ``rollout``, ``train.seed``).
        tokenizer: the policy's tokenizer.
        scorer: the run's :class:`Scorer`, shared (default: a new one).
    """

    def __init__(self, cfg: Any, tokenizer: Any, scorer: Scorer | None = None):
        _, recs = load_prompt_records(cfg.data, cfg.train.seed)
        self.cfg, self.tok = cfg, tokenizer
        self.prompts = tokenize_prompts(recs, tokenizer, cfg.data) if recs else None
        self.records = recs
        self.episodes = None
        if getattr(cfg, "env", None) is not None and cfg.env.name:
            from trainkit.rlhf.trainers.rl_env import EpisodeRunner

            self.episodes = EpisodeRunner(cfg, tokenizer)
        self.scorer = scorer if scorer is not None else Scorer(cfg.data, cfg.reward)

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
