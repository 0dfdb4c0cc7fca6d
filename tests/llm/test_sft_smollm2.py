"""Slow: LoRA SFT of the real SmolLM2-135M-Instruct on the toy answer-style chat data."""

import json

import pytest
import torch

from trainkit.config import load_config
from trainkit.llm.demo_data import resolve_data_path
from trainkit.llm.sft import SFTConfig, train
from trainkit.llm.toy_data import matches_style


def _generate(model, tok, questions):
    outs = []
    for q in questions:
        enc = tok.apply_chat_template(
            [{"role": "user", "content": q}],
            add_generation_prompt=True,
            return_tensors="pt",
            return_dict=True,
        )
        with torch.no_grad():
            ids = model.generate(**enc, max_new_tokens=20, do_sample=False)
        outs.append(tok.decode(ids[0, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    return outs


@pytest.mark.slow
def test_lora_sft_smollm2_learns_answer_style(tmp_path):
    from transformers import AutoModelForCausalLM

    from trainkit.llm.models import load_model

    torch.set_num_threads(2)
    cfg = load_config(
        SFTConfig,
        "configs/rlhf/sft_smollm2.yaml",
        [
            f"output_dir={tmp_path}",
            "train.progress=false",
            "train.max_steps=20",
            "train.save_every=0",
        ],
    )
    held = [
        json.loads(x)["messages"][0]["content"]
        for x in open(resolve_data_path("builtin:toy-chat-eval")).read().splitlines()[:10]
    ]
    base, tok = load_model("smollm2-135m-instruct")
    before = _generate(base.eval(), tok, held)
    res = train(cfg)
    merged = AutoModelForCausalLM.from_pretrained(res["merged"]).eval()
    after = _generate(merged, tok, held)
    n_before = sum(map(matches_style, before))
    n_after = sum(map(matches_style, after))
    print(
        {
            "initial_eval_loss": res["initial_eval_loss"],
            "final_eval_loss": res["final_eval_loss"],
            "style_before": n_before,
            "style_after": n_after,
            "n": len(held),
            "examples": list(zip(held[:3], before[:3], after[:3])),
        }
    )
    assert res["final_eval_loss"] < 0.5 * res["initial_eval_loss"]
    assert n_before <= 1 and n_after >= 0.75 * len(held)
