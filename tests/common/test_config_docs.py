"""docs/CONFIG.md is generated from the dataclasses and must not be stale."""

from trainkit.config_docs import DOC, render


def test_config_reference_is_current():
    assert DOC.exists(), "run: python -m trainkit.config_docs"
    assert DOC.read_text() == render(), (
        "docs/CONFIG.md is stale: run `.venv/bin/python -m trainkit.config_docs`"
    )
