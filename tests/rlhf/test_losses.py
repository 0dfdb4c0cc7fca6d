"""Losses against hand-computed values (the arithmetic is in the comments)."""

import math

import pytest
import torch

from trainkit.rlhf.losses import (
    aggregate,
    dpo_loss,
    entropy_from_logits,
    kl_estimate,
    masked_mean,
    pairwise_accuracy,
    pairwise_rm_loss,
    pairwise_rm_loss_logexp,
    policy_loss,
    policy_loss_with_stats,
    sequence_logps,
    token_logps,
    value_loss,
)

t = torch.tensor
LN2 = 0.6931472


def close(a, b, tol=1e-6):
    return torch.allclose(
        torch.as_tensor(a, dtype=torch.float64),
        torch.as_tensor(b, dtype=torch.float64),
        atol=tol,
        rtol=0,
    )


# ------------------------------------------------------------------ masked reductions


def test_masked_mean_ignores_nan_in_padding_and_empty_is_zero():
    x = t([[1.0, 3.0, float("nan")]])
    m = t([[1, 1, 0]])
    assert masked_mean(x, m).item() == 2.0  # (1 + 3) / 2
    assert masked_mean(x, torch.zeros_like(m)).item() == 0.0


def test_aggregate_modes():
    loss = t([[1.0, 2.0, 3.0], [4.0, 0.0, 0.0]])
    m = t([[1, 1, 1], [1, 0, 0]])
    assert close(aggregate(loss, m, "token_mean"), 2.5)  # (1+2+3+4)/4
    assert close(aggregate(loss, m, "seq_mean"), 3.0)  # (2 + 4)/2
    assert close(aggregate(loss, m, "sum_norm", 5), 1.0)  # 10 / (2 * 5)
    with pytest.raises(ValueError):
        aggregate(loss, m, "bogus")


# ------------------------------------------------------------------ log-probs, entropy


def test_sequence_logps_from_logits():
    # vocab 2: logits [ln3, 0] -> p = [0.75, 0.25]; [0, 0] -> [0.5, 0.5]
    logits = t([[[math.log(3.0), 0.0], [0.0, 0.0], [5.0, 5.0]]])
    labels = t([[0, 1, -100]])
    mask = t([[1, 1, 0]])
    tok = token_logps(logits, labels)
    assert close(tok, [[-0.2876821, -0.6931472, 0.0]])  # ln .75, ln .5, ignored
    # sum = -0.2876821 - 0.6931472 = -0.9808293; mean over 2 tokens = -0.4904146
    assert close(sequence_logps(logits, labels, mask), [-0.9808293])
    assert close(sequence_logps(logits, labels, mask, average=True), [-0.4904146])
    # token log-probs in, same result
    assert close(sequence_logps(tok, None, mask), [-0.9808293])


def test_token_logps_chunked_equals_log_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 11, generator=g, requires_grad=True)
    labels = torch.randint(0, 11, (3, 5), generator=g)
    want = torch.log_softmax(logits, -1).gather(-1, labels[..., None])[..., 0]
    got = token_logps(logits, labels, chunk_elems=22)  # 2 rows per chunk, 8 chunks
    assert torch.allclose(got, want, atol=1e-6)
    got.sum().backward()
    g1 = logits.grad.clone()
    logits.grad = None
    want.sum().backward()
    assert torch.allclose(g1, logits.grad, atol=1e-6)


def test_entropy_from_logits():
    # [0,0]: ln 2; [ln3, 0]: -(.75 ln .75 + .25 ln .25) = .2157616 + .3465736 = .5623351
    h = entropy_from_logits(t([[[0.0, 0.0], [math.log(3.0), 0.0]]]))
    assert close(h, [[LN2, 0.5623351]])


# ------------------------------------------------------------------------ reward model


