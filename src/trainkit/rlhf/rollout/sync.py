"""Policy weights in the form a rollout engine loads: HF checkpoint names, LoRA merged.

A trainer's policy may be a plain ``transformers`` model or a PEFT LoRA model whose
parameter names carry ``base_model.model.`` prefixes, ``.base_layer.`` infixes and
separate ``lora_A``/``lora_B`` matrices. A rollout engine (vLLM, another process, a Ray
actor) wants the *merged* weights under the original checkpoint names, so
:func:`hf_weights` yields, per linear layer with an adapter,

    ``W' = W + s * B @ A``   (``s = lora_alpha / r``; peft's ``get_delta_weight``)

without touching the trainer's model (no ``merge_adapter``/``unmerge_adapter`` round
trip that would round the base weights twice in bf16). Known pain point this avoids:
LoRA + vLLM weight sync breaking on adapter names (PAPERS.md section 2).

The functions are pure with respect to the model: nothing is modified.
:class:`WeightChannel` moves such weights between processes over a private gloo group
(the Ray trainer's ``ray.weight_sync=broadcast``).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

from trainkit.common.errors import UserError

Tensor = torch.Tensor
NamedTensors = Iterable[tuple[str, Tensor]]


def is_peft(model: Any) -> bool:
    """True for a ``peft.PeftModel`` (it has ``peft_config`` and ``get_base_model``)."""
    return hasattr(model, "peft_config") and hasattr(model, "get_base_model")


def _lora_modules(base: torch.nn.Module) -> dict[str, Any]:
    """``{module name: peft LoraLayer}`` for every module that wraps a base layer."""
    return {
        name: m
        for name, m in base.named_modules()
        if hasattr(m, "lora_A") and hasattr(m, "base_layer")
    }


def _is_quantized(weight: Tensor) -> bool:
    return type(weight).__name__ in ("Params4bit", "Int8Params") or weight.dtype in (
        torch.uint8,
        torch.int8,
    )


def hf_weights(
    model: Any, dtype: torch.dtype | None = None, device: str | torch.device | None = None
) -> Iterator[tuple[str, Tensor]]:
    """Yield ``(checkpoint name, tensor)`` for every parameter of ``model``, LoRA merged.

    Tied parameters are yielded once (under the first name, e.g. ``embed_tokens``), as
    ``named_parameters`` does; engines that tie the LM head skip ``lm_head`` anyway.
    Buffers are not yielded (rotary tables are derived from the config).

    Args:
        model: an HF causal LM or a PEFT model wrapping one (active adapter merged;
            ``modules_to_save`` copies replace the originals).
        dtype: cast every tensor to this dtype (default: keep).
        device: move every tensor there (default: keep).

    Yields:
        Detached tensors; merged LoRA weights are new tensors, others are views of the
        live parameters (copy them if the model will change before they are consumed).

    Raises:
        UserError: the base weights are bitsandbytes-quantised (cannot be merged
            exactly; sync a dequantised copy instead).
    """
    peft = is_peft(model)
    base = model.get_base_model() if peft else model
    adapter = None
    if peft:
        adapter = model.active_adapter
        if isinstance(adapter, (list, tuple)):
            adapter = adapter[0]
    loras = _lora_modules(base) if peft else {}
    for name, p in base.named_parameters():
        if ".lora_" in name or ".original_module." in name or "lora_embedding" in name:
            continue
        out_name = name
        t = p.detach()
        if ".modules_to_save." in name:
            pre, _, post = name.partition(".modules_to_save.")
            ad, _, rest = post.partition(".")
            if ad != adapter:
                continue
            out_name = f"{pre}.{rest}"
        elif ".base_layer." in name:
            mod_name, _, pname = name.partition(".base_layer.")
            out_name = f"{mod_name}.{pname}"
            mod = loras.get(mod_name)
            if mod is not None and pname == "weight" and adapter in getattr(mod, "lora_A", {}):
                if _is_quantized(p):
                    raise UserError(
                        f"cannot merge LoRA into quantised weight {out_name}: "
                        "weight sync needs an unquantised base model"
                    )
                with torch.no_grad():
                    delta = mod.get_delta_weight(adapter)
                    t = t + delta.to(t.dtype)
        elif _is_quantized(p):
            raise UserError(
                f"cannot sync quantised weight {name}: weight sync needs an unquantised base model"
            )
        if dtype is not None or device is not None:
            t = t.to(device=device or t.device, dtype=dtype or t.dtype)
        yield out_name, t


def merged_state_dict(
    model: Any, dtype: torch.dtype | None = None, device: str | torch.device | None = None
) -> dict[str, Tensor]:
    """:func:`hf_weights` as a dict of *copies* (safe to ship while training goes on)."""
    return {k: v.clone() for k, v in hf_weights(model, dtype=dtype, device=device)}


def as_named_tensors(weights: Any) -> NamedTensors:
    """Normalise what ``update_weights`` accepts to an iterable of ``(name, tensor)``.

    Accepts a mapping ``{name: tensor}``, an iterable of pairs, or a model (whose
    :func:`hf_weights` are taken).
    """
    if isinstance(weights, torch.nn.Module):
        return hf_weights(weights)
    if isinstance(weights, Mapping):
        return ((k, v.detach()) for k, v in weights.items())
    return weights


def weights_fingerprint(weights: NamedTensors) -> float:
    """A cheap scalar summary (sum of ``|x|`` means) to check two copies agree."""
    return float(sum(float(t.float().abs().mean()) for _, t in weights))


class WeightChannel:
    """A private gloo process group that broadcasts weights from a trainer to engines.

    Rank 0 is the trainer (it hosts the ``TCPStore``), ranks ``1..k`` the engines. The
    group is built directly (``ProcessGroupGloo(store, rank, size)``), not through
    ``init_process_group``, so it coexists with a default group that an engine (vLLM
    initialises its own) or a trainer may already have. Every rank must construct it at
    the same time (rendezvous) and take part in every transfer in the same order.

    Args:
        host: address of rank 0, reachable from every rank.
        port: a free TCP port on ``host``.
        rank: this process's rank.
        world_size: ``1 + number of engines``.
        timeout_s: rendezvous and per-transfer timeout (a dead peer fails the others
            after this long).
    """

    def __init__(self, host: str, port: int, rank: int, world_size: int, timeout_s: float = 300.0):
        import datetime

        dist = torch.distributed
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.world_size = int(rank), int(world_size)
        self.store = dist.TCPStore(
            host, int(port), self.world_size, is_master=self.rank == 0, timeout=timeout
        )
        self.pg = dist.ProcessGroupGloo(self.store, self.rank, self.world_size, timeout)

    @staticmethod
    def describe(weights: NamedTensors) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """``(name, shape, dtype)`` of each tensor: what receivers allocate."""
        return [(n, tuple(t.shape), t.dtype) for n, t in weights]

    def send(self, weights: NamedTensors) -> int:
        """Rank 0: broadcast every tensor in order; returns the bytes sent."""
        sent = 0
        for _, t in weights:
            t = t.detach().to("cpu").contiguous()
            self.pg.broadcast(t, 0).wait()
            sent += t.numel() * t.element_size()
        return sent

    def receive(
        self, meta: list[tuple[str, tuple[int, ...], torch.dtype]]
    ) -> Iterator[tuple[str, Tensor]]:
        """Ranks > 0: yield ``(name, tensor)`` as each broadcast arrives (consume them all)."""
        for name, shape, dtype in meta:
            buf = torch.empty(shape, dtype=dtype)
            self.pg.broadcast(buf, 0).wait()
            yield name, buf
