"""The layering of the weight formats: formats/ (and what only reads them) runs on numpy alone, the
old module name still gives the formats, and packing lives in the ops layer."""

from __future__ import annotations

import gc
import os
import subprocess
import sys
import weakref

import numpy as np
import pytest

import edgecompress as ec
import edgecompress.weights
from edgecompress import formats, ops

# Importing a submodule runs edgecompress/__init__ first, which loads the ops layer. The child
# process below puts a bare package in its place, then refuses every module formats/ must not need.
_CHILD = r"""
import importlib.abc, sys, types

import numpy as np

pkg = types.ModuleType("edgecompress")
pkg.__path__ = [sys.argv[1]]
sys.modules["edgecompress"] = pkg
BLOCKED = ("edgecompress._core", "edgecompress.runtime", "edgecompress.ops", "edgecompress.reference", "torch")


class Refuse(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if any(name == b or name.startswith(b + ".") for b in BLOCKED):
            raise ImportError("refused: " + name)
        return None


sys.meta_path.insert(0, Refuse())
try:
    import edgecompress.ops
except ImportError as e:
    assert "refused: edgecompress" in str(e), e
else:
    raise AssertionError("the refusal does not work")

__import__(sys.argv[2])
from edgecompress.formats import Int4Weight, Int8Weight, LowRankWeight, SparseWeight

w = np.random.default_rng(0).standard_normal((8, 64)).astype(np.float32)
w[:, ::2] = 0
for weight in (Int8Weight.from_float(w), Int4Weight.from_float(w), SparseWeight.from_float(w),
               SparseWeight.from_float(w, "bsr1x4", "int8"), LowRankWeight.from_float(w, rank=4)):
    back = type(weight).from_state_dict(weight.state_dict())
    assert np.array_equal(back.to_float(), weight.to_float()), weight
for call in (lambda: SparseWeight.from_float(w, "auto"), lambda: Int4Weight.from_float(w, method="mse")):
    try:
        call()
    except RuntimeError as e:
        assert "needs edgecompress's kernels" in str(e), e
    else:
        raise AssertionError("a step that needs the kernels ran without them")
print("numpy only:", sorted(m for m in sys.modules if m.startswith("edgecompress")))
"""


@pytest.mark.parametrize("module", ["edgecompress.formats", "edgecompress.formats._common", "edgecompress.formats.int8",
                                    "edgecompress.formats.int4", "edgecompress.formats.quantize4",
                                    "edgecompress.formats.sparse", "edgecompress.formats.lowrank",
                                    "edgecompress.convert", "edgecompress.weights"])
def test_formats_need_neither_the_kernels_nor_the_oracle_nor_torch(module):
    root = os.path.dirname(ec.__file__)
    run = subprocess.run([sys.executable, "-c", _CHILD, root, module], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    assert "numpy only:" in run.stdout and module in run.stdout


def test_the_old_module_name_gives_the_same_classes():
    for name in ("Int4Weight", "Int8Weight", "LowRankWeight", "SparseWeight"):
        assert getattr(edgecompress.weights, name) is getattr(formats, name) is getattr(ec, name)
    assert sorted(edgecompress.weights.__all__) == ["Int4Weight", "Int8Weight", "LowRankWeight", "SparseWeight"]


def test_packed_once_per_weight_and_kernel_and_released_with_the_weight(rng):
    w = ec.Int8Weight.from_float(rng.standard_normal((16, 32)).astype(np.float32))
    top = ops.packed(w)
    assert ops.packed(w) is top and top.kernel == ec.cpu_info()["families"]["gemm_s8"]["kernel"]
    with ec.use_isa("scalar"):
        scalar = ops.packed(w)
        assert scalar.kernel == ec.cpu_info()["families"]["gemm_s8"]["kernel"] != top.kernel
        assert ops.packed(w) is scalar
    assert ops.packed(w) is top
    copy = ec.Int8Weight(w.qweight, w.scale)  # an equal weight is another object: packed on its own
    assert ops.packed(copy) is not top
    gone = weakref.ref(top)
    del w, top, scalar
    gc.collect()
    assert gone() is None  # the packed form lives as long as its weight, no longer


def test_every_format_has_its_kernel_and_packing(rng):
    w = rng.standard_normal((8, 64)).astype(np.float32)
    w[:, 1::2] = 0
    kernels = {f: ec.cpu_info()["families"][f]["kernel"] for f in ec.runtime.FAMILIES}
    cases = [(ec.Int8Weight.from_float(w), "gemm_s8"), (ec.Int4Weight.from_float(w), "gemm_q4"),
             (ec.SparseWeight.from_float(w), "sparse_f32"), (ec.SparseWeight.from_float(w, "2:4"), "sparse_nm_f32"),
             (ec.SparseWeight.from_float(w, "csr", "int8"), "sparse_s8")]
    for weight, family in cases:
        assert ops.packed(weight).kernel == kernels[family], weight
    v, u = ops.packed(ec.LowRankWeight.from_float(w, rank=4))
    assert v.kernel == u.kernel == kernels["dense_f32"]
    assert ops.packed(ec.LowRankWeight.from_float(w, rank=4, dtype="int8")) == (None, None)
    with pytest.raises(TypeError, match="w: expected an Int8Weight, Int4Weight, SparseWeight or LowRankWeight, got ndarray"):
        ops.packed(w)


def test_frozen_keeps_only_arrays_nothing_can_write():
    from edgecompress.formats._common import frozen

    q = np.arange(-8, 8, dtype=np.int8).reshape(4, 4)
    from_bytes = np.frombuffer(q.tobytes(), dtype=np.int8).reshape(4, 4)  # memory of an immutable buffer
    assert frozen(from_bytes) is from_bytes
    view = q.view()
    view.flags.writeable = False  # read-only view, but q can still change it: copied
    kept = frozen(view)
    assert kept is not view and not np.shares_memory(kept, q)
    q[0, 0] = 99
    assert kept[0, 0] == -8
    w = ec.Int8Weight(from_bytes, np.ones(4, np.float32))
    assert np.shares_memory(w.qweight, from_bytes)  # a loaded file's pages are not copied
