"""RLHF / RLVR as in OpenRLHF (Hu et al. 2024, arXiv 2405.11143)."""
