"""Shared test setup: quiet, deterministic, headless, one BLAS thread.

Hypothesis: under ``CI=true`` the ``ci`` profile is loaded, which derandomizes every
property test (the same examples on every machine, no example database), so a random
draw cannot fail a submission; elsewhere the ``dev`` profile draws fresh examples each
run (``--hypothesis-seed=N`` replays one). Both must pass. ``HYPOTHESIS_PROFILE``
overrides the choice.

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

try:  # hypothesis is a dev dependency (absent on the GPU machine)
    from hypothesis import settings as _hyp_settings

    _hyp_settings.register_profile("ci", derandomize=True, database=None, deadline=None)
    _hyp_settings.register_profile("dev", deadline=None)
    _ci = os.environ.get("CI", "").lower() in ("1", "true", "yes")
    _hyp_settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if _ci else "dev"))
except ImportError:  # pragma: no cover
    pass
