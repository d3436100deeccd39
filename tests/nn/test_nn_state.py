from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgecompress import nn as enn  # noqa: E402
from edgecompress.nn._common import StaticInput  # noqa: E402
from nn_oracle import VARIANT_IDS, VARIANTS, prune_  # noqa: E402

LINEAR = {"Int8": enn.Int8Linear, "Int4": enn.Int4Linear, "Sparse": enn.SparseLinear, "LowRank": enn.LowRankLinear}
CONV = {"Int8": enn.Int8Conv2d, "Int4": enn.Int4Conv2d, "Sparse": enn.SparseConv2d, "LowRank": enn.LowRankConv2d}
# The variant a fresh module is built with before loading: a different variant of the same format,
# so loading must replace the arrays (and their number), not copy into them.
FRESH = {"Int8": {"granularity": "tensor"}, "Int4": {"group_size": 128, "symmetric": False},
         "Sparse": {"format": "bsr8x1"}, "LowRank": {"rank": 1}}


def _pair(variant, kind, seed=0):
    _, family, options, _ = variant
    torch.manual_seed(seed)
    if kind == "linear":
        make = lambda: torch.nn.Linear(40, 12)  # noqa: E731
        cls, x = LINEAR[family], torch.randn(3, 40)
    else:
        make = lambda: torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)  # noqa: E731
        cls, x = CONV[family], torch.randn(2, 4, 7, 6)
    float_module = prune_(make()) if family == "Sparse" else make()
    return cls.from_float(float_module, **options), cls.from_float(make(), **FRESH[family]), x


@pytest.mark.parametrize("kind", ["linear", "conv"])
@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_state_dict_round_trip_into_a_fresh_module(variant, kind):
    m, fresh, x = _pair(variant, kind)
    sd = m.state_dict()
    # tensors only (what safetensors writes): the extra state is its JSON text as uint8
    assert all(isinstance(v, torch.Tensor) for v in sd.values())
    assert sd["_extra_state"].dtype == torch.uint8
    extra = json.loads(sd["_extra_state"].numpy().tobytes())
    assert extra == m.get_extra_state()
    assert extra["module"] == type(m).__name__ and extra["version"] == type(m).VERSION
    if kind == "conv":  # version 2 of the conv state: it names the patch order of the weights' columns
        assert type(m).VERSION >= 2 and extra["patch_order"] == m.patch_order == "hwc"
    if isinstance(m, StaticInput):  # and the int8 modules always say how they quantize their input
        assert type(m).VERSION == type(m).INPUT_QUANT_SINCE and extra["input_quant"] is None
    result = fresh.load_state_dict(sd)
    assert not result.missing_keys and not result.unexpected_keys
    with torch.no_grad():
        assert torch.equal(fresh(x), m(x))
    assert fresh.config() == m.config() and repr(fresh) == repr(m)
    for a, b in zip(fresh.weights, m.weights):
        for key, arr in b.state_dict().items():
            if key != "metadata":
                np.testing.assert_array_equal(a.state_dict()[key], arr)


def test_state_dict_keys_and_copies():
    lin = torch.nn.Linear(64, 8)
    m = enn.Int4Linear.from_float(lin, symmetric=False)
    sd = m.state_dict()
    assert list(sd) == ["weight.qweight", "weight.scale", "weight.zero_point", "bias", "_extra_state"]
    assert sd["weight.scale"].dtype == torch.float16 and sd["weight.qweight"].dtype == torch.uint8
    x = torch.randn(2, 64)
    with torch.no_grad():
        before = m(x)
        sd["weight.qweight"].zero_()  # a state dict holds copies: editing it leaves the module alone
        assert torch.equal(m(x), before)
    conv = enn.SparseConv2d.from_float(prune_(torch.nn.Conv2d(4, 4, 1, groups=2)))
    assert [k for k in conv.state_dict() if k.startswith("weight.1.")] == [
        "weight.1.indptr", "weight.1.indices", "weight.1.values"]


