"""Compression algorithms for torch.nn.Module models: quantization, pruning, low-rank, distillation.

Needs torch (``pip install "edgecompress[torch]"``). The algorithms produce the canonical weight formats
of :mod:`edgecompress.weights`; running them fast inside torch is :mod:`edgecompress.nn`'s job.

- :mod:`.observers`: range observers (min-max, moving average, percentile, MSE, entropy).
- :mod:`.quantize`: ``QuantConfig``; ``prepare`` / ``calibrate`` / ``convert`` (post-training),
  ``prepare_qat`` (quantization-aware training), sensitivity report and ``quantize_with_max_drop``.
- :mod:`.prune`: weight pruning (magnitude or Wanda; unstructured, N:M, blocks; gradual schedule),
  neuron / filter / channel / head pruning on a torch.fx dependency graph, per-layer reports.
- :mod:`.lowrank`: truncated SVD of Linear and Conv2d layers (plain or activation-aware).
- :mod:`.distill`: Hinton and feature losses, and a ``distill`` loop.
- :mod:`.digits`: scikit-learn's bundled digits and two small models, for examples and tests.
"""
