"""HF rollout engine on a tiny random model: shapes, masks, truncation and values."""

import pytest
import torch

from trainkit.rlhf.rollout.base import Rollout, pad_left, position_ids, response_logps
from trainkit.rlhf.rollout.hf import HFEngine, sample_top_p


@pytest.fixture(scope="module")
def tiny():
    from trainkit.llm.models import load_model

    torch.manual_seed(0)
    model, tok = load_model("tiny-llama")
    model.eval()
    return model, tok


def test_pad_left_and_positions():
    ids, mask = pad_left([[5, 6, 7], [9]], pad_id=0)
    assert ids.tolist() == [[5, 6, 7], [0, 0, 9]]
    assert mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    with pytest.raises(ValueError):
        pad_left([[1], []], 0)


def test_top_p_keeps_only_the_nucleus():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]]).repeat(2000, 1)
    g = torch.Generator().manual_seed(0)
    s = sample_top_p(probs, 0.7, g)  # nucleus {0, 1}: 0.5 < 0.7 <= 0.8
    assert set(s.tolist()) == {0, 1}
    frac0 = (s == 0).float().mean().item()
    assert abs(frac0 - 0.5 / 0.8) < 0.04


def test_shapes_logprobs_and_reproducibility(tiny):
    model, tok = tiny
    eng = HFEngine(model, tok.pad_token_id, tok.eos_token_id)
    prompts = [tok("What is 2 + 3?").input_ids, tok("Hi").input_ids]
    ro = eng.generate(prompts, n=3, max_new_tokens=10, temperature=1.0, seed=7)
    P = max(len(p) for p in prompts)
    assert ro.prompt_ids.shape == (6, P) and ro.response_ids.shape == (6, 10)
    assert ro.sequences.shape == ro.attention_mask.shape == (6, P + 10)
    assert ro.action_mask.shape == ro.logprobs.shape == (6, 10)
    # groups are consecutive: rows 0-2 are prompt 0 (left padded), rows 3-5 prompt 1
    assert ro.prompt_mask[:3].sum(-1).tolist() == [len(prompts[0])] * 3
    assert ro.prompt_mask[3:].sum(-1).tolist() == [len(prompts[1])] * 3
    # a random model never says EOS in 10 tokens: every row is truncated and counted
    assert ro.num_truncated == 6 and ro.truncated_frac == 1.0
    # log-probs of the sampled tokens equal a full recomputation within 1e-4
    with torch.no_grad():
        lp, _ = response_logps(model, ro.sequences, ro.attention_mask, 10)
    diff = ((lp - ro.logprobs).abs() * ro.action_mask).max().item()
    assert diff < 1e-4
    assert (ro.logprobs < 0).all()
    # same seed, same samples; other seed, other samples
    again = eng.generate(prompts, n=3, max_new_tokens=10, seed=7)
    assert torch.equal(again.response_ids, ro.response_ids)
    assert torch.allclose(again.logprobs, ro.logprobs)
    other = eng.generate(prompts, n=3, max_new_tokens=10, seed=8)
    assert not torch.equal(other.response_ids, ro.response_ids)
    # temperature: log-probs are of softmax(z / T), matching the recomputation at T
    hot = eng.generate(prompts, n=2, max_new_tokens=6, temperature=0.7, seed=1)
    with torch.no_grad():
        lp7, _ = response_logps(model, hot.sequences, hot.attention_mask, 6, temperature=0.7)
    assert ((lp7 - hot.logprobs).abs() * hot.action_mask).max().item() < 1e-4


def test_eos_stops_and_masks(tiny):
    model, tok = tiny
    eng0 = HFEngine(model, tok.pad_token_id, tok.eos_token_id)
    prompts = [tok("a b c").input_ids, tok("hello there").input_ids]
    greedy = eng0.generate(prompts, n=1, max_new_tokens=5, temperature=0.0)
    assert greedy.num_truncated == 2
    # declare prompt 0's first greedy token to be EOS: row 0 must stop right there
    stop = int(greedy.response_ids[0, 0])
    eng = HFEngine(model, tok.pad_token_id, [stop])
    ro = eng.generate(prompts, n=1, max_new_tokens=5, temperature=0.0)
    assert ro.response_ids[0, 0].item() == stop
    assert ro.action_mask[0].tolist()[: ro.action_mask.shape[1]] == [1] + [0] * (
        ro.action_mask.shape[1] - 1
    )
    assert (ro.response_ids[0, 1:] == tok.pad_token_id).all()
    assert (ro.logprobs[0, 1:] == 0).all() and ro.logprobs[0, 0] < 0
    assert not bool(ro.truncated[0])
    # row 1 follows its greedy path until (and including) its first `stop` token, if any
    g1 = greedy.response_ids[1].tolist()
    n1 = g1.index(stop) + 1 if stop in g1 else 5
    assert ro.action_mask[1].sum().item() == n1
    assert ro.response_ids[1, :n1].tolist() == g1[:n1]
    assert bool(ro.truncated[1]) == (stop not in g1)
    assert ro.num_truncated == int(stop not in g1)
    # greedy log-probs still agree with the recomputed forward pass
    with torch.no_grad():
        lp, _ = response_logps(model, ro.sequences, ro.attention_mask, ro.response_ids.shape[1])
    assert ((lp - ro.logprobs).abs() * ro.action_mask).max().item() < 1e-4


