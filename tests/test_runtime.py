"""CPU detection, tier dispatch, environment variables and the thread pool."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import edgecompress as ec
from edgecompress import _core
from edgecompress.runtime import LADDER


def _run(code: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("EDGECOMPRESS_")}
    full_env.update(env)
    return subprocess.run([sys.executable, "-c", code], env=full_env, capture_output=True, text=True, timeout=120)


def _supported():
    return [t for t in LADDER if _core.tier_support(t)[0]]


def _top_tier_running_here(family):
    """The highest tier of a family's kernels that this CPU runs (what it gets without a cap)."""
    return max((k["tier"] for k in getattr(_core, f"{family}_kernels")() if k["runs_here"]), key=LADDER.index)


def test_cpu_info_reports_everything():
    info = ec.cpu_info()
    assert info["arch"] in ("x86_64", "aarch64")
    assert info["ladder"] == list(LADDER)
    assert info["ladder"][0] == "scalar"
    assert set(info["tiers"]) == set(LADDER)
    assert info["tiers_built"] == list(LADDER)  # every tier of the architecture is in the binary
    for t, d in info["tiers"].items():
        assert d["supported"] == (d["reason"] is None), t
    assert info["tiers"]["scalar"]["supported"]
    for name, fam in info["families"].items():
        assert fam["tier"] == _top_tier_running_here(name), name
        assert fam["kernel"].startswith(f"{name}_") and fam["tier"] in fam["kernel"]
    # The top supported tier serves some family with a kernel of its own (avx512: the float families).
    assert max((fam["tier"] for fam in info["families"].values()), key=LADDER.index) == _supported()[-1]
    assert info["num_threads"] == ec.get_num_threads()
    json.dumps(info)  # plain data


def test_families_come_from_the_native_registry():
    # The registry's one table (registry.h) names the families; cpu_info reports each, in its order,
    # and each has its two bindings.
    families = _core.families()
    assert families == ["gemm_s8", "gemm_q4", "sparse_f32", "sparse_s8", "sparse_nm_f32", "dense_f32", "engine_f32"]
    assert list(ec.cpu_info()["families"]) == families
    with ec.use_isa("scalar"):
        info = ec.cpu_info()["families"]
    for fam in families:
        first = getattr(_core, f"{fam}_kernels")()[0]
        assert first["tier"] == "scalar" and first["name"].startswith(f"{fam}_"), first
        assert getattr(_core, f"{fam}_select")("scalar") == first["name"] == info[fam]["kernel"]
        assert info[fam]["tier"] == "scalar"


