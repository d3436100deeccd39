"""Quantization-aware training: ``prepare_qat`` -> train -> ``freeze_observers`` (optional) -> ``convert``.

The prepared model fake-quantizes every quantized layer's weight and input in each forward, with
straight-through gradients, so training adapts the weights to the quantization grid. BatchNorm is
folded into the convolutions first (``QuantConfig.fold_batchnorm``): training then updates the
folded weights the deployed model uses, and the running statistics stay fixed. Observers keep
updating the scales until ``freeze_observers``; ``convert`` freezes a copy, so its weights equal what
the fake-quantized model computes after freezing.
"""

from __future__ import annotations

from torch import nn

from .config import QuantConfig
from .ptq import _prepare

__all__ = ["prepare_qat"]


def prepare_qat(model: nn.Module, config: QuantConfig | None = None, *, learnable_scale: bool = False,
                inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (the model itself with ``inplace``) that trains with fake quantization per
    ``config``. ``learnable_scale``: the scales are parameters trained with LSQ's gradient (create the
    optimizer after this call); the observers only give their starting values (weights: now;
    inputs: at the first forward)."""
    if not isinstance(learnable_scale, bool):
        raise TypeError(f"learnable_scale: expected a bool, got {type(learnable_scale).__name__}")
    return _prepare(model, config, qat=True, learnable_scale=learnable_scale, inplace=inplace)