def test_pairwise_rm_loss():
    c, r = t([2.0, 0.0]), t([1.0, 1.0])
    # diffs [1, -1]: softplus(-1) = 0.3132617, softplus(1) = 1.3132617; mean 0.8132617
    assert close(pairwise_rm_loss(c, r), 0.8132617)
    assert close(pairwise_rm_loss_logexp(c, r), 0.8132617)
    # margin 1: diffs [0, -2]: ln 2 = 0.6931472, softplus(2) = 2.1269280; mean 1.4100376
    assert close(pairwise_rm_loss(c, r, margin=1.0), 1.4100376)
    assert close(pairwise_rm_loss(c, r, margin=t([1.0, 1.0])), 1.4100376)
    assert pairwise_accuracy(c, r).item() == 0.5
    # equal rewards -> ln 2; log-exp does not overflow on a huge gap
    assert close(pairwise_rm_loss(t([0.0]), t([0.0])), LN2)
    assert close(pairwise_rm_loss_logexp(t([0.0]), t([1000.0])), 1000.0)


# ------------------------------------------------------------------------------- DPO


def test_dpo_step0_is_ln2():
    lp = t([-5.0, -7.0, -1.0])
    loss, cr, rr = dpo_loss(lp, lp - 2, lp, lp - 2, beta=0.1)
    assert close(loss, LN2)
    assert close(cr, [0.0, 0.0, 0.0]) and close(rr, [0.0, 0.0, 0.0])
    # cDPO at step 0 is also ln 2 (both terms are ln 2)
    assert close(dpo_loss(lp, lp, lp, lp, label_smoothing=0.2)[0], LN2)


def test_dpo_sigmoid_cdpo_and_ipo_values():
    pc, pr, rc, rr = t([-1.0]), t([-3.0]), t([-2.0]), t([-2.0])
    # delta = (-1 - -3) - (-2 - -2) = 2; beta delta = 1; -log sigmoid(1) = 0.3132617
    loss, cr, rj = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert close(loss, 0.3132617)
    assert close(cr, [0.5]) and close(rj, [-0.5])  # 0.5*(−1+2), 0.5*(−3+2)
    # cDPO eps=0.1: 0.9*0.3132617 + 0.1*softplus(1)=0.1*1.3132617 -> 0.4132617
    assert close(dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)[0], 0.4132617)
    # IPO: (delta - 1/(2 beta))^2 = (2 - 1)^2 = 1 ; at step 0 with beta .1: (0 - 5)^2 = 25
    assert close(dpo_loss(pc, pr, rc, rr, beta=0.5, loss_type="ipo")[0], 1.0)
    z = t([0.0])
    assert close(dpo_loss(z, z, z, z, beta=0.1, loss_type="ipo")[0], 25.0)
    with pytest.raises(ValueError):
        dpo_loss(z, z, z, z, loss_type="hinge")


