"""Kolmogorov-Arnold Networks (Liu et al. 2024, arXiv 2404.19756)."""
