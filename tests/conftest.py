"""Shared test setup: quiet, deterministic, headless, one BLAS thread.

The models in the default suite are tiny: on 2 cores one thread is faster than two that
contend (measured: the KAN demo took 40 s with one thread, 5 min with two under load), and
subprocesses (CLI, torchrun) inherit the setting.
"""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

try:
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
except ImportError:  # pragma: no cover - torch is a core dependency
    pass
