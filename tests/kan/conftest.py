"""Shared fixtures of the KAN core tests."""

import math

import pytest
import torch


def target_fn(x: torch.Tensor) -> torch.Tensor:
    """The paper's running example f(x, y) = exp(sin(pi x) + y^2); [N, 2] -> [N]."""
    return torch.exp(torch.sin(math.pi * x[:, 0]) + x[:, 1] ** 2)


@pytest.fixture(autouse=True)
def _one_thread():
    """Tests share 2 cores with other work: keep torch single-threaded."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def exp_sin_data():
    from trainkit.kan import create_dataset

    return create_dataset(
        target_fn, n_var=2, train_num=1000, test_num=1000, seed=0, dtype=torch.float64
    )
