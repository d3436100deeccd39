"""The weight formats under their former module name, so that code importing them from here keeps
working. They live in edgecompress.formats (one module per format); packing and kernel calls are
in edgecompress.ops."""

from .formats import Int4Weight, Int8Weight, LowRankWeight, SparseWeight

__all__ = ["Int4Weight", "Int8Weight", "LowRankWeight", "SparseWeight"]
