from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import edgecompress as ec  # noqa: E402
from edgecompress import nn as enn  # noqa: E402


def test_int8_modules_with_a_static_input_scale_match_ops_linear():
    torch.manual_seed(0)
    lin, conv = torch.nn.Linear(48, 16), torch.nn.Conv2d(3, 8, 3, padding=1)
    x, xc = torch.rand(5, 48), torch.rand(2, 3, 6, 6)
    m = enn.Int8Linear.from_float(lin, act_scale=1 / 255, act_zero_point=0)
    want = ec.linear(x.numpy(), m.weight, lin.bias.detach().numpy(), act_scheme="asymmetric", act_scale=1 / 255,
                     act_zero_point=0)
    with torch.no_grad():
        assert np.array_equal(m(x).numpy(), want)
        mc = enn.Int8Conv2d.from_float(conv, act_scale=0.01)
        rel = float((mc(xc) - conv(xc)).norm() / conv(xc).norm())
    assert rel < 0.02 and "act_scale=0.01" in repr(mc)


def test_the_static_scale_travels_in_the_state_dict_and_errors_name_the_argument():
    m = enn.Int8Linear.from_float(torch.nn.Linear(8, 4), act_scale=0.5, act_zero_point=128)
    fresh = enn.Int8Linear.from_float(torch.nn.Linear(8, 4))
    fresh.load_state_dict(m.state_dict())
    assert fresh.input_quant == {"scale": 0.5, "zero_point": 128}
    assert enn.Int8Linear.from_float(torch.nn.Linear(8, 4)).get_extra_state()["input_quant"] is None
    with pytest.raises(ValueError, match="act_zero_point: only meaningful with act_scale"):
        enn.Int8Linear.from_float(torch.nn.Linear(8, 4), act_zero_point=3)
    with pytest.raises(ValueError, match="act_zero_point: expected an int in \\[0, 255\\]"):
        enn.Int8Linear.from_float(torch.nn.Linear(8, 4), act_scale=0.1, act_zero_point=300)
    with pytest.raises(ValueError, match="act_scale: expected a finite value > 0"):
        enn.Int8Conv2d.from_float(torch.nn.Conv2d(1, 1, 1), act_scale=-1.0)
