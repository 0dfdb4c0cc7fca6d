"""The one table of KAN sparsity penalties (kan/penalties.PENALTIES) and what reads it:
KAN.regularization, the discover workflow, its config type and docs/papers.md."""

from pathlib import Path
from typing import get_args, get_type_hints

import pytest
import torch

from trainkit.common.errors import UserError
from trainkit.config import ConfigError, load_config
from trainkit.kan import KAN, workflow
from trainkit.kan import penalties as P
from trainkit.kan.discover import KanDiscoverConfig, SparseSection

ROOT = Path(__file__).resolve().parents[2]


def _acts():
    m = KAN([2, 3, 1], grid=3, seed=0, dtype=torch.float64)
    x = torch.rand(50, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0)) * 2 - 1
    return m, m.forward_with_acts(x)[1]


def test_table_rows_and_config_type():
    assert P.NAMES == ("std", "paper")
    assert get_args(get_type_hints(SparseSection)["penalty"]) == P.NAMES
    with pytest.raises(ConfigError, match="must be one of") as e:
        load_config(KanDiscoverConfig, None, ["sparse.penalty=l2"])
    assert "\n" not in str(e.value)


def test_rows_compute_the_documented_formulas():
    m, acts = _acts()
    paper = stds = 0.0
    for a in acts:  # eqs. 2.17-2.20 written out, and pykan 0.2's normalised edge size
        for size, is_paper in (
            (a["postacts"].abs().mean(0), True),
            (a["postacts"].std(0) / (a["input"].std(0) + 0.1), False),
        ):
            p = size / size.sum()
            term = size.sum() * 1.0 - 2.0 * (p * torch.log(p)).sum()
            if is_paper:
                paper = paper + term
            else:
                stds = stds + term
    torch.testing.assert_close(
        P.PENALTIES["paper"].fn(acts), paper, rtol=1e-9, atol=0
    )  # eps = 1e-12 inside
    torch.testing.assert_close(P.PENALTIES["std"].fn(acts), stds, rtol=1e-9, atol=0)
    # KAN.regularization is the paper row, the workflow's std_regularization the std row
    assert torch.equal(KAN.regularization(acts, 0.5, 3.0), P.paper_penalty(acts, 0.5, 3.0))
    assert workflow.std_regularization is P.PENALTIES["std"].fn


def test_workflow_uses_the_row_and_restores_the_model():
    m, acts = _acts()
    for name in P.NAMES:
        with workflow._penalty(m, name):
            assert torch.equal(m.regularization(acts, 1.0, 2.0), P.PENALTIES[name].fn(acts))
        assert "regularization" not in m.__dict__
    assert torch.equal(m.regularization(acts), P.paper_penalty(acts))


def test_unknown_penalty_is_one_line_user_error():
    with pytest.raises(UserError, match="penalty must be 'std' or 'paper', got 'l2'") as e:
        P.penalty("l2")
    assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="penalty"):
        workflow.discover("x1", [1, 1], penalty="l2")


def test_docs_hold_the_table():
    assert P.markdown_table() in (ROOT / "docs/papers.md").read_text()
