"""Config loader: YAML -> nested dataclasses, overrides, strict errors."""

from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trainkit.config import ConfigError, describe, load_config, parse_override, to_dict, to_yaml


@dataclass
class Optim:
    lr: float = 1e-3
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "linear", "constant"] = "cosine"


@dataclass
class Model:
    name: str = "tiny-llama"
    layers: list[int] = field(default_factory=lambda: [2, 5, 1])
    dropout: Optional[float] = None


@dataclass
class Cfg:
    model: Model = field(default_factory=Model)
    optim: Optim = field(default_factory=Optim)
    steps: int = 10
    verbose: bool = True
    output_dir: str = "runs/x"

    def validate(self):
        if self.steps < 0:
            raise ConfigError(f"steps must be >= 0, got {self.steps}")


def write(tmp_path, text, name="c.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_without_file():
    cfg = load_config(Cfg)
    assert cfg.model.layers == [2, 5, 1]
    assert cfg.optim.lr == 1e-3 and cfg.steps == 10


def test_yaml_fills_nested_sections_and_keeps_other_defaults(tmp_path):
    p = write(tmp_path, "model:\n  name: smollm2\noptim:\n  lr: 5.0e-5\nsteps: 7\n")
    cfg = load_config(Cfg, p)
    assert cfg.model.name == "smollm2"
    assert cfg.model.layers == [2, 5, 1]  # untouched default
    assert cfg.optim.lr == 5e-5 and cfg.optim.schedule == "cosine"
    assert cfg.steps == 7


def test_overrides_convert_types_and_apply_after_file(tmp_path):
    p = write(tmp_path, "steps: 7\n")
    cfg = load_config(
        Cfg,
        p,
        [
            "steps=12",
            "optim.lr=1e-4",
            "model.layers=4,3,1",
            "verbose=false",
            "model.dropout=0.1",
            "optim.betas=[0.8,0.9]",
            "optim.schedule=linear",
            "output_dir=runs/y",
        ],
    )
    assert cfg.steps == 12
    assert cfg.optim.lr == pytest.approx(1e-4)  # "1e-4" is a str in YAML 1.1; converted
    assert cfg.model.layers == [4, 3, 1]
    assert cfg.verbose is False
    assert cfg.model.dropout == 0.1
    assert cfg.optim.betas == (0.8, 0.9)
    assert cfg.optim.schedule == "linear"
    assert cfg.output_dir == "runs/y"


def test_override_null_for_optional():
    cfg = load_config(Cfg, None, ["model.dropout=0.5", "model.dropout=null"])
    assert cfg.model.dropout is None


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    p = write(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, p)
    msg = str(e.value)
    assert "optim.lrr" in msg and str(p) in msg
    assert "lr, betas, schedule" in msg
    assert "\n" not in msg


def test_unknown_top_level_override():
    with pytest.raises(
        ConfigError, match=r"unknown key 'stepz'; valid keys here: model, optim, steps"
    ):
        load_config(Cfg, None, ["stepz=3"])


@pytest.mark.parametrize(
    "override, expect",
    [
        ("steps=abc", "'steps' expects an integer, got 'abc'"),
        ("steps=1.5", "'steps' expects an integer, got 1.5"),
        ("verbose=3", "'verbose' expects true/false, got 3"),
        ("optim.lr=fast", "'optim.lr' expects a number, got 'fast'"),
        ("optim.schedule=step", "'optim.schedule' must be one of 'cosine', 'linear', 'constant'"),
        ("optim=3", "'optim' is a section; expected a mapping, got 3"),
        ("optim.betas=[1,2,3]", "'optim.betas' expects 2 items, got 3"),
        ("model.layers=[a]", "'model.layers[0]' expects an integer, got 'a'"),
    ],
)
def test_wrong_types_are_clear_errors(override, expect):
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, None, [override])
    assert expect in str(e.value)


def test_text_that_yaml_reads_as_a_mapping_stays_text_for_string_keys():
    c = load_config(Cfg, None, ["model.name=User: {}\nAssistant: ", "output_dir=[a, b]"])
    assert c.model.name == "User: {}\nAssistant: " and c.output_dir == "[a, b]"
    with pytest.raises(ConfigError, match="'model.layers' expects a list"):
        load_config(Cfg, None, ["model.layers={a: 1}"])


