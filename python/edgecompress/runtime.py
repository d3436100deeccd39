"""CPU information, ISA tier selection and threads.

The amx tier needs, besides the CPU's AMX-TILE/AMX-INT8, the OS's tile state and (Linux) the tile
data permission, which containers and VMs may refuse; ``EDGECOMPRESS_AMX_DENY=1`` acts as if it were
refused. ``cpu_info()["amx_unusable"]`` says why the tier cannot run, and the gemm_s8 entry of
``cpu_info()["families"]`` names the kernel that serves calls with few rows where amx serves the rest.

The tier cap comes from ``EDGECOMPRESS_ISA`` (the whole process) and from ``use_isa`` (a ``with``
block, per thread / async context). Under a cap, each kernel family runs the best tier at or below
it that was built and that this CPU supports. ``EDGECOMPRESS_VERBOSE=1`` logs each choice to stderr.
"""

from __future__ import annotations

import contextlib
import contextvars
import operator
import os
import sys
import warnings
from typing import Any, Iterator

from . import _core

__all__ = ["cpu_info", "get_num_threads", "set_num_threads", "use_isa", "current_tier"]

LADDER: tuple[str, ...] = tuple(_core.ladder())
FEATURES: tuple[str, ...] = tuple(_core.cpu_features())  # detected once, at import
# Every kernel family, in the native registry's order (its one table, registry.h); each has
# _core.<family>_kernels() and _core.<family>_select(cap).
FAMILIES: tuple[str, ...] = tuple(_core.families())
_VERBOSE = os.environ.get("EDGECOMPRESS_VERBOSE", "") not in ("", "0")


def _log(msg: str) -> None:
    if _VERBOSE:
        print(f"edgecompress: {msg}", file=sys.stderr)


def _check_tier(tier: object, source: str) -> str:
    if not isinstance(tier, str):
        raise TypeError(f"{source}: expected a tier name (str), got {type(tier).__name__}")
    if tier not in LADDER:
        raise ValueError(f"{source}: expected one of {', '.join(LADDER)} on this {_core.arch()} CPU, got {tier!r}")
    ok, reason = _core.tier_support(tier)
    if not ok:
        raise ValueError(f"{source}: tier {tier!r} cannot run here: {reason}")
    return tier


def _env_cap() -> str:
    value = os.environ.get("EDGECOMPRESS_ISA", "").strip()
    if not value:
        return LADDER[-1]
    return _check_tier(value, "EDGECOMPRESS_ISA")


_PROCESS_CAP = _env_cap()
# The open use_isa blocks of this context, innermost last, as (block, tier) pairs. Each block
# removes its own entry on exit rather than restoring the value it saw on entry: generators that
# enter blocks and are resumed in an interleaved order share one context, and restoring would
# leave a finished block's cap in force (or drop a live one).
_caps: contextvars.ContextVar[tuple[tuple[object, str], ...]] = contextvars.ContextVar("edgecompress_isa", default=())
_kernel_by_cap: dict[tuple[str, str], str] = {}


def current_tier() -> str:
    """The tier cap in force here (``use_isa`` block, else ``EDGECOMPRESS_ISA``, else the top tier)."""
    caps = _caps.get()
    return caps[-1][1] if caps else _PROCESS_CAP


def _family_function(family: str, what: str) -> Any:
    """_core's ``<family>_kernels`` or ``<family>_select`` (``what``) for a family of FAMILIES."""
    return getattr(_core, f"{family}_{what}")


def _kernel(family: str) -> str:
    cap = current_tier()
    name = _kernel_by_cap.get((family, cap))
    if name is None:
        name = _kernel_by_cap[(family, cap)] = _family_function(family, "select")(cap)
        _log(f"{family} -> {name} (cap {cap})")
    return name


def gemm_s8_kernel() -> str:
    """Name of the gemm_s8 kernel serving the current cap."""
    return _kernel("gemm_s8")


def gemm_q4_kernel() -> str:
    """Name of the gemm_q4 (4-bit weight) kernel serving the current cap."""
    return _kernel("gemm_q4")


def sparse_f32_kernel() -> str:
    """Name of the sparse_f32 (pruned float32 weight) kernel serving the current cap."""
    return _kernel("sparse_f32")


def sparse_s8_kernel() -> str:
    """Name of the sparse_s8 (pruned int8 weight) kernel serving the current cap."""
    return _kernel("sparse_s8")


def sparse_nm_f32_kernel() -> str:
    """Name of the sparse_nm_f32 (N:M sparse float32 weight) kernel serving the current cap."""
    return _kernel("sparse_nm_f32")


def dense_f32_kernel() -> str:
    """Name of the dense_f32 kernel (float32 factors of LowRankWeight) serving the current cap."""
    return _kernel("dense_f32")


