"""Compression algorithms for torch.nn.Module models: quantization, pruning, low-rank, distillation.

Needs torch (``pip install "edgecompress[torch]"``). The algorithms produce the canonical weight formats
of :mod:`edgecompress.weights`; running them fast inside torch is :mod:`edgecompress.nn`'s job.
"""
