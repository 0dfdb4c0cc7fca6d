"""Ray trainer: same reward curve as the single-process run, dead actors, resume.

One local Ray cluster (2 CPUs) for the module; every run holds both CPUs with its two
actors (policy + rollout), which is also the situation where a default 1-CPU helper task
would deadlock.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time

import pytest
import torch

ray = pytest.importorskip("ray")

from tiny_rl import TINY_GRPO, VARIED_REWARD  # noqa: E402
from trainkit.common.errors import UserError  # noqa: E402
from trainkit.config import ConfigError, load_config  # noqa: E402
from trainkit.llm.checkpoint import list_checkpoints  # noqa: E402
from trainkit.rlhf.ray.cluster import RoleDiedError, helper_task, role_bundles  # noqa: E402
from trainkit.rlhf.ray.config import RaySection, RoleResources  # noqa: E402
from trainkit.rlhf.ray.trainer import concat_rollouts, train_ray  # noqa: E402
from trainkit.rlhf.rollout.base import Rollout  # noqa: E402
from trainkit.rlhf.trainers.ppo import GRPOConfig, train  # noqa: E402

#: the tiny GRPO run every test here starts from (config and CLI alike)
TINY = [
    "model.name=tiny-llama",
    *TINY_GRPO,
    f"data.reward={VARIED_REWARD}",
    "optim.lr=1e-3",
    "train.threads=1",
]


def _cfg(out, *over):
    base = TINY + ["train.save_model=false", f"output_dir={out}"]
    return load_config(GRPOConfig, None, base + list(over))


RC = RaySection(enabled=True, policy=RoleResources(num_cpus=1), rollout=RoleResources(num_cpus=1))


@pytest.fixture(scope="module")
def cluster():
    t = time.perf_counter()
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        configure_logging=False,
        log_to_driver=False,
        namespace=RC.namespace,
    )
    init_s = time.perf_counter() - t
    yield init_s
    ray.shutdown()


def test_ray_section_validation_and_bundles():
    with pytest.raises(ConfigError, match="weight_sync"):
        RaySection(weight_sync="nccl-magic").validate()
    with pytest.raises(ConfigError, match="^ray.weight_sync_backend must be auto, gloo or nccl"):
        RaySection(weight_sync="broadcast", weight_sync_backend="mpi").validate()
    with pytest.raises(ConfigError, match="placement_strategy"):
        RaySection(placement_strategy="ANY").validate()
    b, idx = role_bundles(RaySection(rollout=RoleResources(num_cpus=2, num_gpus=0.5, replicas=2)))
    assert b == [("PACK", [{"CPU": 1.0}, {"CPU": 2.0, "GPU": 0.5}, {"CPU": 2.0, "GPU": 0.5}])]
    assert idx == {
        "policy": [(0, 0)],
        "reference": [],
        "critic": [],
        "rollout": [(0, 1), (0, 2)],
        "reward": [],
    }
    b, idx = role_bundles(
        RaySection(
            colocate=True,
            policy=RoleResources(num_gpus=0.5),
            rollout=RoleResources(num_cpus=0.5, num_gpus=0.25, replicas=2),
        )
    )
    assert b == [("PACK", [{"CPU": 2.0, "GPU": 1.0}])]
    assert idx["policy"] == [(0, 0)] and idx["rollout"] == [(0, 0), (0, 0)]
    b, idx = role_bundles(RaySection(reward=RoleResources(num_cpus=0.5, num_gpus=1, replicas=1)))
    assert b == [("PACK", [{"CPU": 1.0}, {"CPU": 1.0}, {"CPU": 0.5, "GPU": 1.0}])]
    assert idx["rollout"] == [(0, 1)] and idx["reward"] == [(0, 2)]


def test_ray_section_replicas_nodes_and_strategy_errors_are_one_line():
    cases = [
        (
            RaySection(policy=RoleResources(replicas=3, num_nodes=2)),
            "ray.policy.replicas=3 is not divisible by ray.policy.num_nodes=2",
        ),
        (RaySection(strategy="deepspeed"), "ray.strategy must be one of auto, single, fsdp2"),
        (
            RaySection(strategy="single", policy=RoleResources(replicas=2)),
            "ray.strategy=single trains one replica",
        ),
        (RaySection(critic=RoleResources(replicas=-1)), "ray.critic.replicas must be >= 0"),
        (RaySection(rollout=RoleResources(num_nodes=0)), "ray.rollout.num_nodes must be >= 1"),
        (
            RaySection(colocate=True, policy=RoleResources(replicas=2, num_nodes=2)),
            "ray.policy.num_nodes must be 1",
        ),
    ]
    for rc, msg in cases:
        with pytest.raises(ConfigError) as e:
            rc.validate()
        assert msg in str(e.value) and "\n" not in str(e.value)
    ok = RaySection(policy=RoleResources(replicas=4, num_nodes=2))
    ok.validate()
    assert ok.train_strategy(4) == "fsdp2" and ok.train_strategy(1) == "single"
    # through the config loader and the trainer's cross-section check
    with pytest.raises(ConfigError, match="ray.strategy must be one of"):
        load_config(GRPOConfig, None, ["ray.strategy=zero3"])
    cfg = load_config(GRPOConfig, None, ["rollout.prompts_per_step=3", "ray.policy.replicas=2"])
    with pytest.raises(UserError, match=r"prompts_per_step=3 must be divisible by ray.policy"):
        train_ray(cfg, ray_cfg=cfg.ray)


def test_role_bundles_spread_over_nodes_and_colocated_replicas():
    """8 GPUs on 2 nodes: policy 4 x 1 GPU spread over both nodes (STRICT_SPREAD, 2 per
    node), 2 vLLM engines and a reference on the shared PACK group."""
    rc = RaySection(
        policy=RoleResources(num_cpus=4, num_gpus=1, replicas=4, num_nodes=2),
        reference=RoleResources(num_cpus=2, num_gpus=1, replicas=1),
        rollout=RoleResources(num_cpus=2, num_gpus=1, replicas=2),
    )
    rc.validate()
    groups, slots = role_bundles(rc)
    assert groups == [
        ("PACK", [{"CPU": 2.0, "GPU": 1.0}] * 3),
        ("STRICT_SPREAD", [{"CPU": 8.0, "GPU": 2.0}, {"CPU": 8.0, "GPU": 2.0}]),
    ]
    assert slots["policy"] == [(1, 0), (1, 0), (1, 1), (1, 1)]
    assert slots["reference"] == [(0, 0)] and slots["rollout"] == [(0, 1), (0, 2)]
    # colocated: one bundle per policy replica, other roles round robin over them
    rc = RaySection(
        colocate=True,
        policy=RoleResources(num_cpus=1, num_gpus=0.5, replicas=2),
        rollout=RoleResources(num_cpus=1, num_gpus=0.25, replicas=2),
        critic=RoleResources(num_cpus=1, num_gpus=0.25, replicas=1),
    )
    groups, slots = role_bundles(rc)
    assert groups == [("PACK", [{"CPU": 3.0, "GPU": 1.0}, {"CPU": 2.0, "GPU": 0.75}])]
    assert slots["policy"] == [(0, 0), (0, 1)] and slots["rollout"] == [(0, 0), (0, 1)]
    assert slots["critic"] == [(0, 0)]


def test_shard_experience_pads_with_zero_mask_groups():
    from trainkit.rlhf.ray.shards import group_rows, shard_experience
    from trainkit.rlhf.trainers.experience import Experience

    B, R = 6, 3  # 3 groups of 2
    seq = torch.arange(B * 5).reshape(B, 5)
    exp = Experience(
        seq,
        torch.ones(B, 5, dtype=torch.long),
        torch.ones(B, R, dtype=torch.long),
        torch.zeros(B, R),
        torch.arange(B, dtype=torch.float)[:, None].expand(B, R).clone(),
        torch.arange(B, dtype=torch.float),
        group=2,
    )
    a, b = shard_experience(exp, 2)
    assert a.rewards.tolist() == [0, 1, 2, 3] and b.rewards.tolist() == [4, 5, 0, 1]
    assert a.action_mask.sum() == 12 and b.action_mask.tolist() == [[1] * 3] * 2 + [[0] * 3] * 2
    assert group_rows(8, 2, 2) == [[0, 1, 2, 3], [4, 5, 6, 7]]
    assert group_rows(4, 2, 3) == [[0, 1], [2, 3]]


def test_concat_rollouts_repads_prompts_and_responses():
    a = Rollout(
        torch.tensor([[5, 6]]),
        torch.tensor([[1, 1]]),
        torch.tensor([[7]]),
        torch.tensor([[1]]),
        torch.tensor([[-0.5]]),
        torch.tensor([True]),
        1,
    )
    b = Rollout(
        torch.tensor([[8]]),
        torch.tensor([[1]]),
        torch.tensor([[9, 2]]),
        torch.tensor([[1, 1]]),
        torch.tensor([[-1.0, -2.0]]),
        torch.tensor([False]),
        1,
    )
    c = concat_rollouts([a, b], pad=0)
    assert c.prompt_ids.tolist() == [[5, 6], [0, 8]]
    assert c.prompt_mask.tolist() == [[1, 1], [0, 1]]
    assert c.response_ids.tolist() == [[7, 0], [9, 2]]
    assert c.action_mask.tolist() == [[1, 0], [1, 1]]
    assert c.logprobs.tolist() == [[-0.5, 0.0], [-1.0, -2.0]]
    assert c.truncated.tolist() == [True, False]


def _rewards(out):
    recs = [json.loads(x) for x in open(os.path.join(out, "metrics.jsonl"))]
    return {r["step"]: r["reward"] for r in recs if "reward" in r}, recs


def test_ray_run_matches_single_process_curve(cluster, tmp_path):
    steps = 4
    t = time.perf_counter()
    single = train(_cfg(tmp_path / "single", f"train.max_steps={steps}"))
    single_s = time.perf_counter() - t
    t = time.perf_counter()
    dist = train_ray(_cfg(tmp_path / "ray", f"train.max_steps={steps}"), ray_cfg=RC)
    ray_s = time.perf_counter() - t
    r1, _ = _rewards(tmp_path / "single")
    r2, recs = _rewards(tmp_path / "ray")
    assert sorted(r1) == sorted(r2) == list(range(1, steps + 1))
    # same seeds, same prompts, same weights after every sync: the same samples up to
    # float noise between 1-thread actors and the test process
    diffs = [abs(r1[s] - r2[s]) for s in r1]
    print(
        f"\nRAY_VS_SINGLE rewards single={[r1[s] for s in sorted(r1)]} "
        f"ray={[r2[s] for s in sorted(r2)]} single_s={single_s:.1f} ray_s={ray_s:.1f} "
        f"startup_s={dist['startup_s']:.1f} cluster_init_s={cluster:.1f}"
    )
    assert max(diffs) <= 0.25 and sum(diffs) / len(diffs) <= 0.1
    assert abs(single["last_eval"]["eval_reward"] - dist["last_eval"]["eval_reward"]) <= 0.25
    assert all(r["sync_s"] > 0 for r in recs if "reward" in r)
    assert dist["startup_s"] > 0 and dist["steps"] == steps


def test_async_on_ray_follows_the_single_process_async_run(cluster, tmp_path):
    # the same fixed-lag schedule on both backends: batch s sampled by version max(0, s-1)
    # (the rollout actor loads object-store snapshots; one process: the engine process)
    over = ("train.max_steps=4", "rollout.async=true", "algo.recompute_old_logp=true")
    single = train(_cfg(tmp_path / "single", *over))
    dist = train_ray(_cfg(tmp_path / "ray", *over), ray_cfg=RC)
    r1, recs1 = _rewards(tmp_path / "single")
    r2, recs2 = _rewards(tmp_path / "ray")
    assert sorted(r1) == sorted(r2) == [1, 2, 3, 4]
    for recs in (recs1, recs2):
        assert [r["async/staleness"] for r in recs if "reward" in r] == [0, 1, 1, 1]
    assert single["staleness"] == dist["staleness"] == {"0": 1, "1": 3}
    diffs = [abs(r1[s] - r2[s]) for s in r1]
    print(
        f"\nRAY_ASYNC rewards single={[r1[s] for s in sorted(r1)]} ray={[r2[s] for s in sorted(r2)]}"
    )
    assert max(diffs) <= 0.25 and sum(diffs) / len(diffs) <= 0.1
    assert abs(single["last_eval"]["eval_reward"] - dist["last_eval"]["eval_reward"]) <= 0.25


@pytest.mark.slow  # ~100 s: a warm start, then 3 multi-turn steps in one process and on Ray
def test_multiturn_episodes_on_ray_match_single_process(cluster, tmp_path):
    from tiny_guess import guess_warm_start
    from trainkit.llm.models import load_model
    from trainkit.rlhf.envs.builtin import make_guess

    data = tmp_path / "guess.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in make_guess(200, 5, "train", high=4)))
    warm = guess_warm_start(tmp_path / "warm", load_model("tiny-llama"), 4)
    over = [
        f"model.name={warm}",
        f"data.path={data}",
        "data.chat_template=false",
        "env.name=guess_number",
        "env.max_turns=3",
        "rollout.max_new_tokens=3",
        "rollout.n=4",
        "rollout.prompts_per_step=4",
        "optim.lr=1e-3",
        "train.max_steps=3",
        "train.threads=1",
        "train.progress=false",
        "train.save_model=false",
        "eval.every=0",
        "eval.n_prompts=8",
    ]
    single = train(load_config(GRPOConfig, None, [*over, f"output_dir={tmp_path / 'single'}"]))
    dist = train_ray(
        load_config(GRPOConfig, None, [*over, f"output_dir={tmp_path / 'ray'}"]), ray_cfg=RC
    )
    r1, recs1 = _rewards(tmp_path / "single")
    r2, recs2 = _rewards(tmp_path / "ray")
    assert sorted(r1) == sorted(r2) == [1, 2, 3]
    steps1 = [r for r in recs1 if "reward" in r]
    steps2 = [r for r in recs2 if "reward" in r]
    for a, b in zip(steps1, steps2):
        # episodes with observations inside, logged by the one loop on both backends
        assert a["env/episode_len"] > 3 and b["env/episode_len"] > 3
        assert b["env/turns"] == pytest.approx(a["env/turns"], abs=0.5)
    assert max(abs(r1[s] - r2[s]) for s in r1) <= 0.25
    for key in ("eval_reward", "eval_turns"):
        assert key in dist["last_eval"] and key in single["last_eval"]


def test_helper_task_runs_while_actors_hold_every_cpu(cluster):
    @ray.remote(num_cpus=1)
    class Hog:
        def ping(self):
            return 1

    hogs = [Hog.remote() for _ in range(2)]
    assert ray.get([h.ping.remote() for h in hogs]) == [1, 1]
    add = helper_task(lambda a, b: a + b)
    assert ray.get(add.remote(2, 3), timeout=60) == 5
    for h in hogs:
        ray.kill(h)


@pytest.mark.slow  # ~55 s each on 2 busy cores
@pytest.mark.parametrize(
    "role,index,replicas", [("rollout", 0, 1), ("policy", 0, 1), ("policy", 1, 2)]
)
def test_dead_actor_stops_with_role_message_and_resume_continues(
    cluster, tmp_path, role, index, replicas
):
    """With 2 policy replicas, rank 1 dies while rank 0 waits for it in a collective:
    the run still stops at once (the driver waits on whichever replica fails first)."""
    from dataclasses import replace

    out = tmp_path / role
    rc = RC
    if replicas > 1:
        rc = replace(RC, policy=RoleResources(num_cpus=0.5, replicas=replicas))

    def kill_at_step_2(rec):
        if rec.get("step") == 2 and "reward" in rec:
            actor = ray.get_actor(f"{role}-{index}-{os.getpid()}", namespace=RC.namespace)
            os.kill(ray.get(actor.ready.remote()), signal.SIGKILL)

    # the rollout dies before step 3 (step 2 is saved); the policy dies before saving step 2
    kept = 2 if role == "rollout" else 1
    t = time.perf_counter()
    with pytest.raises(
        RoleDiedError,
        match=rf"^ray: the {role} actor died .*after step 2; "
        rf"checkpoint of step {kept} in .*train.resume=true",
    ):
        train_ray(
            _cfg(out, "train.max_steps=4", "train.save_every=1"), on_log=kill_at_step_2, ray_cfg=rc
        )
    assert time.perf_counter() - t < 240  # no hang in a collective (gloo's timeout: 30 min)
    assert [s for s, _ in list_checkpoints(out / "checkpoints")][-1] == kept
    s = train_ray(
        _cfg(out, "train.max_steps=4", "train.save_every=1", "train.resume=true"), ray_cfg=rc
    )
    assert s["steps"] == 4
    rewards, _ = _rewards(out)
    assert sorted(rewards) == [1, 2, 3, 4]  # steps 3 and 4 from the resumed run
    assert [s for s, _ in list_checkpoints(out / "checkpoints")][-1] == 4


@pytest.mark.slow  # ~40 s
def test_colocated_run_with_two_rollout_replicas_and_a_reward_actor(cluster, tmp_path):
    """Both rollout actors and the reward actor share the policy's 2-CPU bundle; prompts
    are split over the rollouts, completions over the reward actors."""
    rc = RaySection(
        enabled=True,
        colocate=True,
        policy=RoleResources(num_cpus=1),
        rollout=RoleResources(num_cpus=0.25, replicas=2),
        reward=RoleResources(num_cpus=0.5, replicas=1),
    )
    recs = []
    s = train_ray(_cfg(tmp_path, "train.max_steps=2"), on_log=recs.append, ray_cfg=rc)
    steps = [r for r in recs if "reward" in r]
    assert s["steps"] == 2 and len(steps) == 2
    assert all(0.0 <= r["reward"] <= 2.0 and r["sync_s"] > 0 for r in steps)  # len % 3


@pytest.mark.slow  # ~40 s
def test_metric_function_and_summary_keys_are_the_same_on_ray_and_single(cluster, tmp_path):
    """One metric through ``ppo.train(cfg, metrics=...)`` (``ray.enabled`` picks the Ray
    backend): it is in metrics.jsonl of both runs; the summaries share their keys, Ray
    adding its own three."""

    def reward_again(ctx):  # VARIED_REWARD is len(completion) % 3
        return {"check/reward": sum(len(c) % 3 for c in ctx.completions) / len(ctx.completions)}

    over = ["train.max_steps=2"]
    single = train(_cfg(tmp_path / "single", *over), metrics=[reward_again])
    ray_over = ["ray.enabled=true", "ray.policy.num_cpus=1", "ray.rollout.num_cpus=1"]
    dist = train(_cfg(tmp_path / "ray", *over, *ray_over), metrics=[reward_again])
    for run in ("single", "ray"):
        _, recs = _rewards(tmp_path / run)
        steps = [r for r in recs if "reward" in r]
        assert len(steps) == 2, run
        assert all(r["check/reward"] == pytest.approx(r["reward"]) for r in steps), run
        assert all(r["gen_cpu_s"] > 0 and "lr" in r for r in steps), run
    assert set(dist) - set(single) == {"startup_s", "ray_init_s", "weight_channel"}
    assert set(single) <= set(dist) and dist["nonfinite_skipped"] == 0


def test_merged_lora_weights_load_into_a_plain_model():
    """What the policy actor ships to HF rollout actors: LoRA merged, plain HF names."""
    from peft import LoraConfig, get_peft_model

    from trainkit.llm.models import load_model
    from trainkit.rlhf.rollout.hf import HFEngine
    from trainkit.rlhf.rollout.sync import merged_state_dict

    base, _ = load_model("tiny-llama", dtype="float32")
    lora = get_peft_model(
        base, LoraConfig(r=4, lora_alpha=16, target_modules=["q_proj", "o_proj", "up_proj"])
    )
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    sd = merged_state_dict(lora)
    assert not any("lora" in k or "base_layer" in k for k in sd)
    plain, _ = load_model("tiny-llama", dtype="float32")
    HFEngine(plain, pad_id=2, eos_ids=[2]).update_weights(sd)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        want = lora(input_ids=ids).logits
        got = plain(input_ids=ids).logits
        untouched = load_model("tiny-llama", dtype="float32")[0](input_ids=ids).logits
    assert torch.allclose(got, want, atol=1e-5)
    assert (untouched - want).abs().max() > 1e-2  # the adapters matter


@pytest.mark.slow  # ~60 s
def test_ray_lora_run_matches_single_process(cluster, tmp_path):
    over = ["train.max_steps=3", "lora.enabled=true", "lora.r=4", "optim.lr=5e-3"]
    train(_cfg(tmp_path / "single", *over))
    train_ray(_cfg(tmp_path / "ray", *over), ray_cfg=RC)
    r1, _ = _rewards(tmp_path / "single")
    r2, _ = _rewards(tmp_path / "ray")
    assert sorted(r1) == sorted(r2) == [1, 2, 3]
    assert max(abs(r1[s] - r2[s]) for s in r1) <= 0.25


@pytest.mark.slow  # ~45 s
def test_broadcast_weight_sync_gives_the_same_run(cluster, tmp_path):
    from dataclasses import replace

    over = ["train.max_steps=3"]
    train(_cfg(tmp_path / "single", *over))
    recs = []
    s = train_ray(
        _cfg(tmp_path / "ray", *over),
        on_log=recs.append,
        ray_cfg=replace(RC, weight_sync="broadcast"),
    )
    assert s["weight_channel"] == "gloo"  # auto: CPU actors
    r1, _ = _rewards(tmp_path / "single")
    r2, _ = _rewards(tmp_path / "ray")
    assert sorted(r1) == sorted(r2) == [1, 2, 3]
    assert max(abs(r1[s] - r2[s]) for s in r1) <= 0.25
    assert all(r["sync_s"] > 0 for r in recs if "reward" in r)


def _final_weights(out):
    from safetensors.torch import load_file

    from trainkit.llm.checkpoint import latest_checkpoint

    path = latest_checkpoint(out / "checkpoints")
    state = json.loads((path / "trainer_state.json").read_text())
    return load_file(str(path / "model.safetensors")), state


def test_two_policy_replicas_fsdp2_with_a_reference_actor_match_one_process(cluster, tmp_path):
    """Data parallel proof: 2 FSDP2 policy replicas (gloo), each on half of the prompt
    groups, plus a separate reference actor, end with the weights of the single-process
    run on the whole batch, and log the same KL (same reference log-probs). In float64,
    as the PPO data-parallel tests below: in float32 the first AdamW steps turn the
    different rounding of one pass vs two half passes into 1.7e-5 on this machine."""
    steps = 3
    over = [f"train.max_steps={steps}", "algo.kl_coef=0.05", "rollout.prompts_per_step=4"]
    over += ["model.dtype=float64"]
    single_recs, dp_recs = [], []
    train(_cfg(tmp_path / "single", *over), on_log=single_recs.append)
    rc = RaySection(
        enabled=True,
        policy=RoleResources(num_cpus=0.5, replicas=2),
        reference=RoleResources(num_cpus=0.5, replicas=1),
        rollout=RoleResources(num_cpus=0.5),
    )
    t = time.perf_counter()
    s = train_ray(_cfg(tmp_path / "dp", *over), on_log=dp_recs.append, ray_cfg=rc)
    dp_s = time.perf_counter() - t
    w1, st1 = _final_weights(tmp_path / "single")
    w2, st2 = _final_weights(tmp_path / "dp")
    assert st1["step"] == st2["step"] == steps and st2["world_size"] == 2
    assert sorted(w1) == sorted(w2)
    from trainkit.llm.models import load_model

    init = load_model("tiny-llama", dtype="float32")[0].state_dict()
    moved = max(float((w1[k] - init[k]).abs().max()) for k in w1)
    diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    k1 = [r["kl"] for r in single_recs if "reward" in r]
    k2 = [r["kl"] for r in dp_recs if "reward" in r]
    print(
        f"\nDP_VS_SINGLE max|w_dp - w_single|={diff:.2e} max|w - w0|={moved:.2e} "
        f"kl single={k1} dp={k2} dp_run_s={dp_s:.1f} startup_s={s['startup_s']:.1f}"
    )
    assert moved > 1e-3  # the weights did move (lr 1e-3, 3 Adam steps)
    assert diff < 1e-5
    assert len(k1) == len(k2) == steps
    assert all(abs(x - y) < 1e-6 for x, y in zip(k1, k2)) and max(k1) > 0
    # the global (pre-clip) gradient norm and loss: a wrong loss scale would show here
    # (Adam alone is scale invariant); the reward curve is the same too
    for key, tol in (("grad_norm", 1e-4), ("loss", 1e-6), ("reward", 1e-9)):
        a = [r[key] for r in single_recs if "reward" in r]
        b = [r[key] for r in dp_recs if "reward" in r]
        assert max(abs(x - y) for x, y in zip(a, b)) <= tol * max(1.0, max(map(abs, a))), key


def _ppo_cfg(out, *over):
    from trainkit.rlhf.trainers.ppo import PPOConfig

    g = _cfg(out)
    base = [
        f"{k}={v}"
        for k, v in [
            ("model.name", g.model.name),
            ("data.path", g.data.path),
            ("data.chat_template", "false"),
            ("rollout.max_new_tokens", 4),
            ("rollout.n", 2),
            ("rollout.prompts_per_step", 4),
            ("eval.n_prompts", 4),
            ("eval.every", 0),
            ("train.progress", "false"),
            ("train.save_model", "false"),
            ("output_dir", out),
            ("data.reward", VARIED_REWARD),
            ("optim.lr", 1e-3),
            ("optim.critic_lr", 1e-3),
            ("train.threads", 1),
        ]
    ]
    return load_config(PPOConfig, None, base + list(over))


def _match(tmp_path, single_recs, ray_recs, keys, tol=3e-5):
    w1, _ = _final_weights(tmp_path / "single")
    w2, st = _final_weights(tmp_path / "ray")
    diff = max(float((w1[k] - w2[k]).abs().max()) for k in w1)
    assert diff < tol, diff
    for key in keys:
        a = [r[key] for r in single_recs if "reward" in r]
        b = [r[key] for r in ray_recs if "reward" in r]
        assert len(a) == len(b) and max(abs(x - y) for x, y in zip(a, b)) < 1e-4, key
    return st, diff


@pytest.mark.slow  # ~80 s
def test_ppo_with_two_data_parallel_critic_actors_matches_one_process(cluster, tmp_path):
    """PPO (gae, KL in the reward): 2 FSDP2 policy replicas with the reference inside,
    2 FSDP2 critic actors computing values and training on the value loss. In float64:
    in float32 the first AdamW step turns the rounding of an 8-row vs two 4-row passes
    (2.8e-6 relative on the gradient) into 5e-5 on weights whose |g| is near eps."""
    over = ["train.max_steps=2", "model.dtype=float64"]
    single_recs, ray_recs = [], []
    train(_ppo_cfg(tmp_path / "single", *over), on_log=single_recs.append)
    rc = RaySection(
        enabled=True,
        policy=RoleResources(num_cpus=0.5, replicas=2),
        critic=RoleResources(num_cpus=0.25, replicas=2),
        rollout=RoleResources(num_cpus=0.5),
    )
    train_ray(_ppo_cfg(tmp_path / "ray", *over), on_log=ray_recs.append, ray_cfg=rc)
    st, diff = _match(
        tmp_path, single_recs, ray_recs, ["kl", "value_loss", "critic_grad_norm", "grad_norm"]
    )
    from safetensors.torch import load_file

    from trainkit.llm.checkpoint import latest_checkpoint

    c1 = load_file(
        str(latest_checkpoint(tmp_path / "single" / "checkpoints_critic") / "model.safetensors")
    )
    c2 = load_file(
        str(latest_checkpoint(tmp_path / "ray" / "checkpoints_critic") / "model.safetensors")
    )
    cdiff = max(float((c1[k] - c2[k]).abs().max()) for k in c1)
    print(f"\nPPO_CRITIC_ACTORS policy diff={diff:.2e} critic diff={cdiff:.2e}")
    assert sorted(c1) == sorted(c2) and cdiff < 3e-5


@pytest.mark.slow  # ~90 s
def test_dp_replicas_with_inprocess_critic_resume_to_the_single_process_weights(cluster, tmp_path):
    """2 policy replicas holding a (sharded) critic each: stop after 2 steps, resume to 3;
    the weights equal a continuous single-process 3-step run (float64, as above)."""
    single_recs, ray_recs = [], []
    f64 = "model.dtype=float64"
    train(_ppo_cfg(tmp_path / "single", "train.max_steps=3", f64), on_log=single_recs.append)
    rc = RaySection(
        enabled=True,
        policy=RoleResources(num_cpus=0.5, replicas=2),
        rollout=RoleResources(num_cpus=1),
    )
    train_ray(
        _ppo_cfg(tmp_path / "ray", "train.max_steps=2", f64), on_log=ray_recs.append, ray_cfg=rc
    )
    s = train_ray(
        _ppo_cfg(tmp_path / "ray", "train.max_steps=3", "train.resume=true", f64),
        on_log=ray_recs.append,
        ray_cfg=rc,
    )
    assert s["steps"] == 3
    st, diff = _match(tmp_path, single_recs, ray_recs, ["kl", "value_loss", "grad_norm"])
    print(f"\nDP_RESUME policy diff={diff:.2e}")
    assert st["world_size"] == 2 and st["step"] == 3


@pytest.mark.slow  # ~70 s
def test_dp_lora_replicas_with_broadcast_sync_match_one_process(cluster, tmp_path):
    """LoRA policy sharded over 2 replicas: rank 0 gathers the full weights into its plain
    copy, merges the adapters and streams them to the engine over the gloo channel."""
    from dataclasses import replace

    over = ["train.max_steps=2", "lora.enabled=true", "lora.r=4", "optim.lr=5e-3"]
    # no adapter dropout: its masks depend on each process's RNG and rows, so with it the
    # runs agree in distribution only
    over += ["lora.dropout=0", "rollout.prompts_per_step=4", "algo.kl_coef=0.05"]
    single_recs, ray_recs = [], []
    train(_cfg(tmp_path / "single", *over), on_log=single_recs.append)
    rc = RaySection(
        enabled=True,
        policy=RoleResources(num_cpus=0.5, replicas=2),
        rollout=RoleResources(num_cpus=1),
    )
    train_ray(
        _cfg(tmp_path / "ray", *over),
        on_log=ray_recs.append,
        ray_cfg=replace(rc, weight_sync="broadcast"),
    )
    st, diff = _match(tmp_path, single_recs, ray_recs, ["reward", "kl", "grad_norm"])
    print(f"\nDP_LORA_BROADCAST adapter diff={diff:.2e}")
    assert st["world_size"] == 2 and all(r["sync_s"] > 0 for r in ray_recs if "reward" in r)


def test_reference_worker_logps_equal_the_lora_policy_with_adapters_disabled(tmp_path):
    """What a reference actor returns (the base model) is what the in-process reference
    gives for a LoRA policy (adapters disabled), on the same rollout rows; no Ray needed."""
    from trainkit.rlhf.ray.learners import ReferenceWorker
    from trainkit.rlhf.ray.shards import rollout_rows
    from trainkit.rlhf.trainers.experience import forward_no_grad, ref_context
    from trainkit.rlhf.trainers.ppo import build_models

    cfg = _cfg(tmp_path, "lora.enabled=true", "lora.r=4", "algo.kl_coef=0.05")
    policy, tok, ref, _ = build_models(cfg)
    assert ref is None  # LoRA: the in-process reference is the policy without adapters
    with torch.no_grad():
        for n, p in policy.named_parameters():
            if "lora_B" in n:
                p.add_(0.1)  # adapters that change the policy
    g = torch.Generator().manual_seed(0)
    B, P, R = 8, 5, 4
    ro = Rollout(
        torch.randint(3, 60, (B, P), generator=g),
        torch.ones(B, P, dtype=torch.long),
        torch.randint(3, 60, (B, R), generator=g),
        torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]] * 4),
        torch.zeros(B, R),
        torch.zeros(B, dtype=torch.bool),
        4,
    )
    worker = ReferenceWorker(cfg, threads=1)
    got = torch.cat([worker.logps(rollout_rows(ro, r)) for r in ([0, 1, 2, 3], [4, 5, 6, 7])])
    model, ctx = ref_context(policy, None)
    with ctx:
        want = forward_no_grad(
            model, ro.sequences, ro.attention_mask, ro.action_mask.bool(), 1.0, 8, 4
        )
    with torch.no_grad():
        adapted = forward_no_grad(
            policy, ro.sequences, ro.attention_mask, ro.action_mask.bool(), 1.0, 8, 4
        )
    mask = ro.action_mask.bool()
    assert got.shape == (B, R)
    assert float((got - want)[mask].abs().max()) < 1e-5
    assert float((adapted - want)[mask].abs().max()) > 1e-2  # the adapters matter


def _cli_args(out, *over):
    """``trainkit rlhf grpo`` on Ray (2 CPUs: policy + rollout actor), as _cfg."""
    args = TINY + [
        "train.save_every=0",
        f"output_dir={out}",
        "ray.enabled=true",
        "ray.num_cpus=2",
        "ray.policy.num_cpus=1",
        "ray.rollout.num_cpus=1",
    ]
    return [sys.executable, "-m", "trainkit.cli", "rlhf", "grpo", *args, *over]


@pytest.mark.slow  # ~50 s: two CLI runs, each starting its own Ray
def test_ray_sigint_checkpoints_exits_130_and_resume_reaches_the_last_step(tmp_path):
    """A terminal's Ctrl-C (SIGINT to the whole process group, Ray's processes included)
    after step 1: the driver finishes the step, the policy actor checkpoints it, no final
    eval or model, exit 130; ``train.resume=true`` runs the remaining steps."""
    import subprocess

    from safetensors.torch import load_file

    out, steps = tmp_path / "run", 6
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    over = [f"train.max_steps={steps}", "train.save_model=true"]
    proc = subprocess.Popen(
        _cli_args(out, *over),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group, like a terminal's foreground job
    )
    metrics, deadline = out / "metrics.jsonl", time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if metrics.exists() and any('"reward"' in x for x in metrics.read_text().splitlines()):
            break
        time.sleep(0.2)
    assert proc.poll() is None, proc.communicate()[1][-2000:]
    t_sig = time.perf_counter()
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    stop_s = time.perf_counter() - t_sig
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and "actor died" not in err, err[-3000:]
    assert "rl: interrupted after step" in err and "train.resume=true" in err
    summary = json.loads((out / "summary.json").read_text())
    stopped = summary["steps"]
    assert summary["interrupted"] is True and 1 <= stopped < steps
    ckpts = list_checkpoints(out / "checkpoints")
    assert [s for s, _ in ckpts] == [stopped]  # save_every=0: the interrupt wrote it
    path = ckpts[-1][1]
    state = json.loads((path / "trainer_state.json").read_text())
    weights = load_file(str(path / "model.safetensors"))
    assert state["step"] == stopped and len(weights) > 10
    assert all(torch.isfinite(t).all() for t in weights.values())
    assert not (out / "final").exists()  # an interrupted run writes no final model
    rewards, _ = _rewards(out)
    assert sorted(rewards) == list(range(1, stopped + 1))

    res = subprocess.run(
        _cli_args(out, *over, "train.resume=true"),
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == steps and summary["interrupted"] is False
    rewards, recs = _rewards(out)
    assert sorted(rewards) == list(range(1, steps + 1))  # steps after `stopped` were added
    assert [r["step"] for r in recs if "reward" in r] == list(range(1, steps + 1))
    assert [s for s, _ in list_checkpoints(out / "checkpoints")][-1] == steps
    assert (out / "final").is_dir()
    print(f"\nRAY_SIGINT stopped after step {stopped}; exit 130 {stop_s:.1f} s after SIGINT")
