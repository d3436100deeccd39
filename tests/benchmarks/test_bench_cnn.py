"""benchmarks/bench_cnn.py's check that no compressed layer is slower than in float32, on made-up
profiles: which layers it compares, how it pairs float32 and int8 nodes, and that it reads the median
of the turns' ratios. No timing is measured."""

from __future__ import annotations

import pathlib
import sys
import types

import pytest

pytest.importorskip("torch")

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_cnn as bc  # noqa: E402


def run(**ms: float) -> dict:
    """A profile: node name -> ms; the op is the name's suffix after "/" (else conv2d)."""
    nodes = [(n, n.split("/")[1] if "/" in n else ("add" if n.startswith("add") else "conv2d"), t / 1e3)
             for n, t in ms.items()]
    return {"nodes": nodes}


def program(kept=()):
    return types.SimpleNamespace(info={"float32_products": list(kept)})


def test_a_slower_layer_is_named_with_its_median_ratio():
    f32 = [run(stem=1.0, down=0.2, add=0.1)] * 5
    q = [run(stem=1.2, down=0.2, add=0.3)] * 4 + [run(stem=0.5, down=0.2, add=0.3)]
    lines = bc.slower_products(program(), {"float32": f32, "int8-static": q})
    assert "stem 1.000 ms x 1.20" in lines[1]
    assert "down" not in lines[1] and "add" not in lines[1]  # a tie; not a product


def test_one_slow_turn_does_not_make_a_layer_slower():
    f32 = [run(stem=1.0)] * 5
    q = [run(stem=0.8)] * 4 + [run(stem=3.0)]
    lines = bc.slower_products(program(), {"float32": f32, "int8-static": q})
    assert lines[1].startswith("No compressed product") and "1 products compared" in lines[1]


def test_winograd_layers_pair_by_layer_name():
    f32 = [run(**{"l1/winograd": 1.0, "l2/winograd": 1.0})] * 3
    q = [run(**{"l1/winograd_s8": 1.5, "l2/winograd_s8": 0.5})] * 3
    lines = bc.slower_products(program(), {"float32": f32, "int8-static": q})
    assert "l1 1.000 ms x 1.50" in lines[1] and "l2" not in lines[1]


def test_layers_put_back_to_float32_are_listed_not_compared():
    f32 = [run(stem=1.0, down=0.2)] * 3
    q = [run(stem=0.9, down=0.3)] * 3  # the same float32 code in both: only noise to compare
    lines = bc.slower_products(program(kept=["down"]), {"float32": f32, "int8-static": q})
    assert lines[1].startswith("No compressed product") and "1 products compared" in lines[1]
    assert lines[2] == "Kept float32 by export (timed not faster compressed): down."


def test_tiny_differences_are_not_reported():
    f32 = [run(tiny=0.1)] * 3
    q = [run(tiny=0.115)] * 3  # 15% but 0.015 ms
    lines = bc.slower_products(program(), {"float32": f32, "int8-static": q})
    assert lines[1].startswith("No compressed product")
