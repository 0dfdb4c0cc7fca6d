"""The rollout engine interface and the shared log-prob recomputation.

Layout of a batch of ``B = n_prompts * n`` samples (the ``n`` samples of a prompt are
consecutive, so ``[n_prompts, n]`` reshapes give the groups of GRPO/RLOO):

* ``prompt_ids`` ``[B, P]``: prompts, **left** padded with ``pad_id``;
* ``response_ids`` ``[B, R]``: completions, **right** padded; the EOS token, when the
  policy emitted one, is part of the response (it is an action);
* ``sequences = cat(prompt_ids, response_ids)`` ``[B, T = P + R]`` with
  ``attention_mask`` ``[B, T]`` (1 on real tokens) and ``action_mask`` ``[B, R]``
  (1 on response tokens up to and including EOS);
* multi-turn episodes (:mod:`trainkit.rlhf.rollout.episodes`): the response is the whole
  episode after the first prompt, the policy's turns and the observations between them;
  ``response_mask`` ``[B, R]`` is 1 on all its real tokens and ``action_mask`` only on the
  policy's (an action mask with holes: observations get no loss, KL or entropy);
* ``logprobs`` ``[B, R]``: ``log softmax(z / temperature)[y]`` of each sampled token,
  0 where ``action_mask`` is 0. This is the sampling distribution *before* top-p
  truncation, the same quantity :func:`response_logps` recomputes, so the PPO ratio is
  exactly 1 at the first update when nothing changed.

Position ids are ``cumsum(attention_mask) - 1`` everywhere (generation and training),
so a left-padded prompt sees the same positions as an unpadded one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch

Tensor = torch.Tensor


@dataclass
class Rollout:
    """A batch of sampled completions (see the module docstring for the layout).

    Attributes:
        prompt_ids: ``[B, P]`` left-padded prompt tokens.
        prompt_mask: ``[B, P]`` 1 on real prompt tokens.
        response_ids: ``[B, R]`` right-padded completions.
        action_mask: ``[B, R]`` 1 on generated tokens up to and including EOS.
        logprobs: ``[B, R]`` float32 log-probs of the sampled tokens (0 on padding).
        truncated: ``[B]`` bool, True where the completion hit ``max_new_tokens``
            without emitting EOS.
        n: samples per prompt.
        info: engine timings and counters (``gen_s``, ``gen_tokens``).
        response_mask: ``[B, R]`` 1 on every real response token, observations
            included; None: equal to ``action_mask`` (single-turn).
    """

    prompt_ids: Tensor
    prompt_mask: Tensor
    response_ids: Tensor
    action_mask: Tensor
    logprobs: Tensor
    truncated: Tensor
    n: int = 1
    info: dict[str, Any] = field(default_factory=dict)
    response_mask: Tensor | None = None

    @property
    def sequences(self) -> Tensor:
        """``[B, P + R]`` prompt then response token ids."""
        return torch.cat([self.prompt_ids, self.response_ids], dim=1)

    @property
    def attention_mask(self) -> Tensor:
        """``[B, P + R]`` 1 on real tokens (prompt and valid response)."""
        resp = self.action_mask if self.response_mask is None else self.response_mask
        return torch.cat([self.prompt_mask, resp.to(self.prompt_mask.dtype)], dim=1).long()

    @property
    def num_truncated(self) -> int:
        return int(self.truncated.sum())

    @property
    def truncated_frac(self) -> float:
        return float(self.truncated.float().mean()) if self.truncated.numel() else 0.0

    @property
    def response_lengths(self) -> Tensor:
        """``[B]`` number of valid response tokens."""
        return self.action_mask.sum(-1)

    def select(self, idx: Tensor) -> Rollout:
        """The rows ``idx`` (``[k]`` long) of every per-sample tensor."""
        return Rollout(
            self.prompt_ids[idx],
            self.prompt_mask[idx],
            self.response_ids[idx],
            self.action_mask[idx],
            self.logprobs[idx],
            self.truncated[idx],
            self.n,
            dict(self.info),
            None if self.response_mask is None else self.response_mask[idx],
        )


@runtime_checkable
class RolloutEngine(Protocol):
    """What the trainer needs from a rollout engine (HF now; Ray/vLLM later)."""

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        n: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        min_new_tokens: int = 0,
    ) -> Rollout:
        """Sample ``n`` completions of every prompt (no EOS before ``min_new_tokens``)."""
        ...

    def update_weights(self, state_dict: dict[str, Tensor]) -> None:
        """Load new policy weights (a no-op when the engine shares the trainer's model)."""
        ...


def pad_left(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Left-pad token lists. Returns ``(ids [B, P], mask [B, P])``, ``P = max len``."""
    if not seqs or any(len(s) == 0 for s in seqs):
        raise ValueError("every prompt needs at least one token")
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, width - len(s) :] = torch.tensor(s, dtype=torch.long)
        mask[i, width - len(s) :] = 1
    return ids, mask


def position_ids(attention_mask: Tensor) -> Tensor:
    """``cumsum(mask) - 1`` clamped at 0: ``[B, T]`` -> ``[B, T]``."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def response_logps(
    model: Any,
    sequences: Tensor,
    attention_mask: Tensor,
    n_response: int,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """Recompute log-probs of the last ``n_response`` tokens of ``sequences``.

    One forward pass; the LM head runs only on the ``R + 1`` last positions
    (``logits_to_keep``), and ``logits[:, P - 1 + t]`` scores response token ``t``.
    ``log pi(y_t) = log_softmax(z_t / temperature)[y_t]``.

    Args:
        model: a causal LM (HF or PEFT) returning ``.logits``.
        sequences: ``[B, T]`` prompt + response ids.
        attention_mask: ``[B, T]``.
        n_response: ``R``.
        temperature: the sampling temperature the rollout used.
        return_entropy: also return the per-token entropy ``[B, R]``.

    Returns:
        ``(logps [B, R], entropy [B, R] or None)``; values on padding are meaningless
        (callers mask them).
    """
    from trainkit.rlhf.losses import entropy_from_logits, token_logps

    out = model(
        input_ids=sequences,
        attention_mask=attention_mask,
        position_ids=position_ids(attention_mask),
        use_cache=False,
        logits_to_keep=n_response + 1,
    )
    logits = out.logits[:, :-1, :]
    if temperature != 1.0:
        logits = logits / temperature
    labels = sequences[:, -n_response:]
    logps = token_logps(logits, labels)
    ent = entropy_from_logits(logits) if return_entropy else None
    return logps, ent


def repeat_kv_cache(cache: Any, repeats: int) -> bool:
    """Repeat every row of a transformers KV cache ``repeats`` times in place (``[b, ...]``
    -> ``[b * repeats, ...]``, row ``r`` becoming rows ``r*repeats .. r*repeats+repeats-1``),
    so ``n`` samples of one prompt share its prefill. False, cache untouched, when the cache
    type has no ``batch_repeat_interleave``."""
    layers = getattr(cache, "layers", None)
    if layers is None or not all(hasattr(la, "batch_repeat_interleave") for la in layers):
        return False
    for la in layers:
        la.batch_repeat_interleave(repeats)
    return True


def shared_prefix_logps(
    model: Any,
    prompt_ids: Tensor,
    prompt_mask: Tensor,
    response_ids: Tensor,
    action_mask: Tensor,
    group: int,
    temperature: float = 1.0,
    return_entropy: bool = False,
) -> tuple[Tensor, Tensor | None] | None:
    """:func:`response_logps` with each group's prompt encoded once, not ``group`` times.

    GRPO/RLOO sample ``n`` completions of one prompt; rows ``g*n .. g*n+n-1`` share
    their (left-padded) prompt. The prompt runs through the model once per group, with
    gradients, and its KV cache is repeated ``n`` times for the responses, so the body
    of the model processes ``P + n R`` tokens per group instead of ``n (P + R)``. The
    result equals the full forward pass up to float rounding; the gradient flows into
    the prompt positions through the shared cache.

    Args:
        model: causal LM (HF or PEFT) that returns a KV cache.
        prompt_ids: ``[B, P]`` left padded; equal within each group of ``group`` rows.
        prompt_mask: ``[B, P]``.
        response_ids: ``[B, R]``.
        action_mask: ``[B, R]`` 1 on every real response token (the response's
            attention mask: with holes in the actions, the observations are real tokens).
        group: rows per group (``B % group == 0``).
        temperature: sampling temperature.
        return_entropy: also return ``[B, R]`` entropies.

    Returns:
        ``(logps [B, R], entropy or None)``, or ``None`` when the model's cache cannot be
        shared (the caller then uses :func:`response_logps`).
    """
    from trainkit.rlhf.losses import entropy_from_logits, token_logps

    B, R = response_ids.shape
    if group < 2 or B % group:
        return None
    u_ids, u_mask = prompt_ids[::group], prompt_mask[::group]
    out = model(
        input_ids=u_ids,
        attention_mask=u_mask,
        position_ids=position_ids(u_mask),
        use_cache=True,
        logits_to_keep=1,
    )
    cache = getattr(out, "cache", None)
    cache = cache if cache is not None else getattr(out, "past_key_values", None)
    if cache is None or not repeat_kv_cache(cache, group):
        return None
    first = out.logits[:, -1:, :].repeat_interleave(group, dim=0)  # [B, 1, V] scores token 0
    full_mask = torch.cat([prompt_mask, action_mask.to(prompt_mask.dtype)], dim=1)
    pos = position_ids(full_mask)[:, prompt_ids.shape[1] :]
    kw = {_cache_kw(model): cache}
    logits = first
    if R > 1:
        out2 = model(
            input_ids=response_ids[:, :-1],
            attention_mask=full_mask[:, :-1],
            position_ids=pos[:, :-1],
            use_cache=True,
            **kw,
        )
        logits = torch.cat([first, out2.logits], dim=1)  # [B, R, V]
    if temperature != 1.0:
        logits = logits / temperature
    logps = token_logps(logits, response_ids)
    ent = entropy_from_logits(logits) if return_entropy else None
    return logps, ent


def _cache_kw(model: Any) -> str:
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"
