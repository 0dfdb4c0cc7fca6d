"""Environments and tools for multi-turn RL (see :mod:`trainkit.rlhf.envs.base`)."""
