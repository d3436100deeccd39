"""Concurrency: the GIL is released during kernels, and concurrent calls equal serial ones."""

from __future__ import annotations

import os
import signal
import threading
import time
import warnings

import numpy as np
import pytest

import edgecompress as ec


def test_concurrent_python_threads_match_serial(tier, rng):
    shapes = [(1, 512, 300), (7, 256, 129), (64, 384, 200), (130, 128, 64)]
    problems = []
    for m, k, n in shapes:
        w = ec.Int8Weight.from_float(rng.standard_normal((n, k)).astype(np.float32))
        problems.append((rng.standard_normal((m, k)).astype(np.float32), w, rng.standard_normal(n).astype(np.float32)))
    serial = [ec.linear(x, w, b, "relu") for x, w, b in problems]
    errors = []

    def worker(seed):
        with ec.use_isa(tier):
            for i in range(30):
                j = (seed + i) % len(problems)
                x, w, b = problems[j]
                if not np.array_equal(ec.linear(x, w, b, "relu"), serial[j]):
                    errors.append((seed, j))

    threads = [threading.Thread(target=worker, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_gil_released_during_kernel():
    # A long single call on the scalar tier; another Python thread must run while it is inside.
    rng = np.random.default_rng(0)
    w = ec.Int8Weight.from_float(rng.standard_normal((1024, 1024)).astype(np.float32))
    x = rng.standard_normal((256, 1024)).astype(np.float32)
    stamps: list[float] = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            stamps.append(time.perf_counter())
            time.sleep(0.001)

    before = ec.get_num_threads()
    ec.set_num_threads(1)
    try:
        with ec.use_isa("scalar"):
            ec.linear(x, w)  # pack outside the timed call
            t = threading.Thread(target=ticker)
            t.start()
            time.sleep(0.01)
            t0 = time.perf_counter()
            ec.linear(x, w)
            t1 = time.perf_counter()
            stop.set()
            t.join()
    finally:
        ec.set_num_threads(before)
    assert t1 - t0 > 0.02, "call too short to observe"
    inside = [s for s in stamps if t0 + 0.005 < s < t1 - 0.005]
    assert inside, f"no Python thread ran during a {t1 - t0:.3f} s kernel call"


def _wait_or_kill(pid: int, timeout: float) -> int | None:
    """The child's exit status, or None (after killing it) if it has not exited within `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return status
        time.sleep(0.01)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    return None


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_while_another_thread_packs():
    # A child forked while another thread is inside a weight's first packing must be able to pack
    # and use that same weight (the packing thread does not exist in the child).
    rng = np.random.default_rng(1)
    dense = rng.standard_normal((2048, 2048)).astype(np.float32)
    x = rng.standard_normal((1, 2048)).astype(np.float32)
    current = [ec.Int8Weight.from_float(dense)]
    stop = threading.Event()

    def packer():
        while not stop.is_set():
            w = ec.Int8Weight(current[0].qweight, current[0].scale)
            current[0] = w
            ec.linear(x, w)

    t = threading.Thread(target=packer)
    t.start()
    statuses = []
    try:
        for _ in range(5):
            time.sleep(0.02)
            with warnings.catch_warnings():
                # Python >= 3.12 warns on any fork of a multi-threaded process: that is this test.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
            if pid == 0:
                try:
                    ec.linear(x, current[0])
                    os._exit(0)
                finally:
                    os._exit(1)
            statuses.append(_wait_or_kill(pid, 10.0))
    finally:
        stop.set()
        t.join()
    assert statuses == [0] * 5, f"child exit statuses (None: hung and was killed): {statuses}"