def test_detected_features_match_tiers():
    feats = set(ec.cpu_info()["features"])
    ok = dict((t, _core.tier_support(t)[0]) for t in LADDER)
    if "avx512vnni" in ok:
        assert ok["avx512"] == ({"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= feats)
        assert ok["avx512vnni"] == ({"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512vnni"} <= feats)
        assert ok["avx2"] == ("avx2" in feats and "fma" in feats)
        assert ok["avxvnni"] == ("avxvnni" in feats or ({"avx512vnni", "avx512vl"} <= feats))
    if "i8mm" in ok:
        assert ok["dotprod"] == ("dotprod" in feats)


def test_use_isa_caps_and_restores(tier):
    assert ec.current_tier() == tier
    # Every family runs at or below the cap, and the cap's own kernels serve some family (a tier
    # without its own kernel for a family inherits the one below: gemm_s8 under avx512 runs avx2
    # or avxvnni, the float families under avx512vnni run avx512).
    chosen = [fam["tier"] for fam in ec.cpu_info()["families"].values()]
    assert max(chosen, key=LADDER.index) == tier, chosen
    with ec.use_isa("scalar"):
        assert ec.cpu_info()["families"]["gemm_s8"]["kernel"] == "gemm_s8_4x8_scalar"
    assert ec.current_tier() == tier


FLOAT_FAMILIES = ["sparse_f32", "sparse_nm_f32", "dense_f32", "engine_f32"]


@pytest.mark.skipif(_core.arch() != "x86_64", reason="the x86-64 ladder")
def test_x86_ladder_has_an_avx512_tier_for_the_float_families():
    # AVX-512 F/BW/DQ/VL without VNNI (Skylake-X) is a tier of its own, below avx512vnni: the
    # float families' 512-bit kernels live there, the integer families' VNNI kernels stay above.
    assert LADDER == ("scalar", "avx2", "avxvnni", "avx512", "avx512vnni", "amx")
    for fam in FLOAT_FAMILIES:
        kernels = getattr(_core, f"{fam}_kernels")()
        assert [(k["name"], k["tier"]) for k in kernels] == [
            (f"{fam}_scalar", "scalar"), (f"{fam}_avx2", "avx2"), (f"{fam}_avx512", "avx512")]
    # gemm_s8 and gemm_q4 have the amx tier's tile kernels on top; sparse_s8 stops at avx512vnni.
    for fam, top in [("gemm_s8", ["avx512vnni", "amx"]), ("gemm_q4", ["avx512vnni", "amx"]), ("sparse_s8", ["avx512vnni"])]:
        tiers = [k["tier"] for k in getattr(_core, f"{fam}_kernels")()]
        assert "avx512" not in tiers and tiers[-len(top):] == top and tiers.count("amx") == len(top) - 1, (fam, tiers)
    assert ec.cpu_info()["tiers_built"] == list(LADDER)


@pytest.mark.skipif(_core.arch() != "x86_64", reason="the x86-64 ladder")
def test_avx512_tier_without_avx512_is_a_clear_error():
    if _core.tier_support("avx512")[0]:
        pytest.skip("this CPU has AVX-512 F/BW/DQ/VL")
    assert not {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= set(ec.cpu_info()["features"])
    with pytest.raises(ValueError, match=r"use_isa: tier 'avx512' cannot run here: this CPU lacks AVX-512 F/BW/DQ/VL$"):
        with ec.use_isa("avx512"):
            pass
    r = _run("import edgecompress", EDGECOMPRESS_ISA="avx512")
    assert r.returncode != 0
    assert "ValueError: EDGECOMPRESS_ISA: tier 'avx512' cannot run here: this CPU lacks AVX-512 F/BW/DQ/VL" in r.stderr


@pytest.mark.skipif(_core.arch() != "x86_64", reason="the x86-64 ladder")
def test_avx512_cap_runs_the_float_kernels_and_inherits_the_integer_ones():
    if not _core.tier_support("avx512")[0]:
        pytest.skip(f"tier avx512: {_core.tier_support('avx512')[1]}")
    with ec.use_isa("avx512"):
        families = ec.cpu_info()["families"]
    for fam in FLOAT_FAMILIES:
        assert families[fam]["kernel"] == f"{fam}_avx512"
    for fam in ["gemm_s8", "gemm_q4", "sparse_s8"]:
        assert families[fam]["tier"] in ("avx2", "avxvnni"), families[fam]
    if _core.tier_support("avx512vnni")[0]:
        with ec.use_isa("avx512vnni"):
            assert ec.cpu_info()["families"]["dense_f32"]["kernel"] == "dense_f32_avx512"


@pytest.mark.skipif(_core.arch() != "x86_64", reason="the x86-64 ladder")
def test_benchmarks_time_and_rate_the_gemm_s8_kernel_that_serves_a_tier():
    from edgecompress import bench

    # avx512 has no gemm_s8 kernel: the int8 benchmark does not time the tier below twice, and a
    # cap of avx512 is rated against the instruction of the kernel it inherits.
    own = {k["tier"] for k in _core.gemm_s8_kernels() if k["runs_here"]} - {"scalar"}
    assert bench.gemm_s8_tiers() == [t for t in LADDER if t in own] and "avx512" not in bench.gemm_s8_tiers()
    assert bench.int8_probe_for("avx512") == bench.int8_probe_for("avxvnni") is not None
    assert bench.int8_probe_for("scalar") is None
    # The amx tier is timed where it runs, and otherwise named in the notes with the reason.
    ok, reason = _core.tier_support("amx")
    assert ("amx" in bench.gemm_s8_tiers()) == ok
    assert bench.amx_skip_note() == (None if ok else f"amx tier skipped: {reason}")


def test_use_isa_is_per_thread():
    import threading

    seen = []
    with ec.use_isa("scalar"):
        t = threading.Thread(target=lambda: seen.append(ec.current_tier()))
        t.start()
        t.join()
    assert seen == [ec.runtime._PROCESS_CAP]  # a new thread starts at the process cap


def test_use_isa_in_interleaved_generators_leaves_no_cap():
    # Generators share their caller's context: blocks that exit in another order than they were
    # entered must each end their own cap and leave the one from before.
    before = ec.current_tier()
    tiers = _supported()[:2]
    if len(tiers) < 2:
        pytest.skip("needs two tiers")

    def capped(tier):
        with ec.use_isa(tier):
            yield ec.current_tier()
            yield ec.current_tier()

    a, b = capped(tiers[0]), capped(tiers[1])
    assert next(a) == tiers[0]
    assert next(b) == tiers[1]
    assert next(a) == tiers[1]  # the most recently entered open block applies
    a.close()  # a's block exits while b's is still open
    assert ec.current_tier() == tiers[1]
    b.close()
    assert ec.current_tier() == before


def test_use_isa_errors():
    with pytest.raises(ValueError, match="expected one of .*got 'sse9'"):
        with ec.use_isa("sse9"):
            pass
    with pytest.raises(TypeError, match="tier name"):
        with ec.use_isa(3):
            pass
    missing = [t for t in LADDER if not _core.tier_support(t)[0]]
    for t in missing:
        # amx may also be unusable for want of the OS's tile state or permission (cpu_info says which).
        why = "(this CPU lacks|the OS|the AMX tile data permission)" if t == "amx" else "this CPU lacks"
        with pytest.raises(ValueError, match=f"{t}.*cannot run here: {why}"):
            with ec.use_isa(t):
                pass
    other = "neon" if "avx2" in LADDER else "avx2"
    with pytest.raises(ValueError, match="expected one of"):
        with ec.use_isa(other):
            pass


def test_env_cap_and_verbose_log():
    low = _supported()[min(1, len(_supported()) - 1)]
    r = _run("import edgecompress as ec; print(ec.cpu_info()['families']['gemm_s8']['tier'])", EDGECOMPRESS_ISA=low, EDGECOMPRESS_VERBOSE="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == low
    assert "edgecompress: gemm_s8 -> gemm_s8_" in r.stderr and f"(cap {low})" in r.stderr


def test_env_cap_blocks_higher_use_isa():
    if len(_supported()) < 2:
        pytest.skip("needs two tiers")
    top = _supported()[-1]
    r = _run(f"import edgecompress as ec\nwith ec.use_isa({top!r}): pass", EDGECOMPRESS_ISA="scalar")
    assert r.returncode != 0 and "above the process cap" in r.stderr


def test_env_bad_values_are_clear_errors():
    r = _run("import edgecompress", EDGECOMPRESS_ISA="bogus")
    assert r.returncode != 0 and "EDGECOMPRESS_ISA: expected one of" in r.stderr
    r = _run("import edgecompress", EDGECOMPRESS_NUM_THREADS="two")
    assert r.returncode != 0 and "EDGECOMPRESS_NUM_THREADS: expected a positive integer" in r.stderr
    r = _run("import edgecompress", EDGECOMPRESS_NUM_THREADS=str(10**30))
    assert r.returncode != 0 and "EDGECOMPRESS_NUM_THREADS must be <=" in r.stderr


def test_num_threads_env_and_default():
    r = _run("import edgecompress as ec; print(ec.get_num_threads())", EDGECOMPRESS_NUM_THREADS="3")
    assert r.stdout.strip() == "3", r.stderr
    r = _run("import os, edgecompress as ec; print(ec.get_num_threads(), len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count())")
    a, b = r.stdout.split()
    assert a == b
    if not hasattr(os, "sched_setaffinity"):
        return
    # The affinity mask is respected.
    r = _run("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); import edgecompress as ec; print(ec.get_num_threads())")
    assert r.stdout.strip() == "1", r.stderr


def test_set_num_threads_validation():
    before = ec.get_num_threads()
    cpus = _core.default_num_threads()
    try:
        ec.set_num_threads(cpus)  # no warning up to the CPUs
        assert ec.get_num_threads() == cpus
        with pytest.warns(RuntimeWarning, match=f"n = {cpus + 1} is more than the {cpus} CPUs"):
            ec.set_num_threads(cpus + 1)
        assert ec.get_num_threads() == cpus + 1
    finally:
        ec.set_num_threads(before)
    with pytest.raises(ValueError, match="n must be >= 1, got 0"):
        ec.set_num_threads(0)
    with pytest.raises(TypeError, match="n must be an int, got float"):
        ec.set_num_threads(2.0)
    # Far beyond any machine: a message, not pybind's signature dump (an overflowing C int) nor
    # a million OS threads.
    for huge in (10**30, 2**31 - 1):
        with pytest.raises(ValueError, match=f"set_num_threads: n must be <= [0-9]+, got {huge}"):
            ec.set_num_threads(huge)
    assert ec.get_num_threads() == before
    import numpy as np

    try:
        ec.set_num_threads(np.int64(1))
        assert ec.get_num_threads() == 1
    finally:
        ec.set_num_threads(before)


def test_pool_works_after_fork():
    code = (
        "import os, numpy as np, edgecompress as ec\n"
        "ec.set_num_threads(2)\n"
        "w = ec.Int8Weight.from_float(np.ones((256, 512), np.float32))\n"
        "x = np.ones((64, 512), np.float32)\n"
        "y = ec.linear(x, w)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os._exit(0 if np.array_equal(ec.linear(x, w), y) else 3)\n"
        "_, status = os.waitpid(pid, 0)\n"
        "print(os.waitstatus_to_exitcode(status))\n"
    )
    r = _run(code)
    assert r.stdout.strip() == "0", r.stderr


# --- the amx tier: usable only with the CPU's AMX, the OS's tile state and the tile data permission


AMX_DENIED = "the AMX tile data permission was refused (forced by EDGECOMPRESS_AMX_DENY)"


@pytest.mark.skipif(_core.arch() != "x86_64", reason="the x86-64 ladder")
def test_amx_q4_kernel_hands_m_up_to_4_to_avx512vnni():
    amx = [k for k in _core.gemm_q4_kernels() if k["tier"] == "amx"]
    assert [(k["name"], k["small_m_rows"], k["small_m_kernel"]) for k in amx] == [
        ("gemm_q4_16x16_amx", 5, "gemm_q4_4x16_avx512vnni_vbmi")]
    assert all(k["small_m_kernel"] is None for k in _core.gemm_q4_kernels() if k["tier"] != "amx")
    gemm = ec.cpu_info()["families"]["gemm_q4"]
    vbmi = next(k for k in _core.gemm_q4_kernels() if k["name"] == "gemm_q4_4x16_avx512vnni_vbmi")
    if gemm["tier"] == "amx" and vbmi["runs_here"]:
        assert gemm["small_m"] == {"below_rows": 5, "kernel": "gemm_q4_4x16_avx512vnni_vbmi"}
    else:
        assert "small_m" not in gemm


@pytest.mark.skipif(_core.arch() != "x86_64", reason="the x86-64 ladder")
def test_amx_kernel_hands_small_m_to_avx512vnni():
    amx = [k for k in _core.gemm_s8_kernels() if k["tier"] == "amx"]
    assert [k["name"] for k in amx] == ["gemm_s8_16x64_amx"]
    vnni = next(k for k in _core.gemm_s8_kernels() if k["name"] == amx[0]["small_m_kernel"])
    # The small-M kernel reads the same packed panels: same nr and kr, a lower tier.
    assert vnni["tier"] == "avx512vnni" and (vnni["nr"], vnni["kr"]) == (amx[0]["nr"], amx[0]["kr"]) == (64, 4)
    assert 1 < amx[0]["small_m_rows"] <= amx[0]["mr"] == 16
    assert all(k["small_m_kernel"] is None and k["small_m_rows"] == 0 for k in _core.gemm_s8_kernels() if k["tier"] != "amx")
    info = ec.cpu_info()
    gemm = info["families"]["gemm_s8"]
    if gemm["tier"] == "amx":
        assert gemm["small_m"] == {"below_rows": amx[0]["small_m_rows"], "kernel": vnni["name"]}
    else:
        assert "small_m" not in gemm


@pytest.mark.skipif(_core.arch() != "x86_64", reason="the x86-64 ladder")
def test_cpu_info_says_why_amx_cannot_run():
    info = ec.cpu_info()
    ok, reason = _core.tier_support("amx")
    assert info["tiers"]["amx"] == {"built": True, "supported": ok, "reason": reason}
    feats = set(info["features"])
    if ok:
        assert info["amx_unusable"] is None and {"amx_tile", "amx_int8"} <= feats
        return
    assert info["amx_unusable"], info["amx_unusable"]
    if not {"amx_tile", "amx_int8"} <= feats:
        assert info["amx_unusable"] == "this CPU lacks AMX-TILE and AMX-INT8"
    if _core.tier_support("avx512vnni")[0]:
        assert reason == info["amx_unusable"]  # the tier's reason is the detected one
    else:
        assert reason.startswith("this CPU lacks usable AMX-TILE and AMX-INT8")
    assert info["families"]["gemm_s8"]["tier"] != "amx"


_DENIED_RUN = """
import json, numpy as np, edgecompress as ec
w = ec.Int8Weight.from_float(np.random.default_rng(0).standard_normal((70, 200)).astype(np.float32))
x = np.random.default_rng(1).standard_normal((40, 200)).astype(np.float32)
exact = bool(np.array_equal(ec.linear(x, w), ec.reference.linear_int8(x, w.qweight, w.scale)))
print(json.dumps({"info": ec.cpu_info(), "exact": exact}))
"""


@pytest.mark.skipif(_core.arch() != "x86_64", reason="the x86-64 ladder")
def test_refused_tile_permission_falls_back_to_the_next_tier():
    r = _run(_DENIED_RUN, EDGECOMPRESS_AMX_DENY="1")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    info = out["info"]
    assert out["exact"]
    assert not info["tiers"]["amx"]["supported"] and info["amx_unusable"]
    assert info["families"]["gemm_s8"]["tier"] != "amx" and "small_m" not in info["families"]["gemm_s8"]
    # The forced refusal is what a CPU with AMX reports; a CPU without it says so first.
    if {"amx_tile", "amx_int8"} <= set(info["features"]):
        assert info["amx_unusable"] == AMX_DENIED
    else:
        assert info["amx_unusable"] == "this CPU lacks AMX-TILE and AMX-INT8"
    want = max((t for t in LADDER[:-1] if info["tiers"][t]["supported"]), key=LADDER.index)
    assert info["families"]["gemm_s8"]["tier"] == want  # the next tier serves
    # Asking for the tier then is the usual clear error, naming the reason.
    r = _run("import edgecompress", EDGECOMPRESS_AMX_DENY="1", EDGECOMPRESS_ISA="amx")
    assert r.returncode != 0
    assert "ValueError: EDGECOMPRESS_ISA: tier 'amx' cannot run here: " + info["tiers"]["amx"]["reason"] in r.stderr
    # EDGECOMPRESS_VERBOSE=1 says why at import.
    r = _run("import edgecompress", EDGECOMPRESS_AMX_DENY="1", EDGECOMPRESS_VERBOSE="1")
    assert r.returncode == 0, r.stderr
    assert f"edgecompress: amx tier unavailable: {info['amx_unusable']}\n" in r.stderr
    # EDGECOMPRESS_AMX_DENY=0 is no refusal.
    r = _run(_DENIED_RUN, EDGECOMPRESS_AMX_DENY="0")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["info"]["amx_unusable"] == ec.cpu_info()["amx_unusable"]


def test_results_file_names_carry_the_cpus_best_tier(monkeypatch):
    # Two CPUs that report the same model name (a Zen 3 "AMD EPYC" with AVX2 only, a Zen 4 one with
    # AVX-512 VNNI) must not write the same results file.
    from edgecompress import bench
    monkeypatch.setattr(bench._core, "cpu_model", lambda: "AMD EPYC")
    monkeypatch.setattr(bench._core, "arch", lambda: "x86_64")
    monkeypatch.setattr(bench, "LADDER", ("scalar", "avx2", "avxvnni", "avx512", "avx512vnni", "amx"))
    names = {}
    for has in (("scalar", "avx2"), ("scalar", "avx2", "avxvnni", "avx512", "avx512vnni")):
        monkeypatch.setattr(bench._core, "tier_support", lambda t, has=has: (t in has, None if t in has else "lacks"))
        names[has[-1]] = bench.cpu_slug()
    assert names == {"avx2": "amd-epyc-avx2-x86-64", "avx512vnni": "amd-epyc-avx512vnni-x86-64"}
    # Intel's marks and filler words are left out
    for model, slug in [("Intel(R) Xeon(R) Processor", "intel-xeon-avx512vnni-x86-64"),
                        ("Intel(R) Core(TM) i7-1165G7 CPU @ 2.80GHz", "intel-core-i7-1165g7-avx512vnni-x86-64"),
                        ("(R)", "cpu-avx512vnni-x86-64")]:
        monkeypatch.setattr(bench._core, "cpu_model", lambda model=model: model)
        assert bench.cpu_slug() == slug, model


def test_results_file_name_is_the_cpus_not_the_cap():
    from edgecompress import bench
    best = [t for t in LADDER if ec.cpu_info()["tiers"][t]["supported"]][-1]
    slug = bench.cpu_slug()
    with ec.use_isa("scalar"):
        assert bench.cpu_slug() == slug
    assert f"-{best}-" in slug and slug == slug.lower()
