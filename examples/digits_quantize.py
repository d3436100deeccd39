"""Quantize a small CNN (or MLP) trained on scikit-learn's digits and print test accuracy per method.

    python examples/digits_quantize.py [--model cnn|mlp] [--qat-epochs 3] [--qat-lr 3e-4]

Post-training quantization (int8 / int4 / whole-model scale / static activations / codebooks),
quantization-aware training against PTQ at the same setting, and the accuracy-controlled mode.
Needs torch and scikit-learn; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import time

import torch

from edgecompress.compress import digits as d
from edgecompress.compress.quantize import (
    QuantConfig,
    QuantSpec,
    calibrate,
    convert,
    prepare,
    prepare_qat,
    quantize_with_max_drop,
)

INT4_G32 = QuantSpec(bits=4, granularity="group", group_size=32)
PTQ = {
    "int8 per channel": QuantConfig(),
    "int8 per tensor": QuantConfig(QuantSpec(granularity="tensor")),
    "int8 whole model": QuantConfig(QuantSpec(granularity="model")),
    "int8 + static uint8 inputs": QuantConfig(activation=QuantSpec(symmetric=False, granularity="tensor")),
    "int4 g32": QuantConfig(INT4_G32),
    "int4 g32 mse": QuantConfig(QuantSpec(bits=4, granularity="group", group_size=32, observer="mse")),
    "nf4 g32": QuantConfig(QuantSpec(bits=4, granularity="group", group_size=32, codebook="nf4")),
    "kmeans g32": QuantConfig(QuantSpec(bits=4, granularity="group", group_size=32, codebook="kmeans")),
    "int4 per tensor": QuantConfig(QuantSpec(bits=4, granularity="tensor")),
    "int4 whole model": QuantConfig(QuantSpec(bits=4, granularity="model")),
    "int2 per channel": QuantConfig(QuantSpec(bits=2)),
}
QAT = ["int4 g32", "int4 per tensor", "int2 per channel"]


def weight_bytes(q) -> int:
    return sum(layer.nbytes for layer in q.layers.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=["cnn", "mlp"], default="cnn")
    parser.add_argument("--qat-epochs", type=int, default=3)
    parser.add_argument("--qat-lr", type=float, default=3e-4, help="Adam learning rate of the QAT fine-tuning")
    args = parser.parse_args()
    torch.set_num_threads(1)
    data = d.load()
    torch.manual_seed(0)
    t0 = time.perf_counter()
    model = d.fit(d.DigitsCNN() if args.model == "cnn" else d.DigitsMLP(), data)
    print(f"trained the {args.model} in {time.perf_counter() - t0:.1f} s")
    calib = [data.x_train[:256], data.x_train[256:512]]

    def acc(m: torch.nn.Module) -> float:
        return d.accuracy(m, data.x_test, data.y_test)

    base = acc(model)
    fp32_bytes = sum(p.numel() * 4 for n, p in model.named_parameters() if not n.startswith("bn"))
    rows = [("fp32", "-", base, fp32_bytes)]
    for name, config in PTQ.items():
        q = convert(calibrate(prepare(model, config), calib))
        rows.append((name, "PTQ", acc(q.model), weight_bytes(q)))
    for name in QAT:
        qat = prepare_qat(model, PTQ[name], learnable_scale=True)  # LSQ scales
        d.fit(qat, data, epochs=args.qat_epochs, lr=args.qat_lr)
        q = convert(qat)
        rows.append((name, "QAT+LSQ", acc(q.model), weight_bytes(q)))
    # scored on the test split for brevity; a real workflow scores on a held-out validation split
    result = quantize_with_max_drop(model, PTQ["int2 per channel"], calib, acc, max_drop=1.0)
    kept = ", ".join(f"{n}->{'float' if s is None else f'{s.bits}-bit'}" for n, s in result.kept.items())
    rows.append((f"int2, max_drop 1 ({kept or 'none kept'})", "PTQ", result.score, weight_bytes(result.quantized)))

    width = max(len(r[0]) for r in rows)
    print(f"\n{'method':<{width}}  {'mode':<9} {'test acc %':>10} {'drop':>6} {'bytes':>8}")
    for name, mode, a, nbytes in rows:
        print(f"{name:<{width}}  {mode:<9} {a:10.2f} {base - a:6.2f} {nbytes:8d}")
    print("\n(bytes: deployed weights and biases; sub-4-bit layers are simulated only and counted as float32)")


if __name__ == "__main__":
    main()
