"""The interleaved-rounds timing loop: who is called, how often, in which order, and when it stops."""

import subprocess
import sys

import pytest

from edgecompress import timing
from edgecompress.timing import interleaved_rounds, time_call


def recorder(calls, *names):
    """Candidates that append their name to `calls` when called."""
    return {name: (lambda name=name: calls.append(name)) for name in names}


def test_warmup_then_one_call_per_candidate_per_round_in_turn():
    calls = []
    times = interleaved_rounds(recorder(calls, "a", "b", "c"), 3, warmup=2)
    assert calls == ["a", "a", "b", "b", "c", "c"] + ["a", "b", "c"] * 3
    assert list(times) == ["a", "b", "c"]
    assert all(len(t) == 3 and all(s >= 0 for s in t) for t in times.values())


def test_number_calls_per_sample_and_samples_per_turn():
    calls = []
    times = interleaved_rounds(recorder(calls, "a", "b"), 2, warmup=0, number=3, samples=2)
    assert calls == (["a"] * 6 + ["b"] * 6) * 2
    assert {k: len(t) for k, t in times.items()} == {"a": 4, "b": 4}


def test_before_runs_untimed_at_the_start_of_each_turn():
    calls = []
    before = []
    cands = recorder(calls, "a", "b")
    interleaved_rounds(cands, 2, warmup=0, before=lambda name: (before.append(name), calls.append("before " + name)))
    assert before == ["a", "b", "a", "b"]
    assert calls == ["before a", "a", "before b", "b"] * 2


def test_min_seconds_grows_the_batch_and_gives_seconds_per_call():
    calls = []
    [seconds] = interleaved_rounds(recorder(calls, "a"), 1, warmup=0, min_seconds=0.005).values()
    assert len(calls) > 1  # one empty call lasts far less than 5 ms
    assert 0 <= seconds[0] < 0.005


def test_time_call_makes_number_calls_when_no_minimum():
    calls = []
    assert time_call(lambda: calls.append(1), number=4) >= 0
    assert calls == [1] * 4


def fake_clock(monkeypatch, step):
    """time.perf_counter that advances by `step` seconds at each reading."""
    now = [0.0]

    def perf_counter():
        now[0] += step
        return now[0]

    monkeypatch.setattr(timing.time, "perf_counter", perf_counter)


def test_budget_stops_after_min_rounds_once_spent(monkeypatch):
    fake_clock(monkeypatch, 1.0)  # every sample reads as 1 s
    calls = []
    times = interleaved_rounds(recorder(calls, "a", "b"), 50, warmup=0, budget=0.5, min_rounds=4)
    assert calls == ["a", "b"] * 4
    assert times == {"a": [1.0] * 4, "b": [1.0] * 4}


def test_budget_not_reached_runs_all_rounds(monkeypatch):
    fake_clock(monkeypatch, 1.0)
    times = interleaved_rounds(recorder([], "a", "b"), 6, warmup=0, budget=100.0, min_rounds=2)
    assert {k: len(t) for k, t in times.items()} == {"a": 6, "b": 6}


def test_budget_stops_only_at_the_end_of_a_round(monkeypatch):
    fake_clock(monkeypatch, 1.0)
    times = interleaved_rounds(recorder([], "a", "b", "c"), 9, warmup=0, budget=4.0, min_rounds=1)
    # 3 s after round 1, 6 s after round 2: it stops there, every candidate with the same number of samples
    assert {k: len(t) for k, t in times.items()} == {"a": 2, "b": 2, "c": 2}


def costed(monkeypatch, cost):
    """Candidates that advance a fake clock by cost[name] seconds a call, and the list of their calls."""
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    calls = []

    def candidate(name):
        def call():
            calls.append(name)
            now[0] += cost[name]
        return call

    return {n: candidate(n) for n in cost}, calls


def test_close_candidates_take_twice_the_rounds_among_themselves(monkeypatch):
    # "slow" takes 2 s a call, "a" and "b" 1 s
    candidates, calls = costed(monkeypatch, {"a": 1.0, "b": 1.0, "slow": 2.0})
    times = interleaved_rounds(candidates, 2, warmup=1, close=0.1)
    assert calls == ["a", "b", "slow"] + ["a", "b", "slow"] * 2 + ["a", "b"] * 4
    assert times == {"a": [1.0] * 6, "b": [1.0] * 6, "slow": [2.0] * 2}


def test_close_with_one_clear_winner_adds_no_rounds(monkeypatch):
    candidates, calls = costed(monkeypatch, {"fast": 1.0, "slow": 2.0})
    times = interleaved_rounds(candidates, 3, warmup=0, close=0.1)
    assert calls == ["fast", "slow"] * 3
    assert {k: len(t) for k, t in times.items()} == {"fast": 3, "slow": 3}


def test_pause_sleeps_before_each_turn(monkeypatch):
    sleeps = []
    monkeypatch.setattr(timing.time, "sleep", sleeps.append)
    interleaved_rounds(recorder([], "a", "b"), 3, warmup=0, pause=0.02)
    assert sleeps == [0.02] * 6


@pytest.mark.parametrize("rounds", [0, -1])
def test_rounds_below_one_is_refused(rounds):
    with pytest.raises(ValueError, match=rf"rounds must be >= 1, got {rounds}"):
        interleaved_rounds({"a": lambda: None}, rounds)


@pytest.mark.parametrize("rounds, given", [(2.0, "float"), (True, "bool"), ("3", "str")])
def test_rounds_must_be_an_int(rounds, given):
    with pytest.raises(TypeError, match=rf"rounds must be an int, got {given}"):
        interleaved_rounds({"a": lambda: None}, rounds)


def test_does_not_import_torch():
    code = "import sys, edgecompress.timing; assert 'torch' not in sys.modules, 'torch'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_settle_pause_waits_out_spinning_workers_only_with_threads():
    # one thread: no library has worker threads to spin; more: long enough for onnxruntime's to idle
    assert timing.settle_pause(1) == 0.02
    assert timing.settle_pause(2) == timing.settle_pause(16) == 0.2


@pytest.mark.parametrize("threads, error, match", [
    (0, ValueError, "threads must be >= 1, got 0"),
    (2.0, TypeError, "threads must be an int, got float"),
    (True, TypeError, "threads must be an int, got bool"),
])
def test_settle_pause_refuses_bad_thread_counts(threads, error, match):
    with pytest.raises(error, match=match):
        timing.settle_pause(threads)


def test_bench_measure_pauses_for_the_thread_count(monkeypatch):
    from edgecompress import bench
    sleeps = []
    monkeypatch.setattr(timing.time, "sleep", sleeps.append)
    bench._measure({"a": lambda: None}, 2, 0.0, threads=2)
    assert sleeps == [0.2, 0.2]
    bench._measure({"a": lambda: None}, 1, 0.0, threads=1)
    assert sleeps[-1] == 0.02
