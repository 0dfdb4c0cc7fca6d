"""The config sections shared by the LLM recipes (trainkit.llm.sections): every recipe has
the shared model/optim/train keys, its defaults are the ones it had before the sections
were shared, and longctx extend's old ``train.*`` optimizer keys still load, with a notice."""

import dataclasses

import pytest

from trainkit.config import RENAMED_UNTIL, ConfigError, describe, load_config
from trainkit.llm import sections
from trainkit.llm.sft import SFTConfig
from trainkit.longctx.recipe import ExtendConfig
from trainkit.rlhf.trainers.dpo import DPOConfig
from trainkit.rlhf.trainers.ppo import GRPOConfig, PPOConfig
from trainkit.rlhf.trainers.rm import RMConfig

RECIPES = {
    "sft": SFTConfig,
    "rm": RMConfig,
    "dpo": DPOConfig,
    "ppo": PPOConfig,
    "grpo": GRPOConfig,
    "extend": ExtendConfig,
}
QUANTIZED = {"sft", "ppo", "grpo", "extend"}  # the recipes that train a quantised base


def _keys(cls, section: str) -> set[str]:
    return {k.split(".", 1)[1] for k, *_ in describe(cls) if k.startswith(section + ".")}


def _names(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


OPTIM = {
    "lr",
    "weight_decay",
    "betas",
    "eps",
    "max_grad_norm",
    "schedule",
    "warmup_steps",
    "min_lr_ratio",
}


def test_shared_key_sets():
    assert _names(sections.OptimSection) == OPTIM
    assert _names(sections.ModelSection) == {"name", "dtype", "gradient_checkpointing"}
    assert _names(sections.QuantModelSection) == _names(sections.ModelSection) | {"quantization"}
    assert _names(sections.RunFields) == {"max_steps", "seed", "progress", "report_to"}
    safety = {"save_every", "keep_last", "nonfinite", "max_nonfinite", "resume"}
    assert _names(sections.TrainFields) == _names(sections.RunFields) | safety


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_every_recipe_has_the_shared_model_and_optim_keys(name):
    cls = RECIPES[name]
    model = _names(sections.QuantModelSection if name in QUANTIZED else sections.ModelSection)
    assert _keys(cls, "model") >= model
    assert _keys(cls, "optim") >= OPTIM
    # the sections are the shared classes (or recipe subclasses adding keys)
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    inst = cls()
    assert isinstance(inst.optim, sections.OptimSection), hints["optim"]
    assert isinstance(inst.model, sections.ModelSection), hints["model"]
    assert _keys(cls, "train") >= {"max_steps", "save_every", "keep_last", "resume", "nonfinite"}
    assert "report_to" in _keys(cls, "train")  # every recipe, extend included
    if name != "extend":  # extend's seed is top-level and it has no progress bar
        assert isinstance(inst.train, sections.RunFields)


# Each recipe's defaults as they were before the shared sections (docs/CONFIG.md of
# 164d7e9); recipes with no optim.schedule then had the constant schedule of
# make_optimizer, and extend's optimizer keys were train.lr etc.
DEFAULTS = {
    "sft": {
        "optim": (2e-4, "cosine", 0, 1.0),
        "model": ("smollm2-135m-instruct", "auto", False, None),
        "train": (100, 0, 0, 2, False, "skip"),
    },
    "rm": {
        "optim": (1e-4, "constant", 0, 1.0),
        "model": ("tiny-llama", "auto", False),
        "train": (200, 0, 0, 2, False, "skip"),
    },
    "dpo": {
        "optim": (5e-6, "constant", 0, 1.0),
        "model": ("tiny-llama", "auto", False),
        "train": (100, 0, 0, 2, False, "skip"),
    },
    "ppo": {
        "optim": (1e-5, "constant", 0, 1.0),
        "model": ("tiny-llama", "auto", False, None),
        "train": (50, 0, 0, 2, False, "skip"),
    },
    "grpo": {
        "optim": (1e-5, "constant", 0, 1.0),
        "model": ("tiny-llama", "auto", False, None),
        "train": (50, 0, 0, 2, False, "skip"),
    },
    "extend": {
        "optim": (5e-5, "linear", 0, 1.0),
        "model": ("smollm2-135m-instruct", "float32", True, "nf4"),
        "train": (1000, None, 0, 2, False, "skip"),
    },
}


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_defaults_are_unchanged(name):
    cfg = RECIPES[name]()
    o, m, t = cfg.optim, cfg.model, cfg.train
    want = DEFAULTS[name]
    assert (o.lr, o.schedule, o.warmup_steps, o.max_grad_norm) == want["optim"]
    # the keys a recipe did not have are make_optimizer's former fallbacks (torch's AdamW)
    assert (o.weight_decay, tuple(o.betas), o.eps, o.min_lr_ratio) == (0.0, (0.9, 0.999), 1e-8, 0.0)
    got = (m.name, m.dtype, m.gradient_checkpointing)
    if name in QUANTIZED:
        got += (m.quantization,)
    assert got == want["model"]
    seed = getattr(t, "seed", None)
    assert (t.max_steps, seed, t.save_every, t.keep_last, t.resume, t.nonfinite) == want["train"]
    if name in ("ppo", "grpo"):
        assert o.critic_lr == 1e-5 and m.critic == "auto"
    if name == "extend":
        assert (m.full_finetune, cfg.seed, t.max_seconds, t.log_every) == (False, 0, 0.0, 10)
    # config.describe (and so docs/CONFIG.md) reports the recipe's defaults, not the class's
    rows = {k: d for k, _, d, _ in describe(RECIPES[name])}
    assert (rows["optim.lr"], rows["optim.schedule"], rows["model.name"]) == (
        want["optim"][0],
        want["optim"][1],
        want["model"][0],
    )


OLD_EXTEND = [
    ("train.lr", "3e-4", "lr", 3e-4),
    ("train.warmup_steps", "7", "warmup_steps", 7),
    ("train.schedule", "cosine", "schedule", "cosine"),
    ("train.weight_decay", "0.1", "weight_decay", 0.1),
    ("train.max_grad_norm", "0.5", "max_grad_norm", 0.5),
    ("train.grad_clip", "0.25", "max_grad_norm", 0.25),
]


@pytest.mark.parametrize(("old", "raw", "new", "value"), OLD_EXTEND)
def test_old_extend_optimizer_keys_map_to_optim_with_one_notice(capsys, old, raw, new, value):
    cfg = load_config(ExtendConfig, None, [f"{old}={raw}"])
    assert getattr(cfg.optim, new) == value
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"warning: override '{old}={raw}': config key '{old}' is now 'optim.{new}' "
        f"(the old name is read until trainkit {RENAMED_UNTIL})"
    ]
    with pytest.raises(ConfigError, match=f"both '{old}' and its new name 'optim.{new}'"):
        load_config(ExtendConfig, None, [f"{old}={raw}", f"optim.{new}={raw}"])


