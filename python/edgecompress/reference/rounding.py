"""The worst-case rounding error of float32 sums: the bound the float kernels document.

A float kernel's output is a float32 sum of K products (plus a bias) summed in an order that
depends on the tier and the layout (lanes, chains, blocks, spills). Whatever the order, a result
that took n float32 roundings on its longest path is within gamma(n) * magnitude of the exact value,
magnitude being the sum of the terms' absolute values (Higham, "Accuracy and Stability of Numerical
Algorithms", 2nd ed., section 3.1 and 4.2). The bound grows with K, and inputs exist that come close
to it (one large term followed by many that each fall below half its ulp), so no fixed relative
tolerance holds at every K; on data of mixed signs the error is usually far smaller.

Why a bound in K rather than blocked or pairwise sums in the kernels: those would lower the worst
case (to about (sqrt(K) or log K) * u) but need a change in every float kernel of every tier and in
the BLAS path numpy takes for many rows, for inputs that layers seldom meet (K in the millions, or
terms spanning 2^24 in size); stating what plain float32 sums guarantee is true for all of them.
"""

from __future__ import annotations

_U = 2.0**-24  # unit roundoff of float32


def gamma(n: int) -> float:
    """n u / (1 - n u) with u = 2^-24: the relative error bound of n float32 roundings in a row
    (infinite from n = 2^24 on, where float32 sums of that length guarantee nothing)."""
    return n * _U / (1 - n * _U) if n * _U < 1 else float("inf")
