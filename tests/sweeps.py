"""The one shared shape sweep of the kernel tests, as (M, K, N); csrc/tests/test_kernels.cc uses the same."""

from __future__ import annotations


def gemm_shapes() -> list[tuple[int, int, int]]:
    shapes = []
    for m in range(1, 18):  # sizes 1-17: every partial tile of every tier
        shapes += [(m, m, m), (m, 17, 33), (m, 64, 65)]
    for v in (31, 32, 33, 63, 64, 65, 127, 128, 129):  # powers of two +-1
        shapes += [(v, v, v), (v, 128, 17)]
    shapes += [(1, 8191, 17), (5, 8191, 33), (17, 8191, 9)]  # deep K
    shapes += [(1, 1024, 1024), (4, 512, 257)]  # GEMV
    shapes += [(9, 100, 1), (3, 37, 67), (33, 129, 95)]  # odd N
    return shapes


GEMM_SHAPES = gemm_shapes()
