"""Rollout engines: sample completions and their per-token log-probabilities.

``base.Rollout`` is what every engine returns; ``base.RolloutEngine`` the interface
(``generate`` and ``update_weights``); ``hf.HFEngine`` the in-process Hugging Face
implementation. Distributed and vLLM engines (Ray issue) implement the same interface.
"""

from trainkit.rlhf.rollout.base import Rollout, RolloutEngine, pad_left, response_logps

__all__ = ["Rollout", "RolloutEngine", "pad_left", "response_logps"]
