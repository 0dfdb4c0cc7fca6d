"""Policy weights in the form a rollout engine loads: HF checkpoint names, LoRA merged.

A trainer's policy may be a plain ``transformers`` model or a PEFT LoRA model whose
parameter names carry ``base_model.model.`` prefixes, ``.base_layer.`` infixes and
separate ``lora_A``/``lora_B`` matrices. A rollout engine (vLLM, another process, a Ray
actor) wants the *merged* weights under the original checkpoint names, so
:func:`hf_weights` yields, per linear layer with an adapter,

    ``W' = W + s * B @ A``   (``s = lora_alpha / r``; peft's ``get_delta_weight``)

without touching the trainer's model (no ``merge_adapter``/``unmerge_adapter`` round
trip that would round the base weights twice in bf16). Known pain point this avoids:
LoRA + vLLM weight sync breaking on adapter names (docs/papers.md, OpenRLHF).

The functions are pure with respect to the model: nothing is modified.
:class:`WeightChannel` moves such weights between processes over a private process group
(the Ray trainer's ``ray.weight_sync=broadcast``): gloo through CPU memory, or NCCL
GPU to GPU when every rank holds its own CUDA device (:func:`choose_backend`).
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


BACKENDS = ("auto", "gloo", "nccl")

# what a rank reports for the backend choice: (device type, NCCL usable here, device key)
# where the key names the physical GPU ("<node>/<gpu uuid>") and is None off CUDA
RankDevice = tuple[str, bool, str | None]


def nccl_usable() -> bool:
    """True when this process can build an NCCL group (torch built with NCCL, a GPU)."""
    dist = torch.distributed
    return bool(dist.is_available() and dist.is_nccl_available() and torch.cuda.is_available())


def rank_device(device: str | torch.device, node: str = "") -> RankDevice:
    """This rank's entry for :func:`choose_backend`: its tensors' device type, whether
    NCCL is usable, and (on CUDA) ``"<node>/<uuid>"`` of the physical GPU, so two ranks
    that share one GPU (fractional Ray GPUs, ``ray.colocate``) are recognised."""
    dev = torch.device(device)
    if dev.type != "cuda":
        return dev.type, nccl_usable(), None
    props = torch.cuda.get_device_properties(dev)
    return "cuda", nccl_usable(), f"{node}/{getattr(props, 'uuid', dev.index or 0)}"


def choose_backend(requested: str, ranks: list[RankDevice]) -> str:
    """The weight channel's backend, the same decision on every rank (pure).

    ``auto`` picks ``nccl`` when every rank's tensors are on CUDA, every rank can use
    NCCL and no two ranks share a physical GPU (NCCL refuses two ranks on one device);
    otherwise ``gloo``. An explicit ``nccl`` that cannot work is a one-line error.

    Args:
        requested: ``auto``, ``gloo`` or ``nccl``.
        ranks: one :func:`rank_device` entry per rank (trainer first, then engines).

    Returns:
        ``"gloo"`` or ``"nccl"``.

    Raises:
        UserError: unknown backend, or ``nccl`` with a CPU rank, without NCCL, or with
            two ranks on one GPU.
    """
    if requested not in BACKENDS:
        raise UserError(
            f"weight channel backend must be one of {', '.join(BACKENDS)}, got {requested!r}"
        )
    if requested == "gloo":
        return "gloo"
    cpu = [i for i, (kind, _, _) in enumerate(ranks) if kind != "cuda"]
    no_nccl = [i for i, (_, ok, _) in enumerate(ranks) if not ok]
    keys = [key for _, _, key in ranks if key is not None]
    shared = len(set(keys)) < len(keys)
    if requested == "auto":
        return "gloo" if (cpu or no_nccl or shared or not ranks) else "nccl"
    if cpu:
        raise UserError(
            f"weight channel backend nccl needs CUDA tensors on every rank; ranks {cpu} are on CPU"
        )
    if no_nccl:
        raise UserError(f"weight channel backend nccl: NCCL is not usable on ranks {no_nccl}")
    if shared:
        raise UserError(
            "weight channel backend nccl: two ranks share one GPU (colocated); use gloo or auto"
        )
    return "nccl"


class WeightChannel:
    """A private process group that broadcasts weights from a trainer to engines.

    Rank 0 is the trainer (it hosts the ``TCPStore``), ranks ``1..k`` the engines. The
    group is built directly (``ProcessGroupGloo`` / ``ProcessGroupNCCL`` on the store),
    not through ``init_process_group``, so it coexists with a default group that an
    engine (vLLM initialises its own) or a trainer may already have. Every rank must
    construct it at the same time (rendezvous), with the same backend, and take part in
    every transfer in the same order.

    With ``gloo`` tensors travel through CPU memory (received tensors are moved to
    ``device``); with ``nccl`` they are sent from and received on ``device`` (each rank's
    own GPU), with no host copy.

    Args:
        host: address of rank 0, reachable from every rank.
        port: a free TCP port on ``host``.
        rank: this process's rank.
        world_size: ``1 + number of engines``.
        timeout_s: rendezvous and per-transfer timeout (a dead peer fails the others
            after this long).
        backend: ``gloo``, ``nccl``, or ``auto`` (decided from this rank alone by
            :func:`choose_backend`: only safe when every rank has the same kind of
            device; the Ray trainer decides over all ranks and passes the result).
        device: where received tensors go (and, with nccl, where sent ones are copied);
            default CPU for gloo, the current CUDA device for nccl.
    """

    def __init__(
        self,
        host: str,
        port: int,
        rank: int,
        world_size: int,
        timeout_s: float = 300.0,
        backend: str = "gloo",
        device: str | torch.device | None = None,
    ):
        import datetime

        dist = torch.distributed
        if backend == "auto":
            backend = choose_backend("auto", [rank_device(device or "cpu")])
        elif backend not in BACKENDS:
            choose_backend(backend, [])  # raises the one-line error
        timeout = datetime.timedelta(seconds=timeout_s)
        self.rank, self.world_size, self.backend = int(rank), int(world_size), backend
        if backend == "nccl":
            self.device = torch.device(device or f"cuda:{torch.cuda.current_device()}")
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device(device or "cpu")
        self.store = dist.TCPStore(
            host, int(port), self.world_size, is_master=self.rank == 0, timeout=timeout
        )
        if backend == "nccl":
            opts = dist.ProcessGroupNCCL.Options()
            opts._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(self.store, self.rank, self.world_size, opts)
        else:
            self.pg = dist.ProcessGroupGloo(self.store, self.rank, self.world_size, timeout)

    @staticmethod
    def describe(weights: NamedTensors) -> list[tuple[str, tuple[int, ...], torch.dtype]]:
        """``(name, shape, dtype)`` of each tensor: what receivers allocate."""
        return [(n, tuple(t.shape), t.dtype) for n, t in weights]

    def _wire(self) -> torch.device:
        """Where tensors sit during a broadcast: the GPU for nccl, CPU for gloo."""
        return self.device if self.backend == "nccl" else torch.device("cpu")

    def send(self, weights: NamedTensors) -> int:
        """Rank 0: broadcast every tensor in order; returns the bytes sent."""
        sent, wire = 0, self._wire()
        for _, t in weights:
            t = t.detach().to(wire).contiguous()
            self.pg.broadcast(t, 0).wait()
            sent += t.numel() * t.element_size()
        if wire.type == "cuda":  # the copies above must outlive the NCCL kernels
            torch.cuda.synchronize(wire)
        return sent

    def receive(
        self, meta: list[tuple[str, tuple[int, ...], torch.dtype]]
    ) -> Iterator[tuple[str, Tensor]]:
        """Ranks > 0: yield ``(name, tensor on device)`` as each broadcast arrives
        (consume them all)."""
        wire = self._wire()
        for name, shape, dtype in meta:
            buf = torch.empty(shape, dtype=dtype, device=wire)
            self.pg.broadcast(buf, 0).wait()
            yield name, buf if wire == self.device else buf.to(self.device)
