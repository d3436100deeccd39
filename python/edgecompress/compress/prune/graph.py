"""Which channels must be pruned together: a channel dependency graph traced with torch.fx.

Every tensor the model computes gets a *layout*: which dimension holds its channels (``cdim``) and, along
that dimension, a list of segments, each ``count`` channels of one channel *space*, every channel
repeated ``repeat`` times in a row (a flattened (C, H, W) map is C channels repeated H·W times; a
concatenation is several segments). A Linear or Conv creates a new space for its outputs. Operations
that must see the same channels merge spaces (union-find): a residual add, the operands of a product,
BatchNorm and LayerNorm (their parameters follow the channels), depthwise convolutions (output channel
o is input channel o // multiplier). A grouped convolution splits its spaces into ``groups`` equal
divisions that must lose the same number of channels. Anything the graph does not understand (an
unknown op, a reshape that is not a flatten, the model's output) *pins* the spaces it touches: they are
never pruned.

A merged space is a ``ChannelGroup``. Pruning channel c of a group removes, for every ``Usage``, the
indices ``offset + c·repeat + [0, repeat)`` of dim 0 (role ``"out"``: weight rows, bias, BatchNorm and
LayerNorm vectors) or dim 1 (role ``"in"``: weight columns of a Linear or Conv that reads the channel).

Attention heads: a module with Linear children ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj`` and an
int attribute ``num_heads`` (names configurable with ``AttentionSpec``) is traced as one leaf. Its
heads form a group of their own: head h is rows [h·d, (h+1)·d) of q/k/v and those columns of out_proj,
and ``num_heads`` is updated when heads go. Its forward must derive the inner width from ``num_heads``
(e.g. ``reshape(B, T, -1)``), and it must be self-attention (other tensor arguments are pinned).

A LayerNorm over pruned features keeps its statistics over the features that remain, so for it the
pruned model is not the masked one; every other supported operation acts per channel and the pruned
model computes exactly what the masked model (``zero_channels``) computes.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx, nn

from ._common import as_input_tuple, check_module, eval_mode

_CONV = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_POOL = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
         nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d,
         nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample)
_ELEMENTWISE_MODULES = (nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish,
                        nn.Hardsigmoid, nn.ELU, nn.Mish, nn.Softplus, nn.Identity,
                        nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d)
_ELEMENTWISE_FUNCTIONS = {torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.leaky_relu, F.hardswish, F.elu,
                          F.mish, F.softplus, torch.sigmoid, torch.tanh, F.dropout, torch.neg, torch.abs,
                          operator.neg}
_ELEMENTWISE_METHODS = {"relu", "sigmoid", "tanh", "contiguous", "clone", "detach", "neg", "abs"}
_BINARY_FUNCTIONS = {operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, operator.isub,
                     operator.imul, torch.add, torch.sub, torch.mul, torch.div}
_BINARY_METHODS = {"add", "sub", "mul", "div"}
_POOL_FUNCTIONS = {F.max_pool1d, F.max_pool2d, F.max_pool3d, F.avg_pool1d, F.avg_pool2d, F.avg_pool3d,
                   F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, F.adaptive_avg_pool3d,
                   F.adaptive_max_pool1d, F.adaptive_max_pool2d, F.adaptive_max_pool3d, F.interpolate}
_CAT_FUNCTIONS = {torch.cat, torch.concat, torch.concatenate}
_REDUCE_FUNCTIONS = {torch.mean: "mean", torch.sum: "sum", torch.amax: "amax"}


@dataclass(frozen=True)
class AttentionSpec:
    """Names of an attention module's projections (children) and of its head-count attribute."""

    q: str = "q_proj"
    k: str = "k_proj"
    v: str = "v_proj"
    out: str = "out_proj"
    num_heads: str = "num_heads"


@dataclass(frozen=True)
class Usage:
    """Where a group's channels sit in one module: ``role`` "out" (dim 0) or "in" (dim 1 of the weight),
    channel c at indices ``offset + c·repeat + [0, repeat)``."""

    module: str
    role: str
    offset: int
    repeat: int

    def indices(self, channels: torch.Tensor) -> torch.Tensor:
        return (self.offset + channels[:, None] * self.repeat + torch.arange(self.repeat)).flatten()