def test_min_new_tokens_forbids_eos_but_keeps_policy_logprobs(tiny):
    from trainkit.config import ConfigError, load_config
    from trainkit.rlhf.trainers.rl_config import GRPOConfig

    model, tok = tiny
    allowed = [5, 9, 11]  # every other token is declared EOS
    eng = HFEngine(
        model, tok.pad_token_id, [i for i in range(model.config.vocab_size) if i not in allowed]
    )
    prompts = [tok("a b c").input_ids, tok("hello there").input_ids]
    free = eng.generate(prompts, n=3, max_new_tokens=6, seed=3)
    assert free.action_mask.sum(-1).tolist() == [1] * 6  # all stop at once
    same = eng.generate(prompts, n=3, max_new_tokens=6, seed=3, min_new_tokens=0)
    assert torch.equal(same.response_ids, free.response_ids)
    forced = eng.generate(prompts, n=3, max_new_tokens=6, seed=3, min_new_tokens=6)
    assert forced.action_mask.sum(-1).tolist() == [6] * 6 and forced.num_truncated == 6
    assert set(forced.response_ids.unique().tolist()) <= set(allowed)
    # the recorded log-probs are the unmasked policy's (what the trainer recomputes)
    with torch.no_grad():
        lp, _ = response_logps(model, forced.sequences, forced.attention_mask, 6)
    assert (lp - forced.logprobs).abs().max().item() < 1e-4
    assert forced.logprobs.max().item() < -1.0  # not renormalised over the 3 allowed tokens
    part = eng.generate(prompts, n=3, max_new_tokens=6, seed=3, min_new_tokens=2)
    assert part.action_mask.sum(-1).tolist() == [3] * 6  # 2 allowed, then an EOS
    assert set(part.response_ids[:, :2].unique().tolist()) <= set(allowed)
    # greedy: the best allowed token
    g = eng.generate(prompts[:1], n=1, max_new_tokens=2, temperature=0.0, min_new_tokens=2)
    with torch.no_grad():
        z = model(torch.tensor([prompts[0]])).logits[0, -1]
    assert g.response_ids[0, 0].item() == allowed[int(z[allowed].argmax())]
    with pytest.raises(ValueError):
        eng.generate(prompts, n=1, max_new_tokens=2, min_new_tokens=-1)
    with pytest.raises(ConfigError, match="rollout.min_new_tokens"):
        load_config(GRPOConfig, None, ["rollout.max_new_tokens=4", "rollout.min_new_tokens=5"])


def test_max_batch_chunks_give_the_same_samples_as_one_call(tiny):
    model, tok = tiny
    prompts = [tok("x").input_ids, tok("y z").input_ids]
    whole = HFEngine(model, tok.pad_token_id, tok.eos_token_id).generate(
        prompts, n=2, max_new_tokens=4, temperature=0.0
    )
    parts = HFEngine(model, tok.pad_token_id, tok.eos_token_id, max_batch=1).generate(
        prompts, n=2, max_new_tokens=4, temperature=0.0
    )
    assert torch.equal(whole.response_ids, parts.response_ids)
    assert torch.allclose(whole.logprobs, parts.logprobs, atol=1e-4)


def test_update_weights_changes_samples_and_rejects_unknown_names(tiny):
    import copy

    model, tok = tiny
    clone = copy.deepcopy(model)
    eng = HFEngine(clone, tok.pad_token_id, tok.eos_token_id)
    prompts = [tok("a").input_ids]
    before = eng.generate(prompts, n=1, max_new_tokens=4, temperature=0.0)
    sd = {
        k: v * 0
        for k, v in model.state_dict().items()
        if k.endswith("lm_head.weight") or k.endswith("embed_tokens.weight")
    }
    eng.update_weights(sd)
    after = eng.generate(prompts, n=1, max_new_tokens=4, temperature=0.0)
    # zero embeddings + head: every logit is 0, so the log-prob is -log(vocab)
    assert torch.allclose(
        after.logprobs[0],
        torch.full((4,), -torch.log(torch.tensor(float(model.config.vocab_size))).item()),
        atol=1e-4,
    )
    assert not torch.allclose(before.logprobs, after.logprobs)
    with pytest.raises(KeyError):
        eng.update_weights({"no.such.weight": torch.zeros(1)})


