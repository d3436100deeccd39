"""Drop-in replacements for torch.nn.Linear that run one canonical compressed weight on our kernels."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from .. import ops
from ..formats import Int4Weight, Int8Weight, LowRankWeight, SparseWeight
from . import _library
from ._common import CompressedModule, StaticInput, Weight, as_numpy, check_input, run_op

__all__ = ["Int4Linear", "Int8Linear", "LowRankLinear", "SparseLinear"]


class _CompressedLinear(CompressedModule):
    """y = x @ W.T + bias for x of shape (..., in_features) on the CPU, as torch.nn.Linear.

    Construct from a canonical weight (N, K) and an optional bias (N,), or convert a float module
    with ``from_float``. The weight is packed for this CPU on the first call, once; each call passes
    the activations to ``edgecompress.linear`` without a copy when they are contiguous float32
    (float16 / bfloat16 inputs are computed in float32 and the result cast back).
    """

    FLOAT_CLASS = nn.Linear
    CONFIG_KEYS = ("in_features", "out_features", "bias")

    def __init__(self, weight: Weight, bias: torch.Tensor | np.ndarray | None = None) -> None:
        super().__init__((weight,), bias)

    @property
    def weight(self) -> Weight:
        """The canonical compressed weight (out_features, in_features)."""
        return self.weights[0]

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def out_features(self) -> int:
        return self.weight.shape[0]

    @classmethod
    def from_float(cls, module: nn.Linear, **options: Any) -> _CompressedLinear:
        """Compress ``module``'s weight with ``WEIGHT_CLASS.from_float(weight, **options)``; the bias
        is kept in float32."""
        if not isinstance(module, nn.Linear):
            raise TypeError(f"module: expected a torch.nn.Linear, got {type(module).__name__}")
        w = module.weight.detach().to("cpu", torch.float32).numpy()
        return cls(cls.WEIGHT_CLASS.from_float(w, **options), module.bias)

    def config(self) -> dict[str, Any]:
        return {"in_features": self.in_features, "out_features": self.out_features, "bias": self.bias is not None}

    @classmethod
    def float_config(cls, module: nn.Module) -> dict[str, Any]:
        return {"in_features": module.in_features, "out_features": module.out_features,
                "bias": module.bias is not None}

    @classmethod
    def _build(cls, weights: list[Weight], bias: np.ndarray | None, config: dict[str, Any]) -> _CompressedLinear:
        return cls(weights[0], bias)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = check_input(input)
        if x.ndim == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"input: expected shape (..., {self.in_features}), got {tuple(x.shape)}")
        return run_op(_library.linear, x, self)

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        """The kernel on a float32 input (the body of the custom op edgecompress::linear)."""
        return torch.from_numpy(ops.linear(as_numpy(x), self.weight, self._bias_numpy(), **self._act_args()))


class Int8Linear(StaticInput, _CompressedLinear):
    """nn.Linear with an Int8Weight: W8A8, activations quantized per row inside each call, or with
    one static scale (``act_scale``, and ``act_zero_point`` for asymmetric uint8) from calibration.

    ``Int8Linear.from_float(linear, granularity="channel" | "tensor", act_scale=None, act_zero_point=None)``;
    ``Int8Linear(weight, bias, act_scale=..., act_zero_point=...)``.
    """

    WEIGHT_CLASS = Int8Weight
    VERSION = INPUT_QUANT_SINCE = 2  # 2: the extra state always holds "input_quant" (None: dynamic)


class Int4Linear(_CompressedLinear):
    """nn.Linear with an Int4Weight (groups of 32/64/128 along in_features).

    ``Int4Linear.from_float(linear, group_size=32, symmetric=True, method="rtn" | "mse",
    codebook=None | "nf4" | "kmeans" | table, compute="int8" | "float")``.
    """

    WEIGHT_CLASS = Int4Weight


class SparseLinear(_CompressedLinear):
    """nn.Linear with a SparseWeight: stores the nonzeros pruning left (it does not prune).

    ``SparseLinear.from_float(linear, format="csr" | "bsr4x1" | ... | "auto", dtype="float32" |
    "int8", rows=1)``; a linear pruned with torch.nn.utils.prune works as it is (its ``weight`` is
    the masked one).
    """

    WEIGHT_CLASS = SparseWeight


class LowRankLinear(_CompressedLinear):
    """nn.Linear with a LowRankWeight u (N, r) @ v (r, K).

    ``LowRankLinear.from_float(linear, rank=None, energy=None, dtype="float32" | "int8",
    multiple=16)`` (exactly one of rank and energy).
    """

    WEIGHT_CLASS = LowRankWeight