@dataclass
class ChannelGroup:
    """Channels that must be pruned together; ``pinned`` says why they cannot be (None if they can)."""

    index: int
    size: int
    usages: list[Usage]
    pinned: str | None
    divisions: int = 1
    attention: str | None = None  # the attention module whose heads these are

    @property
    def prunable(self) -> bool:
        return self.pinned is None and any(u.role == "out" for u in self.usages)

    @property
    def name(self) -> str:
        if self.attention is not None:
            return f"{self.attention}.heads"
        producers = [u.module for u in self.usages if u.role == "out"]
        return producers[0] if producers else f"group{self.index}"

    def usages_of(self, role: str) -> list[Usage]:
        return [u for u in self.usages if u.role == role]


@dataclass(frozen=True)
class _Seg:
    space: int
    count: int
    repeat: int


@dataclass(frozen=True)
class _Layout:
    cdim: int
    segs: tuple[_Seg, ...]


@dataclass
class _Space:
    size: int
    parent: int
    pinned: str | None = None
    divisions: int = 1
    attention: str | None = None
    usages: list[Usage] = field(default_factory=list)


class _Tracer(fx.Tracer):
    def __init__(self, leaves: set[str]):
        super().__init__()
        self.leaves = leaves

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return qualname in self.leaves or super().is_leaf_module(m, qualname)


class _ShapeRecorder(fx.Interpreter):
    """Runs the traced graph once and keeps, per node, its output shape (tensors), "tensors"
    (a container holding tensors) or None."""

    def __init__(self, gm: fx.GraphModule):
        super().__init__(gm)
        self.shapes: dict[fx.Node, Any] = {}

    def run_node(self, n: fx.Node) -> Any:
        result = super().run_node(n)
        if isinstance(result, torch.Tensor):
            self.shapes[n] = tuple(result.shape)
        else:
            found = []
            fx.node.map_aggregate(result, lambda v: found.append(v) if isinstance(v, torch.Tensor) else v)
            self.shapes[n] = "tensors" if found else None
        return result


def find_attention(model: nn.Module, attention: dict[str, AttentionSpec] | None) -> dict[str, AttentionSpec]:
    """``attention`` checked, or when None the modules that match the default ``AttentionSpec``."""
    if attention is not None:
        if not isinstance(attention, dict):
            raise TypeError(f"attention: expected a dict of module name -> AttentionSpec, got {type(attention).__name__}")
        for name, spec in attention.items():
            if not isinstance(spec, AttentionSpec):
                raise TypeError(f"attention: expected AttentionSpec values, got {type(spec).__name__} for {name!r}")
            _attention_parts(model, name, spec)
        return dict(attention)
    spec = AttentionSpec()
    found = {}
    for name, m in model.named_modules():
        try:
            _attention_parts(model, name, spec)
        except ValueError:
            continue
        found[name] = spec
    return found


def _attention_parts(model: nn.Module, name: str, spec: AttentionSpec) -> tuple[nn.Module, int, int]:
    """The module, its head count and head width, after checking the projections are consistent."""
    try:
        m = model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"attention: {name!r} is not a module of the model") from None
    projections = [getattr(m, p, None) for p in (spec.q, spec.k, spec.v, spec.out)]
    heads = getattr(m, spec.num_heads, None)
    if not all(isinstance(p, nn.Linear) for p in projections) or not isinstance(heads, int) or heads < 1:
        raise ValueError(f"attention: {name!r} needs Linear children {spec.q}, {spec.k}, {spec.v}, {spec.out} "
                         f"and an int attribute {spec.num_heads!r}")
    q, k, v, out = projections
    inner = q.out_features
    if k.out_features != inner or v.out_features != inner or out.in_features != inner or inner % heads:
        raise ValueError(f"attention: {name!r} has q/k/v/out widths {q.out_features}/{k.out_features}/"
                         f"{v.out_features}/{out.in_features}, expected equal widths divisible by {heads} heads")
    return m, heads, inner // heads


