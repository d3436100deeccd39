"""Pruning for torch models: weights (unstructured, N:M, blocks; one-shot or on a gradual schedule).

Every pruning call edits the model in place and returns a :class:`Report` of parameters and MACs per
layer before and after (``print(report)`` shows a table).
"""

from .magnitude import input_norms, make_permanent, mask_of, prune_weights, weight_scores
from .masks import PATTERNS
from .report import LayerStats, Report, ReportRow, measure
from .schedule import GradualPruning

__all__ = [
    "PATTERNS",
    "GradualPruning",
    "LayerStats",
    "Report",
    "ReportRow",
    "input_norms",
    "make_permanent",
    "mask_of",
    "measure",
    "prune_weights",
    "weight_scores",
]
