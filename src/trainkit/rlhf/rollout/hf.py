"""In-process rollout engine on a Hugging Face causal LM (KV-cache decoding).

A small decoding loop instead of ``model.generate``: it samples with a seeded
``torch.Generator`` (same seed, same samples, independent of the global RNG), records
``log_softmax(z / temperature)`` of each sampled token from the very logits it sampled
from (no second forward pass for the "old" log-probs), stops each row at EOS and the
whole batch once every row has stopped, and reports rows cut by ``max_new_tokens``.
``min_new_tokens`` forbids EOS before that many tokens, as ``model.generate``'s
``min_new_tokens`` does (EOS logits set to -inf before sampling); the recorded log-probs
stay those of the model's unmasked distribution, the quantity the trainer recomputes.
The ``n`` samples of a prompt share one prefill (its KV cache is repeated ``n`` times).
Prompts are left padded; position ids are ``cumsum(mask) - 1`` as in training
(:func:`trainkit.rlhf.rollout.base.response_logps`).

With a PEFT LoRA model, ``merge_lora=True`` folds the adapters into the base weights
for the duration of generation (one ``W + s B A`` per layer, undone afterwards), which
removes the adapter matmuls from every decoding step; the base weights are restored
bit-exactly afterwards from a transient copy.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

import torch

from trainkit.rlhf.rollout.base import Rollout, pad_left, position_ids

Tensor = torch.Tensor


def sample_top_p(probs: Tensor, top_p: float, generator: torch.Generator | None) -> Tensor:
    """Sample one token per row from ``probs`` ``[B, V]`` restricted to the top-p nucleus.

    Nucleus sampling (Holtzman et al. 2020): keep the smallest set of most likely tokens
    whose cumulative probability reaches ``top_p``; renormalise; sample. Returns ``[B]``.
    """
    if top_p >= 1.0:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    sp, si = probs.sort(dim=-1, descending=True)
    keep = (sp.cumsum(-1) - sp) < top_p  # the first token is always kept
    sp = torch.where(keep, sp, torch.zeros((), dtype=sp.dtype))
    pick = torch.multinomial(sp, 1, generator=generator)
    return si.gather(-1, pick).squeeze(-1)


def _cache_kwarg(model: Any) -> str:
    """``"cache"`` (transformers >= 5.2x) or ``"past_key_values"`` (older releases)."""
    import inspect

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    params = inspect.signature(base.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _cache_of(out: Any) -> Any:
    cache = getattr(out, "cache", None)
    return cache if cache is not None else out.past_key_values


class HFEngine:
    """Rollout engine around a (PEFT) causal LM; usually the trainer's own policy object.

    Args:
        model: the policy; shared with the trainer in single-process runs (no copy).
        pad_id: padding token id.
        eos_ids: token id(s) that end a completion.
        max_batch: generate at most this many rows at once (``None``: all).
        merge_lora: fold LoRA adapters into the weights while generating.
    """

    def __init__(
        self,
        model: Any,
        pad_id: int,
        eos_ids: int | list[int],
        max_batch: int | None = None,
        merge_lora: bool = False,
    ):
        self.model = model
        self.pad_id = int(pad_id)
        self.eos_ids = [int(eos_ids)] if isinstance(eos_ids, int) else [int(e) for e in eos_ids]
        self.max_batch = max_batch
        self.merge_lora = merge_lora
        self._cache_kw = _cache_kwarg(model)

    # ---------------------------------------------------------------- weights
    def update_weights(self, state_dict: dict[str, Tensor]) -> None:
        """Copy ``state_dict`` into the engine's model (names as in its ``state_dict``).

        A no-op call is cheap when the engine shares the trainer's model; a separate
        engine (another process, a Ray actor) gets the new weights this way.
        """
        own = self.model.state_dict()
        missing = [k for k in state_dict if k not in own]
        if missing:
            raise KeyError(f"update_weights: unknown parameter names, e.g. {missing[:3]}")
        with torch.no_grad():
            for k, v in state_dict.items():
                if own[k].data_ptr() != v.data_ptr():
                    own[k].copy_(v)

    @contextlib.contextmanager
    def _generation_mode(self):
        model = self.model
        was_training = model.training
        stash: list[tuple[Tensor, Tensor]] = []
        model.eval()
        try:
            if (
                self.merge_lora
                and hasattr(model, "merge_adapter")
                and hasattr(model, "peft_config")
            ):
                # keep the exact base weights: W + BA - BA is not W in floating point, and
                # the drift would accumulate over thousands of steps
                stash = [
                    (m.base_layer.weight, m.base_layer.weight.detach().clone())
                    for m in model.modules()
                    if hasattr(m, "base_layer") and hasattr(m, "lora_A")
                ]
                model.merge_adapter()
            yield
        finally:
            if stash:
                model.unmerge_adapter()
                with torch.no_grad():
                    for w, saved in stash:
                        w.copy_(saved)
            if was_training:
                model.train()

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def _decode(
        self,
        ids: Tensor,
        mask: Tensor,
        max_new_tokens: int,
        temperature: float,
        top_p: float,
        generator: torch.Generator | None,
        group: int = 1,
        min_new_tokens: int = 0,
    ) -> tuple[Tensor, Tensor, Tensor]:
        """KV-cache decoding of one chunk: ``[b, P]`` -> response ids, logps, done ``[b, R]``.

        With ``group > 1`` (rows ``g*group ..`` share a prompt) each prompt is prefilled
        once and its KV cache repeated ``group`` times. EOS cannot be sampled at steps
        ``t < min_new_tokens``.
        """
        from trainkit.rlhf.rollout.base import repeat_kv_cache

        dev = next(self.model.parameters()).device
        ids, mask = ids.to(dev), mask.to(dev)
        b = ids.shape[0]
        eos = torch.tensor(self.eos_ids, device=dev)
        past = None
        if group > 1 and b % group == 0:
            u_mask = mask[::group]
            out = self.model(
                input_ids=ids[::group],
                attention_mask=u_mask,
                position_ids=position_ids(u_mask),
                use_cache=True,
                logits_to_keep=1,
            )
            past = _cache_of(out)
            if past is not None and repeat_kv_cache(past, group):
                logits = out.logits[:, -1, :].repeat_interleave(group, dim=0)
            else:
                past = None
        if past is None:
            out = self.model(
                input_ids=ids,
                attention_mask=mask,
                position_ids=position_ids(mask),
                use_cache=True,
                logits_to_keep=1,
            )
            past, logits = _cache_of(out), out.logits[:, -1, :]
        pos = mask.sum(-1, keepdim=True) - 1  # [b, 1] position of the last prompt token
        finished = torch.zeros(b, dtype=torch.bool, device=dev)
        toks, lps, valid = [], [], []
        for t in range(max_new_tokens):
            z = logits.float()
            # before min_new_tokens EOS is masked for the choice only (as HF's min-length
            # processor); the log-probs below stay those of the unmasked policy
            zs = z.index_fill(-1, eos, float("-inf")) if t < min_new_tokens else z
            if temperature > 0:
                logp_all = torch.log_softmax(z / temperature, dim=-1)
                probs = logp_all.exp() if zs is z else torch.softmax(zs / temperature, dim=-1)
                tok = sample_top_p(probs, top_p, generator)
            else:  # greedy; log-probs at temperature 1
                logp_all = torch.log_softmax(z, dim=-1)
                tok = zs.argmax(-1)
            lp = logp_all.gather(-1, tok[:, None]).squeeze(-1)
            alive = ~finished
            tok = torch.where(alive, tok, torch.full_like(tok, self.pad_id))
            toks.append(tok)
            lps.append(torch.where(alive, lp, torch.zeros_like(lp)))
            valid.append(alive)
            finished = finished | torch.isin(tok, eos)
            if bool(finished.all()) or t == max_new_tokens - 1:
                break
            mask = torch.cat([mask, alive.long()[:, None]], dim=1)
            pos = pos + 1
            out = self.model(
                input_ids=tok[:, None],
                attention_mask=mask,
                position_ids=pos,
                use_cache=True,
                **{self._cache_kw: past},
            )
            past, logits = _cache_of(out), out.logits[:, -1, :]
        return torch.stack(toks, 1), torch.stack(lps, 1), torch.stack(valid, 1)

    def generate(
        self,
        prompt_token_ids: list[list[int]],
        n: int = 1,
        max_new_tokens: int = 64,
        temperature: float = 1.0,
        top_p: float = 1.0,
        seed: int | None = None,
        min_new_tokens: int = 0,
    ) -> Rollout:
        """Sample ``n`` completions per prompt (rows ``i*n .. i*n+n-1`` belong to prompt i).

        Args:
            prompt_token_ids: ``n_prompts`` lists of token ids (no padding).
            n: samples per prompt.
            max_new_tokens: cut completions at this length (counted as truncated).
            temperature: softmax temperature; 0 means greedy.
            top_p: nucleus mass in ``(0, 1]``.
            seed: seeds the sampling generator (same seed, same weights -> same samples).
            min_new_tokens: no EOS before this many tokens; ``>= max_new_tokens`` makes
                every completion exactly ``max_new_tokens`` long.

        Returns:
            A :class:`Rollout` with ``B = n_prompts * n`` rows.
        """
        if max_new_tokens < 1 or min_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 1 and min_new_tokens >= 0")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        t0 = time.perf_counter()
        rows = [p for p in prompt_token_ids for _ in range(n)]
        ids, mask = pad_left(rows, self.pad_id)
        dev = next(self.model.parameters()).device
        gen = torch.Generator(device=dev)
        gen.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, ()).item()))
        step = self.max_batch or len(rows)
        if step % n == 0:  # whole groups per chunk: prefill each prompt once
            group = n
        else:
            group = 1
        chunks = []
        with self._generation_mode():
            for s in range(0, len(rows), step):
                chunks.append(
                    self._decode(
                        ids[s : s + step],
                        mask[s : s + step],
                        max_new_tokens,
                        temperature,
                        top_p,
                        gen,
                        group,
                        min_new_tokens,
                    )
                )
        width = max(c[0].shape[1] for c in chunks)

        def cat(i: int, fill) -> Tensor:
            return torch.cat(
                [
                    torch.nn.functional.pad(c[i], (0, width - c[i].shape[1]), value=fill)
                    for c in chunks
                ]
            ).cpu()

        resp, logps, valid = cat(0, self.pad_id), cat(1, 0.0), cat(2, False)
        eos = torch.tensor(self.eos_ids)
        has_eos = (torch.isin(resp, eos) & valid).any(-1)
        truncated = ~has_eos & (valid.sum(-1) >= max_new_tokens)
        info = {"gen_s": time.perf_counter() - t0, "gen_tokens": int(valid.sum())}
        return Rollout(ids, mask, resp, valid.long(), logps, truncated, n, info)
