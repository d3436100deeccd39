"""Observers: watch tensors (calibration batches, weights) and turn what they saw into quantization
parameters, a scale and a zero point per row.

Rows: with ``axis=None`` the whole tensor is one row (per-tensor quantization); with ``axis=0`` each
slice along dim 0 is a row (per output channel; per group when the caller passes a weight viewed as
(N * K/g, g)). ``qparams()`` returns one scale and zero point per row.

The arithmetic is :class:`QScheme`'s. Every range is widened to include 0, so that 0 (padding, ReLU
outputs) is exact. Symmetric: ``s = max(-lo, hi) / qmax`` with ``qmax = 2^(bits-1) - 1`` and zero point
0; codes in [-qmax, qmax] (``narrow_range``, as Int8Weight: -128 is excluded) or [-qmax - 1, qmax] (as the
kernels' static int8 activations). Asymmetric: ``s = (hi - lo) / (2^bits - 1)``, zero point
``round(-lo / s)``, codes in [0, 2^bits - 1]. A row that saw only zeros gets scale 1 (as
``Int8Weight.from_float``).

Histogram observers (percentile, MSE, entropy) keep per row ``bins / 2`` bins for negative and ``bins / 2``
for non-negative values over [-R, R], with the count and the sum of the values of each bin. R starts
at the first batch's max |x| and grows by powers of two as later batches need (neighbouring bins merge
exactly), so any number of batches takes fixed memory. The MSE search represents each bin by the mean
of its values, which is exact when a bin holds one distinct value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch

__all__ = [
    "OBSERVERS",
    "EntropyObserver",
    "MSEObserver",
    "MinMaxObserver",
    "MovingAverageMinMaxObserver",
    "Observer",
    "PercentileObserver",
    "QParams",
    "QScheme",
    "make_observer",
]

_F32_TINY = torch.finfo(torch.float32).tiny
_F16_MAX = float(torch.finfo(torch.float16).max)
_F16_MIN_SUBNORMAL = 2.0**-24


def _check_bool(value: Any, name: str) -> None:
    if not isinstance(value, bool):
        raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")


def _check_int(value: Any, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}: expected an int, got {type(value).__name__}")


@dataclass(frozen=True)
class QParams:
    """Per-row scale (float32) and zero point (int32); ``table`` (16,) or (N, 16) for codebooks."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    table: torch.Tensor | None = None


