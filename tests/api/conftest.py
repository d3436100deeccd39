"""Shared setup of the edgecompress.compress (one-call API) and CLI tests: torch on one thread (a
2-core machine shared with the kernels' pool), and small trained models built once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _torch_one_thread():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits_data():
    pytest.importorskip("sklearn")
    from edgecompress.compress import digits

    return digits.load()


@pytest.fixture(scope="session")
def trained_cnn(digits_data):
    """A DigitsCNN trained for 2 epochs (about 2 s), in eval mode; tests compress deep copies."""
    import torch

    from edgecompress.compress import digits

    torch.manual_seed(0)
    return digits.fit(digits.DigitsCNN(width=16, hidden=64), digits_data, epochs=2)
