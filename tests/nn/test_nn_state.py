from __future__ import annotations

import copy
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from edgecompress import nn as enn  # noqa: E402
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
        assert type(m).VERSION == 2 and extra["patch_order"] == m.patch_order == "hwc"
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
    newer = dict(sd, _extra_state=dict(extra, version=2))
    with pytest.raises(ValueError, match="Int8Linear state version 2 is newer"):
        m.load_state_dict(newer)
    meta = dict(extra["weights"][0], version=2)
    newer = dict(sd, _extra_state=dict(extra, weights=[meta]))
    with pytest.raises(ValueError, match="weight format 'int8' version 2 is newer"):
        m.load_state_dict(newer)
    with pytest.raises(ValueError, match="missing array 'scale'"):
        m.load_state_dict({k: v for k, v in sd.items() if k != "weight.scale"})
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*_extra_state"):
        m.load_state_dict({k: v for k, v in sd.items() if k != "_extra_state"})
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*weight\.extra"):
        m.load_state_dict(dict(sd, **{"weight.extra": torch.zeros(1)}))
    m.load_state_dict({}, strict=False)  # nothing to load: the module keeps its weight
    for bad, words in ((torch.tensor([0xFF, 0xFE], dtype=torch.uint8), "UTF-8 JSON text"),
                       (torch.tensor(list(b"[" * 100_000), dtype=torch.uint8), "UTF-8 JSON text"),
                       (torch.zeros(2, 2, dtype=torch.uint8), "1-D uint8 tensor"),
                       (torch.zeros(3), "1-D uint8 tensor")):
        with pytest.raises(ValueError, match=words):
            m.load_state_dict(dict(sd, _extra_state=bad))


def _old_state(m):
    """m's state dict as edgecompress wrote it before conv states named their patch order (version 1)."""
    sd = m.state_dict()
    extra = {k: v for k, v in m.get_extra_state().items() if k != "patch_order"}
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
    sd = _old_state(old)
    sd["_extra_state"]["patch_order"] = "whc"
    with pytest.raises(ValueError, match="patch_order: expected one of .*, got 'whc'"):
        fresh.load_state_dict(sd)
