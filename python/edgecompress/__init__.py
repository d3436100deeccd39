"""edgecompress: compressed neural networks that are faster on the CPU they run on.

Public API of the native core: ``Int8Weight``, ``Int4Weight``, ``SparseWeight``, ``LowRankWeight``, ``linear``, the raw kernels in ``edgecompress.ops``,
and the runtime controls ``cpu_info``, ``use_isa``, ``set_num_threads`` and ``get_num_threads``.
With torch: ``compress(model, recipe, ...)``, ``save``, ``load`` and ``from_pretrained`` (a transformers
model saved with ``save_pretrained``) (imported on first use).
"""

from . import ops, reference
from .ops import linear
from .runtime import cpu_info, current_tier, get_num_threads, set_num_threads, use_isa
from .formats import Int4Weight, Int8Weight, LowRankWeight, SparseWeight

__version__ = "0.1.0"

__all__ = [
    "Int4Weight",
    "Int8Weight",
    "LowRankWeight",
    "SparseWeight",
    "cpu_info",
    "current_tier",
    "get_num_threads",
    "linear",
    "ops",
    "reference",
    "set_num_threads",
    "use_isa",
]


def __getattr__(name: str):
    # save / load / compress need torch (and safetensors): imported on first use, so `import
    # edgecompress` stays light. `compress` is the edgecompress.compress package, which is callable
    # (see its docstring): edgecompress.compress(model, recipe, ...).
    if name in ("save", "load", "from_pretrained"):
        from . import serialization

        return getattr(serialization, name)
    if name == "compress":
        import importlib

        return importlib.import_module(".compress", __name__)
    raise AttributeError(f"module 'edgecompress' has no attribute {name!r}")
