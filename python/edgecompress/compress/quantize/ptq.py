"""Post-training quantization: ``prepare`` -> ``calibrate`` -> ``convert``.

``prepare`` copies the model, folds BatchNorm into the convolutions before it (optional), and
replaces each quantized nn.Linear / nn.Conv2d by a QuantLinear / QuantConv2d that shares its
parameters and carries a FakeQuantize for the weight (observed once, there) and one for the input
(with static activation quantization). Calibration runs float batches through it: the input
observers watch, nothing is quantized yet. ``convert`` freezes the scales and returns the deployable
layers (Int8Weight / Int4Weight, bias, static input scale and zero point) and a torch model that
simulates them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

import numpy as np
import torch
from torch import nn

from ...formats.int4 import pack_nibbles
from ...formats import Int4Weight, Int8Weight
from .config import QuantConfig, QuantSpec
from .fake_quantize import FakeQuantize, QuantConv2d, QuantLinear, int4_group_size, weight_rows

__all__ = ["QuantizedLayer", "QuantizedModel", "calibrate", "convert", "fold_batchnorm", "prepare"]

_QUANT_TYPES = {nn.Linear: QuantLinear, nn.Conv2d: QuantConv2d}
_CONFIG_ATTR = "_edgecompress_quant_config"  # set on a prepared model's root: the config it was prepared with


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


@torch.no_grad()
def fold_batchnorm(model: nn.Module, pairs: Sequence[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Fold each BatchNorm2d into the Conv2d that feeds it, in place; returns the (conv, bn) pairs.

    With f = gamma / sqrt(running_var + eps) per channel: w' = w * f, b' = (b - running_mean) * f + beta,
    and the BatchNorm becomes nn.Identity, so the model computes what it did in eval mode. ``pairs``:
    (conv name, bn name); by default every BatchNorm2d registered right after a Conv2d in the same
    parent with matching channels (conv-bn-relu blocks). The default assumes the model applies that
    BatchNorm to that conv's output; pass ``pairs`` when it does not.
    """
    _check_model(model)
    if pairs is None:
        pairs = []
        for parent_name, parent in model.named_modules():
            children = list(parent.named_children())
            for (a_name, a), (b_name, b) in zip(children, children[1:]):
                if type(a) is nn.Conv2d and isinstance(b, nn.BatchNorm2d) and a.out_channels == b.num_features:
                    prefix = f"{parent_name}." if parent_name else ""
                    pairs.append((prefix + a_name, prefix + b_name))
    if isinstance(pairs, str) or not all(isinstance(p, (tuple, list)) and len(p) == 2 and all(isinstance(n, str) for n in p)
                                         for p in pairs):
        raise TypeError(f"pairs: expected a list of (conv name, bn name) pairs, got {pairs!r}")
    pairs = [tuple(p) for p in pairs]
    for conv_name, bn_name in pairs:
        try:
            conv, bn = model.get_submodule(conv_name), model.get_submodule(bn_name)
        except AttributeError as e:
            raise ValueError(f"pairs: {(conv_name, bn_name)} does not name two submodules of the model ({e})") from None
        if not isinstance(conv, nn.Conv2d) or not isinstance(bn, nn.BatchNorm2d):
            raise TypeError(f"pairs: expected (Conv2d, BatchNorm2d), got ({type(conv).__name__}, {type(bn).__name__}) for {(conv_name, bn_name)}")
        if bn.running_mean is None or bn.running_var is None:
            raise ValueError(f"pairs: {bn_name!r} keeps no running statistics (track_running_stats=False); it cannot be folded")
        if conv.out_channels != bn.num_features:
            raise ValueError(f"pairs: {conv_name!r} has {conv.out_channels} output channels, {bn_name!r} normalizes {bn.num_features}")
        f = torch.rsqrt(bn.running_var + bn.eps)
        shift = -bn.running_mean * f
        if bn.affine:
            f, shift = f * bn.weight, shift * bn.weight + bn.bias
        bias = conv.bias if conv.bias is not None else torch.zeros_like(bn.running_mean)
        conv.weight.mul_(f.reshape(-1, 1, 1, 1))
        conv.bias = nn.Parameter(bias * f + shift)
        _set_submodule(model, bn_name, nn.Identity())
    return pairs


def quantizable_layers(model: nn.Module) -> list[str]:
    """Names of the nn.Linear and nn.Conv2d modules (exact types) that quantization applies to."""
    return [name for name, m in model.named_modules() if type(m) in _QUANT_TYPES]


