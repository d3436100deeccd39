"""Observers and the quantization scheme against small cases worked out by hand."""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

from edgecompress.compress.observers import (  # noqa: E402
    EntropyObserver,
    MinMaxObserver,
    MovingAverageMinMaxObserver,
    MSEObserver,
    PercentileObserver,
    QScheme,
    kl_divergence,
    make_observer,
)


def t(values):
    return torch.tensor(values, dtype=torch.float32)


def f32(v):
    """v rounded to float32, as the scales are computed."""
    return float(torch.tensor(v, dtype=torch.float32))


# --- QScheme ------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits, symmetric, narrow, qmin, qmax", [
    (8, True, True, -127, 127), (8, True, False, -128, 127), (8, False, True, 0, 255),
    (4, True, True, -7, 7), (4, False, True, 0, 15), (2, True, True, -1, 1), (3, True, False, -4, 3),
])
def test_scheme_ranges(bits, symmetric, narrow, qmin, qmax):
    s = QScheme(bits, symmetric, narrow_range=narrow)
    assert (s.qmin, s.qmax) == (qmin, qmax)


def test_scheme_qparams_by_hand():
    sym = QScheme(8, True).qparams(t([-2.0, 0.0, 1.0]), t([1.0, 0.0, 3.0]))
    assert sym.scale.tolist() == [f32(2 / 127), 1.0, f32(3 / 127)]  # an all-zero row gets scale 1
    assert sym.zero_point.tolist() == [0, 0, 0]
    asym = QScheme(8, False).qparams(t([-1.0, 1.0]), t([3.0, 3.0]))
    # [-1, 3]: s = 4/255, zp = round(1 / s) = round(63.75) = 64; [1, 3] widens to [0, 3]: zp 0
    assert asym.scale.tolist() == [f32(4 / 255), f32(3 / 255)]
    assert asym.zero_point.tolist() == [64, 0]


def test_scheme_float16_scale():
    # 1/7 = 0.142857...; float16 has an ulp of 2^-13 in [0.125, 0.25): 1170 * 2^-13 = 0.142822265625
    qp = QScheme(4, True, float16_scale=True).qparams(t([-1.0]), t([1.0]))
    assert qp.scale.tolist() == [0.142822265625]


def test_scheme_fake_quantize_by_hand():
    s3 = QScheme(3, True)  # codes -3..3
    out = s3.fake_quantize(t([-2.0, 0.3, 0.76, 5.0]), t(0.5), torch.tensor(0))
    # x / 0.5 = [-4, 0.6, 1.52, 10] -> round [-4, 1, 2, 10] -> clamp [-3, 1, 2, 3]
    assert out.tolist() == [-1.5, 0.5, 1.0, 1.5]
    a2 = QScheme(2, False)  # codes 0..3, zero point 1
    out = a2.fake_quantize(t([-1.0, -0.2, 0.6, 2.0]), t(0.5), torch.tensor(1))
    # round(x / 0.5) + 1 = [-1, 1, 3, 5] -> clamp [0, 1, 2, 3] -> minus 1, times 0.5
    assert out.tolist() == [-0.5, 0.0, 0.5, 1.0]
    # round half to even, as numpy and the kernels
    assert QScheme(8, True).quantize(t([0.5, 1.5, 2.5, -0.5]), t(1.0), torch.tensor(0)).tolist() == [0, 2, 2, -0]


def test_scheme_reciprocal_matches_kernels_not_division():
    # float32: 2.25 / 0.3 = 7.4999995 (-> 7) but 2.25 * (1 / 0.3) = 7.5 (-> 8, half to even)
    x, s, zp = t([2.25]), t(0.3), torch.tensor(0)
    assert QScheme(8, True).quantize(x, s, zp).tolist() == [7]
    assert QScheme(8, True, reciprocal=True).quantize(x, s, zp).tolist() == [8]


@pytest.mark.parametrize("kwargs, err, match", [
    ({"bits": 1}, ValueError, "bits: expected 2..8"),
    ({"bits": 9}, ValueError, "bits: expected 2..8"),
    ({"bits": 8.0}, TypeError, "bits: expected an int"),
    ({"symmetric": 1}, TypeError, "symmetric: expected a bool"),
])
def test_scheme_errors(kwargs, err, match):
    with pytest.raises(err, match=match):
        QScheme(**kwargs)


