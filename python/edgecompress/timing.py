"""Timing candidates against each other in interleaved rounds (the autotuner, the speed guard, the demo
and the benchmarks all use this one loop).

Why interleaved rounds: each round times every candidate once, in turn, so a slow spell of a shared
machine (another process, a frequency change, a thermal dip) lands on all candidates alike instead of on
whichever one happened to run during it.

Why min or median: the callers choose. The minimum is the least disturbed run and settles a choice
between candidates quickly (``format="auto"``, the speed guard); the median over rounds is the figure a
reader can expect to see again, which is what a benchmark table reports.

Standard library only (no numpy, no torch): the engine and torch-free installs use it too.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Mapping


def settle_pause(threads: int) -> float:
    """Seconds to sleep before each candidate's turn at ``threads`` threads, long enough for the previous
    candidate's spinning worker threads to go idle. onnxruntime's keep spinning for tens of milliseconds
    after a run; on a machine with few cores they take a core from whichever candidate runs next
    (EfficientNet-B0 float32 on the engine at 2 threads, 2 cores: 18.7 ms right after onnxruntime with a
    0.02 s pause, 10.4 ms after itself). At one thread no library has workers to spin."""
    if isinstance(threads, bool) or not isinstance(threads, int):
        raise TypeError(f"threads must be an int, got {type(threads).__name__}")
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    return 0.02 if threads == 1 else 0.2


def time_call(fn: Callable[[], Any], number: int = 1, min_seconds: float = 0.0) -> float:
    """Seconds per call of ``fn`` from one batch of ``number`` calls; with ``min_seconds`` the batch grows
    until it lasts at least that long (so that a fast call is not timed below the clock's resolution)."""
    n = number
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        dt = time.perf_counter() - t0
        if dt >= min_seconds:
            return dt / n
        n = max(n * 2, int(n * min_seconds / max(dt, 1e-9)) + 1)


def interleaved_rounds(candidates: Mapping[str, Callable[[], Any]], rounds: int, *, warmup: int = 1,
                       number: int = 1, min_seconds: float = 0.0, samples: int = 1, pause: float = 0.0,
                       before: Callable[[str], Any] | None = None, budget: float | None = None,
                       min_rounds: int = 1, close: float | None = None) -> dict[str, list[float]]:
    """Seconds per call of each candidate, one list per name: ``samples`` per candidate and round.

    warmup: untimed calls of each candidate first (packing, caches, thread pools).
    number, min_seconds: calls per sample, as in :func:`time_call`.
    pause: seconds slept before each candidate's turn, so that thread pools that spin after their last
        job (ours, OpenMP's, onnxruntime's) are idle and steal no cores from the next candidate.
    before: called with the candidate's name, untimed, at the start of its turn (e.g. to call it once so
        that the previous candidate's memory state is not this one's, or to hand it a fresh input).
    budget: stop after a round once at least ``min_rounds`` rounds are done and the samples so far add
        up to more than ``budget`` seconds; ``rounds`` is then the most rounds.
    close: candidates whose fastest sample is within ``close`` (a fraction) of the fastest of all then
        take ``2 * rounds`` more rounds among themselves, so that a near tie is decided on more calls.
    """
    if isinstance(rounds, bool) or not isinstance(rounds, int):
        raise TypeError(f"rounds must be an int, got {type(rounds).__name__}")
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    for fn in candidates.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    spent = 0.0
    for i in range(rounds):
        for name, fn in candidates.items():
            if pause:
                time.sleep(pause)
            if before is not None:
                before(name)
            for _ in range(samples):
                times[name].append(time_call(fn, number, min_seconds))
                spent += times[name][-1]
        if budget is not None and i + 1 >= min_rounds and spent > budget:
            break
    if close is not None:
        fastest = min(min(t) for t in times.values())
        near = {name: candidates[name] for name, t in times.items() if min(t) <= fastest * (1 + close)}
        if len(near) > 1:
            more = interleaved_rounds(near, 2 * rounds, warmup=0, number=number, min_seconds=min_seconds,
                                      samples=samples, pause=pause, before=before)
            for name, t in more.items():
                times[name] += t
    return times
