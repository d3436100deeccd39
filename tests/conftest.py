from __future__ import annotations

import warnings

import numpy as np
import pytest

import edgecompress as ec
from edgecompress import _core
from edgecompress.runtime import LADDER


@pytest.fixture(params=LADDER)
def tier(request):
    """Every tier of this architecture, forced one by one; a tier this CPU lacks is skipped with the reason."""
    ok, reason = _core.tier_support(request.param)
    if not ok:
        pytest.skip(f"tier {request.param}: {reason}")
    with ec.use_isa(request.param):
        yield request.param


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    """1 or 2 threads; with 2, even small shapes take the parallel paths."""
    before = ec.get_num_threads()
    with warnings.catch_warnings():
        # The parallel paths are tested even where 2 threads are more than the CPUs (set_num_threads warns).
        warnings.simplefilter("ignore", RuntimeWarning)
        ec.set_num_threads(request.param)
    _core.set_gemm_s8_min_parallel_macs(0 if request.param > 1 else 2**18)
    yield request.param
    _core.set_gemm_s8_min_parallel_macs(2**18)
    ec.set_num_threads(before)


@pytest.fixture
def rng():
    return np.random.default_rng(20261125)
