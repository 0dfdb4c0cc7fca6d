"""CUDA checks of the LLM base (marker ``gpu``; run by scripts/gpu_check.sh).

bf16 + SDPA forward/backward, chunked loss on CUDA (values and peak memory), the SFT
loop on one GPU (single and FSDP2 via torchrun/nccl), bitsandbytes 4-bit and
flash-attention 2 when installed, and KAN forward/backward on CUDA.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
TINY = "configs/rlhf/sft_tiny.yaml"


def _tiny(dtype=torch.float32, attn="sdpa"):
    from transformers import AutoModelForCausalLM

    from trainkit.llm.models import tiny_config

    torch.manual_seed(0)
    cfg = tiny_config("tiny-llama", vocab_size=1024)
    return AutoModelForCausalLM.from_config(cfg, dtype=dtype, attn_implementation=attn).cuda()


def test_bf16_sdpa_forward_backward_matches_fp32():
    assert torch.cuda.is_bf16_supported()
    ids = torch.randint(0, 1024, (2, 64), device="cuda")
    ref = _tiny(torch.float32)(input_ids=ids, labels=ids).loss
    m = _tiny(torch.bfloat16)
    assert m.config._attn_implementation == "sdpa"
    loss = m(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss) and abs(loss.item() - ref.item()) < 0.05
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in m.parameters())


def test_chunked_loss_cuda_values_and_peak_memory():
    from trainkit.llm.loss import chunked_cross_entropy, plain_cross_entropy

    g = torch.Generator(device="cuda").manual_seed(0)
    seq, hid, voc = 8192, 576, 49152
    peaks, results = {}, {}
    for name in ("plain", "chunked"):
        g.manual_seed(0)  # the same inputs for both variants
        h = (torch.randn(seq, hid, device="cuda", generator=g) * 0.5).requires_grad_()
        w = (torch.randn(voc, hid, device="cuda", generator=g) * 0.05).requires_grad_()
        y = torch.randint(0, voc, (seq,), device="cuda", generator=g)
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn = plain_cross_entropy if name == "plain" else chunked_cross_entropy
        loss, n = fn(h, w, y)
        (loss / n).backward()
        torch.cuda.synchronize()
        peaks[name] = torch.cuda.max_memory_allocated() - base
        results[name] = (float(loss.detach() / n), h.grad.clone(), w.grad.clone())
        del h, w, loss
    print(
        json.dumps(
            {
                "cuda_plain_peak_mib": peaks["plain"] / 2**20,
                "cuda_chunked_peak_mib": peaks["chunked"] / 2**20,
                "cuda_peak_ratio": peaks["chunked"] / peaks["plain"],
            }
        )
    )
    assert abs(results["plain"][0] - results["chunked"][0]) < 1e-5
    assert torch.allclose(results["plain"][1], results["chunked"][1], atol=1e-6)
    assert peaks["chunked"] <= 0.3 * peaks["plain"]


def _sft(tmp, *over):
    from trainkit.config import load_config
    from trainkit.llm.sft import SFTConfig, train

    return train(load_config(SFTConfig, TINY, [f"output_dir={tmp}", *over]))


def test_sft_single_gpu_bf16_learns(tmp_path):
    res = _sft(tmp_path, "model.dtype=bfloat16", "train.max_steps=6", "train.save_every=0")
    losses = [r["loss"] for r in res["records"]]
    assert losses[-1] < losses[0] - 0.5


def test_fsdp2_one_gpu_matches_single(tmp_path):
    over = ["train.max_steps=4", "train.eval_every=0", "train.save_every=0", "model.dtype=float32"]
    single = [r["loss"] for r in _sft(tmp_path / "s", *over)["records"]]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "1",
        "-m",
        "trainkit.cli",
        "rlhf",
        "sft",
        "--config",
        TINY,
        f"output_dir={tmp_path / 'f'}",
        *over,
        "train.strategy=fsdp2",
    ]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [json.loads(x) for x in (tmp_path / "f" / "metrics.jsonl").read_text().splitlines()]
    fsdp = [x["loss"] for x in recs if x["step"] > 0]
    assert max(abs(a - b) for a, b in zip(single, fsdp)) < 1e-3  # TF32/cuBLAS differences


def test_value_head_cuda():
    from trainkit.llm.value_head import ValueHeadModel

    vm = ValueHeadModel.from_pretrained("tiny-llama", dtype="bfloat16").cuda()
    ids = torch.randint(10, 1000, (2, 8), device="cuda")
    am = torch.ones_like(ids)
    s = vm.score(ids, am)
    s.sum().backward()
    assert s.shape == (2,) and torch.isfinite(s).all()


@pytest.mark.skipif(
    importlib.util.find_spec("bitsandbytes") is None, reason="bitsandbytes not installed"
)
def test_qlora_nf4_cuda():
    from trainkit.llm.lora import LoraSection
    from trainkit.llm.models import load_model

    m, _ = load_model("tiny-llama", quantization="nf4", lora=LoraSection(r=4), dtype="bfloat16")
    ids = torch.randint(10, 1000, (2, 16), device="cuda")
    loss = m(input_ids=ids, labels=ids).loss
    loss.backward()
    assert torch.isfinite(loss)


@pytest.mark.skipif(
    importlib.util.find_spec("flash_attn") is None, reason="flash-attn not installed"
)
def test_flash_attention_matches_sdpa():
    ids = torch.randint(0, 1024, (2, 64), device="cuda")
    a = _tiny(torch.bfloat16, "sdpa")(input_ids=ids).logits.float()
    b = _tiny(torch.bfloat16, "flash_attention_2")(input_ids=ids).logits.float()
    assert (a - b).abs().max() < 0.05


def test_kan_forward_backward_cuda():
    from trainkit.kan import KAN

    torch.manual_seed(0)
    cpu = KAN(width=[2, 5, 1], grid=5, k=3, seed=0)
    gpu = KAN(width=[2, 5, 1], grid=5, k=3, seed=0).cuda()
    x = torch.rand(64, 2) * 2 - 1
    y_cpu = cpu(x)
    xg = x.cuda().requires_grad_()
    y_gpu = gpu(xg)
    y_gpu.pow(2).mean().backward()
    assert torch.allclose(y_cpu, y_gpu.cpu(), atol=1e-5)
    assert xg.grad is not None and torch.isfinite(xg.grad).all()