def test_dpo_gradient_pushes_chosen_up():
    pc = t([-2.0], requires_grad=True)
    pr = t([-2.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, t([-2.0]), t([-2.0]), beta=0.1)
    loss.backward()
    # d/dpc = -beta * sigmoid(-0) = -0.05 ; d/dpr = +0.05
    assert close(pc.grad, [-0.05]) and close(pr.grad, [0.05])


# ------------------------------------------------------------------------------- PPO

# four valid tokens and one padding token with garbage values:
#   ratio 1.5, A=+1: surr1 1.5, surr2 clip->1.2 ; min 1.2  -> loss -1.2 (clipped)
#   ratio 0.5, A=+1: surr1 0.5, surr2 0.8       ; min 0.5  -> loss -0.5
#   ratio 0.5, A=-1: surr1 -.5, surr2 -0.8      ; min -0.8 -> loss 0.8 (clipped)
#   ratio 4.0, A=-1: surr1 -4,  surr2 -1.2      ; min -4   -> loss 4 ; dual c=3: max(-4,-3) -> 3
RATIOS = [1.5, 0.5, 0.5, 4.0, 100.0]
ADV = t([[1.0, 1.0, -1.0, -1.0, 50.0]])
MASK = t([[1, 1, 1, 1, 0]])
OLD = t([[-1.0, -1.0, -1.0, -1.0, -1.0]])


def _logp():
    return (OLD + torch.log(t([RATIOS]))).clone().requires_grad_(True)


def test_policy_loss_clip_and_stats():
    logp = _logp()
    loss, st = policy_loss_with_stats(logp, OLD, ADV, MASK)
    assert close(loss, 0.775)  # (-1.2 - 0.5 + 0.8 + 4) / 4
    assert close(st["clip_frac"], 0.5)  # tokens 1 and 3
    assert close(st["dual_clip_frac"], 0.0)
    assert close(st["ratio_mean"], 1.625)  # (1.5+.5+.5+4)/4
    # (rho - 1) - ln rho: .5 - .4054651 = .0945349 ; -.5 + .6931472 = .1931472 (x2) ;
    # 3 - 1.3862944 = 1.6137056 ; sum 2.0945349 / 4 = .5236337
    assert close(st["approx_kl"], 0.5236337)
    loss.backward()
    # clipped tokens have zero gradient; unclipped: d(-rho A)/dlogp / 4 = -rho A / 4
    assert close(logp.grad, [[0.0, -0.125, 0.0, 1.0, 0.0]])


def test_policy_loss_dual_clip_branch():
    logp = _logp()
    loss, st = policy_loss_with_stats(logp, OLD, ADV, MASK, dual_clip=3.0)
    assert close(loss, 0.525)  # (-1.2 - 0.5 + 0.8 + 3) / 4
    assert close(st["dual_clip_frac"], 0.25)
    loss.backward()
    assert close(logp.grad[0, 3], 0.0)  # the dual-clipped token is constant in logp
    with pytest.raises(ValueError):
        policy_loss(logp, OLD, ADV, MASK, dual_clip=0.5)


def test_policy_loss_clip_higher():
    # clip_high 0.28: token 1 min(1.5, 1.28) -> -1.28; (-1.28 - .5 + .8 + 4)/4 = .755
    assert close(policy_loss(_logp(), OLD, ADV, MASK, clip_low=0.2, clip_high=0.28), 0.755)


def test_policy_loss_on_policy_is_minus_mean_advantage():
    adv = t([[0.5, -2.0, 1.0]])
    lp = t([[-1.0, -2.0, -3.0]])
    assert close(policy_loss(lp, lp, adv, t([[1, 1, 1]])), 0.1666667)  # -(-0.5/3)
    # rho = 1 everywhere: surr1 == surr2, nothing is clipped (a `<=` count would say 1.0)
    _, st = policy_loss_with_stats(lp, lp, adv, t([[1, 1, 1]]))
    assert close(st["clip_frac"], 0.0)


def test_policy_loss_asymmetric_bounds_one_side_at_a_time():
    """clip_low bounds the ratio from below, clip_high from above, never the other way.

    With clip_low 0.1 and clip_high 0.3 the clip range is [0.9, 1.3]; swapped it would be
    [0.7, 1.1]. Each row has exactly one clipped token, so the two cannot cancel.
    """
    old = t([[-1.0, -1.0, -1.0]])
    mask = t([[1, 1, 1]])
    # row "upper": ratio 1.5 A=+1 -> min(1.5, 1.3) = 1.3 (clipped; swapped: 1.1)
    #              ratio 0.5 A=+1 -> min(0.5, 0.9) = 0.5 ; ratio 1.05 A=-1 -> min(-1.05,
    #              -1.05) = -1.05. loss = -(1.3 + 0.5 - 1.05) / 3 = -0.25 (swapped -0.1833333)
    up = old + torch.log(t([[1.5, 0.5, 1.05]]))
    adv_up = t([[1.0, 1.0, -1.0]])
    loss, st = policy_loss_with_stats(up, old, adv_up, mask, clip_low=0.1, clip_high=0.3)
    assert close(loss, -0.25)
    assert close(st["clip_frac"], 1 / 3)
    # row "lower": ratio 0.5 A=-1 -> min(-0.5, -0.9) = -0.9 (clipped; swapped: -0.7)
    #              ratio 1.5 A=-1 -> min(-1.5, -1.3) = -1.5 ; ratio 1.05 A=+1 -> 1.05.
    #              loss = -(-0.9 - 1.5 + 1.05) / 3 = 0.45 (swapped 0.3833333)
    low = old + torch.log(t([[0.5, 1.5, 1.05]]))
    adv_low = t([[-1.0, -1.0, 1.0]])
    loss, st = policy_loss_with_stats(low, old, adv_low, mask, clip_low=0.1, clip_high=0.3)
    assert close(loss, 0.45)
    assert close(st["clip_frac"], 1 / 3)


def test_value_loss_clipping_branch():
    v, vo, ret = t([[1.0, 2.0, 7.0]]), t([[0.0, 1.8, 7.0]]), t([[2.0, 1.0, -7.0]])
    m = t([[1, 1, 0]])
    # tok1: (1-2)^2 = 1 ; clipped V = 0 + clip(1, .5) = .5 -> (.5-2)^2 = 2.25 -> max 2.25
    # tok2: (2-1)^2 = 1 ; clipped V = 1.8 + .2 = 2.0 -> 1.0 -> 1.0
    # 0.5 * (2.25 + 1) / 2 = 0.8125
    assert close(value_loss(v, vo, ret, m, clip=0.5), 0.8125)
    assert close(value_loss(v, vo, ret, m, clip=None), 0.5)  # 0.5 * (1 + 1) / 2


# -------------------------------------------------------------------------------- KL


def test_kl_estimators_known_inputs():
    logp, ref = t([[-1.0, -2.0, 0.0]]), t([[-1.5, -1.0, 9.0]])
    m = t([[1, 1, 0]])
    # r = logp - ref = [0.5, -1.0]
    assert close(kl_estimate(logp, ref, "k1", m), [[0.5, -1.0, 0.0]])
    assert close(kl_estimate(logp, ref, "k2", m), [[0.125, 0.5, 0.0]])
    # k3: e^-0.5 - 1 + 0.5 = 0.1065307 ; e^1 - 1 - 1 = 0.7182818
    assert close(kl_estimate(logp, ref, "k3", m), [[0.1065307, 0.7182818, 0.0]])
    # clamp 0.5: r -> [0.5, -0.5] ; k3(-0.5) = e^.5 - 1 - .5 = 0.1487213
    assert close(kl_estimate(logp, ref, "k3", m, clamp=0.5), [[0.1065307, 0.1487213, 0.0]])
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k4")


def test_k1_k3_unbiased_monte_carlo():
    # KL(p||q) for p=[.9,.1], q=[.5,.5]: .9 ln 1.8 + .1 ln .2 = 0.3680642
    g = torch.Generator().manual_seed(0)
    p, q = t([0.9, 0.1]), t([0.5, 0.5])
    x = torch.multinomial(p, 200_000, replacement=True, generator=g)
    lp, lq = p.log()[x][None], q.log()[x][None]
    assert abs(kl_estimate(lp, lq, "k1").mean().item() - 0.3680642) < 0.01
    assert abs(kl_estimate(lp, lq, "k3").mean().item() - 0.3680642) < 0.01


@pytest.mark.gpu
def test_cuda_matches_cpu():
    """The same formulas on CUDA (float32 and bf16 logits) give the CPU values."""
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from trainkit.rlhf.advantages import gae, group_advantages, whiten

    g = torch.Generator().manual_seed(0)
    B, T, V = 4, 16, 1000
    logp, old, ref = (-torch.rand(B, T, generator=g) * 3 for _ in range(3))
    adv, vals, ret = (torch.randn(B, T, generator=g) for _ in range(3))
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 10:] = False
    logits = torch.randn(B, T, V, generator=g)
    labels = torch.randint(0, V, (B, T), generator=g)

    def compute(dev, dt=torch.float32):
        d = {
            k: x.to(dev)
            for k, x in dict(
                logp=logp, old=old, ref=ref, adv=adv, vals=vals, ret=ret, mask=mask
            ).items()
        }
        lg = logits.to(dev, dt)
        out = [
            policy_loss_with_stats(d["logp"], d["old"], d["adv"], d["mask"], dual_clip=3.0)[0],
            value_loss(d["vals"], d["ret"] * 0.5, d["ret"], d["mask"]),
            kl_estimate(d["logp"], d["ref"], "k3", d["mask"]).sum(),
            dpo_loss(d["logp"][:, 0], d["logp"][:, 1], d["ref"][:, 0], d["ref"][:, 1])[0],
            gae(d["adv"], d["vals"], d["mask"], 0.99, 0.95)[0].sum(),
            whiten(d["ret"], d["mask"]).abs().sum(),
            group_advantages(d["ret"][:, 0], 2, "grpo").sum(),
            sequence_logps(lg, labels.to(dev), d["mask"]).sum(),
            entropy_from_logits(lg).sum(),
        ]
        return torch.stack([o.float().cpu() for o in out])

    cpu = compute("cpu")
    assert torch.allclose(compute("cuda"), cpu, rtol=1e-4, atol=1e-3)
    bf = compute("cuda", torch.bfloat16)  # bf16 logits: log-probs computed in float32
    assert torch.allclose(bf[-2:], cpu[-2:], rtol=2e-2)