@contextlib.contextmanager
def use_isa(tier: str) -> Iterator[str]:
    """Cap the ISA tier inside a ``with`` block (this thread / async context only).

    Raises ValueError for a tier this architecture does not have, one this CPU cannot run, or one
    above the process cap set by ``EDGECOMPRESS_ISA``. Blocks left open in generators that run
    interleaved (in one thread) share the cap: the most recently entered open block's tier applies,
    and each block's cap ends when it exits.
    """
    _check_tier(tier, "use_isa")
    if LADDER.index(tier) > LADDER.index(_PROCESS_CAP):
        raise ValueError(f"use_isa: tier {tier!r} is above the process cap EDGECOMPRESS_ISA={_PROCESS_CAP}")
    block = object()
    _caps.set(_caps.get() + ((block, tier),))
    _log(f"use_isa({tier}): gemm_s8 -> {gemm_s8_kernel()}")
    try:
        yield tier
    finally:
        _caps.set(tuple(c for c in _caps.get() if c[0] is not block))


def get_num_threads() -> int:
    """Threads the kernels use (the calling thread plus pool workers)."""
    return int(_core.get_num_threads())


# Workers start on demand, one OS thread each: far more than any CPU has would only exhaust the
# process's threads. The bound leaves room for oversubscribing the largest machines on purpose.
_MAX_THREADS = max(1024, 4 * int(_core.default_num_threads()))


def _set_threads(n: int, source: str) -> None:
    """Set n >= 1 threads, after checking the upper bound; `source` names the setting in messages."""
    if n > _MAX_THREADS:
        raise ValueError(f"{source} must be <= {_MAX_THREADS}, got {n}")
    cpus = int(_core.default_num_threads())
    if n > cpus:
        # Threads beyond the CPUs take turns on them, and a parallel kernel waits for its slowest
        # thread: almost always slower than n = cpus, so say so rather than let it pass silently.
        warnings.warn(f"{source} = {n} is more than the {cpus} CPUs this process may run on; the extra "
                      f"threads share CPUs and usually make the kernels slower", RuntimeWarning, stacklevel=3)
    _core.set_num_threads(n)


def set_num_threads(n: int) -> None:
    """Set the threads the kernels use; n >= 1. The default is the CPUs in the affinity mask.

    More threads than those CPUs are allowed (up to a bound) but warn with a RuntimeWarning.
    """
    if isinstance(n, bool):
        raise TypeError("set_num_threads: n must be an int, got bool")
    try:
        n = operator.index(n)
    except TypeError:
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__}") from None
    if n < 1:
        raise ValueError(f"set_num_threads: n must be >= 1, got {n}")
    _set_threads(n, "set_num_threads: n")


def _threads_from_env() -> None:
    value = os.environ.get("EDGECOMPRESS_NUM_THREADS", "").strip()
    if not value:
        return
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"EDGECOMPRESS_NUM_THREADS: expected a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"EDGECOMPRESS_NUM_THREADS: expected a positive integer, got {value!r}")
    _set_threads(n, "EDGECOMPRESS_NUM_THREADS")


def cpu_info() -> dict[str, Any]:
    """What this CPU has, which tiers are built and usable, and what each kernel family runs now."""
    # A tier is built when any family has a kernel of it (avx512 has only the float families').
    listings = {fam: _family_function(fam, "kernels")() for fam in FAMILIES}
    built = [t for t in LADDER if any(k["tier"] == t for listing in listings.values() for k in listing)]
    tiers = {}
    for t in LADDER:
        ok, reason = _core.tier_support(t)
        tiers[t] = {"built": t in built, "supported": ok, "reason": reason}
    families = {}
    for fam in FAMILIES:
        name = _kernel(fam)
        kernel = next(k for k in listings[fam] if k["name"] == name)
        families[fam] = {"kernel": name, "tier": kernel["tier"]}
        small = next((k for k in listings[fam] if k["name"] == kernel.get("small_m_kernel")), None)
        if small is not None and small["runs_here"]:
            # A tile kernel (amx) leaves calls with fewer rows to a lower tier's kernel (where it runs).
            families[fam]["small_m"] = {"below_rows": kernel["small_m_rows"], "kernel": kernel["small_m_kernel"]}
    return {
        "arch": _core.arch(),
        "model": _core.cpu_model(),
        "features": list(FEATURES),
        "ladder": list(LADDER),
        "tiers_built": built,
        "tiers": tiers,
        "tier_cap": current_tier(),
        # Why the amx tier cannot run here (CPU, OS tile state, refused tile data permission), or None.
        "amx_unusable": _core.amx_unusable() if _core.arch() == "x86_64" else None,
        "families": families,
        "num_threads": get_num_threads(),
    }


_threads_from_env()
if _VERBOSE:
    _log(f"{_core.arch()} {_core.cpu_model()!r}: features {' '.join(FEATURES)}")
    if "amx" in LADDER and _core.amx_unusable() is not None:
        _log(f"amx tier unavailable: {_core.amx_unusable()}")
    for _family in FAMILIES:
        _kernel(_family)
