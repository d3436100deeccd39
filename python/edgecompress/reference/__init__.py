"""The numpy oracle: the numerical specification of every edgecompress kernel.

Small and readable on purpose. Native kernels must match it: integer results bit for bit, float
results to the tolerance each function states. Float32 operations are written in the order the
kernels perform them, so in practice the float results match bit for bit as well.
"""

from .gemm_s8 import (
    gelu,
    linear_int8,
    qgemm,
    quantize_rows_asymmetric,
    quantize_rows_symmetric,
    quantize_static,
    quantize_weight_int8,
)

__all__ = [
    "gelu",
    "linear_int8",
    "qgemm",
    "quantize_rows_asymmetric",
    "quantize_rows_symmetric",
    "quantize_static",
    "quantize_weight_int8",
]