def test_actor_loss_adds_clip_kl_and_entropy_terms_with_literal_values():
    """One row, three tokens, the last masked out; old_logp = ref_logp = 0.

    ratios rho = [1.1, 1.5, (1)], advantages A = [1, -1, (5)], clip 0.2:
      token 1: min(1.1 * 1, clip(1.1) * 1) = 1.1
      token 2: min(1.5 * -1, 1.2 * -1) = -1.5 (the unclipped branch: not counted as clipped)
      L_clip = -mean(1.1, -1.5) = 0.2
    k3 with r = log rho: 1/1.1 - 1 + ln 1.1 = 0.0044011, 1/1.5 - 1 + ln 1.5 = 0.0721318,
      KL = 0.0382665; kl_coef 0.1 -> +0.0038266
    entropy [2, 1, (9)] -> H = 1.5; entropy_coef 0.01 -> -0.015
    L = 0.2 + 0.0038266 - 0.015 = 0.1888266
    approx_kl = mean((rho - 1) - log rho) = mean(0.0046898, 0.0945349) = 0.0496124
    """
    from trainkit.rlhf.losses import actor_loss

    logp = torch.tensor([[math.log(1.1), math.log(1.5), 0.0]], requires_grad=True)
    zeros = torch.zeros(1, 3)
    adv = torch.tensor([[1.0, -1.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    ent = torch.tensor([[2.0, 1.0, 9.0]])
    loss, st = actor_loss(
        logp,
        zeros,
        adv,
        mask,
        ref_logp=zeros,
        entropy=ent,
        kl_coef=0.1,
        kl_kind="k3",
        entropy_coef=0.01,
    )
    assert float(loss) == pytest.approx(0.1888266, abs=1e-6)
    assert st["loss"] == pytest.approx(0.1888266, abs=1e-6)
    assert st["policy_loss"] == pytest.approx(0.2, abs=1e-6)
    assert st["kl_loss"] == pytest.approx(0.0382665, abs=1e-6)
    assert st["entropy"] == pytest.approx(1.5)
    assert st["clip_frac"] == 0.0 and st["ratio_mean"] == pytest.approx(1.3)
    assert st["approx_kl"] == pytest.approx(0.0496124, abs=1e-6)
    loss.backward()
    assert float(logp.grad[0, 2]) == 0.0  # the masked token gets no gradient
    # without the KL and entropy terms: the clipped term alone, and no kl/entropy stats
    only, st2 = actor_loss(logp.detach(), zeros, adv, mask, ref_logp=zeros, kl_coef=0.0)
    assert float(only) == pytest.approx(0.2, abs=1e-6)
    assert "kl_loss" not in st2 and "entropy" not in st2
