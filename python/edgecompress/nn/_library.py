"""The edgecompress.nn modules as torch custom ops: ``edgecompress::linear`` and ``edgecompress::conv2d``.

Every module's forward calls its layer kind's op, so that ``torch.export``, ``torch.compile`` and
``torch.jit.trace`` see one opaque node per compressed layer (with a fake implementation giving the
output's shape, dtype and memory format) instead of failing on the numpy and native calls inside.

Why the op takes an integer handle of the module rather than the weight's arrays as tensors: a
weight's arrays differ per format and variant (zero points, codebooks, as many sparse values as
pruning left, int8 or float32 factors), and the kernels run a form packed once per process for this
CPU; rebuilding and packing a weight from tensors on each call would cost more than the call, and
caching it by tensor identity cannot tell a freed tensor from a new one at the same address. The
handle keeps the op's schema fixed (one tensor, one int) for every format, which is what export
needs. The price: an exported or traced program runs in the process that holds the modules (a
handle whose module is gone raises ValueError); the portable forms are ``edgecompress.save`` files
and ONNX export (``edgecompress.nn.onnx``).
"""

from __future__ import annotations

import itertools
import weakref
from typing import Any

import torch

_MODULES: dict[int, weakref.ref] = {}
_NEXT_HANDLE = itertools.count(1)


def register(module: Any) -> int:
    """A new handle for ``module``; the registry holds it weakly, so the handle dies with the module."""
    h = next(_NEXT_HANDLE)
    _MODULES[h] = weakref.ref(module, lambda _, h=h: _MODULES.pop(h, None))
    return h


def module_of(handle: int) -> Any:
    """The live module registered under ``handle``, or ValueError."""
    ref = _MODULES.get(handle)
    module = ref() if ref is not None else None
    if module is None:
        raise ValueError(f"handle: no live edgecompress.nn module has handle {handle} (a program exported or "
                         "traced from a module runs only while that module exists in this process)")
    return module


@torch.library.custom_op("edgecompress::linear", mutates_args=())
def linear(x: torch.Tensor, handle: int) -> torch.Tensor:
    """x (..., in_features) float32 through the compressed Linear module ``handle``."""
    return module_of(handle)._run(x)


@torch.library.custom_op("edgecompress::conv2d", mutates_args=())
def conv2d(x: torch.Tensor, handle: int) -> torch.Tensor:
    """x (N, C, H, W) float32 through the compressed Conv2d module ``handle``."""
    return module_of(handle)._run(x)


@linear.register_fake
def _linear_fake(x: torch.Tensor, handle: int) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], module_of(handle).out_features))


@conv2d.register_fake
def _conv2d_fake(x: torch.Tensor, handle: int) -> torch.Tensor:
    m = module_of(handle)
    ho, wo = m.output_size(x.shape)
    return torch.empty((x.shape[0], m.out_channels, ho, wo), dtype=x.dtype, device=x.device,
                       memory_format=m.output_memory_format(x))


NO_BACKWARD = ("edgecompress.nn modules are inference-only: they have no backward pass "
               "(train the float model, then compress it)")


def _no_backward(ctx: Any, grad: torch.Tensor) -> Any:
    raise RuntimeError(NO_BACKWARD)


for _op in (linear, conv2d):
    _op.register_autograd(_no_backward)