def test_a_whole_model_state_dict_round_trip():
    torch.manual_seed(0)
    model = torch.nn.Sequential(enn.Int8Conv2d.from_float(torch.nn.Conv2d(3, 4, 3)), torch.nn.Flatten(),
                                enn.LowRankLinear.from_float(torch.nn.Linear(4 * 4 * 4, 5), rank=4))
    fresh = torch.nn.Sequential(enn.Int8Conv2d.from_float(torch.nn.Conv2d(3, 4, 3)), torch.nn.Flatten(),
                                enn.LowRankLinear.from_float(torch.nn.Linear(4 * 4 * 4, 5), rank=16))
    fresh.load_state_dict(model.state_dict())
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(fresh(x), model(x))


def test_deepcopy_gives_an_equal_independent_module():
    m = enn.Int8Linear.from_float(torch.nn.Linear(16, 4))
    c = copy.deepcopy(m)
    assert c.weight is not m.weight
    x = torch.randn(3, 16)
    with torch.no_grad():
        assert torch.equal(c(x), m(x))


def test_loading_refuses_a_mismatched_or_broken_state():
    m = enn.Int8Linear.from_float(torch.nn.Linear(16, 4))
    sd = m.state_dict()
    with pytest.raises(ValueError, match="in_features.*16.*this module is.*in_features.*32"):
        enn.Int8Linear.from_float(torch.nn.Linear(32, 4)).load_state_dict(sd)
    with pytest.raises(ValueError, match="'bias': True.*'bias': False"):
        enn.Int8Linear.from_float(torch.nn.Linear(16, 4, bias=False)).load_state_dict(sd)
    with pytest.raises(ValueError, match="expected Int4Linear state, got state of 'Int8Linear'"):
        enn.Int4Linear.from_float(torch.nn.Linear(16, 4)).load_state_dict(sd)
    extra = m.get_extra_state()  # (a state dict may hold it as a dict too)
    newer = dict(sd, _extra_state=dict(extra, version=enn.Int8Linear.VERSION + 1))
    with pytest.raises(ValueError, match=f"Int8Linear state version {enn.Int8Linear.VERSION + 1} is newer"):
        m.load_state_dict(newer)
    meta = dict(extra["weights"][0], version=2)
    newer = dict(sd, _extra_state=dict(extra, weights=[meta]))
    with pytest.raises(ValueError, match="weight format 'int8' version 2 is newer"):
        m.load_state_dict(newer)
    with pytest.raises(ValueError, match="missing array 'scale'"):
        m.load_state_dict({k: v for k, v in sd.items() if k != "weight.scale"})
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*_extra_state"):
        m.load_state_dict({k: v for k, v in sd.items() if k != "_extra_state"})
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*\"extra\""):
        m.load_state_dict(dict(sd, extra=torch.zeros(1)))
    # an array the weight's format does not have (a misspelled "zero_points", say) is refused
    with pytest.raises(ValueError, match=r"Int8Linear: d: unknown arrays \['extra'\] for format 'int8'"):
        m.load_state_dict(dict(sd, **{"weight.extra": torch.zeros(1)}), strict=False)
    m.load_state_dict({}, strict=False)  # nothing to load: the module keeps its weight
    for bad, words in ((torch.tensor([0xFF, 0xFE], dtype=torch.uint8), "UTF-8 JSON text"),
                       (torch.tensor(list(b"[" * 100_000), dtype=torch.uint8), "UTF-8 JSON text"),
                       (torch.zeros(2, 2, dtype=torch.uint8), "1-D uint8 tensor"),
                       (torch.zeros(3), "1-D uint8 tensor")):
        with pytest.raises(ValueError, match=words):
            m.load_state_dict(dict(sd, _extra_state=bad))


def _old_state(m):
    """m's state dict as edgecompress wrote it before conv states named their patch order (version 1),
    which left input_quant out when the input was quantized dynamically."""
    sd = m.state_dict()
    extra = {k: v for k, v in m.get_extra_state().items() if k != "patch_order" and v is not None}
    return dict(sd, _extra_state=dict(extra, version=1))