def _prepare(model: nn.Module, config: QuantConfig | None, *, qat: bool, learnable_scale: bool,
             inplace: bool) -> nn.Module:
    _check_model(model)
    if config is None:
        config = QuantConfig()
    if not isinstance(config, QuantConfig):
        raise TypeError(f"config: expected a QuantConfig or None, got {type(config).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace: expected a bool, got {type(inplace).__name__}")
    if hasattr(model, _CONFIG_ATTR) or any(isinstance(m, (QuantLinear, QuantConv2d)) for m in model.modules()):
        raise ValueError("model: already prepared for quantization (it holds QuantLinear/QuantConv2d layers)")
    names = quantizable_layers(model)
    if not names:
        raise ValueError("model: has no nn.Linear or nn.Conv2d layer to quantize")
    plan = config.resolve(names)
    if not inplace:
        model = copy.deepcopy(model)
    if config.fold_batchnorm:
        fold_batchnorm(model)
    setattr(model, _CONFIG_ATTR, config)
    shared: dict[QuantSpec, FakeQuantize] = {}  # granularity "model": one quantizer per spec
    for name in names:
        specs = plan[name]
        if specs is None:
            continue
        wspec, aspec = specs
        layer = model.get_submodule(name)
        if wspec.granularity == "model":
            wq = shared.setdefault(wspec, FakeQuantize(wspec, "weight", "model", learnable_scale=learnable_scale))
        else:
            wq = FakeQuantize(wspec, "weight", name, learnable_scale=learnable_scale,
                              rows=weight_rows(wspec, tuple(layer.weight.shape)))
        wq.observe(layer.weight)
        aq = None if aspec is None else FakeQuantize(aspec, "activation", name, learnable_scale=learnable_scale)
        qlayer = _QUANT_TYPES[type(layer)].from_float(layer, wq, aq)
        qlayer.fake_quant = qat
        _set_submodule(model, name, qlayer)
    for wq in _weight_quantizers(model):
        if learnable_scale:
            wq.update_qparams()  # the learnable scale's starting value, before an optimizer takes it
        if not qat:
            wq.observing = False  # PTQ: weights do not change, once is enough
    return model


def prepare(model: nn.Module, config: QuantConfig | None = None, *, inplace: bool = False) -> nn.Module:
    """A copy of ``model`` (the model itself with ``inplace``) ready for calibration per ``config``
    (default: int8 symmetric per-channel weights). Run batches through it (``calibrate``), then
    ``convert`` it."""
    return _prepare(model, config, qat=False, learnable_scale=False, inplace=inplace)


def _batches(batches: Iterable[Any]) -> list[torch.Tensor]:
    """Input tensors of calibration batches: tensors, or tuples/lists whose first item is the input."""
    if isinstance(batches, torch.Tensor) or not isinstance(batches, Iterable):
        raise TypeError(f"batches: expected an iterable of input batches (a list of tensors or (x, y) pairs), got {type(batches).__name__}")
    out = []
    for b in batches:
        x = b[0] if isinstance(b, (tuple, list)) and b else b
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"batches: expected tensors or (x, ...) tuples, got an item of type {type(x).__name__}")
        out.append(x)
    if not out:
        raise ValueError("batches: expected at least one calibration batch, got none")
    return out


