"""Fixtures of the reliability tests."""

import pytest
from sft_helpers import final_weights, sft_cfg


@pytest.fixture(scope="session")
def reference_run(tmp_path_factory):
    """An uninterrupted 8-step tiny SFT run: ``(output_dir, final weights)``."""
    from trainkit.llm.sft import train

    out = tmp_path_factory.mktemp("reference")
    train(sft_cfg(out))
    return out, final_weights(out)
