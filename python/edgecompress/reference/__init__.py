"""The numpy oracle: the numerical specification of every edgecompress kernel.

Small and readable on purpose. Native kernels must match it: integer results bit for bit, float
results to the tolerance each function states. Float32 operations are written in the order the
kernels perform them, so in practice the float results match bit for bit as well.
"""

from .gemm_q4 import dequantize as dequantize_int4
from .gemm_q4 import float_tolerance as int4_float_tolerance
from .gemm_q4 import linear_int4
from .lowrank import linear_lowrank
from .lowrank import tolerance as lowrank_tolerance
from .rounding import gamma as float32_sum_gamma
from .sparse import linear_sparse
from .sparse import tolerance as sparse_tolerance
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
    "dequantize_int4",
    "int4_float_tolerance",
    "linear_int4",
    "linear_lowrank",
    "linear_sparse",
    "sparse_tolerance",
    "float32_sum_gamma",
    "lowrank_tolerance",
    "gelu",
    "linear_int8",
    "qgemm",
    "quantize_rows_asymmetric",
    "quantize_rows_symmetric",
    "quantize_static",
    "quantize_weight_int8",
]