class DependencyGraph:
    """The channel groups of ``model``, traced with torch.fx and run once on ``example_inputs``."""

    def __init__(self, model: nn.Module, example_inputs: Any, attention: dict[str, AttentionSpec] | None = None):
        self.model = check_module(model)
        inputs = as_input_tuple(example_inputs)
        for name, m in model.named_modules():
            if isinstance(getattr(m, "weight_mask", None), torch.Tensor):
                raise ValueError(f"model: {name!r} has a weight mask; call make_permanent(model) first")
        self.attention = find_attention(model, attention)
        try:
            graph = _Tracer(set(self.attention)).trace(model)
        except Exception as e:  # fx raises several types for untraceable code
            raise ValueError(f"model: torch.fx could not trace it ({type(e).__name__}: {e})") from e
        gm = fx.GraphModule(model, graph)
        recorder = _ShapeRecorder(gm)
        with eval_mode(model), torch.no_grad():
            recorder.run(*inputs)
        self._shapes = recorder.shapes
        self._modules = dict(model.named_modules())
        self._spaces: list[_Space] = []
        self._calls: dict[str, tuple[_Layout | None, _Layout | None]] = {}
        self._layouts: dict[fx.Node, _Layout | None] = {}
        for node in graph.nodes:
            self._layouts[node] = self._visit(node)
        self.groups = self._collect_groups()

    # -- union-find over channel spaces ---------------------------------------------------------

    def _new_space(self, size: int, pinned: str | None = None, divisions: int = 1,
                   attention: str | None = None) -> int:
        self._spaces.append(_Space(size, len(self._spaces), pinned, divisions, attention))
        return len(self._spaces) - 1

    def _find(self, s: int) -> int:
        while self._spaces[s].parent != s:
            self._spaces[s].parent = self._spaces[self._spaces[s].parent].parent
            s = self._spaces[s].parent
        return s

    def _pin(self, layout: _Layout | None, reason: str) -> None:
        if layout is not None:
            for seg in layout.segs:
                root = self._spaces[self._find(seg.space)]
                root.pinned = root.pinned or reason

    def _unify(self, layouts: list[_Layout | None], reason: str) -> _Layout | None:
        """Merge the spaces of layouts that must carry the same channels; pin them all when their
        structure differs (or when some of them carry no channel information)."""
        known = [lay for lay in layouts if lay is not None]
        if not known:
            return None
        shape = [(s.count, s.repeat) for s in known[0].segs]
        if len(known) < len(layouts) or any([(s.count, s.repeat) for s in lay.segs] != shape or lay.cdim != known[0].cdim
                                             for lay in known):
            for lay in known:
                self._pin(lay, reason)
            return None if len(known) < len(layouts) else known[0]
        for lay in known[1:]:
            for a, b in zip(known[0].segs, lay.segs):
                ra, rb = self._find(a.space), self._find(b.space)
                if ra != rb:
                    sa, sb = self._spaces[ra], self._spaces[rb]
                    sb.parent = ra
                    sa.pinned = sa.pinned or sb.pinned
                    sa.divisions = math.lcm(sa.divisions, sb.divisions)
                    if sa.attention or sb.attention:
                        sa.pinned = sa.pinned or "attention heads merged with other channels"
        return known[0]

    def _use(self, layout: _Layout, module: str, role: str, scale: int = 1) -> None:
        offset = 0
        for seg in layout.segs:
            self._spaces[seg.space].usages.append(Usage(module, role, offset * scale, seg.repeat * scale))
            offset += seg.count * seg.repeat

    def _produce(self, module: str, size: int, cdim: int, divisions: int = 1) -> _Layout:
        space = self._new_space(size, divisions=divisions)
        self._spaces[space].usages.append(Usage(module, "out", 0, 1))
        return _Layout(cdim, (_Seg(space, size, 1),))

    # -- propagation ------------------------------------------------------------------------------

    def _shape(self, node: Any) -> tuple[int, ...] | None:
        s = self._shapes.get(node) if isinstance(node, fx.Node) else None
        return s if isinstance(s, tuple) else None

    def _tensor_args(self, node: fx.Node) -> list[fx.Node]:
        found: list[fx.Node] = []
        fx.node.map_arg((node.args, node.kwargs), lambda n: found.append(n) if self._shape(n) else n)
        return found

    def _opaque(self, node: fx.Node, reason: str) -> None:
        for arg in self._tensor_args(node):
            self._pin(self._layouts.get(arg), reason)
        return None

    def _visit(self, node: fx.Node) -> _Layout | None:
        if node.op in ("placeholder", "get_attr"):
            return None
        if node.op == "output":
            return self._opaque(node, "reaches the model's output")
        if self._shapes.get(node) is None:  # ints, sizes: no channels flow through
            return None
        if self._shapes[node] == "tensors":
            return self._opaque(node, f"used by {node.target} (returns several tensors)")
        if node.op == "call_module":
            return self._visit_module(node)
        return self._visit_function(node)

    def _arg(self, node: fx.Node, i: int, key: str, default: Any = None) -> Any:
        return node.args[i] if len(node.args) > i else node.kwargs.get(key, default)

    def _visit_module(self, node: fx.Node) -> _Layout | None:
        name, m = node.target, self._modules[node.target]
        x = node.args[0] if node.args else None
        layout = self._layouts.get(x) if isinstance(x, fx.Node) else None
        in_shape = self._shape(x)
        nd_out = len(self._shape(node))
        if in_shape is None:  # no tensor as first argument: nothing this graph can follow
            return self._opaque(node, f"{name!r} is called without a tensor first argument")
        if name in self.attention or isinstance(m, (nn.Linear, *_CONV, *_BATCHNORM, nn.LayerNorm)):
            if name in self._calls:  # a module called again reads and writes the same channels
                first_in, first_out = self._calls[name]
                self._unify([first_in, layout], f"{name} is called with different channels")
                return first_out
            out = self._visit_parametrized(node, name, m, layout, in_shape, nd_out)
            self._calls[name] = (layout, out)
            return out
        if isinstance(m, _ELEMENTWISE_MODULES):
            return layout
        if isinstance(m, _POOL):
            return self._at_cdim(layout, 1, f"{name} pools over the channel dimension")
        if isinstance(m, nn.Flatten):
            return self._flatten(layout, in_shape, m.start_dim, m.end_dim, name)
        return self._opaque(node, f"used by {type(m).__name__} {name!r}")

    def _at_cdim(self, layout: _Layout | None, cdim: int, reason: str) -> _Layout | None:
        if layout is not None and layout.cdim != cdim:
            self._pin(layout, reason)
            return None
        return layout

    def _visit_parametrized(self, node: fx.Node, name: str, m: nn.Module, layout: _Layout | None,
                            in_shape: tuple[int, ...], nd_out: int) -> _Layout | None:
        if name in self.attention:
            return self._visit_attention(node, name, layout, in_shape, nd_out)
        if isinstance(m, nn.Linear):
            layout = self._at_cdim(layout, len(in_shape) - 1, f"{name} reads a non-channel dimension")
            if layout is not None:
                self._use(layout, name, "in")
            return self._produce(name, m.out_features, nd_out - 1)
        if isinstance(m, _CONV):
            layout = self._at_cdim(layout, 1, f"{name} reads a non-channel dimension")
            if m.groups == 1:
                if layout is not None:
                    self._use(layout, name, "in")
                return self._produce(name, m.out_channels, 1)
            if m.groups == m.in_channels:  # depthwise: output o = input o // multiplier
                if layout is None:
                    return None
                mult = m.out_channels // m.in_channels
                self._use(layout, name, "out", scale=mult)
                return _Layout(1, tuple(replace(s, repeat=s.repeat * mult) for s in layout.segs))
            if layout is not None and (len(layout.segs) != 1 or layout.segs[0].repeat != 1):
                self._pin(layout, f"grouped {name} reads concatenated or expanded channels")
                layout = None
            if layout is not None:
                root = self._spaces[self._find(layout.segs[0].space)]
                root.divisions = math.lcm(root.divisions, m.groups)
                self._use(layout, name, "in")
            return self._produce(name, m.out_channels, 1, divisions=m.groups)
        if isinstance(m, _BATCHNORM):
            layout = self._at_cdim(layout, 1, f"{name} normalizes a non-channel dimension")
        else:  # LayerNorm
            n_norm = len(m.normalized_shape)
            if layout is None or layout.cdim < len(in_shape) - n_norm:
                return layout  # normalizes dimensions other than the channels
            if n_norm != 1 or layout.cdim != len(in_shape) - 1:
                self._pin(layout, f"{name} normalizes channels together with other dimensions")
                return None
        if layout is not None:
            self._use(layout, name, "out")
        return layout

    def _visit_attention(self, node: fx.Node, name: str, layout: _Layout | None,
                         in_shape: tuple[int, ...], nd_out: int) -> _Layout | None:
        spec = self.attention[name]
        for arg in self._tensor_args(node)[1:]:
            self._pin(self._layouts.get(arg), f"extra input of attention {name!r}")
        layout = self._at_cdim(layout, len(in_shape) - 1, f"attention {name!r} reads a non-channel dimension")
        if layout is not None:
            for proj in (spec.q, spec.k, spec.v):
                self._use(layout, f"{name}.{proj}", "in")
        _, heads, head_dim = _attention_parts(self.model, name, spec)
        space = self._new_space(heads, attention=name)
        usages = [Usage(f"{name}.{p}", "out", 0, head_dim) for p in (spec.q, spec.k, spec.v)]
        self._spaces[space].usages += usages + [Usage(f"{name}.{spec.out}", "in", 0, head_dim)]
        out = self._modules[f"{name}.{spec.out}"]
        return self._produce(f"{name}.{spec.out}", out.out_features, nd_out - 1)

    def _flatten(self, layout: _Layout | None, in_shape: tuple[int, ...], start: int, end: int,
                 where: str) -> _Layout | None:
        if layout is None:
            return None
        nd = len(in_shape)
        start, end, c = start % nd, end % nd, layout.cdim
        if c < start:
            return layout
        if c > end:
            return replace(layout, cdim=c - (end - start))
        if math.prod(in_shape[start:c]) != 1:
            self._pin(layout, f"{where} interleaves channels with an outer dimension")
            return None
        inner = math.prod(in_shape[c + 1 : end + 1])
        return _Layout(start, tuple(replace(s, repeat=s.repeat * inner) for s in layout.segs))

    def _visit_function(self, node: fx.Node) -> _Layout | None:
        target = node.target
        method = target if node.op == "call_method" else None
        args = node.args
        x = args[0] if args else None
        layout = self._layouts.get(x) if isinstance(x, fx.Node) else None
        in_shape = self._shape(x)
        out_shape = self._shape(node)
        if target in _ELEMENTWISE_FUNCTIONS or method in _ELEMENTWISE_METHODS:
            return layout if in_shape == out_shape else self._opaque(node, f"used by {target}")
        if target in _BINARY_FUNCTIONS or method in _BINARY_METHODS:
            return self._binary(node)
        if target in _POOL_FUNCTIONS:
            return self._at_cdim(layout, 1, f"{target.__name__} pools over the channel dimension")
        if target in _CAT_FUNCTIONS:
            return self._cat(node)
        if target is torch.flatten or method == "flatten":
            start, end = self._arg(node, 1, "start_dim", 0), self._arg(node, 2, "end_dim", -1)
            return self._flatten(layout, in_shape, start, end, "flatten")
        if target is torch.reshape or method in ("view", "reshape"):
            return self._reshape(node, layout, in_shape, out_shape)
        if (target is torch.permute or method == "permute") and layout is not None:
            dims = args[1] if len(args) == 2 and isinstance(args[1], (tuple, list)) else args[1:]
            dims = [d % len(in_shape) for d in dims]
            return replace(layout, cdim=dims.index(layout.cdim))
        if (target is torch.transpose or method == "transpose") and layout is not None:
            d0, d1 = (d % len(in_shape) for d in args[1:3])
            swap = {d0: d1, d1: d0}
            return replace(layout, cdim=swap.get(layout.cdim, layout.cdim))
        if target in _REDUCE_FUNCTIONS or method in ("mean", "sum", "amax"):
            return self._reduce(node, layout, in_shape)
        return self._opaque(node, f"used by {getattr(target, '__name__', target)}")

    def _binary(self, node: fx.Node) -> _Layout | None:
        nd_out = len(self._shape(node))
        layouts, opaque = [], []
        for arg in node.args[:2]:
            shape = self._shape(arg)
            if shape is None:
                continue  # a Python number
            lay = self._layouts.get(arg)
            if lay is None:
                opaque.append(shape)
            else:
                layouts.append(replace(lay, cdim=lay.cdim + nd_out - len(shape)))
        if not layouts:
            return None
        merged = self._unify(layouts, f"{node.target} combines different channels")
        for shape in opaque:  # a tensor without channel info is fine if it broadcasts over the channels
            d = layouts[0].cdim - (nd_out - len(shape))
            if d >= 0 and shape[d] != 1:
                for lay in layouts:
                    self._pin(lay, f"{node.target} combines channels with values that are not pruned")
                return None
        return merged

    def _cat(self, node: fx.Node) -> _Layout | None:
        tensors = list(node.args[0])
        nd = len(self._shape(node))
        dim = self._arg(node, 1, "dim", 0) % nd
        layouts = [self._layouts.get(t) for t in tensors]
        known = [lay for lay in layouts if lay is not None]
        if not known:
            return None
        if any(lay.cdim != known[0].cdim for lay in known):
            for lay in known:
                self._pin(lay, "concatenated with channels in another dimension")
            return None
        if dim != known[0].cdim:
            return self._unify(layouts, "concatenated along a non-channel dimension with different channels")
        segs: list[_Seg] = []
        for t, lay in zip(tensors, layouts):
            if lay is None:
                size = self._shape(t)[dim]
                segs.append(_Seg(self._new_space(size, pinned="concatenated input without channel info"), size, 1))
            else:
                segs.extend(lay.segs)
        return _Layout(dim, tuple(segs))

    def _reshape(self, node: fx.Node, layout: _Layout | None, in_shape: tuple[int, ...],
                 out_shape: tuple[int, ...]) -> _Layout | None:
        """A reshape that merges dims [s, e] into one is a flatten; anything else is opaque."""
        if layout is None or in_shape == out_shape:
            return layout
        merged = len(in_shape) - len(out_shape)
        for s in range(len(out_shape) if merged > 0 else 0):
            e = s + merged
            if (in_shape[:s] == out_shape[:s] and in_shape[e + 1 :] == out_shape[s + 1 :]
                    and out_shape[s] == math.prod(in_shape[s : e + 1])):
                c = layout.cdim
                if c < s or c > e or math.prod(in_shape[s:c]) == 1:
                    return self._flatten(layout, in_shape, s, e, str(node.target))
        return self._opaque(node, f"reshaped by {node.target} to {out_shape}")

    def _reduce(self, node: fx.Node, layout: _Layout | None, in_shape: tuple[int, ...]) -> _Layout | None:
        if layout is None:
            return None
        dims = self._arg(node, 1, "dim", None)
        if dims is None:
            return self._opaque(node, f"reduced by {node.target} over all dimensions")
        dims = {d % len(in_shape) for d in ((dims,) if isinstance(dims, int) else dims)}
        if layout.cdim in dims:
            return self._opaque(node, f"reduced by {node.target} over the channels")
        if self._arg(node, 2, "keepdim", False):
            return layout
        return replace(layout, cdim=layout.cdim - sum(d < layout.cdim for d in dims))

    def _collect_groups(self) -> list[ChannelGroup]:
        merged: dict[int, list[Usage]] = {}
        for i, space in enumerate(self._spaces):
            merged.setdefault(self._find(i), []).extend(space.usages)
        groups = []
        for root, usages in merged.items():
            s = self._spaces[root]
            if usages:
                groups.append(ChannelGroup(len(groups), s.size, usages, s.pinned, s.divisions, s.attention))
        return groups

    # -- queries and edits ------------------------------------------------------------------------

    def groups_of(self, module: str, role: str = "out") -> list[ChannelGroup]:
        """The groups with a usage of ``module`` in ``role`` ("out": what it writes, "in": what it reads)."""
        return [g for g in self.groups if any(u.module == module and u.role == role for u in g.usages)]

    def zero_channels(self, group: ChannelGroup, channels: torch.Tensor) -> None:
        """Mask ``channels`` of ``group`` in the model: zero the weights that read them (role "in"),
        which is what pruning them computes."""
        with torch.no_grad():
            for u in group.usages_of("in"):
                m = self._modules[u.module]
                idx = u.indices(channels)
                if isinstance(m, _CONV) and 1 < m.groups:
                    per_group = m.in_channels // m.groups
                    rows = m.weight.view(m.groups, -1, *m.weight.shape[1:])
                    for c in idx.tolist():
                        rows[c // per_group, :, c % per_group] = 0
                else:
                    m.weight[:, idx] = 0

    def prune(self, keep: dict[int, torch.Tensor]) -> None:
        """Remove from the model every channel not in ``keep[group.index]`` (sorted channel indices)."""
        drop: dict[tuple[str, str], list[torch.Tensor]] = {}
        heads: dict[str, int] = {}
        for g in self.groups:
            if g.index not in keep:
                continue
            kept = keep[g.index]
            removed = torch.ones(g.size, dtype=torch.bool)
            removed[kept] = False
            removed = removed.nonzero().flatten()
            for u in g.usages:
                drop.setdefault((u.module, u.role), []).append(u.indices(removed))
            if g.attention is not None:
                heads[g.attention] = len(kept)
        for name in {m for m, _ in drop}:
            out = drop.get((name, "out"))
            inp = drop.get((name, "in"))
            _resize(self._modules[name], torch.cat(out) if out else None, torch.cat(inp) if inp else None)
        for name, count in heads.items():
            setattr(self._modules[name], self.attention[name].num_heads, count)


def _kept(size: int, drop: torch.Tensor | None) -> torch.Tensor:
    keep = torch.ones(size, dtype=torch.bool)
    if drop is not None:
        keep[drop] = False
    return keep.nonzero().flatten()


def _set_param(module: nn.Module, name: str, value: torch.Tensor) -> None:
    old = getattr(module, name)
    if isinstance(old, nn.Parameter):
        setattr(module, name, nn.Parameter(value.contiguous(), requires_grad=old.requires_grad))
    else:
        setattr(module, name, value.contiguous())


def _resize(m: nn.Module, drop_out: torch.Tensor | None, drop_in: torch.Tensor | None) -> None:
    """Slice a module's tensors: ``drop_out`` indices of dim 0, ``drop_in`` of the weight's dim 1."""
    with torch.no_grad():
        if isinstance(m, nn.Linear):
            out, inp = _kept(m.out_features, drop_out), _kept(m.in_features, drop_in)
            _set_param(m, "weight", m.weight[out][:, inp])
            if m.bias is not None:
                _set_param(m, "bias", m.bias[out])
            m.out_features, m.in_features = len(out), len(inp)
        elif isinstance(m, _CONV):
            depthwise = m.groups == m.in_channels and m.groups > 1
            out = _kept(m.out_channels, drop_out)
            w = m.weight[out]
            if drop_in is not None:
                per_group = m.in_channels // m.groups
                inp = _kept(m.in_channels, drop_in)
                rows = w.view(m.groups, -1, *w.shape[1:])
                w = torch.cat([rows[g][:, inp[inp // per_group == g] - g * per_group] for g in range(m.groups)])
            _set_param(m, "weight", w)
            if m.bias is not None:
                _set_param(m, "bias", m.bias[out])
            mult = m.out_channels // m.in_channels
            m.out_channels = len(out)
            if depthwise:
                m.groups = m.in_channels = len(out) // mult
            else:
                m.in_channels = w.shape[1] * m.groups
        else:  # BatchNorm, LayerNorm: vectors along the channels
            size = m.num_features if isinstance(m, _BATCHNORM) else m.normalized_shape[0]
            keep = _kept(size, drop_out)
            for name in ("weight", "bias", "running_mean", "running_var"):
                if getattr(m, name, None) is not None:
                    _set_param(m, name, getattr(m, name)[keep])
            if isinstance(m, _BATCHNORM):
                m.num_features = len(keep)
            else:
                m.normalized_shape = (len(keep),)
