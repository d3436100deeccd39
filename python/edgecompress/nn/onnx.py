"""ONNX export of models with Int8Linear and Int4Linear layers, as standard nodes onnxruntime runs.

``export(model, args, f=None, **kwargs)`` is ``torch.onnx.export`` (the torch.export-based exporter)
with ``TRANSLATIONS``, which turns each ``edgecompress::linear`` custom op into:

- Int8Linear, dynamic input quantization (the default): DynamicQuantizeLinear of the input (uint8,
  one scale and zero point per tensor), MatMulInteger with the int8 weight, then the input scale and
  the per-channel (or per-tensor) weight scales, then the bias: onnxruntime's own dynamic int8
  pattern. It quantizes per tensor where our kernels quantize per row, so outputs differ by the
  rounding of int8 activations (about 1% of max |output|).
- Int8Linear with a static input scale: QuantizeLinear / DequantizeLinear of the input with that
  scale (and zero point), DequantizeLinear of the weight, MatMul, bias.
- Int4Linear: onnxruntime's ``com.microsoft`` MatMulNBits, whose layout Int4Weight already is
  (``edgecompress.convert.to_onnx_matmulnbits``, exact), with accuracy_level 4 (int8 activations) for
  compute="int8" and float arithmetic for compute="float"; codebook weights have no MatMulNBits form.

The other formats and the convolutions have no standard ONNX form here: exporting them raises
ValueError naming the module. Needs onnxscript (``pip install "edgecompress[onnx]"``).
"""

from __future__ import annotations

import os
from typing import Any, Callable

import numpy as np
import torch

try:
    import onnx_ir as ir
    from onnx.defs import OpSchema
    from onnxscript import opset18 as op
    from onnxscript.values import Op, Opset
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError('edgecompress.nn.onnx needs onnxscript: pip install "edgecompress[onnx]"') from e

from ..convert import to_onnx_matmulnbits
from . import _library
from ._common import CompressedModule
from .linear import Int4Linear, Int8Linear

__all__ = ["TRANSLATIONS", "export"]


def _matmulnbits_schema() -> OpSchema:
    """MatMulNBits as onnxruntime defines it (the exporter builds a node only from a schema; onnx's
    registry has none for the com.microsoft domain)."""
    param = OpSchema.FormalParameter
    optional = OpSchema.FormalParameterOption.Optional
    return OpSchema(
        "MatMulNBits", "com.microsoft", 1,
        inputs=[param("A", "T1"), param("B", "T2"), param("scales", "T1"), param("zero_points", "T3", param_option=optional)],
        outputs=[param("Y", "T1")],
        type_constraints=[("T1", ["tensor(float)"], ""), ("T2", ["tensor(uint8)"], ""), ("T3", ["tensor(uint8)"], "")],
        attributes=[OpSchema.Attribute(name, OpSchema.AttrType.INT, "")
                    for name in ("K", "N", "bits", "block_size", "accuracy_level")])


_MATMULNBITS = Op(Opset("com.microsoft", 1), "MatMulNBits", _matmulnbits_schema())


def _const(a: np.ndarray) -> Any:
    return op.Constant(value=ir.tensor(np.ascontiguousarray(a)))


def _int8_linear(x: Any, m: Int8Linear) -> Any:
    w = m.weight
    qweight_t = np.asarray(w.qweight).T  # (K, N): x @ W.T
    w_scale = np.asarray(w.scale, np.float32)
    q = m.input_quant
    if q is None:
        xq, x_scale, x_zero_point = op.DynamicQuantizeLinear(x)
        # The weight as uint8 with zero point 128: onnxruntime's uint8 x int8 kernels for AVX2
        # saturate pairs of products in 16 bits (weights over 63 in magnitude overflow them), its
        # uint8 x uint8 kernels are exact.
        weight_u8 = _const((qweight_t.astype(np.int16) + 128).astype(np.uint8))
        acc = op.Cast(op.MatMulInteger(xq, weight_u8, x_zero_point, _const(np.array(128, np.uint8))),
                      to=ir.DataType.FLOAT)
        return op.Mul(op.Mul(acc, x_scale), _const(w_scale))
    zero_point = np.array(0, np.int8) if q["zero_point"] is None else np.array(q["zero_point"], np.uint8)
    x_scale = _const(np.array(q["scale"], np.float32))
    x_zero_point = _const(zero_point)
    xdq = op.DequantizeLinear(op.QuantizeLinear(x, x_scale, x_zero_point), x_scale, x_zero_point)
    weight = op.DequantizeLinear(_const(qweight_t), _const(w_scale if w_scale.size > 1 else w_scale.reshape(())), axis=1)
    return op.MatMul(xdq, weight)


def _int4_linear(x: Any, m: Int4Linear) -> Any:
    try:
        d = to_onnx_matmulnbits(m.weight)
    except ValueError as e:
        raise ValueError(f"Int4Linear: {e} (export it with a uniform 4-bit weight, or keep it out of ONNX)") from None
    inputs = [x, _const(d["B"]), _const(d["scales"])]
    if "zero_points" in d:
        inputs.append(_const(d["zero_points"]))
    accuracy_level = 4 if m.weight.compute == "int8" else 0  # 4: int8 activations per block, as our kernels
    return _MATMULNBITS(*inputs, **d["attributes"], accuracy_level=accuracy_level)


def _linear(x: Any, handle: int) -> Any:
    m = _library.module_of(handle)
    if isinstance(m, Int8Linear):
        y = _int8_linear(x, m)
    elif isinstance(m, Int4Linear):
        y = _int4_linear(x, m)
    else:
        raise ValueError(f"model: ONNX export supports Int8Linear and Int4Linear, got {type(m).__name__}")
    return y if m.bias is None else op.Add(y, _const(m.bias.to(torch.float32).numpy()))


def _conv2d(x: Any, handle: int) -> Any:
    raise ValueError(f"model: ONNX export supports Int8Linear and Int4Linear, got "
                     f"{type(_library.module_of(handle)).__name__}")


TRANSLATIONS: dict[Callable[..., Any], Callable[..., Any]] = {
    torch.ops.edgecompress.linear.default: _linear,
    torch.ops.edgecompress.conv2d.default: _conv2d,
}


def export(model: torch.nn.Module, args: tuple[Any, ...], f: str | os.PathLike | None = None, **kwargs: Any) -> Any:
    """``torch.onnx.export(model, args, f, dynamo=True, ...)`` with the translations of this module
    (merged with any ``custom_translation_table`` given); returns the ONNXProgram."""
    for name, m in model.named_modules():  # (checked first: the exporter buries errors of translations)
        if isinstance(m, CompressedModule) and not (isinstance(m, Int8Linear) or (
                isinstance(m, Int4Linear) and m.weight.codebook is None)):
            what = "an Int4Linear with a codebook" if isinstance(m, Int4Linear) else type(m).__name__
            raise ValueError(f"model: ONNX export supports Int8Linear and Int4Linear (uniform 4-bit weights), "
                             f"got {what} at {name!r}")
    table = {**TRANSLATIONS, **kwargs.pop("custom_translation_table", {})}
    return torch.onnx.export(model, args, f, dynamo=True, custom_translation_table=table, **kwargs)