def test_lora_merge_for_generation_matches_unmerged(tiny):
    import copy

    from trainkit.llm.lora import LoraSection, apply_lora

    model, tok = tiny
    peft_model = apply_lora(copy.deepcopy(model), LoraSection(enabled=True, r=4, dropout=0.0))
    with torch.no_grad():  # non-zero adapters, so merging matters
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    prompts = [tok("1 + 1 =").input_ids]
    plain = HFEngine(peft_model, tok.pad_token_id, tok.eos_token_id).generate(
        prompts, n=2, max_new_tokens=6, seed=3
    )
    base = {n: p.detach().clone() for n, p in peft_model.named_parameters()}
    merged_eng = HFEngine(peft_model, tok.pad_token_id, tok.eos_token_id, merge_lora=True)
    merged = merged_eng.generate(prompts, n=2, max_new_tokens=6, seed=3)
    # every weight is restored bit-exactly (no merge/unmerge rounding drift)
    assert all(torch.equal(p.detach(), base[n]) for n, p in peft_model.named_parameters())
    assert torch.equal(plain.response_ids, merged.response_ids)
    assert torch.allclose(plain.logprobs, merged.logprobs, atol=1e-4)
    # adapters are unmerged again afterwards: the forward pass equals the unmerged one
    with torch.no_grad():
        lp, _ = response_logps(peft_model, merged.sequences, merged.attention_mask, 6)
    assert ((lp - plain.logprobs).abs() * plain.action_mask).max().item() < 1e-4


def test_rollout_select_and_engine_protocol(tiny):
    from trainkit.rlhf.rollout.base import RolloutEngine

    model, tok = tiny
    eng = HFEngine(model, tok.pad_token_id, tok.eos_token_id)
    assert isinstance(eng, RolloutEngine)
    ro = eng.generate([tok("q").input_ids], n=4, max_new_tokens=3, seed=0)
    sub = ro.select(torch.tensor([1, 3]))
    assert isinstance(sub, Rollout)
    assert torch.equal(sub.response_ids, ro.response_ids[[1, 3]])
    with pytest.raises(ValueError):
        eng.generate([tok("q").input_ids], n=1, max_new_tokens=0)


def test_shared_prefix_logps_equal_full_forward_values_and_gradients(tiny):
    import copy

    from trainkit.llm.lora import LoraSection, apply_lora
    from trainkit.rlhf.rollout.base import shared_prefix_logps

    model, tok = tiny
    peft_model = apply_lora(copy.deepcopy(model), LoraSection(enabled=True, r=4, dropout=0.0))
    with torch.no_grad():
        for n, p in peft_model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    eng = HFEngine(peft_model, tok.pad_token_id, tok.eos_token_id)
    ro = eng.generate(
        [tok("What is 2 + 3?").input_ids, tok("Hi").input_ids], n=3, max_new_tokens=6, seed=0
    )
    peft_model.train()
    params = [p for p in peft_model.parameters() if p.requires_grad]
    full, _ = response_logps(peft_model, ro.sequences, ro.attention_mask, 6)
    shared, ent = shared_prefix_logps(
        peft_model,
        ro.prompt_ids,
        ro.prompt_mask,
        ro.response_ids,
        ro.action_mask,
        group=3,
        return_entropy=True,
    )
    m = ro.action_mask
    assert ((full - shared).abs() * m).max().item() < 1e-4
    assert ent.shape == (6, 6) and (ent[m.bool()] > 0).all()
    g_full = torch.autograd.grad((full * m).sum(), params)
    g_shared = torch.autograd.grad((shared * m).sum(), params)
    scale = max(g.abs().max().item() for g in g_full)
    assert scale > 0
    assert max((a - b).abs().max().item() for a, b in zip(g_full, g_shared)) < 1e-4 * scale
    # groups that do not divide the batch: not applicable, the caller falls back
    assert (
        shared_prefix_logps(
            peft_model, ro.prompt_ids, ro.prompt_mask, ro.response_ids, ro.action_mask, group=4
        )
        is None
    )


