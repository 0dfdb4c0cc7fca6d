"""`trainkit longctx extend`: QLoRA path on a tiny random Llama, full fine-tune on the
char-level tiny model; the saved folder reloads with plain transformers and keeps the rule."""

import json

import pytest
import torch

from trainkit.config import load_config
from trainkit.longctx import experiment, recipe, tinybase


def _jsonl(path, n=6):
    from trainkit.longctx.tasks import make_sample

    with open(path, "w") as f:
        for i in range(n):
            rec = make_sample("passkey", seed=0, index=i, length=300, depth=0.5)
            f.write(json.dumps({"messages": rec["messages"]}) + "\n")
    return path


def test_configs_load():
    for name in ("llama3_8b_80k", "smollm2_16k", "tiny_8x"):
        cfg = load_config(recipe.ExtendConfig, f"configs/longctx/{name}.yaml", [])
        assert cfg.rope.method == "theta"
    cfg = load_config(recipe.ExtendConfig, "configs/longctx/llama3_8b_80k.yaml", [])
    assert (cfg.rope.theta, cfg.lora.r, cfg.lora.alpha, cfg.optim.lr) == (2e8, 32, 16.0, 5e-5)
    assert cfg.lora.target_modules == ["q_proj", "k_proj", "v_proj", "o_proj"]
    assert cfg.lora.modules_to_save == ["embed_tokens"] and cfg.model.quantization == "nf4"
    with pytest.raises(Exception, match="no training data"):
        recipe.ExtendConfig().check()


@pytest.mark.slow
def test_qlora_extend_merge_reload(tmp_path):
    pytest.importorskip("bitsandbytes")
    from transformers import AutoModelForCausalLM

    data = _jsonl(tmp_path / "d.jsonl")
    cfg = recipe.ExtendConfig()
    cfg.model.name = "tiny-llama"
    cfg.rope.method, cfg.rope.factor = "yarn", 4.0
    cfg.data.path, cfg.data.max_length = str(data), 512
    cfg.train.max_steps, cfg.optim.lr, cfg.train.loss_chunk = 2, 1e-3, 64
    cfg.output_dir = str(tmp_path / "out")
    model, tok, rep = recipe.extend(cfg, log=None)
    assert rep["steps"] == 2 and all(map(lambda v: v == v, rep["losses"]))
    assert rep["trainable_params"] < rep["total_params"]
    # LoRA on q/k/v/o only, embeddings fully trained
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    assert any("q_proj.lora_A" in n for n in names) and any("embed_tokens" in n for n in names)
    assert not any("gate_proj" in n for n in names)
    re = AutoModelForCausalLM.from_pretrained(cfg.output_dir)
    p = re.config.rope_parameters
    assert p["rope_type"] == "yarn" and p["factor"] == 4.0
    assert re.config.max_position_embeddings == 4 * 8192
    assert re.config.trainkit_longctx["method"] == "yarn"
    assert getattr(re.config, "quantization_config", None) is None
    assert not any("lora" in n for n, _ in re.named_parameters())
    assert json.loads((tmp_path / "out" / "trainkit_extend.json").read_text())["steps"] == 2


def test_full_finetune_tiny_theta(tmp_path):
    from transformers import AutoModelForCausalLM

    base = tinybase.build_model(tinybase.TinyModelSection(), seed=0)
    from trainkit.longctx.chartok import char_tokenizer

    tinybase.save(base, char_tokenizer(), tmp_path / "base")
    cfg = load_config(
        recipe.ExtendConfig,
        "configs/longctx/tiny_8x.yaml",
        [
            f"model.name={tmp_path / 'base'}",
            "data.max_length=300",
            "data.min_length=100",
            "train.max_steps=2",
            f"output_dir={tmp_path / 'ext'}",
        ],
    )
    model, tok, rep = recipe.extend(cfg, log=None)
    assert rep["steps"] == 2
    # the rotary tables were rebuilt with theta 1e6: inv_freq[1] = 1e6 ** (-2/32) = 10 ** -0.375
    inv = model.model.rotary_emb.inv_freq
    assert float(inv[1]) == pytest.approx(0.42169650342858, rel=1e-6)
    re = AutoModelForCausalLM.from_pretrained(tmp_path / "ext")
    assert re.config.rope_parameters["rope_theta"] == 1e6
    assert re.config.max_position_embeddings == 2048
    ids = torch.tensor([[4, 10, 11, 12]])
    with torch.no_grad():
        torch.testing.assert_close(re(input_ids=ids).logits, model(input_ids=ids).logits)
    # moved from the base
    assert not torch.equal(
        re.model.layers[0].self_attn.q_proj.weight, base.model.layers[0].self_attn.q_proj.weight
    )


def test_tiny_8x_yaml_matches_code():
    from trainkit.config import to_dict

    a = load_config(recipe.ExtendConfig, "configs/longctx/tiny_8x.yaml", [])
    b = load_config(recipe.ExtendConfig, None, experiment.TINY_8X)
    assert to_dict(a) == to_dict(b)