# --- min-max and moving average -----------------------------------------------------------------


def test_minmax_per_tensor_and_per_row():
    o = MinMaxObserver()
    o.observe(t([[1.0, -2.0, 3.0]]))
    o.observe(t([[-5.0, 0.0, 1.0]]))
    assert o.qparams().scale.tolist() == [f32(5 / 127)]
    rows = MinMaxObserver(axis=0)
    rows.observe(t([[1.0, -2.0], [0.5, 4.0]]))
    assert rows.qparams().scale.tolist() == [f32(2 / 127), f32(4 / 127)]
    asym = MinMaxObserver(4, symmetric=False)
    asym.observe(t([-0.5, 1.0]))
    # s = 1.5 / 15 = 0.1, zp = round(0.5 / 0.1) = 5
    qp = asym.qparams()
    assert qp.scale.tolist() == [f32(1.5 / 15)] and qp.zero_point.tolist() == [5]


def test_moving_average_by_hand():
    o = MovingAverageMinMaxObserver(8, symmetric=False, averaging_constant=0.5)
    o.observe(t([-1.0, 2.0]))
    o.observe(t([-3.0, 4.0]))
    # lo = -1 + 0.5 * (-3 + 1) = -2, hi = 2 + 0.5 * (4 - 2) = 3: s = 5/255, zp = round(2 / s) = 102
    qp = o.qparams()
    assert qp.scale.tolist() == [f32(5 / 255)] and qp.zero_point.tolist() == [102]


# --- histograms: percentile, MSE, entropy ---------------------------------------------------------


def test_percentile_symmetric_by_hand():
    # 8 bins: 4 per side over [-4, 4], width 1. |x| counts per bin [6, 2, 1, 1] (4.0 sits in the top bin).
    data = t([0.25] * 6 + [1.5] * 2 + [2.5, 4.0])
    for p, threshold in ((80, 2.0), (90, 3.0)):
        o = PercentileObserver(bins=8, percentile=p)
        o.observe(data)
        # 80%: 8 of 10 values; the cdf reaches 8 at the end of bin 1 -> 2.0. 90%: 9 at the end of bin 2 -> 3.0
        assert o.qparams().scale.tolist() == [f32(threshold / 127)]


def test_percentile_asymmetric_by_hand():
    # signed bins over [-4, 4], width 1: counts [1, 0, 0, 4, 4, 0, 0, 1]
    o = PercentileObserver(8, symmetric=False, bins=8, percentile=90)
    o.observe(t([-4.0] + [-0.5] * 4 + [0.5] * 4 + [4.0]))
    # 10%: 1 value, the end of bin 0 -> -3.0; 90%: 9 values, the end of bin 4 -> 1.0.
    # [-3, 1]: s = 4/255, zp = round(3 / s) = round(191.25) = 191
    qp = o.qparams()
    assert qp.scale.tolist() == [f32(4 / 255)] and qp.zero_point.tolist() == [191]


def test_histogram_grows_by_merging_bins():
    o = PercentileObserver(bins=8)
    o.observe(t([1.0, -0.5]))  # width 1/4: 1.0 -> top bin of the positive side, -0.5 -> bin 2 of the negative
    assert o.width.tolist() == [0.25]
    o.observe(t([3.0]))  # needs R >= 3: width x4 = 1.0, old bins merge 4 to 1
    assert o.width.tolist() == [1.0]
    # [negative side outward | non-negative side outward]
    assert o.counts.tolist() == [[1, 0, 0, 0, 1, 0, 0, 1]]
    assert o.sums.tolist() == [[-0.5, 0, 0, 0, 1.0, 0, 0, 3.0]]


def test_mse_picks_the_clipping_with_least_error():
    # 2-bit symmetric (levels -s, 0, s), clip ratios 1, 1/2, 1/4 of max |x| = 4: s = 4, 2, 1.
    #   s=4: 1.5 -> 0 (err 2.25 x 8 = 18), 4 -> 4 (0): 18
    #   s=2: 1.5 -> 2 (0.25 x 8 = 2), 4 -> 2 (4): 6        <- least
    #   s=1: 1.5 -> round(1.5)=2, clamped to 1 (0.25 x 8 = 2), 4 -> 1 (9): 11
    o = MSEObserver(2, bins=8, ratios=[1.0, 0.5, 0.25])
    o.observe(t([1.5] * 8 + [4.0]))
    assert o.qparams().scale.tolist() == [2.0]
    exact = MSEObserver(2, bins=8, ratios=[1.0, 0.5])
    exact.observe(t([-1.0, 0.0, 1.0, 1.0]))  # on the grid already: no error at s = 1, keep it
    assert exact.qparams().scale.tolist() == [1.0]


