"""RL trainers: ``experience`` (rollout -> advantages) and ``ppo`` (the PPO/GRPO loop)."""