def test_tiny_checks_against_the_issue_targets():
    """tiny_checks is pure: literal variants in, the issue's targets out."""

    def var(pk, kv, pk2048, kv2048, spk, skv, ppl, pk_ppl, kv_ppl):
        return {
            "passkey": pk,
            "kv": kv,
            "passkey_by_length": {"2048": pk2048},
            "kv_by_length": {"2048": kv2048},
            "short_passkey": spk,
            "short_kv": skv,
            "short_answer_ppl": ppl,
            "short_passkey_ppl": pk_ppl,
            "short_kv_ppl": kv_ppl,
        }

    v = {
        "base": var(0.51, 0.18, 0.2, 0.1, 1.0, 0.18, 1.22, 1.0018, 1.494),
        "theta+ft": var(0.99, 0.16, 0.95, 0.1, 0.98, 0.22, 1.39, 1.0229, 1.887),
        "none+ft": var(0.64, 0.11, 0.35, 0.05, 0.88, 0.12, 1.56, 1.1, 1.9),
    }
    c = experiment.tiny_checks(v, 2048)
    assert c["theta_ft_passkey>=0.9"] and not c["theta_ft_kv>=0.8"]
    assert not c["base_passkey<=0.2"] and c["base_kv<=0.2"]
    assert c["theta_minus_notheta_passkey@2048"] == 0.6 and c["theta_beats_notheta_passkey_by_0.3"]
    assert c["theta_minus_notheta_kv@2048"] == 0.05 and not c["theta_beats_notheta_kv_by_0.3"]
    assert c["short_passkey_change"] == -0.02 and c["short_passkey_within_0.05"]
    assert c["short_ppl_rel_change"] == 0.1393 and not c["short_ppl_within_5%"]
    assert c["short_passkey_ppl_rel_change"] == 0.0211 and c["short_kv_ppl_rel_change"] == 0.2631
    assert c["ok"] is False


def _tiny_cfg(out, *over):
    """tiny_8x.yaml (the shipped tiny base) shortened to 6 steps, warmup and linear decay."""
    return load_config(
        recipe.ExtendConfig,
        "configs/longctx/tiny_8x.yaml",
        [
            "data.max_length=96",
            "data.min_length=64",
            "train.batch_size=2",
            "train.max_steps=6",
            "train.log_every=1",
            "optim.lr=1e-3",
            "optim.warmup_steps=2",
            "optim.schedule=linear",
            "optim.weight_decay=0.1",
            "optim.max_grad_norm=0.5",
            f"output_dir={out}",
            *over,
        ],
    )


def _weights(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


def test_extend_optimizer_is_make_optimizer_of_the_optim_section(tmp_path):
    """AdamW(optim.lr, betas, eps, weight_decay) and the lr_factor schedule of optim, step
    by step: the lr of update s is exactly optim.lr * lr_factor(s, max_steps, warmup,
    schedule), as when extend set it by hand from train.lr / train.schedule."""
    from trainkit.llm.optim import lr_factor

    logs = []
    _, _, rep = recipe.extend(_tiny_cfg(tmp_path / "a"), log=logs.append)
    lrs = [r["lr"] for r in logs if "lr" in r]
    assert rep["steps"] == 6
    assert lrs == [1e-3 * lr_factor(s, 6, 2, "linear") for s in range(6)]
    assert lrs == [0.0005, 0.001, 0.001, 0.00075, 0.0005, 0.00025]


def test_extend_resume_restores_the_schedule_also_from_a_checkpoint_without_one(
    tmp_path, monkeypatch
):
    """A run stopped after step 3 and resumed reaches the uninterrupted run's weights, with
    the scheduler in the checkpoint and with a checkpoint saved before extend had one
    (no scheduler.pt: the schedule is re-derived from the step)."""
    import shutil

    from trainkit.llm import train_control

    ref, _, _ = recipe.extend(_tiny_cfg(tmp_path / "ref"), log=None)
    ref_w = _weights(ref)

    orig = train_control.TrainControl.end_step

    def stop_at_3(self, step, data, extra=None, last=False):
        stop = orig(self, step, data, extra, last)
        if step == 3:
            self.interrupted = True
            return True
        return stop

    with monkeypatch.context() as m:
        m.setattr(train_control.TrainControl, "end_step", stop_at_3)
        _, _, rep = recipe.extend(_tiny_cfg(tmp_path / "run", "train.save_every=3"), log=None)
    assert rep["interrupted"] and rep["steps"] == 3
    last = tmp_path / "run" / "checkpoints" / "step-000003"
    assert (last / "scheduler.pt").is_file()
    shutil.copytree(tmp_path / "run", tmp_path / "old")
    (tmp_path / "old" / "checkpoints" / "step-000003" / "scheduler.pt").unlink()
    for name in ("run", "old"):
        logs = []
        model, _, rep = recipe.extend(
            _tiny_cfg(tmp_path / name, "train.save_every=3", "train.resume=true"),
            log=logs.append,
        )
        assert rep["steps"] == 6 and not rep["interrupted"]
        assert [r["lr"] for r in logs if "lr" in r] == [0.00075, 0.0005, 0.00025]
        got = _weights(model)
        assert all(torch.equal(got[k], ref_w[k]) for k in ref_w), name
