"""The one table of advantage estimators (rlhf/estimators.py) and everything that reads it:
the config type and its checks, the experience maker, group_advantages, docs/rlhf.md."""

from pathlib import Path
from typing import get_args

import pytest
import torch

from trainkit.config import ConfigError, load_config
from trainkit.rlhf import estimators as E
from trainkit.rlhf.advantages import group_advantages
from trainkit.rlhf.trainers.experience import compute_advantages
from trainkit.rlhf.trainers.rl_config import AlgoSection, RLConfig

ROOT = Path(__file__).resolve().parents[2]


def test_table_rows():
    assert E.NAMES == ("gae", "reinforce", "reinforce_baseline", "grpo", "dr_grpo", "rloo")
    assert E.GROUP == ("reinforce_baseline", "grpo", "dr_grpo", "rloo")
    assert E.TOKEN_LEVEL == ("gae", "reinforce", "reinforce_baseline")
    assert [n for n, s in E.ESTIMATORS.items() if s.critic] == ["gae"]


def test_config_type_and_checks_follow_the_table():
    from typing import get_type_hints

    assert get_args(get_type_hints(AlgoSection)["estimator"]) == E.NAMES
    for name in E.NAMES:
        crit = "auto" if E.ESTIMATORS[name].critic else "null"
        ok = [f"algo.estimator={name}", "rollout.n=2", f"model.critic={crit}"]
        load_config(RLConfig, None, ok)  # every row is a valid config
        if name in E.GROUP:
            with pytest.raises(ConfigError, match="rollout.n must be >= 2"):
                load_config(RLConfig, None, [*ok, "rollout.n=1"])
        else:
            assert load_config(RLConfig, None, [*ok, "rollout.n=1"]).rollout.n == 1
        if E.ESTIMATORS[name].critic:
            with pytest.raises(ConfigError, match="needs a critic"):
                load_config(RLConfig, None, [*ok, "model.critic=null"])
        else:
            with pytest.raises(ConfigError, match="only used by algo.estimator=gae"):
                load_config(RLConfig, None, [*ok, "model.critic=some-critic"])
        kl = [*ok, "algo.kl_in_reward=true"]
        if name in E.TOKEN_LEVEL:
            assert load_config(RLConfig, None, kl).algo.kl_in_reward
        else:
            with pytest.raises(ConfigError, match="token-level estimator"):
                load_config(RLConfig, None, kl)
    with pytest.raises(ConfigError, match="must be one of 'gae'"):
        load_config(RLConfig, None, ["algo.estimator=ppo"])


def test_group_advantages_takes_exactly_the_group_rows():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    for name in E.GROUP:
        # every group baseline is centred: the two groups' advantages sum to 0
        assert float(group_advantages(r, 2, method=name).sum()) == pytest.approx(0.0)
    for name in set(E.NAMES) - set(E.GROUP):
        with pytest.raises(ValueError, match="method must be"):
            group_advantages(r, 2, method=name)


def test_experience_maker_dispatches_on_the_table():
    # rewards [1, 0 | 0, 0] over 2 groups of 2, responses of 2 tokens
    r = torch.tensor([1.0, 0.0, 0.0, 0.0])
    mask = torch.ones(4, 2, dtype=torch.bool)
    values = torch.zeros(4, 2)
    for name in E.NAMES:
        adv, ret = compute_advantages(name, r, mask, 2, values=values)
        assert (ret is not None) == E.ESTIMATORS[name].critic
        if not E.ESTIMATORS[name].token_level:
            assert torch.equal(adv[:, 0], adv[:, 1])  # one value per sequence
    # grpo: group 1 = [1, 0]: mean 0.5, Bessel std 0.7071 -> +-0.5/0.7071 = +-0.7071
    adv, _ = compute_advantages("grpo", r, mask, 2)
    assert adv[:, 0].tolist() == pytest.approx([0.70711, -0.70711, 0.0, 0.0], abs=1e-4)
    with pytest.raises(ValueError, match="estimator must be one of gae, reinforce"):
        compute_advantages("ppo", r, mask, 2)


def test_docs_hold_the_table():
    assert E.markdown_table() in (ROOT / "docs/rlhf.md").read_text()