def test_old_extend_keys_in_yaml(tmp_path, capsys):
    y = tmp_path / "old.yaml"
    y.write_text("train:\n  max_steps: 3\n  lr: 3.0e-4\n  schedule: constant\n")
    cfg = load_config(ExtendConfig, y)
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.train.max_steps) == (3e-4, "constant", 3)
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"warning: {y}: config key 'train.lr' is now 'optim.lr' "
        f"(the old name is read until trainkit {RENAMED_UNTIL})",
        f"warning: {y}: config key 'train.schedule' is now 'optim.schedule' "
        f"(the old name is read until trainkit {RENAMED_UNTIL})",
    ]
    y.write_text("train:\n  lr: 3.0e-4\noptim:\n  lr: 1.0e-4\n")
    with pytest.raises(ConfigError, match="both 'train.lr' and its new name 'optim.lr'"):
        load_config(ExtendConfig, y)
    # the new names alone: no notice
    assert load_config(ExtendConfig, None, ["optim.lr=3e-4"]).optim.lr == 3e-4
    assert capsys.readouterr().err == ""


def test_kan_train_lr_is_not_renamed(capsys):
    """``train.lr`` is the KAN recipe's own key: it stays there, without a notice."""
    from trainkit.kan.recipes import KanFitConfig

    assert load_config(KanFitConfig, None, ["train.lr=0.5"]).train.lr == 0.5
    assert capsys.readouterr().err == ""
