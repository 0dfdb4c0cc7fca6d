"""Non-finite step guard and graceful Ctrl-C."""

import os
import signal

import pytest

from trainkit.common.errors import UserError
from trainkit.common.guard import GracefulInterrupt, NonFiniteError, NonFiniteGuard


def test_skip_policy_counts_and_stops_after_n_in_a_row():
    g = NonFiniteGuard(policy="skip", max_consecutive=3)
    assert g.check(1, 0.5, 2.0) is True
    assert g.check(2, float("nan")) is False
    assert g.check(3, 1.0, float("inf")) is False
    assert (g.skipped, g.consecutive) == (2, 2)
    assert g.check(4, 0.1) is True  # a good step resets the run
    assert (g.skipped, g.consecutive) == (2, 0)
    g.check(5, float("nan"))
    g.check(6, float("nan"))
    with pytest.raises(NonFiniteError, match="step 7 \\(3 in a row, 5 in total\\)"):
        g.check(7, float("-inf"))


def test_stop_policy_raises_at_once_and_accepts_tensors():
    import torch

    g = NonFiniteGuard(policy="stop")
    assert g.check(1, torch.tensor(1.5)) is True
    with pytest.raises(NonFiniteError):
        g.check(2, torch.tensor(float("nan")))


def test_bad_policy_is_user_error():
    with pytest.raises(UserError, match="must be 'skip' or 'stop'"):
        NonFiniteGuard(policy="ignore")


def test_first_sigint_sets_flag_second_raises():
    # the handler before (default_int_handler, or SIG_IGN when started in the background)
    before = signal.getsignal(signal.SIGINT)
    with GracefulInterrupt() as gi:
        os.kill(os.getpid(), signal.SIGINT)
        assert gi.requested is True
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
    assert signal.getsignal(signal.SIGINT) is before
