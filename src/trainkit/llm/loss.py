"""Token-level cross-entropy computed in chunks, so ``[seq, vocab]`` logits never exist.

For hidden states ``h: [N, H]``, output weight ``W: [V, H]`` and targets ``y: [N]``
(``-100`` = no loss), the loss sum is

    L = sum_{i: y_i != -100} ( logsumexp_v (h_i . W_v) - h_i . W_{y_i} )

and its gradients are ``dL/dz_i = softmax(z_i) - onehot(y_i)`` for the logits
``z_i = W h_i``, so ``dL/dh_i = (dL/dz_i) W`` and ``dL/dW = sum_i (dL/dz_i)^T h_i``.
:class:`ChunkedCrossEntropy` walks over ``chunk_size`` rows at a time, computes the loss
and both gradients of a chunk in the forward pass and keeps only ``dL/dh: [N, H]`` and
``dL/dW: [V, H]`` for backward (the fused "linear + cross-entropy" idea of Liger-Kernel and
of Wijmans et al. 2024, "Cut Your Losses in Large-Vocabulary Language Models"). Peak extra
memory is a few ``[chunk, V]`` float32 buffers instead of several ``[N, V]`` ones.

The loss is returned as a sum with the count of target tokens, so a trainer normalises by
the total token count of all micro-batches and ranks of one optimizer step.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

IGNORE_INDEX = -100


def plain_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference: full logits ``[N, V]``, then ``F.cross_entropy(reduction="sum")``.

    Args:
        hidden: ``[N, H]``; weight: ``[V, H]``; targets: ``[N]`` long.

    Returns:
        ``(loss_sum, n_tokens)``: float32 scalar and long scalar.
    """
    logits = (hidden @ weight.t()).float()  # [N, V]
    loss = F.cross_entropy(logits, targets, ignore_index=ignore_index, reduction="sum")
    return loss, (targets != ignore_index).sum()


def _chunk_stats(h: torch.Tensor, weight: torch.Tensor, y: torch.Tensor, ignore_index: int):
    """Logits, log-sum-exp and loss sum of one chunk. h: [C, H], y: [C]."""
    logits = (h @ weight.t()).float()  # [C, V]
    lse = torch.logsumexp(logits, dim=-1)  # [C]
    valid = y != ignore_index
    safe_y = torch.where(valid, y, torch.zeros_like(y))
    target_logit = logits.gather(1, safe_y[:, None]).squeeze(1)  # [C]
    loss = ((lse - target_logit) * valid).sum()
    return logits, lse, valid, safe_y, loss


class ChunkedCrossEntropy(torch.autograd.Function):
    """Autograd function: ``(hidden [N, H], weight [V, H], targets [N]) -> loss sum``."""

    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_size, ignore_index):
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        ctx.weight_dtype = weight.dtype
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = (
            torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        )
        for s in range(0, hidden.shape[0], chunk_size):
            h, y = hidden[s : s + chunk_size], targets[s : s + chunk_size]
            logits, lse, valid, safe_y, loss = _chunk_stats(h, weight, y, ignore_index)
            total += loss
            if need_h or need_w:
                # dL/dz = softmax(z) - onehot(y), zero on ignored rows; in place on logits
                g = logits.sub_(lse[:, None]).exp_()
                g.scatter_add_(1, safe_y[:, None], -torch.ones_like(lse[:, None]))
                g.mul_(valid[:, None])
                g = g.to(hidden.dtype)
                if need_h:
                    grad_h[s : s + chunk_size] = g @ weight  # [C, H]
                if need_w:
                    grad_w.addmm_(g.t().float(), h.float())  # [V, H]
            del logits
        ctx.save_for_backward(grad_h if need_h else None, grad_w if need_w else None)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w = ctx.saved_tensors
        gh = grad_h * grad_out.to(grad_h.dtype) if grad_h is not None else None
        gw = (grad_w * grad_out).to(ctx.weight_dtype) if grad_w is not None else None
        return gh, gw, None, None, None


def chunked_cross_entropy(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    chunk_size: int = 1024,
    ignore_index: int = IGNORE_INDEX,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cross-entropy sum over ``N`` rows without materialising ``[N, V]`` logits.

    Args:
        hidden: ``[N, H]`` (or ``[..., H]``, flattened) final hidden states.
        weight: ``[V, H]`` output projection (``lm_head.weight``).
        targets: ``[N]`` (or ``[...]``) target ids, ``ignore_index`` where no loss.
        chunk_size: rows per chunk; peak memory ~ ``3 * chunk_size * V * 4`` bytes.

    Returns:
        ``(loss_sum, n_tokens)``; equals :func:`plain_cross_entropy` (float32 maths).
    """
    hidden = hidden.reshape(-1, hidden.shape[-1])
    targets = targets.reshape(-1)
    n_tokens = (targets != ignore_index).sum()
    if not (torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad)):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk_size):
            total += _chunk_stats(
                hidden[s : s + chunk_size], weight, targets[s : s + chunk_size], ignore_index
            )[-1]
        return total, n_tokens
    loss = ChunkedCrossEntropy.apply(hidden, weight, targets, int(chunk_size), ignore_index)
    return loss, n_tokens


def shift_targets(labels: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """Next-token targets: ``out[:, t] = labels[:, t + 1]``, last column ignored. [B, T]."""
    out = torch.full_like(labels, ignore_index)
    out[:, :-1] = labels[:, 1:]
    return out


class CausalLMLoss(nn.Module):
    """Wrap a transformers causal LM so ``forward`` returns ``(loss_sum, n_tokens)``.

    The decoder runs as usual; the LM head is applied chunk-wise by
    :func:`chunked_cross_entropy` (``chunk_size=0`` uses the plain full-logits loss).
    Being one module, it is what a strategy wraps (FSDP2 puts the embedding, final norm
    and head in the root group, so they are gathered around this forward).

    Args:
        model: a ``*ForCausalLM`` or a ``peft.PeftModel`` around one.
    """

    def __init__(self, model: nn.Module, chunk_size: int = 1024):
        super().__init__()
        self.model = model
        self.chunk_size = chunk_size

    def _parts(self):
        base = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        return base.get_decoder(), base.get_output_embeddings()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        **_: object,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``input_ids, labels: [B, T]`` (labels unshifted, ``-100`` = no loss)."""
        decoder, head = self._parts()
        out = decoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=False,
        )
        hidden = out.last_hidden_state  # [B, T, H]
        targets = shift_targets(labels if labels is not None else input_ids)
        if attention_mask is not None and labels is None:
            targets = targets.masked_fill(shift_targets(attention_mask, 0) == 0, IGNORE_INDEX)
        weight = head.weight
        if self.chunk_size and self.chunk_size > 0:
            return chunked_cross_entropy(hidden, weight, targets, self.chunk_size)
        return plain_cross_entropy(
            hidden.reshape(-1, hidden.shape[-1]), weight, targets.reshape(-1)
        )
