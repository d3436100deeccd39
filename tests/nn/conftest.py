"""Shared setup of the edgecompress.nn tests: torch on one thread (a 2-core machine shared with the
kernels' pool; fixed thread counts also keep torch's float sums reproducible).

Every test module here starts with ``pytest.importorskip("torch")``, so without torch the tests are
reported as skipped.
"""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _torch_one_thread():
    torch = pytest.importorskip("torch")
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)

