"""docs/CONFIG.md is generated from the dataclasses and must not be stale."""

from trainkit.config_docs import DOC, render


def test_config_reference_is_current():
    assert DOC.exists(), "run: python -m trainkit.config_docs"
    assert DOC.read_text() == render(), (
        "docs/CONFIG.md is stale: run `.venv/bin/python -m trainkit.config_docs`"
    )


def test_attribute_docs_keep_continuations_that_look_like_keys():
    from dataclasses import dataclass

    from trainkit.config_docs import _attr_docs

    @dataclass
    class S:
        """A section.

        Attributes:
            warmup: optimizer steps of linear warmup;
                0: no warmup.
            lr (float): peak learning rate.
        """

        warmup: int = 0
        lr: float = 1e-3

    assert _attr_docs(S) == {
        "warmup": "optimizer steps of linear warmup; 0: no warmup.",
        "lr": "peak learning rate.",
    }