def test_kl_divergence_by_hand():
    # kept 2 of [4, 0, 2, 2]: P = [4, 0 + 2 + 2] / 8 = [.5, .5]; one level: Q = [4, 0] / 4 = [1, 0] (Q=0 -> 1e-12)
    got = float(kl_divergence(torch.tensor([[4.0, 0, 2, 2]], dtype=torch.float64), 2, 1))
    assert got == pytest.approx(0.5 * math.log(0.5) + 0.5 * math.log(0.5 / 1e-12), rel=1e-12)
    # kept all of [1, 3, 2, 2] in 2 levels: Q spreads each level's 4 over its 2 bins: [2, 2, 2, 2] / 8
    got = float(kl_divergence(torch.tensor([[1.0, 3, 2, 2]], dtype=torch.float64), 4, 2))
    assert got == pytest.approx(1 / 8 * math.log(0.5) + 3 / 8 * math.log(1.5), rel=1e-12)


def test_entropy_keeps_the_range_of_flat_data_and_clips_an_outlier():
    flat = EntropyObserver(2, bins=16)
    flat.observe(torch.arange(1, 17, dtype=torch.float32))  # 2 values in each of 8 bins: Q = P only unclipped
    assert flat.qparams().scale.tolist() == [16.0]  # 2-bit symmetric: s = threshold / 1
    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(1000, generator=g), t([100.0])])
    o = EntropyObserver(8)
    o.observe(x)
    # 1024 bins of 100/1024 per side; 128 levels need at least 128 bins: the least threshold tried,
    # 12.5, wins (the bulk fills the first 11 bins; the outlier is clipped)
    assert o.qparams().scale.tolist() == [f32(12.5 / 127)]


# --- common behaviour and errors ------------------------------------------------------------------


@pytest.mark.parametrize("name", ["minmax", "moving_average", "percentile", "mse", "entropy"])
def test_every_observer_by_name(name):
    o = make_observer(name, 8, True, axis=0)
    w = torch.linspace(-1, 1, 64).reshape(4, 16)
    o.observe(w)
    qp = o.qparams()
    assert qp.scale.shape == (4,) and qp.zero_point.dtype == torch.int32
    assert (qp.scale > 0).all() and (qp.scale <= 1 / 127 + 1e-7).all()
    with pytest.raises(RuntimeError, match="before observe"):
        make_observer(name).qparams()
    o.reset()
    assert not o.observed


@pytest.mark.parametrize("make, err, match", [
    (lambda: make_observer("histogram"), ValueError, "observer: expected one of minmax, moving_average"),
    (lambda: MinMaxObserver(axis=1), ValueError, "axis: expected None"),
    (lambda: MinMaxObserver(bits=12), ValueError, "bits: expected 2..8"),
    (lambda: PercentileObserver(bins=100), ValueError, "bins: expected a power of two"),
    (lambda: PercentileObserver(percentile=40), ValueError, "percentile: expected a number in"),
    (lambda: MovingAverageMinMaxObserver(averaging_constant=0), ValueError, "averaging_constant"),
    (lambda: MSEObserver(ratios=[1.5]), ValueError, "ratios: expected"),
])
def test_construction_errors(make, err, match):
    with pytest.raises(err, match=match):
        make()


def test_observe_errors():
    o = MinMaxObserver(axis=0)
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        o.observe([1.0, 2.0])
    with pytest.raises(TypeError, match="floating-point"):
        o.observe(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match="non-empty"):
        o.observe(torch.zeros(0, 3))
    with pytest.raises(ValueError, match="finite"):
        o.observe(t([[1.0, math.nan]]))
    o.observe(torch.ones(2, 3))
    with pytest.raises(ValueError, match="expected 2 rows"):
        o.observe(torch.ones(3, 3))
