"""Recipes: ``rm`` (reward model), ``dpo`` (DPO family), ``ppo`` (PPO/GRPO/RLOO online RL,
with ``experience`` and ``rl_config``)."""