@torch.no_grad()
def run_batches(model: nn.Module, batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """The model's outputs for ``batches``, concatenated (eval mode, no gradients)."""
    model.eval()
    return torch.cat([model(x) for x in batches])


def calibrate(model: nn.Module, batches: Iterable[Any]) -> nn.Module:
    """Run ``batches`` through a prepared model in eval mode so its observers see them; returns it."""
    _check_model(model)
    model.eval()
    with torch.no_grad():
        for x in _batches(batches):  # only the observers' view matters: the outputs may be any type
            model(x)  # (a Hugging Face model returns a ModelOutput, which run_batches cannot concatenate)
    return model


@dataclass
class QuantizedLayer:
    """One quantized layer, ready for the kernels.

    ``weight``: Int8Weight or Int4Weight (the (N, K) matrix; a conv's (out, in/groups * kh * kw)), or
    None when its spec has no deployment format (``weight_float`` still holds the simulated weight).
    ``bias``: float32 (N,) or None. ``input_scale`` / ``input_zero_point``: static quantization of the
    input (zero point None when symmetric), None without activation quantization; ``ops.linear`` takes
    them (``act_scale`` / ``act_zero_point``) with an Int8Weight. ``conv``: stride, padding, dilation,
    groups and kernel_size of a Conv2d (None for Linear).
    """

    name: str
    kind: str
    weight: Int8Weight | Int4Weight | None
    weight_float: torch.Tensor
    bias: np.ndarray | None
    weight_spec: QuantSpec
    input_spec: QuantSpec | None = None
    input_scale: float | None = None
    input_zero_point: int | None = None
    conv: dict[str, Any] | None = None

    @property
    def format(self) -> str:
        return self.weight_spec.deploy_format or "simulated"

    @property
    def nbytes(self) -> int:
        """Bytes of the deployed weight (float32 for a simulated-only weight) and bias."""
        w = self.weight.nbytes if self.weight is not None else self.weight_float.numel() * 4
        return int(w + (0 if self.bias is None else self.bias.nbytes))


@dataclass
class QuantizedModel:
    """What ``convert`` returns: ``layers`` (name -> QuantizedLayer), ``float_layers`` (the names of
    layers left in float) and ``model``, a torch model that simulates the quantized one (dequantized
    weights, fake-quantized static inputs) for evaluation."""

    model: nn.Module
    layers: dict[str, QuantizedLayer] = field(default_factory=dict)
    float_layers: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> QuantizedLayer:
        return self.layers[name]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def summary(self) -> str:
        """A table: layer, format, spec, bytes."""
        rows = [("layer", "format", "weight", "input", "bytes")]
        for name, q in self.layers.items():
            s = q.weight_spec
            w = f"{s.bits}-bit {'sym' if s.symmetric else 'asym'} {s.granularity}"
            w += f" g{s.group_size}" if s.group_size else ""
            w += f" {s.codebook}" if s.codebook else ""
            a = "-" if q.input_spec is None else f"{q.input_spec.bits}-bit {'sym' if q.input_spec.symmetric else 'asym'}"
            rows.append((name, q.format, w, a, str(q.nbytes)))
        rows += [(name, "float", "-", "-", "-") for name in self.float_layers]
        widths = [max(len(r[i]) for r in rows) for i in range(5)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def _weight_quantizers(model: nn.Module) -> list[FakeQuantize]:
    return [m for m in model.modules() if isinstance(m, FakeQuantize) and m.role == "weight"]


def freeze_observers(model: nn.Module) -> nn.Module:
    """Stop every observer of a prepared model and fix the scales at what they have seen; returns it.
    Raises RuntimeError when an observer has seen nothing (no calibration yet)."""
    _check_model(model)
    for m in model.modules():
        if isinstance(m, FakeQuantize):
            m.freeze()
    return model


def _deploy_weight(layer: QuantLinear | QuantConv2d) -> Int8Weight | Int4Weight | None:
    wq = layer.weight_quant
    spec = wq.spec
    fmt = spec.deploy_format
    n, k = layer.weight.shape[0], layer.weight[0].numel()
    if fmt == "int8":
        codes, _, _ = wq.weight_codes(layer.weight, 1)
        return Int8Weight(codes.to(torch.int8).numpy(), wq.effective_scale().detach().numpy().astype(np.float32))
    if fmt != "int4":
        return None
    g = int4_group_size(spec)
    codes, scale, zero_point = wq.weight_codes(layer.weight, g)
    table = None if wq.table is None else wq.table.numpy()
    zp_packed = None
    if spec.codebook is None and spec.symmetric:
        codes = codes + 8  # Int4Weight's symmetric codes: 0..15 around the implicit zero point 8
    elif spec.codebook is None:
        zp = zero_point.to(torch.uint8).numpy()
        zp_packed = pack_nibbles(np.pad(zp, ((0, 0), (0, zp.shape[1] % 2))), 2).reshape(n, -1)
    qweight = pack_nibbles(codes.to(torch.uint8).numpy(), g)
    return Int4Weight(qweight, scale.contiguous().numpy().astype(np.float16), zp_packed, table, k=k)


def convert(model: nn.Module) -> QuantizedModel:
    """The deployable layers of a prepared (and calibrated, or QAT-trained) model, and a model that
    simulates them. ``model`` itself is left as it is; the result's scales are those its observers
    give now (or the frozen ones)."""
    _check_model(model)
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, (QuantLinear, QuantConv2d))]
    if not hasattr(model, _CONFIG_ATTR):
        raise ValueError("model: not prepared for quantization (call prepare or prepare_qat first)")
    sim = freeze_observers(copy.deepcopy(model))
    result = QuantizedModel(sim)
    with torch.no_grad():
        for name, layer in ((n, sim.get_submodule(n)) for n, _ in layers):
            layer.fake_quant = True
            wq, aq = layer.weight_quant, layer.input_quant
            if wq is None:  # already converted
                raise ValueError(f"model: layer {name!r} holds no weight quantizer (a converted model cannot be converted again)")
            weight = _deploy_weight(layer)
            wfloat = wq.fake_quantize(layer.weight).detach().clone()
            layer.weight.copy_(wfloat)
            conv = None
            if isinstance(layer, nn.Conv2d):
                conv = {key: getattr(layer, key) for key in ("kernel_size", "stride", "padding", "dilation", "groups")}
            q = QuantizedLayer(name, "conv2d" if conv else "linear", weight, wfloat,
                               None if layer.bias is None else layer.bias.detach().numpy().astype(np.float32).copy(),
                               wq.spec, conv=conv)
            if aq is not None:
                q.input_spec = aq.spec
                q.input_scale = float(aq.effective_scale())
                q.input_zero_point = None if aq.spec.symmetric else int(aq.zero_point)
            result.layers[name] = q
        for name, layer in ((n, sim.get_submodule(n)) for n, _ in layers):
            layer.weight_quant = None  # the weights are the dequantized ones now
    result.float_layers = [n for n in quantizable_layers(sim) if n not in result.layers]
    sim.eval()
    return result