@pytest.mark.parametrize("variant", VARIANTS, ids=VARIANT_IDS)
def test_a_state_without_patch_order_loads_in_torchs_order(variant):
    _, family, options, _ = variant
    torch.manual_seed(0)
    make = lambda: torch.nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)  # noqa: E731
    conv = prune_(make()) if family == "Sparse" else make()
    old = CONV[family].from_float(conv, patch_order="chw", **options)
    fresh = CONV[family].from_float(make(), **FRESH[family])
    assert fresh.patch_order == "hwc"
    fresh.load_state_dict(_old_state(old))
    assert fresh.patch_order == "chw" and "patch_order='chw'" in repr(fresh)
    x = torch.randn(2, 4, 7, 6)
    with torch.no_grad():
        assert torch.equal(fresh(x), old(x))
        # the patch order is what makes it right: the same arrays read as (kh, kw, c) are another convolution
        misread, _ = CONV[family].from_state(dict(old.state_dict(), _extra_state=dict(
            old.get_extra_state(), patch_order="hwc")))
        want = conv(x)
        assert float((misread(x) - want).norm() / want.norm()) > 0.5
    sd = dict(old.state_dict(), _extra_state=dict(old.get_extra_state(), patch_order="whc"))
    with pytest.raises(ValueError, match="patch_order: expected one of .*, got 'whc'"):
        fresh.load_state_dict(sd)
    # from version 2 on the patch order is part of the state: without it, or misspelled, it is refused
    # (it would load as the old order, another convolution)
    version = type(old).VERSION
    for extra, words in [({k: v for k, v in old.get_extra_state().items() if k != "patch_order"},
                          r"missing \['patch_order'\]"),
                         (dict(old.get_extra_state(), patch_ordr="hwc"), r"unknown \['patch_ordr'\]")]:
        with pytest.raises(ValueError, match=rf"state version {version}: expected the keys .* in the extra state.*{words}"):
            fresh.load_state_dict(dict(old.state_dict(), _extra_state=extra))


def test_the_int8_modules_state_always_says_how_the_input_is_quantized():
    # A lost "input_quant" switched a static layer to dynamic quantization in silence: states of the
    # current version always hold it (None: dynamic), older ones load as they were written.
    torch.manual_seed(0)
    static = enn.Int8Linear.from_float(torch.nn.Linear(8, 4), act_scale=0.05)
    dynamic = enn.Int8Linear.from_float(torch.nn.Linear(8, 4))
    assert dynamic.get_extra_state()["input_quant"] is None
    sd = static.state_dict()
    extra = {k: v for k, v in static.get_extra_state().items() if k != "input_quant"}
    with pytest.raises(ValueError, match=r"Int8Linear state version 2: .* missing \['input_quant'\]"):
        dynamic.load_state_dict(dict(sd, _extra_state=extra))
    assert dynamic.input_quant is None
    dynamic.load_state_dict(dict(sd, _extra_state=dict(extra, version=1, input_quant={"scale": 0.05, "zero_point": None})))
    assert dynamic.input_quant == {"scale": np.float32(0.05).item(), "zero_point": None}
    dynamic.load_state_dict(dict(sd, _extra_state=dict(extra, version=1)))  # version 1 without it: dynamic
    assert dynamic.input_quant is None


def test_a_bias_with_nan_or_of_another_dtype_is_refused():
    torch.manual_seed(0)
    m = enn.Int8Linear.from_float(torch.nn.Linear(8, 4))
    sd = m.state_dict()
    bias = sd["bias"].clone()
    bias[1] = float("nan")
    with pytest.raises(ValueError, match="bias: expected finite values, got NaN or Inf"):
        m.load_state_dict(dict(sd, bias=bias))
    with pytest.raises(ValueError, match="bias: expected a float32 tensor, got int32"):
        m.load_state_dict(dict(sd, bias=sd["bias"].view(torch.int32)))
    with pytest.raises(ValueError, match="bias: expected finite values, got NaN or Inf"):
        enn.Int4Linear(enn.Int4Linear.from_float(torch.nn.Linear(32, 4)).weight, torch.tensor([0.0, float("inf"), 0, 0]))
