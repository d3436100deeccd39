"""Compression algorithms for torch.nn.Module models: quantization, pruning, low-rank, distillation,
and the one-call API that applies them.

Needs torch (``pip install "edgecompress[torch]"``). The algorithms produce the canonical weight formats
of :mod:`edgecompress.formats`; running them fast inside torch is :mod:`edgecompress.nn`'s job.

- ``edgecompress.compress(model, recipe, calibration_data, example_inputs, ...)``: swap a model's
  layers for compressed modules by recipe ("int8", "nf4", "sparse-75+int8", ...), with a speed guard
  and a report (:mod:`.one_call`, :mod:`.recipes`, :mod:`.summary`).
- :mod:`.observers`: range observers (min-max, moving average, percentile, MSE, entropy).
- :mod:`.quantize`: ``QuantConfig``; ``prepare`` / ``calibrate`` / ``convert`` (post-training),
  ``prepare_qat`` (quantization-aware training), sensitivity report and ``quantize_with_max_drop``.
- :mod:`.prune`: weight pruning (magnitude or Wanda; unstructured, N:M, blocks; gradual schedule),
  neuron / filter / channel / head pruning on a torch.fx dependency graph, per-layer reports.
- :mod:`.lowrank`: truncated SVD of Linear and Conv2d layers (plain or activation-aware).
- :mod:`.distill`: Hinton and feature losses, and a ``distill`` loop.
- :mod:`.digits`: scikit-learn's bundled digits and two small models, for examples and tests.

Why this package is callable: the one-call API is ``edgecompress.compress(...)``, and
``edgecompress.compress`` is also this package (Python sets a package's attribute to its subpackage
on import, whatever was there). So the package's module type gets a ``__call__`` that runs
:func:`.one_call.compress`; ``from edgecompress.compress import compress`` gives the function itself.
Nothing here imports torch until it is used.
"""

import sys
import types
from typing import Any

__all__ = ["CompressReport", "CompressionWarning", "LayerReport", "compress"]


class _CallablePackage(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        from .one_call import compress

        return compress(*args, **kwargs)


sys.modules[__name__].__class__ = _CallablePackage


def __getattr__(name: str) -> Any:
    if name in ("compress", "CompressionWarning"):
        from . import one_call

        return getattr(one_call, name)
    if name in ("CompressReport", "LayerReport"):
        from . import summary

        return getattr(summary, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
