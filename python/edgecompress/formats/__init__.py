"""Canonical compressed weight formats: portable arrays + metadata, numpy only.

One module per format; ``_common`` holds the checks they share. A weight here knows nothing of
kernels: the ops layer (``edgecompress.ops``) packs it once per CPU and runs it.
"""

from .int4 import Int4Weight
from .int8 import Int8Weight
from .lowrank import LowRankWeight
from .sparse import SparseWeight

__all__ = ["Int4Weight", "Int8Weight", "LowRankWeight", "SparseWeight"]
