"""Drop-in torch modules that run compressed weights on edgecompress's CPU kernels (inference only).

``Int8Linear``, ``Int4Linear``, ``SparseLinear``, ``LowRankLinear`` replace ``torch.nn.Linear``;
``Int8Conv2d``, ``Int4Conv2d``, ``SparseConv2d``, ``LowRankConv2d`` replace ``torch.nn.Conv2d``.
Each holds canonical weights (``edgecompress.formats``) and a float32 bias; build one with
``from_float(module, **format_options)`` or from a weight you already have. Inputs are float32,
float16 or bfloat16 CPU tensors (the kernels compute in float32; the output has the input's dtype);
a backward pass through a module raises RuntimeError. Each module is a torch custom op
(``edgecompress::linear``, ``edgecompress::conv2d``) to ``torch.export``, ``torch.compile`` and
``torch.jit.trace``. ``edgecompress.save`` / ``edgecompress.load`` write and read whole models.
"""

from ._common import CompressedModule
from .conv import Int4Conv2d, Int8Conv2d, LowRankConv2d, SparseConv2d
from .linear import Int4Linear, Int8Linear, LowRankLinear, SparseLinear

MODULE_CLASSES = {cls.__name__: cls for cls in (Int8Linear, Int4Linear, SparseLinear, LowRankLinear,
                                                   Int8Conv2d, Int4Conv2d, SparseConv2d, LowRankConv2d)}

__all__ = [
    "CompressedModule",
    "Int4Conv2d",
    "Int4Linear",
    "Int8Conv2d",
    "Int8Linear",
    "LowRankConv2d",
    "LowRankLinear",
    "MODULE_CLASSES",
    "SparseConv2d",
    "SparseLinear",
]
