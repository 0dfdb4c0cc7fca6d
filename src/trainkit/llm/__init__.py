"""The shared LLM base: models, data, LoRA/QLoRA, strategies, checkpoints, SFT."""
