"""What to quantize and how: QuantSpec (one tensor's quantizer) and QuantConfig (a model's plan).

Deployment formats (what ``convert`` can hand to the kernels) are plain data here, apart from the
algorithms: 8-bit symmetric per channel, per tensor or whole model -> Int8Weight; 4-bit, any
granularity, uniform or codebook -> Int4Weight (float16 scales; granularities other than "group" are
stored with their scale repeated over groups of 32). Every other spec (2-7 bits, asymmetric 8-bit,
8-bit groups) is simulated only.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field, replace
from typing import Any, Mapping, Optional, Sequence

from ..observers import OBSERVERS, QScheme

__all__ = ["GRANULARITIES", "GROUP_SIZES", "QuantConfig", "QuantSpec"]

GRANULARITIES = ("tensor", "channel", "group", "model")
GROUP_SIZES = (32, 64, 128)
CODEBOOKS = ("nf4", "kmeans")
DEFAULT_INT4_GROUP = 32  # Int4Weight layout for 4-bit specs that are not group-wise


@dataclass(frozen=True)
class QuantSpec:
    """One tensor's quantizer.

    bits: 2..8 (8 and 4 deploy; see the module notes). symmetric: zero point 0 and codes in
    [-(2^(bits-1) - 1), 2^(bits-1) - 1] for weights; otherwise codes 0..2^bits - 1 with a zero point.
    granularity: "tensor", "channel" (per output channel), "group" (``group_size`` 32, 64 or 128
    consecutive inputs of an output channel) or "model" (one scale shared by every weight with this
    spec). observer: one of ``observers.OBSERVERS``, its constructor's extra arguments in
    ``observer_args``. codebook: None (uniform), "nf4" or "kmeans" (4-bit symmetric group-wise
    non-uniform levels; observer "minmax" takes each group's max |w| as scale, "mse" searches it).
    """

    bits: int = 8
    symmetric: bool = True
    granularity: str = "channel"
    group_size: Optional[int] = None
    observer: str = "minmax"
    observer_args: Any = ()
    codebook: Optional[str] = None

    def __post_init__(self) -> None:
        QScheme(self.bits, self.symmetric)  # validates bits and symmetric
        if self.granularity not in GRANULARITIES:
            raise ValueError(f"granularity: expected one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        if self.granularity == "group":
            if isinstance(self.group_size, bool) or self.group_size not in GROUP_SIZES:
                raise ValueError(f"group_size: expected one of {GROUP_SIZES} with granularity='group', got {self.group_size!r}")
        elif self.group_size is not None:
            raise ValueError(f"group_size: only with granularity='group' (got granularity={self.granularity!r}, group_size={self.group_size!r})")
        if not isinstance(self.observer, str) or self.observer not in OBSERVERS:
            raise ValueError(f"observer: expected one of {', '.join(OBSERVERS)}, got {self.observer!r}")
        args = self.observer_args
        if isinstance(args, Mapping):
            args = tuple(sorted(args.items()))
        if not isinstance(args, tuple) or not all(isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], str) for a in args):
            raise TypeError(f"observer_args: expected a dict of keyword arguments, got {self.observer_args!r}")
        object.__setattr__(self, "observer_args", tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in args))
        if self.codebook is not None:
            if self.codebook not in CODEBOOKS:
                raise ValueError(f"codebook: expected None, 'nf4' or 'kmeans', got {self.codebook!r}")
            if self.bits != 4 or not self.symmetric or self.granularity != "group":
                raise ValueError("codebook: needs bits=4, symmetric=True and granularity='group'")
            if self.observer not in ("minmax", "mse"):
                raise ValueError(f"observer: a codebook takes 'minmax' (max |w|) or 'mse' scales, got {self.observer!r}")

    @property
    def deploy_format(self) -> str | None:
        """"int8" (Int8Weight), "int4" (Int4Weight) or None (simulation only) for a weight."""
        if self.bits == 4:
            return "int4"
        if self.bits == 8 and self.symmetric and self.granularity != "group":
            return "int8"
        return None

    def scheme(self, role: str) -> QScheme:
        """The arithmetic for a weight (narrow symmetric range, float16 scales for Int4Weight) or an
        activation (int8 codes down to -128 and x * (1/s), as the kernels' static quantization)."""
        if role == "weight":
            return QScheme(self.bits, self.symmetric, narrow_range=True, float16_scale=self.deploy_format == "int4")
        return QScheme(self.bits, self.symmetric, narrow_range=False, reciprocal=True)


LayerSpecs = tuple[Optional[QuantSpec], Optional[QuantSpec]]


@dataclass
class QuantConfig:
    """A model's quantization plan.

    weight: the spec of every quantized layer's weight. activation: the spec of each quantized layer's
    input (static quantization: one scale per tensor, calibrated; None: weights only).
    overrides: {name or fnmatch pattern: QuantSpec (the weight's), None (keep the layer in float) or
    {"weight": ..., "activation": ...}}; an exact name wins over patterns, then the first matching
    pattern in order. exclude: names or patterns of layers kept in float (these win over everything).
    fold_batchnorm: fold each BatchNorm2d into the Conv2d before it first (see ``fold_batchnorm``).
    """

    weight: QuantSpec = field(default_factory=QuantSpec)
    activation: Optional[QuantSpec] = None
    overrides: Mapping[str, Any] = field(default_factory=dict)
    exclude: Sequence[str] = ()
    fold_batchnorm: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.weight, QuantSpec):
            raise TypeError(f"weight: expected a QuantSpec, got {type(self.weight).__name__}")
        _check_activation(self.activation, "activation")
        if not isinstance(self.overrides, Mapping):
            raise TypeError(f"overrides: expected a dict {{name pattern: QuantSpec | None | dict}}, got {type(self.overrides).__name__}")
        for pattern, value in self.overrides.items():
            if not isinstance(pattern, str):
                raise TypeError(f"overrides: expected str name patterns as keys, got {pattern!r}")
            _layer_override(value, pattern, self)
        if isinstance(self.exclude, str) or not isinstance(self.exclude, Sequence) or not all(isinstance(p, str) for p in self.exclude):
            raise TypeError(f"exclude: expected a list of name patterns, got {self.exclude!r}")
        if not isinstance(self.fold_batchnorm, bool):
            raise TypeError(f"fold_batchnorm: expected a bool, got {type(self.fold_batchnorm).__name__}")

    def resolve(self, names: Sequence[str]) -> dict[str, LayerSpecs | None]:
        """(weight spec, activation spec) per layer name, or None for a layer kept in float. Raises
        ValueError for an override or exclude pattern that matches none of ``names`` (a typo)."""
        for where, patterns in (("overrides", list(self.overrides)), ("exclude", list(self.exclude))):
            for p in patterns:
                if not any(fnmatch.fnmatchcase(n, p) for n in names):
                    raise ValueError(f"{where}: pattern {p!r} matches no quantizable layer (layers: {', '.join(names)})")
        return {name: self.lookup(name) for name in names}

    def lookup(self, name: str) -> LayerSpecs | None:
        """(weight spec, activation spec) of one layer, or None when it stays in float."""
        if any(fnmatch.fnmatchcase(name, p) for p in self.exclude):
            return None
        key = name if name in self.overrides else next(
            (p for p in self.overrides if fnmatch.fnmatchcase(name, p)), None)
        return (self.weight, self.activation) if key is None else _layer_override(self.overrides[key], key, self)

    def with_layer(self, name: str, weight: QuantSpec | None) -> QuantConfig:
        """A copy where layer ``name`` gets the weight spec ``weight`` (its activation spec unchanged),
        or stays in float when ``weight`` is None."""
        current = self.lookup(name)
        if weight is None or current is None:
            return replace(self, exclude=[*self.exclude, name])
        return replace(self, overrides={**self.overrides, name: {"weight": weight, "activation": current[1]}})


def _check_activation(spec: Any, where: str) -> None:
    if spec is None:
        return
    if not isinstance(spec, QuantSpec):
        raise TypeError(f"{where}: expected a QuantSpec or None, got {type(spec).__name__}")
    if spec.granularity != "tensor" or spec.codebook is not None:
        raise ValueError(f"{where}: activations are quantized per tensor and uniform "
                         f"(granularity='tensor', codebook=None), got granularity={spec.granularity!r}, codebook={spec.codebook!r}")


def _layer_override(value: Any, pattern: str, config: QuantConfig) -> LayerSpecs | None:
    where = f"overrides[{pattern!r}]"
    if value is None:
        return None
    if isinstance(value, QuantSpec):
        return (value, config.activation)
    if isinstance(value, Mapping):
        unknown = set(value) - {"weight", "activation"}
        if unknown:
            raise ValueError(f"{where}: expected keys 'weight' and/or 'activation', got {sorted(unknown)}")
        weight = value.get("weight", config.weight)
        if not isinstance(weight, QuantSpec):
            raise TypeError(f"{where}['weight']: expected a QuantSpec, got {type(weight).__name__}")
        act = value.get("activation", config.activation)
        _check_activation(act, f"{where}['activation']")
        return (weight, act)
    raise TypeError(f"{where}: expected a QuantSpec, None or a dict with 'weight'/'activation', got {type(value).__name__}")
