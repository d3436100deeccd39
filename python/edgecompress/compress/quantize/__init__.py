"""Quantization of torch models: observers' statistics -> QuantConfig plan -> post-training
quantization (``prepare`` / ``calibrate`` / ``convert``) or quantization-aware training
(``prepare_qat`` / train / ``convert``) -> deployable Int8Weight / Int4Weight layers.

Quick start::

    from edgecompress.compress.quantize import QuantConfig, QuantSpec, prepare, calibrate, convert
    config = QuantConfig(weight=QuantSpec(bits=4, granularity="group", group_size=32),
                         overrides={"fc2": QuantSpec(bits=8)}, exclude=["conv1"])
    q = convert(calibrate(prepare(model, config), calibration_batches))
    q.layers["fc1"].weight      # an Int4Weight; q.model simulates the quantized model in torch
"""

from .config import GRANULARITIES, GROUP_SIZES, QuantConfig, QuantSpec
from .fake_quantize import FakeQuantize, QuantConv2d, QuantLinear
from .ptq import (
    QuantizedLayer,
    QuantizedModel,
    calibrate,
    convert,
    fold_batchnorm,
    freeze_observers,
    prepare,
    quantizable_layers,
)
from .qat import prepare_qat
from .sensitivity import (
    LayerSensitivity,
    MaxDropResult,
    SensitivityReport,
    quantize_with_max_drop,
    sensitivity_report,
)

__all__ = [
    "FakeQuantize",
    "GRANULARITIES",
    "GROUP_SIZES",
    "LayerSensitivity",
    "MaxDropResult",
    "QuantConfig",
    "QuantConv2d",
    "QuantLinear",
    "QuantSpec",
    "QuantizedLayer",
    "QuantizedModel",
    "SensitivityReport",
    "calibrate",
    "convert",
    "fold_batchnorm",
    "freeze_observers",
    "prepare",
    "prepare_qat",
    "quantizable_layers",
    "quantize_with_max_drop",
    "sensitivity_report",
]
