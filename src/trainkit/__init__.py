"""trainkit: KANs, RLHF/RLVR and long-context extension on one small PyTorch base.

Importing ``trainkit`` imports nothing heavy; import a part (``trainkit.kan``,
``trainkit.llm``, ``trainkit.rlhf``, ``trainkit.longctx``) to use it.
"""

__version__ = "0.1.0"