def test_validate_hook_runs():
    with pytest.raises(ConfigError, match="steps must be >= 0, got -1"):
        load_config(Cfg, None, ["steps=-1"])


def test_bad_yaml_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Cfg, tmp_path / "nope.yaml")
    p = write(tmp_path, "model: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load_config(Cfg, p)
    p = write(tmp_path, "- 1\n- 2\n", "list.yaml")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(Cfg, p)


def test_override_syntax():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a=x=y") == (["a"], "x=y")
    with pytest.raises(ConfigError, match="not of the form"):
        parse_override("steps")
    with pytest.raises(ConfigError, match="empty key"):
        parse_override("a..b=1")


def test_yaml_round_trip(tmp_path):
    cfg = load_config(Cfg, None, ["optim.lr=0.25", "model.layers=1,2"])
    p = write(tmp_path, to_yaml(cfg), "resolved.yaml")
    again = load_config(Cfg, p)
    assert to_dict(again) == to_dict(cfg)
    assert to_dict(cfg)["optim"]["betas"] == [0.9, 0.999]


def test_describe_lists_leaf_keys():
    keys = [r[0] for r in describe(Cfg)]
    assert keys == [
        "model.name",
        "model.layers",
        "model.dropout",
        "optim.lr",
        "optim.betas",
        "optim.schedule",
        "steps",
        "verbose",
        "output_dir",
    ]


@settings(max_examples=150, deadline=None)
@given(st.text(max_size=40))
def test_any_override_string_is_accepted_or_a_config_error(text):
    try:
        load_config(Cfg, None, [text])
    except ConfigError:
        pass


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=200))
def test_any_yaml_text_is_accepted_or_a_config_error(tmp_path_factory, text):
    p = tmp_path_factory.mktemp("y") / "c.yaml"
    p.write_text(text, encoding="utf-8")
    try:
        load_config(Cfg, p)
    except ConfigError:
        pass


@dataclass
class _Pair:
    a: int = 0
    b: int = 0


@dataclass
class _Cross:
    pair: _Pair = field(default_factory=_Pair)

    def validate(self):
        if self.pair.a > self.pair.b:
            raise ConfigError(f"pair.a ({self.pair.a}) must not exceed pair.b ({self.pair.b})")


def test_validate_runs_once_after_all_overrides():
    # each override alone would be invalid; together they are fine
    cfg = load_config(_Cross, None, ["pair.a=5", "pair.b=6"])
    assert (cfg.pair.a, cfg.pair.b) == (5, 6)
    with pytest.raises(ConfigError, match=r"pair.a \(7\) must not exceed pair.b \(6\)"):
        load_config(_Cross, None, ["pair.b=6", "pair.a=7"])


def test_renamed_keys_are_read_with_one_notice_and_both_names_is_an_error(tmp_path, capsys):
    """``resume`` -> ``train.resume`` and ``optim.grad_clip`` -> ``optim.max_grad_norm``
    (config.RENAMED): the old names still work for one release, from YAML and overrides."""
    from trainkit.config import RENAMED_UNTIL, ConfigError, load_config
    from trainkit.llm.sft import SFTConfig
    from trainkit.rlhf.trainers.ppo import PPOConfig

    cfg = load_config(SFTConfig, None, ["resume=true"])
    assert cfg.train.resume is True
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "warning: override 'resume=true': config key 'resume' is now 'train.resume' "
        f"(the old name is read until trainkit {RENAMED_UNTIL})"
    ]
    y = tmp_path / "c.yaml"
    y.write_text("optim:\n  grad_clip: 0.25\n")
    assert load_config(PPOConfig, y).optim.max_grad_norm == 0.25
    assert "'optim.grad_clip' is now 'optim.max_grad_norm'" in capsys.readouterr().err
    y.write_text("resume: true\ntrain:\n  resume: false\n")
    with pytest.raises(ConfigError, match="both 'resume' and its new name 'train.resume'"):
        load_config(SFTConfig, y)
    # the new names alone: no notice
    assert load_config(SFTConfig, None, ["train.resume=true"]).train.resume is True
    assert capsys.readouterr().err == ""
