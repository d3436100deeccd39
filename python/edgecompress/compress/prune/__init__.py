"""Pruning for torch models: weights (unstructured, N:M, blocks; one-shot or on a gradual schedule),
and structures (neurons, filters, channels, attention heads, whole blocks) that make the model smaller.

Every pruning call edits the model in place and returns a :class:`Report` of parameters and MACs per
layer before and after (``print(report)`` shows a table).
"""

from .graph import AttentionSpec, ChannelGroup, DependencyGraph, Usage
from .importance import IMPORTANCE, group_importance
from .magnitude import input_norms, make_permanent, mask_of, prune_weights, weight_scores
from .masks import PATTERNS
from .report import LayerStats, Report, ReportRow, measure
from .schedule import GradualPruning
from .structured import (block_importance, prune_channels, prune_filters, prune_heads, prune_neurons,
                         remove_blocks, select_channels)

__all__ = [
    "IMPORTANCE",
    "PATTERNS",
    "AttentionSpec",
    "ChannelGroup",
    "DependencyGraph",
    "GradualPruning",
    "LayerStats",
    "Report",
    "ReportRow",
    "Usage",
    "block_importance",
    "group_importance",
    "input_norms",
    "make_permanent",
    "mask_of",
    "measure",
    "prune_channels",
    "prune_filters",
    "prune_heads",
    "prune_neurons",
    "prune_weights",
    "remove_blocks",
    "select_channels",
    "weight_scores",
]
