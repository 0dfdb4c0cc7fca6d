"""Distributed strategies: one small interface, ``single`` and ``fsdp2``.

A trainer only talks to a :class:`Strategy`::

    strategy = make_strategy("fsdp2")         # or "single"
    strategy.setup()                          # process group (torchrun env), device
    module = strategy.wrap(CausalLMLoss(model))
    loss.backward() via strategy.backward(loss)
    grad_norm = strategy.optimizer_step(optimizer, module, max_grad_norm, scheduler)
    state = strategy.model_state_dict(module)  # full, on CPU (rank 0 keeps it)

``fsdp2`` uses ``torch.distributed.fsdp.fully_shard`` (FSDP2, per-parameter DTensor
sharding): every decoder layer is its own group, the root holds the embeddings, final
norm and LM head. Backend ``nccl`` on CUDA, ``gloo`` on CPU; launch with ``torchrun``
(multi-node through torchrun's standard rendezvous). Gradients are averaged over ranks
by FSDP, so a trainer that wants the token-level mean over all ranks scales each rank's
loss sum by ``world_size / total_tokens`` (see :mod:`trainkit.llm.sft`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

from trainkit.common.errors import UserError

STRATEGIES = ("single", "fsdp2")


def _state_options(**kw):
    from torch.distributed.checkpoint.state_dict import StateDictOptions

    return StateDictOptions(**kw)


class Strategy:
    """Single-process training (CPU or one GPU); the base of the other strategies."""

    name = "single"

    def __init__(self, mixed_precision: str = "no", device: str | None = None):
        if mixed_precision not in ("no", "bf16"):
            raise UserError(f"mixed_precision must be 'no' or 'bf16', got {mixed_precision!r}")
        self.mixed_precision = mixed_precision
        self.rank, self.world_size, self.local_rank = 0, 1, 0
        self._device = device

    # -- setup -------------------------------------------------------------------------
    def setup(self) -> None:
        """Pick the device (``cuda`` when available unless told otherwise)."""
        if self._device is None:
            self._device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(self._device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, module: nn.Module) -> nn.Module:
        """Move ``module`` to the device (quantised modules are already placed)."""
        if not getattr(_inner_model(module), "is_loaded_in_4bit", False) and not getattr(
            _inner_model(module), "is_loaded_in_8bit", False
        ):
            module = module.to(self.device)
        return module

    def autocast(self):
        """bf16 autocast on CUDA when ``mixed_precision == "bf16"``, else a no-op."""
        import contextlib

        if self.mixed_precision == "bf16" and self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # -- training ----------------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> None:
        loss.backward()

    def clip_grad_norm(self, module: nn.Module, max_norm: float) -> float:
        """Clip to ``max_norm`` (``<= 0``: only measure); returns the pre-clip L2 norm."""
        params = [p for p in module.parameters() if p.grad is not None]
        if not params:
            return 0.0
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    def optimizer_step(
        self, optimizer, module: nn.Module, max_grad_norm: float = 1.0, scheduler: Any = None
    ) -> float:
        """Clip, step, zero the gradients, advance the scheduler; returns the grad norm."""
        norm = self.clip_grad_norm(module, max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if scheduler is not None:
            scheduler.step()
        return norm

    # -- collectives -------------------------------------------------------------------
    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj]

    def barrier(self) -> None:
        pass

    def broadcast_object(self, obj: Any) -> Any:
        return obj

    # -- state -------------------------------------------------------------------------
    def model_state_dict(self, module: nn.Module, trainable_only: bool = False) -> dict:
        """Full, unsharded CPU state dict of ``module`` (keys as ``module.state_dict()``)."""
        from torch.distributed.checkpoint.state_dict import get_model_state_dict

        sd = get_model_state_dict(
            module, options=_state_options(full_state_dict=True, cpu_offload=True)
        )
        if trainable_only:
            names = {n for n, p in module.named_parameters() if p.requires_grad}
            sd = {k: v for k, v in sd.items() if k in names}
        return {k: v.detach().cpu() for k, v in sd.items()}

    def load_model_state_dict(self, module: nn.Module, state: dict, strict: bool = False) -> None:
        from torch.distributed.checkpoint.state_dict import set_model_state_dict

        set_model_state_dict(
            module, state, options=_state_options(full_state_dict=True, strict=strict)
        )

    def optimizer_state_dict(self, module: nn.Module, optimizer) -> dict:
        """Full optimizer state keyed by parameter names (portable across strategies)."""
        from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

        return get_optimizer_state_dict(
            module, optimizer, options=_state_options(full_state_dict=True, cpu_offload=True)
        )

    def load_optimizer_state_dict(self, module: nn.Module, optimizer, state: dict) -> None:
        from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict

        set_optimizer_state_dict(
            module, optimizer, state, options=_state_options(full_state_dict=True)
        )

    def save_pretrained(
        self, module: nn.Module, out_dir: str | os.PathLike, tokenizer=None
    ) -> None:
        """Save the model inside ``module`` as an HF folder (a LoRA model: its adapter).

        Collective under ``fsdp2`` (every rank calls it); rank 0 writes, atomically.
        """
        from trainkit.common.io import atomic_dir

        model = _inner_model(module)
        prefix = _prefix_of(module, model)
        full = self.model_state_dict(module)
        sd = {k[len(prefix) :]: v for k, v in full.items() if k.startswith(prefix)}
        if self.is_main:
            with atomic_dir(out_dir) as tmp:
                model.save_pretrained(tmp, state_dict=sd, safe_serialization=True)
                if tokenizer is not None:
                    tokenizer.save_pretrained(tmp)
        self.barrier()

    def teardown(self) -> None:
        pass


def _inner_model(module: nn.Module) -> nn.Module:
    """The HF / peft model inside a wrapper such as :class:`~trainkit.llm.loss.CausalLMLoss`."""
    return getattr(module, "model", module) if not hasattr(module, "save_pretrained") else module


def _prefix_of(module: nn.Module, model: nn.Module) -> str:
    if module is model:
        return ""
    for name, sub in module.named_children():
        if sub is model:
            return name + "."
    raise ValueError("model is not a direct child of the wrapper")


class FSDP2Strategy(Strategy):
    """FSDP2 (``fully_shard``) data parallel over ``torchrun`` processes."""

    name = "fsdp2"

    def setup(self) -> None:
        import torch.distributed as dist

        if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
            raise UserError(
                "strategy 'fsdp2' needs torchrun: torchrun --nproc-per-node N "
                "-m trainkit.cli ... (RANK/WORLD_SIZE are not set)"
            )
        self.local_rank = int(os.environ.get("LOCAL_RANK", 0))
        use_cuda = torch.cuda.is_available() and self._device in (None, "cuda")
        if use_cuda:
            torch.cuda.set_device(self.local_rank)
            self.device = torch.device("cuda", self.local_rank)
        else:
            self.device = torch.device("cpu")
        if not dist.is_initialized():
            backend = "nccl" if use_cuda else "gloo"
            dist.init_process_group(backend=backend, device_id=self.device if use_cuda else None)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()

    def wrap(self, module: nn.Module) -> nn.Module:
        """Shard each decoder layer, then the root; bf16 params when asked."""
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        if getattr(_inner_model(module), "is_loaded_in_4bit", False):
            raise UserError(
                "strategy 'fsdp2' does not shard bitsandbytes 4-bit models here; "
                "use strategy=single for QLoRA"
            )
        mp = None
        if self.mixed_precision == "bf16":
            mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        kw = {"mp_policy": mp} if mp is not None else {}
        module = module.to(self.device)
        for layer in decoder_layers(module):
            fully_shard(layer, **kw)
        fully_shard(module, **kw)
        return module

    def autocast(self):
        import contextlib

        return contextlib.nullcontext()  # the MixedPrecisionPolicy casts parameters

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        y = x.detach().clone().to(self.device)
        dist.all_reduce(y, op=dist.ReduceOp.SUM)
        return y.to(x.device)

    def all_gather_object(self, obj: Any) -> list[Any]:
        import torch.distributed as dist

        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any) -> Any:
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        import torch.distributed as dist

        dist.barrier()

    def teardown(self) -> None:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()


def decoder_layers(module: nn.Module) -> list[nn.Module]:
    """The transformer blocks of an HF model (classes named in ``_no_split_modules``)."""
    names: set[str] = set()
    for m in module.modules():
        names |= set(getattr(m, "_no_split_modules", None) or [])
    layers = [m for m in module.modules() if type(m).__name__ in names]
    if not layers:
        raise UserError(f"cannot find decoder layers to shard in {type(module).__name__}")
    return layers


def make_strategy(name: str, mixed_precision: str = "no", device: str | None = None) -> Strategy:
    """``"single"`` -> :class:`Strategy`, ``"fsdp2"`` -> :class:`FSDP2Strategy`."""
    if name == "single":
        return Strategy(mixed_precision, device)
    if name == "fsdp2":
        return FSDP2Strategy(mixed_precision, device)
    raise UserError(f"strategy must be one of {', '.join(STRATEGIES)}, got {name!r}")
