"""Sample packing: row layout, and packed logits == per-sample logits on a tiny Llama."""

import pytest
import torch

from trainkit.llm.collate import IGNORE_INDEX, pad_batch
from trainkit.llm.packing import block_causal_mask, pack_samples, segment_ids


def _sample(n, start):
    ids = list(range(start, start + n))
    return {"input_ids": ids, "labels": list(ids)}


def test_pack_layout_best_fit_decreasing():
    samples = [_sample(n, 10 * (i + 1)) for i, n in enumerate([3, 5, 2, 4, 6])]
    rows, stats = pack_samples(samples, max_length=8)
    # decreasing: 6 -> row0, 5 -> row1, 4 -> row2, 3 -> row1 (best fit, 3 free), 2 -> row0
    assert [r["position_ids"] for r in rows] == [
        [0, 1, 2, 3, 4, 5, 0, 1],
        [0, 1, 2, 3, 4, 0, 1, 2],
        [0, 1, 2, 3],
    ]
    assert rows[0]["input_ids"] == [50, 51, 52, 53, 54, 55, 30, 31]
    # first token of every packed sample carries no label (it would be predicted across samples)
    assert rows[0]["labels"] == [IGNORE_INDEX, 51, 52, 53, 54, 55, IGNORE_INDEX, 31]
    assert stats == {"samples": 5, "rows": 3, "fill": 0.8333}


def test_pack_rejects_overlong_sample():
    with pytest.raises(ValueError, match="max_length"):
        pack_samples([_sample(9, 0)], max_length=8)


def test_pad_packed_rows_and_segments():
    rows, _ = pack_samples([_sample(3, 1), _sample(2, 7), _sample(4, 20)], max_length=5)
    batch = pad_batch(rows, pad_id=0)
    assert "attention_mask" not in batch
    assert batch["position_ids"].tolist() == [[0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    assert batch["labels"].tolist() == [[-100, 21, 22, 23, -100], [-100, 2, 3, -100, 8]]
    assert segment_ids(batch["position_ids"]).tolist() == [[0, 0, 0, 0, 1], [0, 0, 0, 1, 1]]
    m = block_causal_mask(torch.tensor([[0, 1, 0, 1]]))
    assert (m[0, 0] == 0).int().tolist() == [[1, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 0], [0, 0, 1, 1]]


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=32,
        max_position_embeddings=64,
    )
    cfg._attn_implementation = "sdpa"
    return LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("mode", ["position_ids", "mask4d", "eager"])
def test_packed_logits_equal_separate(tiny_llama, mode):
    g = torch.Generator().manual_seed(1)
    lens = [7, 5, 9, 3]
    samples = [{"input_ids": torch.randint(0, 128, (n,), generator=g).tolist()} for n in lens]
    for s in samples:
        s["labels"] = list(s["input_ids"])
    rows, stats = pack_samples(samples, max_length=16)
    assert stats["rows"] == 2
    batch = pad_batch(rows, pad_id=0)
    model = tiny_llama
    model.config._attn_implementation = "eager" if mode == "eager" else "sdpa"
    with torch.no_grad():
        if mode == "mask4d":
            out = model(
                input_ids=batch["input_ids"],
                position_ids=batch["position_ids"],
                attention_mask=block_causal_mask(batch["position_ids"]),
                use_cache=False,
            )
        else:
            out = model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
            )
        # locate every sample inside the packed rows and compare with a lone forward pass
        checked = 0
        for b, row in enumerate(rows):
            pos = row["position_ids"]
            starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
            for a, e in zip(starts, starts[1:]):
                alone = model(
                    input_ids=torch.tensor([row["input_ids"][a:e]]), use_cache=False
                ).logits[0]
                torch.testing.assert_close(out.logits[b, a:e], alone, atol=1e-5, rtol=0)
                checked += 1
        assert checked == 4
        # the same packed batch with plain causal attention differs: the check has teeth
        plain = model(input_ids=batch["input_ids"], use_cache=False).logits
        assert (plain - out.logits).abs().max() > 1e-3
    model.config._attn_implementation = "sdpa"


def test_packed_loss_equals_mean_of_separate_losses(tiny_llama):
    """Token-summed CE over a packed row == sum over its samples run alone."""
    import torch.nn.functional as F

    g = torch.Generator().manual_seed(2)
    samples = []
    for n in (6, 4, 5):
        ids = torch.randint(0, 128, (n,), generator=g).tolist()
        samples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * 2 + ids[2:]})
    rows, _ = pack_samples(samples, max_length=15)
    batch = pad_batch(rows, pad_id=0)

    def ce_sum(logits, labels):
        return F.cross_entropy(logits[:-1], labels[1:], ignore_index=IGNORE_INDEX, reduction="sum")

    with torch.no_grad():
        packed = tiny_llama(
            input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
        ).logits[0]
        total = ce_sum(packed, batch["labels"][0])
        sep = sum(
            ce_sum(
                tiny_llama(input_ids=torch.tensor([s["input_ids"]])).logits[0],
                torch.tensor(s["labels"]),
            )
            for s in samples
        )
    torch.testing.assert_close(total, sep, atol=1e-4, rtol=1e-5)


def _cuda_impls():
    impls = ["sdpa", "eager"]
    try:
        import flash_attn  # noqa: F401

        impls.append("flash_attention_2")
    except ImportError:
        pass
    return impls


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_packed_logits_equal_separate_cuda(dtype):
    """Packing on CUDA: position_ids packing for every attention implementation present."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from transformers import LlamaConfig, LlamaForCausalLM

    dt = getattr(torch, dtype)
    tol = 1e-4 if dtype == "float32" else 3e-2
    g = torch.Generator().manual_seed(3)
    lens = [37, 20, 51, 9, 30]
    samples = [{"input_ids": torch.randint(0, 128, (n,), generator=g).tolist()} for n in lens]
    for s in samples:
        s["labels"] = list(s["input_ids"])
    rows, _ = pack_samples(samples, max_length=64)
    batch = {k: v.cuda() for k, v in pad_batch(rows, pad_id=0).items()}
    results = {}
    for impl in _cuda_impls():
        if impl == "flash_attention_2" and dtype == "float32":
            continue
        torch.manual_seed(0)
        cfg = LlamaConfig(
            vocab_size=128,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=2,
            head_dim=32,
            max_position_embeddings=128,
        )
        model = LlamaForCausalLM(cfg).to(device="cuda", dtype=dt).eval()
        model.config._attn_implementation = impl
        worst = 0.0
        with torch.no_grad():
            out = model(
                input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False
            ).logits.float()
            for b, row in enumerate(rows):
                pos = row["position_ids"]
                starts = [i for i, p in enumerate(pos) if p == 0] + [len(pos)]
                for a, e in zip(starts, starts[1:]):
                    alone = (
                        model(input_ids=batch["input_ids"][b : b + 1, a:e], use_cache=False)
                        .logits[0]
                        .float()
                    )
                    worst = max(worst, (out[b, a:e] - alone).abs().max().item())
        results[impl] = worst
        print(f"packing cuda {dtype} {impl}: max |packed - alone| = {worst:.2e}")
    assert all(v <= tol for v in results.values()), results