@dataclass(frozen=True)
class QScheme:
    """How values map to integer codes.

    ``bits`` 2..8. ``narrow_range``: symmetric codes stop at -qmax (weights: Int8Weight excludes -128).
    ``float16_scale``: scales are rounded to float16 (Int4Weight stores them so) before use.
    ``reciprocal``: quantize as ``x * (1 / s)`` (the kernels' static activation quantization) rather than
    ``x / s`` (``Int8Weight.from_float`` and the int4 quantizers), so simulation matches deployment.
    """

    bits: int = 8
    symmetric: bool = True
    narrow_range: bool = True
    float16_scale: bool = False
    reciprocal: bool = False

    def __post_init__(self) -> None:
        _check_int(self.bits, "bits")
        if not 2 <= self.bits <= 8:
            raise ValueError(f"bits: expected 2..8, got {self.bits}")
        for name in ("symmetric", "narrow_range", "float16_scale", "reciprocal"):
            _check_bool(getattr(self, name), name)

    @property
    def qmax(self) -> int:
        return 2 ** (self.bits - 1) - 1 if self.symmetric else 2**self.bits - 1

    @property
    def qmin(self) -> int:
        if not self.symmetric:
            return 0
        return -self.qmax if self.narrow_range else -self.qmax - 1

    def round_scale(self, scale: torch.Tensor) -> torch.Tensor:
        """The float32 scale actually used: float16-representable when ``float16_scale``."""
        if not self.float16_scale:
            return scale
        return scale.clamp(_F16_MIN_SUBNORMAL, _F16_MAX).half().float()

    def qparams(self, lo: torch.Tensor, hi: torch.Tensor) -> QParams:
        """Scale and zero point per row for the ranges [lo, hi] (widened to include 0)."""
        zero = torch.zeros((), dtype=torch.float32)
        lo = torch.minimum(lo.float(), zero)
        hi = torch.maximum(hi.float(), zero)
        if self.symmetric:
            scale = torch.maximum(-lo, hi) / self.qmax
        else:
            scale = (hi - lo) / (self.qmax - self.qmin)
        scale = torch.where(scale >= _F32_TINY, scale, torch.ones_like(scale))
        scale = self.round_scale(scale)
        if self.symmetric:
            zero_point = torch.zeros(scale.shape, dtype=torch.int32)
        else:
            zero_point = torch.clamp(torch.round(-lo / scale), self.qmin, self.qmax).to(torch.int32)
        return QParams(scale, zero_point)

    def quantize(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                 round_fn: Callable[[torch.Tensor], torch.Tensor] = torch.round) -> torch.Tensor:
        """Integer codes (as float) of x; scale and zero point broadcast against x."""
        v = x * (1.0 / scale) if self.reciprocal else x / scale
        return torch.clamp(round_fn(v) + zero_point, self.qmin, self.qmax)

    def dequantize(self, codes: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        return (codes - zero_point) * scale

    def fake_quantize(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        return self.dequantize(self.quantize(x, scale, zero_point), scale, zero_point)


class Observer:
    """Base class: ``observe(x)`` any number of times, then ``qparams()``.

    Subclasses implement ``_observe_rows`` (x as float32 (rows, values)) and ``_range`` (lo, hi per row).
    """

    def __init__(self, bits: int = 8, symmetric: bool = True, axis: int | None = None, *,
                 narrow_range: bool = True, float16_scale: bool = False, reciprocal: bool = False) -> None:
        self.scheme = QScheme(bits, symmetric, narrow_range, float16_scale, reciprocal)
        if axis is not None and (isinstance(axis, bool) or axis != 0):
            raise ValueError(f"axis: expected None (per tensor) or 0 (per row), got {axis!r}")
        self.axis = axis
        self.rows: int | None = None

    @property
    def observed(self) -> bool:
        return self.rows is not None

    def reset(self) -> None:
        """Forget everything observed."""
        self.rows = None

    def observe(self, x: torch.Tensor) -> None:
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"x: expected a floating-point tensor, got {x.dtype}")
        if x.numel() == 0 or (self.axis == 0 and x.ndim == 0):
            raise ValueError(f"x: expected a non-empty tensor (with a dim 0 for axis=0), got shape {tuple(x.shape)}")
        x = x.detach().float()
        rows = x.reshape(1, -1) if self.axis is None else x.reshape(x.shape[0], -1)
        if not torch.isfinite(rows).all():
            raise ValueError("x: expected finite values, got NaN or Inf")
        if self.rows is not None and rows.shape[0] != self.rows:
            raise ValueError(f"x: expected {self.rows} rows along axis 0 as before, got {rows.shape[0]}")
        self._observe_rows(rows)
        self.rows = rows.shape[0]

    def qparams(self) -> QParams:
        if not self.observed:
            raise RuntimeError(f"{type(self).__name__}: qparams() called before observe(): no data seen")
        lo, hi = self._range()
        return self.scheme.qparams(lo, hi)

    def _observe_rows(self, rows: torch.Tensor) -> None:
        raise NotImplementedError

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def __repr__(self) -> str:
        s = self.scheme
        return (f"{type(self).__name__}(bits={s.bits}, symmetric={s.symmetric}, axis={self.axis}, "
                f"observed={self.observed})")


class MinMaxObserver(Observer):
    """Range = the smallest and largest value seen (over all batches)."""

    def _observe_rows(self, rows: torch.Tensor) -> None:
        lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
        if self.observed:
            lo, hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
        self.lo, self.hi = lo, hi

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.lo, self.hi


class MovingAverageMinMaxObserver(MinMaxObserver):
    """Range = exponential moving average of each batch's min and max: the first batch sets it, each
    later one moves it by ``averaging_constant`` of the difference (robust to a rare extreme batch)."""

    def __init__(self, bits: int = 8, symmetric: bool = True, axis: int | None = None, *,
                 averaging_constant: float = 0.01, **kwargs: Any) -> None:
        super().__init__(bits, symmetric, axis, **kwargs)
        if not isinstance(averaging_constant, (int, float)) or not 0 < averaging_constant <= 1:
            raise ValueError(f"averaging_constant: expected a number in (0, 1], got {averaging_constant!r}")
        self.averaging_constant = float(averaging_constant)

    def _observe_rows(self, rows: torch.Tensor) -> None:
        lo, hi = rows.min(dim=1).values, rows.max(dim=1).values
        if self.observed:
            c = self.averaging_constant
            lo, hi = self.lo + c * (lo - self.lo), self.hi + c * (hi - self.hi)
        self.lo, self.hi = lo, hi


class _HistogramObserver(MinMaxObserver):
    """Keeps per row a histogram of counts and value sums (see the module notes) besides min and max."""

    def __init__(self, bits: int = 8, symmetric: bool = True, axis: int | None = None, *,
                 bins: int | None = None, **kwargs: Any) -> None:
        super().__init__(bits, symmetric, axis, **kwargs)
        if bins is None:
            bins = 2048 if axis is None else 256  # per-row observers watch weights: many rows, few values
        _check_int(bins, "bins")
        if bins < 8 or bins & (bins - 1):
            raise ValueError(f"bins: expected a power of two >= 8, got {bins}")
        self.bins = bins

    @property
    def half(self) -> int:
        return self.bins // 2

    def _observe_rows(self, rows: torch.Tensor) -> None:
        first = not self.observed
        super()._observe_rows(rows)
        b = self.half
        amax = rows.abs().max(dim=1).values.double()
        if first:
            self.width = amax / b
            self.counts = torch.zeros(rows.shape[0], 2 * b, dtype=torch.float64)
            self.sums = torch.zeros_like(self.counts)
        else:
            self._grow(amax)
        x = rows.double()
        w = self.width[:, None]
        idx = torch.where(w > 0, x.abs() / torch.where(w > 0, w, 1.0), 0.0).floor().clamp(max=b - 1).long()
        idx = idx + torch.where(x < 0, 0, b)  # [0, b): negative side, [b, 2b): non-negative; outward from 0
        self.counts.scatter_add_(1, idx, torch.ones_like(x))
        self.sums.scatter_add_(1, idx, x)

    def _grow(self, amax: torch.Tensor) -> None:
        """Widen each row whose new values pass R = width * bins/2 by the power of two they need."""
        b = self.half
        for r in torch.nonzero(amax > self.width * b).flatten().tolist():
            if self.width[r] == 0:  # only zeros so far: they stay in bin 0 at any width
                self.width[r] = amax[r] / b
                continue
            factor = 2 ** math.ceil(math.log2(float(amax[r] / (self.width[r] * b))))
            for hist in (self.counts, self.sums):
                sides = hist[r].view(2, b)
                merged = torch.zeros_like(sides)
                if factor >= b:
                    merged[:, 0] = sides.sum(dim=1)
                else:
                    merged[:, : b // factor] = sides.view(2, b // factor, factor).sum(dim=2)
                hist[r] = merged.flatten()
            self.width[r] *= factor

    def _folded(self) -> torch.Tensor:
        """Counts of |x| per bin, (rows, bins/2); bin i holds [i, i+1) * width."""
        b = self.half
        return self.counts[:, :b] + self.counts[:, b:]

    def _signed(self, hist: torch.Tensor) -> torch.Tensor:
        """Bins in increasing value order, (rows, bins); bin j holds about [j - bins/2, j + 1 - bins/2) * width."""
        b = self.half
        return torch.cat([hist[:, :b].flip(1), hist[:, b:]], dim=1)


def _quantile(counts: torch.Tensor, first_edge: torch.Tensor, width: torch.Tensor, q: float) -> torch.Tensor:
    """Per row, the value below which a fraction q of the counts lies, interpolating inside the bin;
    bin j spans [first_edge + j * width, first_edge + (j + 1) * width)."""
    cdf = counts.cumsum(dim=1)
    target = q * cdf[:, -1:]
    j = (cdf < target).sum(dim=1, keepdim=True).clamp(max=counts.shape[1] - 1)
    before = torch.where(j > 0, cdf.gather(1, (j - 1).clamp(min=0)), 0.0)
    inside = counts.gather(1, j)
    frac = torch.where(inside > 0, (target - before) / inside.clamp(min=1e-300), 0.0).clamp(0, 1)
    return (first_edge + (j.flatten() + frac.flatten()) * width)


class PercentileObserver(_HistogramObserver):
    """Range = percentiles of the values seen: symmetric, the ``percentile`` of |x|; asymmetric, the
    (100 - percentile) and ``percentile`` of x. Clips rare outliers."""

    def __init__(self, bits: int = 8, symmetric: bool = True, axis: int | None = None, *,
                 percentile: float = 99.99, **kwargs: Any) -> None:
        super().__init__(bits, symmetric, axis, **kwargs)
        if not isinstance(percentile, (int, float)) or isinstance(percentile, bool) or not 50 < percentile <= 100:
            raise ValueError(f"percentile: expected a number in (50, 100], got {percentile!r}")
        self.percentile = float(percentile)

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.percentile / 100
        if self.scheme.symmetric:
            t = _quantile(self._folded(), torch.zeros_like(self.width), self.width, p)
            t = torch.minimum(t, torch.maximum(-self.lo, self.hi).double())
            return -t, t
        signed = self._signed(self.counts)
        first = -self.half * self.width
        lo = torch.maximum(_quantile(signed, first, self.width, 1 - p), self.lo.double())
        hi = torch.minimum(_quantile(signed, first, self.width, p), self.hi.double())
        return lo, hi


class MSEObserver(_HistogramObserver):
    """Range = the clipping of the observed range that minimizes the squared quantization error.

    Tries the observed [lo, hi] scaled by each of ``ratios`` (default 1.0 down to 0.2 in steps of 0.02)
    and keeps, per row, the one whose quantization (with this observer's scheme) of the histogram has
    the least squared error; ties keep the wider range.
    """

    def __init__(self, bits: int = 8, symmetric: bool = True, axis: int | None = None, *,
                 ratios: Sequence[float] | None = None, **kwargs: Any) -> None:
        super().__init__(bits, symmetric, axis, **kwargs)
        if ratios is None:
            ratios = [1.0 - 0.02 * i for i in range(41)]
        ratios = [float(r) for r in ratios]
        if not ratios or not all(0 < r <= 1 for r in ratios):
            raise ValueError(f"ratios: expected a non-empty list of numbers in (0, 1], got {ratios!r}")
        self.ratios = ratios

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        counts = self.counts
        means = torch.where(counts > 0, self.sums / counts.clamp(min=1), 0.0).float()
        lo, hi = self.lo, self.hi
        best_err = best_lo = best_hi = None
        for r in self.ratios:
            qp = self.scheme.qparams(lo * r, hi * r)
            rec = self.scheme.fake_quantize(means, qp.scale[:, None], qp.zero_point[:, None])
            err = (counts * (rec.double() - means.double()) ** 2).sum(dim=1)
            if best_err is None:
                best_err, best_lo, best_hi = err, lo * r, hi * r
            else:
                better = err < best_err
                best_err = torch.where(better, err, best_err)
                best_lo = torch.where(better, lo * r, best_lo)
                best_hi = torch.where(better, hi * r, best_hi)
        return best_lo, best_hi


def kl_divergence(counts: torch.Tensor, kept: int, levels: int) -> torch.Tensor:
    """KL(P || Q) per row for clipping a histogram of |x| (rows, n) to its first ``kept`` bins.

    P: the first ``kept`` bins, the clipped mass (bins ``kept`` and beyond) added to the last one. Q: the
    first ``kept`` bins quantized to ``levels`` levels: bin j belongs to level ``j * levels // kept``, and
    each level's count is spread evenly over its non-empty bins. Both are normalized; bins where P > 0
    and Q = 0 count as Q = 1e-12 (a clipping that cannot represent its outliers loses).
    """
    c = counts[:, :kept]
    p = c.clone()
    p[:, -1] += counts[:, kept:].sum(dim=1)
    level = torch.arange(kept) * levels // kept
    nonzero = (c > 0).double()
    level_sum = torch.zeros(c.shape[0], levels, dtype=c.dtype).index_add_(1, level, c)
    level_n = torch.zeros(c.shape[0], levels, dtype=c.dtype).index_add_(1, level, nonzero)
    q = nonzero * level_sum[:, level] / level_n[:, level].clamp(min=1)
    p = p / p.sum(dim=1, keepdim=True)
    q = q / q.sum(dim=1, keepdim=True).clamp(min=1e-300)
    terms = torch.where(p > 0, p * torch.log(p / q.clamp(min=1e-12)), 0.0)
    return terms.sum(dim=1)


class EntropyObserver(_HistogramObserver):
    """Range = the clipping threshold t of |x| whose quantized distribution is closest (least KL
    divergence) to the observed one, tried at every bin edge that leaves at least as many bins as
    levels: 2^(bits-1) levels for |x| (2^bits when asymmetric and nothing negative was seen).
    Symmetric: [-t, t]; asymmetric: [max(lo, -t), min(hi, t)]."""

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        folded = self._folded()
        b = self.half
        nonnegative = bool((self.lo >= 0).all())
        levels = 2**self.scheme.bits if (not self.scheme.symmetric and nonnegative) else 2 ** (self.scheme.bits - 1)
        amax = torch.maximum(-self.lo, self.hi).double()
        best_kl = torch.full((folded.shape[0],), math.inf, dtype=torch.float64)
        best_t = amax.clone()
        for kept in range(min(levels, b), b + 1):
            kl = kl_divergence(folded, kept, levels)
            better = kl < best_kl
            best_kl = torch.where(better, kl, best_kl)
            best_t = torch.where(better, kept * self.width, best_t)
        t = torch.minimum(best_t, amax)
        if self.scheme.symmetric:
            return -t, t
        return torch.maximum(self.lo.double(), -t), torch.minimum(self.hi.double(), t)


OBSERVERS: dict[str, type[Observer]] = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageMinMaxObserver,
    "percentile": PercentileObserver,
    "mse": MSEObserver,
    "entropy": EntropyObserver,
}


def make_observer(name: str, bits: int = 8, symmetric: bool = True, axis: int | None = None,
                  **kwargs: Any) -> Observer:
    """An observer by name (one of ``OBSERVERS``); ``kwargs`` go to its constructor."""
    if not isinstance(name, str) or name not in OBSERVERS:
        raise ValueError(f"observer: expected one of {', '.join(OBSERVERS)}, got {name!r}")
    return OBSERVERS[name](bits, symmetric, axis, **kwargs)