@pytest.mark.gpu
def test_cuda_engine_logprobs_match_recomputation(tiny):
    import copy

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    model, tok = tiny
    cuda_model = copy.deepcopy(model).cuda().eval()
    eng = HFEngine(cuda_model, tok.pad_token_id, tok.eos_token_id)
    ro = eng.generate(
        [tok("What is 2 + 3?").input_ids, tok("Hi").input_ids], n=4, max_new_tokens=8, seed=0
    )
    assert ro.response_ids.device.type == "cpu" and ro.response_ids.shape == (8, 8)
    with torch.no_grad():
        lp, _ = response_logps(cuda_model, ro.sequences.cuda(), ro.attention_mask.cuda(), 8)
    assert ((lp.cpu() - ro.logprobs).abs() * ro.action_mask).max().item() < 1e-4
    again = eng.generate(
        [tok("What is 2 + 3?").input_ids, tok("Hi").input_ids], n=4, max_new_tokens=8, seed=0
    )
    assert torch.equal(again.response_ids, ro.response_ids)


def test_weight_channel_backend_choice():
    """``auto`` takes nccl only when every rank has its own CUDA device with NCCL."""
    from trainkit.common.errors import UserError
    from trainkit.rlhf.rollout.sync import choose_backend, nccl_usable, rank_device

    gpu_a, gpu_b = ("cuda", True, "10.0.0.1/GPU-a"), ("cuda", True, "10.0.0.1/GPU-b")
    gpu_b_other_node = ("cuda", True, "10.0.0.2/GPU-a")
    cpu = ("cpu", False, None)
    assert choose_backend("auto", [gpu_a, gpu_b]) == "nccl"
    assert choose_backend("auto", [gpu_a, gpu_b_other_node, gpu_b]) == "nccl"
    assert choose_backend("auto", [gpu_a, cpu]) == "gloo"  # a CPU engine
    assert choose_backend("auto", [gpu_a, ("cuda", False, "10.0.0.1/GPU-b")]) == "gloo"
    assert choose_backend("auto", [gpu_a, gpu_a]) == "gloo"  # colocated on one GPU
    assert choose_backend("auto", [cpu, cpu]) == "gloo"
    assert choose_backend("auto", []) == "gloo"
    assert choose_backend("gloo", [gpu_a, gpu_b]) == "gloo"
    assert choose_backend("nccl", [gpu_a, gpu_b]) == "nccl"
    with pytest.raises(UserError, match=r"^weight channel backend nccl needs CUDA .*ranks \[1\]"):
        choose_backend("nccl", [gpu_a, cpu])
    with pytest.raises(UserError, match=r"NCCL is not usable on ranks \[0\]"):
        choose_backend("nccl", [("cuda", False, "n/x"), gpu_b])
    with pytest.raises(UserError, match="two ranks share one GPU"):
        choose_backend("nccl", [gpu_a, gpu_a])
    with pytest.raises(UserError, match="must be one of auto, gloo, nccl, got 'mpi'"):
        choose_backend("mpi", [gpu_a, gpu_b])
    assert rank_device("cpu", "10.0.0.1") == ("cpu", nccl_usable(), None)
    if torch.cuda.is_available():
        kind, _, key = rank_device("cuda:0", "n")
        assert kind == "cuda" and key.startswith("n/") and len(key) > 2


def test_weight_channel_gloo_round_trip_in_two_threads():
    """Rank 0 broadcasts named tensors over the private gloo group; rank 1 receives them
    bit for bit, in order, on the device it asked for (CPU)."""
    import socket
    import threading

    from trainkit.rlhf.rollout.sync import WeightChannel

    with socket.socket() as sk:
        sk.bind(("127.0.0.1", 0))
        port = sk.getsockname()[1]
    g = torch.Generator().manual_seed(0)
    sent = {
        "model.embed_tokens.weight": torch.randn(7, 4, generator=g),
        "model.norm.weight": torch.randn(4, generator=g).to(torch.bfloat16),
        "lm_head.bias": torch.arange(5, dtype=torch.int64),
    }
    chans, errors, out = {}, [], {}

    def open_rank(rank):
        try:
            chans[rank] = WeightChannel("127.0.0.1", port, rank, 2, timeout_s=60, backend="auto")
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            errors.append(e)

    threads = [threading.Thread(target=open_rank, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and set(chans) == {0, 1}
    assert chans[0].backend == chans[1].backend == "gloo"  # auto on CPU
    meta = WeightChannel.describe(sent.items())
    sender = threading.Thread(target=lambda: out.setdefault("bytes", chans[0].send(sent.items())))
    sender.start()
    got = list(chans[1].receive(meta))
    sender.join(60)
    assert [n for n, _ in got] == list(sent)
    assert all(torch.equal(t, sent[n]) and t.dtype == sent[n].dtype for n, t in got)
    assert out["bytes"] == 7 * 4 * 4 + 4 * 2 + 5 * 8
