"""Shared fixtures of the compression-algorithm tests: the digits data and models trained on it once.

Every test module here starts with ``pytest.importorskip("torch")`` (and scikit-learn where it needs the
data), so without the extras the tests are reported as skipped, not silently left out.
"""

from __future__ import annotations

import copy

import pytest


@pytest.fixture(scope="session")
def torch_single_thread():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)  # fixed thread count: reproducible sums and no fight with the kernels' pool
    yield torch
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def digits(torch_single_thread):
    pytest.importorskip("sklearn")
    from edgecompress.compress import digits

    return digits.load()


@pytest.fixture(scope="session")
def _trained_mlp(digits, torch_single_thread):
    from edgecompress.compress import digits as d

    torch_single_thread.manual_seed(0)
    return d.fit(d.DigitsMLP(), digits)


@pytest.fixture(scope="session")
def _trained_cnn(digits, torch_single_thread):
    from edgecompress.compress import digits as d

    torch_single_thread.manual_seed(0)
    return d.fit(d.DigitsCNN(), digits)


@pytest.fixture
def trained_mlp(_trained_mlp):
    """A DigitsMLP trained to ~97.5% test accuracy (a fresh copy per test: tests may modify it)."""
    return copy.deepcopy(_trained_mlp)


@pytest.fixture
def trained_cnn(_trained_cnn):
    """A DigitsCNN trained to ~99% test accuracy (a fresh copy per test)."""
    return copy.deepcopy(_trained_cnn)
