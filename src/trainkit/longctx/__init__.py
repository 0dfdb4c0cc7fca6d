"""Context extension as in "Extending Llama-3's Context Ten-Fold Overnight" (arXiv 2404.19553)."""
