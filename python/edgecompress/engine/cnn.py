"""Convolutional networks from torch onto the engine: the model is traced with torch.fx, its
BatchNorms folded into the convolutions before them, optionally compressed with a recipe of
``edgecompress.compress``, and its graph rewritten as engine ops on channels-last images.

The program takes the model's NCHW float32 input; the first node turns it channels last (batch, h, w,
c), the layout every window op reads, and a flatten of a feature map larger than 1x1 turns it back
(torch flattens in (c, h, w) order). A residual add of a convolution's output (that convolution the
last node so far, its output read by the add only) becomes the convolution's third input, added in
its epilogue. Activations after a convolution, a depthwise convolution or a residual add become that
node's ``activation`` (ReLU in the product's epilogue, the others, and ReLU after a residual, in one
pass over the output right after it).

Supported layers: Conv2d (zero padding; any groups: depthwise runs its own kernel, other groups one
product each), every compressed convolution and linear module of ``edgecompress.nn``, Linear,
BatchNorm2d, ReLU, ReLU6, SiLU, Hardswish, Hardsigmoid, Sigmoid, GELU, MaxPool2d, AvgPool2d,
AdaptiveAvgPool2d (to 1x1 or an exact divisor), Flatten, Dropout, Identity; the functions and
methods of the same names, ``+`` and ``*`` of tensors (a (batch, c, 1, 1) factor scales channels:
squeeze-excitation), ``torch.cat`` on channels, ``mean`` over (2, 3). Anything else is a ValueError
naming the op and the module.
"""

from __future__ import annotations

import copy
import operator
from typing import Any

import numpy as np

from ..formats import LowRankWeight
from .builder import GraphBuilder
from ..reference.engine import window_size
from .ops import winograd_applies, winograd_tile_for
from .program import Program, record_error

__all__ = ["export_cnn", "keep_faster", "trace"]

_ACT_MODULES = {"ReLU": "relu", "ReLU6": "relu6", "SiLU": "silu", "Hardswish": "hardswish",
                "Hardsigmoid": "hardsigmoid", "Sigmoid": "sigmoid"}
_PASS_MODULES = ("Dropout", "Dropout2d", "Identity")


def _act_functions() -> dict[Any, str]:
    import torch
    import torch.nn.functional as F

    return {F.relu: "relu", torch.relu: "relu", F.relu6: "relu6", F.silu: "silu", F.hardswish: "hardswish",
            F.hardsigmoid: "hardsigmoid", torch.sigmoid: "sigmoid", F.sigmoid: "sigmoid"}


def trace(model: Any) -> Any:
    """model traced by torch.fx (a copy), in eval mode, each BatchNorm2d that follows a Conv2d (its
    only reader) folded into it."""
    import torch
    from torch import fx, nn
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    model = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception as e:  # data-dependent control flow and the like: torch's reason, with ours
        raise ValueError(f"model: torch.fx cannot trace {type(model).__name__}: {e}") from None
    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], nn.BatchNorm2d):
            continue
        src = node.args[0]
        if (not isinstance(src, fx.Node) or src.op != "call_module" or type(modules[src.target]) is not nn.Conv2d
                or len(src.users) != 1):
            continue
        conv = modules[src.target]
        fused = fuse_conv_bn_eval(conv, modules[node.target])
        parent, _, name = src.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, name, fused)
        modules[src.target] = fused
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
    gm.graph.lint()
    gm.recompile()
    with torch.no_grad():  # (a folded module's parameters need no grad)
        for p in gm.parameters():
            p.requires_grad_(False)
    return gm


def _pads(m: Any) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) zero padding of a torch convolution or pool."""
    pad = m.padding
    if isinstance(pad, str):
        pads = []
        for i in (0, 1):
            if pad == "valid":
                pads += [0, 0]
            else:  # "same" (stride 1): torch pads an even kernel more at the end
                total = _pair(m.dilation)[i] * (_pair(m.kernel_size)[i] - 1)
                pads += [total // 2, total - total // 2]
        return tuple(pads)  # type: ignore[return-value]
    ph, pw = _pair(pad)
    return (ph, ph, pw, pw)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


class _Import:
    """The walk over one traced graph: each fx node's engine value, and whether it is an image
    (channels last, (batch, h, w, c)) or a matrix (batch, features)."""

    def __init__(self, gm: Any, example: np.ndarray) -> None:
        self.gm = gm
        self.modules = dict(gm.named_modules())
        self.b = GraphBuilder()
        self.value: dict[Any, str] = {}
        self.shape: dict[Any, tuple[int, ...]] = {}  # (batch, h, w, c) of images, (batch, n) of matrices
        self.image: dict[Any, bool] = {}
        self.producer: dict[str, Any] = {}  # engine value -> the engine node that wrote it
        self.example = example

    def name(self, node: Any) -> str:
        return str(node.name)

    def fail(self, node: Any, what: str) -> ValueError:
        where = f" (module {node.target!r})" if node.op == "call_module" else ""
        return ValueError(f"export_cnn: {what}{where} is not supported by the engine")

    # ---- emit ----

    def put(self, node: Any, value: str, shape: tuple[int, ...], image: bool) -> None:
        self.value[node], self.shape[node], self.image[node] = value, shape, image
        self.note(value)

    def note(self, value: str) -> None:
        """Records the engine node that wrote value (the last one, when it did)."""
        if value not in self.producer:
            self.producer[value] = self.b.nodes[-1] if self.b.nodes and value in self.b.nodes[-1].outputs else None

    def arg(self, node: Any, a: Any) -> Any:
        from torch import fx

        if not isinstance(a, fx.Node) or a not in self.value:
            raise self.fail(node, f"{node.op} {node.target} with the argument {a!r}")
        return a

    def conv(self, node: Any, x: Any, m: Any) -> None:
        """A torch or compressed convolution on image x."""
        from ..nn.conv import LowRankConv2d, _CompressedConv2d

        b, h, w, c = self.shape[x]
        kh, kw = _pair(m.kernel_size)
        stride, dilation = list(_pair(m.stride)), list(_pair(m.dilation))
        compressed = isinstance(m, _CompressedConv2d)
        pads = list(m._pads) if compressed else list(_pads(m))
        if m.padding_mode != "zeros":
            raise self.fail(node, f"Conv2d with padding_mode={m.padding_mode!r}")
        groups = m.groups
        out_ch = m.out_channels
        bias = None if m.bias is None else m.bias.detach().float().numpy()
        name = self.name(node)
        window = {"stride": stride, "padding": pads, "dilation": dilation}
        if groups == c == out_ch:  # depthwise: the engine's own kernel
            wt = (np.stack([wi.to_float() for wi in m.weights])[:, 0] if compressed
                  else m.weight.detach().float().numpy()[:, 0])  # (c, kh, kw) or (c, kh * kw)
            wt = np.ascontiguousarray(wt.reshape(c, kh, kw).transpose(1, 2, 0))
            ins = [self.value[x], self.b.weight(name + ".weight", wt)]
            if bias is not None:
                ins.append(self.b.weight(name + ".bias", bias))
            v = self.b.op("depthwise_conv2d", ins, name, **window)
        else:
            if compressed:
                wgts = list(m.weights)
                if m.patch_order != "hwc":
                    raise self.fail(node, "a compressed convolution with patch order 'chw' (from_float builds 'hwc')")
                act_args = m._act_args()
            else:  # (out, c / groups, kh, kw) -> each group's (out / groups, kh * kw * c / groups)
                wt = m.weight.detach().float().numpy().transpose(0, 2, 3, 1).reshape(out_ch, -1)
                wgts = [np.ascontiguousarray(part) for part in np.split(wt, groups)]
                act_args = {}
            attrs: dict[str, Any] = {"kernel": [kh, kw], **window}
            if act_args.get("act_scale") is not None:
                attrs["act_scale"] = float(act_args["act_scale"])
                if act_args.get("act_zero_point") is not None:
                    attrs["act_zero_point"] = int(act_args["act_zero_point"])
            wgt = wgts[0]
            if isinstance(wgt, LowRankWeight) or isinstance(m, LowRankConv2d):
                if groups != 1:
                    raise self.fail(node, f"a low-rank grouped convolution (groups={groups})")
                # x conv v (rank filters), then the 1x1 product with u, the bias after it
                t = self.b.op("conv2d", [self.value[x]], name + ".v",
                              weight=self.b.weight(name + ".v.weight", wgt.v), **attrs)
                ins = [t] + ([self.b.weight(name + ".bias", bias)] if bias is not None else [])
                v = self.b.op("conv2d", ins, name, weight=self.b.weight(name + ".weight", wgt.u), kernel=[1, 1])
            else:
                names: Any = (self.b.weight(name + ".weight", wgt) if groups == 1
                              else [self.b.weight(f"{name}.weight.{g}", wg) for g, wg in enumerate(wgts)])
                ins = [self.value[x]] + ([self.b.weight(name + ".bias", bias)] if bias is not None else [])
                v = self.b.op("conv2d", ins, name, weight=names, **attrs)
        ho, wo = window_size(h, w, (kh, kw), tuple(stride), tuple(pads), tuple(dilation))
        self.put(node, v, (b, ho, wo, out_ch), True)

    def linear(self, node: Any, x: Any, m: Any) -> None:
        from torch import nn

        if self.image[x] or len(self.shape[x]) != 2:
            raise self.fail(node, f"a Linear on a {len(self.shape[x])}-d value (flatten it first)")
        bias = None if m.bias is None else m.bias.detach().float().numpy()
        if isinstance(m, nn.Linear):
            w, act_args = m.weight.detach().float().numpy(), {}
        else:
            w, act_args = m.weights[0], m._act_args()
        v = self.b.linear(self.value[x], w, bias, self.name(node), act_scale=act_args.get("act_scale"),
                          act_zero_point=act_args.get("act_zero_point"))
        self.put(node, v, (self.shape[x][0], w.shape[0]), False)

    def activation(self, node: Any, x: Any, kind: str) -> None:
        """act(x): the activation of x's node when that node takes one and x has no other reader."""
        src = self.producer.get(self.value[x])
        fusable = src is not None and (src.op in ("conv2d", "depthwise_conv2d", "add") or (src.op == "linear" and kind == "relu"))
        if fusable and len(x.users) == 1 and "activation" not in src.attrs:
            src.attrs["activation"] = kind
            self.put(node, self.value[x], self.shape[x], self.image[x])
            self.producer[self.value[x]] = src
            return
        v = self.b.op("act", [self.value[x]], self.name(node), act=kind)
        self.put(node, v, self.shape[x], self.image[x])

    def pool(self, node: Any, x: Any, mode: str, kernel: Any, stride: Any, padding: Any, dilation: Any = 1,
             count_include_pad: bool = True, ceil_mode: bool = False) -> None:
        if ceil_mode:
            raise self.fail(node, "pooling with ceil_mode=True")
        b, h, w, c = self.shape[x]
        k = _pair(kernel)
        s = _pair(stride if stride is not None else kernel)
        ph, pw = _pair(padding)
        attrs: dict[str, Any] = {"mode": mode, "kernel": list(k), "stride": list(s), "padding": [ph, ph, pw, pw]}
        if mode == "max":
            attrs["dilation"] = list(_pair(dilation))
        elif not count_include_pad:
            attrs["count_include_pad"] = False
        v = self.b.op("pool2d", [self.value[x]], self.name(node), **attrs)
        ho, wo = window_size(h, w, k, s, (ph, ph, pw, pw), _pair(dilation))
        self.put(node, v, (b, ho, wo, c), True)

    def global_pool(self, node: Any, x: Any, keep_image: bool = True) -> None:
        """The mean over h and w: (batch, 1, 1, c) (or (batch, c))."""
        b, h, w, c = self.shape[x]
        name = self.name(node)
        flat = self.b.op("reshape", [self.value[x]], name + ".hw", shape=[0, -1, c])
        self.note(flat)
        v = self.b.op("mean_pool", [flat], name + ".mean")
        self.note(v)
        if keep_image:
            v = self.b.op("reshape", [v], name, shape=[0, 1, 1, c])
            self.put(node, v, (b, 1, 1, c), True)
        else:
            self.put(node, v, (b, c), False)

    def adaptive(self, node: Any, x: Any, size: Any) -> None:
        b, h, w, c = self.shape[x]
        oh, ow = _pair(size) if size is not None else (h, w)
        if (oh, ow) == (1, 1):
            return self.global_pool(node, x)
        if h % oh or w % ow:
            raise self.fail(node, f"an adaptive pool from {h}x{w} to {oh}x{ow} (not a divisor)")
        self.pool(node, x, "avg", (h // oh, w // ow), (h // oh, w // ow), 0)

    def flatten(self, node: Any, x: Any) -> None:
        shape = self.shape[x]
        if not self.image[x]:
            self.put(node, self.value[x], shape, False)
            return
        b, h, w, c = shape
        v = self.value[x]
        name = self.name(node)
        if h * w > 1:  # torch's order is (c, h, w)
            v = self.b.op("transpose", [v], name + ".nchw", perm=[0, 3, 1, 2])
            self.note(v)
        v = self.b.op("reshape", [v], name, shape=[0, -1])
        self.put(node, v, (b, h * w * c), False)

    def binary(self, node: Any, op: str, a: Any, b: Any) -> None:
        sa, sb = self.shape[a], self.shape[b]
        if sa != sb and op == "mul" and self.image[a] and self.image[b] and sb[1:3] == (1, 1) and sa[3] == sb[3]:
            pass  # channel scale of a by b
        elif sa != sb and op == "mul" and self.image[a] and self.image[b] and sa[1:3] == (1, 1) and sa[3] == sb[3]:
            a, b = b, a
        elif sa != sb:
            raise self.fail(node, f"{op} of shapes {sa} and {sb} (channels last)")
        elif op == "add" and (fused := self.residual(a, b)) is not None:
            self.put(node, fused, sa, True)
            return
        v = self.b.op(op, [self.value[a], self.value[b]], self.name(node))
        self.put(node, v, self.shape[a], self.image[a])

    def residual(self, a: Any, b: Any) -> str | None:
        """a + b as the residual input of the convolution that wrote one of them, when that is the
        last node so far (the other value is then written already), has no activation and its output
        is read by this add only: the convolution's output (now the sum), else None. An activation
        after the add fuses into the convolution as after any."""
        last = self.b.nodes[-1] if self.b.nodes else None
        for conv, other in ((a, b), (b, a)):
            src = self.producer.get(self.value[conv])
            if (src is last and src is not None and src.op == "conv2d" and self.image[conv] and len(conv.users) == 1
                    and "activation" not in src.attrs and self.value[other] != self.value[conv]):
                src.inputs = (src.inputs + [""])[:2] + [self.value[other]]
                return self.value[conv]
        return None

    def cat(self, node: Any, xs: list[Any], dim: int) -> None:
        if not all(self.image[x] for x in xs) or dim not in (1, -3):
            raise self.fail(node, f"torch.cat on dim {dim} (channels, dim 1, of images only)")
        b, h, w, _ = self.shape[xs[0]]
        if any(self.shape[x][:3] != (b, h, w) for x in xs):
            raise self.fail(node, f"torch.cat of {[self.shape[x] for x in xs]}")
        vals = [self.value[x] for x in xs]
        while len(vals) > 1:
            part = vals[:4]
            vals = [self.b.op("concat", part, f"{self.name(node)}.{len(vals)}" if len(vals) > 4 else self.name(node))] + vals[4:]
        self.put(node, vals[0], (b, h, w, sum(self.shape[x][3] for x in xs)), True)

    # ---- the walk ----

    def run(self) -> Program:
        import torch
        from torch import nn

        from ..nn.conv import _CompressedConv2d
        from ..nn.linear import _CompressedLinear

        acts = _act_functions()
        outputs: list[str] = []
        for node in self.gm.graph.nodes:
            if node.op == "placeholder":
                if self.value:
                    raise self.fail(node, "a second model input")
                b, c, h, w = self.example.shape
                x = self.b.input("x", "float32", ("batch", c, h, w))
                v = self.b.op("transpose", [x], "x.nhwc", perm=[0, 2, 3, 1])
                self.put(node, v, (b, h, w, c), True)
                continue
            if node.op == "output":
                out = node.args[0]
                if not hasattr(out, "op") or out not in self.value:
                    raise self.fail(node, "an output that is not one tensor")
                v = self.value[out]
                if self.image[out]:
                    v = self.b.op("transpose", [v], "output", perm=[0, 3, 1, 2])
                outputs.append(v)  # a view (flatten) is written into the output's buffer
                continue
            if node.op == "get_attr":
                raise self.fail(node, f"a tensor attribute {node.target!r}")
            args = node.args
            if node.op == "call_module":
                m = self.modules[node.target]
                kind = type(m).__name__
                x = self.arg(node, args[0])
                if isinstance(m, (nn.Conv2d, _CompressedConv2d)):
                    self.conv(node, x, m)
                elif isinstance(m, (nn.Linear, _CompressedLinear)):
                    self.linear(node, x, m)
                elif kind in _ACT_MODULES:
                    self.activation(node, x, _ACT_MODULES[kind])
                elif isinstance(m, nn.GELU) and m.approximate == "none":
                    self.put(node, self.b.op("gelu", [self.value[x]], self.name(node)), self.shape[x], self.image[x])
                elif kind in _PASS_MODULES:
                    self.put(node, self.value[x], self.shape[x], self.image[x])
                elif isinstance(m, nn.MaxPool2d):
                    self.pool(node, x, "max", m.kernel_size, m.stride, m.padding, m.dilation, ceil_mode=m.ceil_mode)
                elif isinstance(m, nn.AvgPool2d):
                    if m.divisor_override is not None:
                        raise self.fail(node, "AvgPool2d with divisor_override")
                    self.pool(node, x, "avg", m.kernel_size, m.stride, m.padding,
                              count_include_pad=m.count_include_pad, ceil_mode=m.ceil_mode)
                elif isinstance(m, nn.AdaptiveAvgPool2d):
                    self.adaptive(node, x, m.output_size)
                elif isinstance(m, nn.Flatten):
                    if m.start_dim != 1 or m.end_dim != -1:
                        raise self.fail(node, f"Flatten({m.start_dim}, {m.end_dim})")
                    self.flatten(node, x)
                elif isinstance(m, nn.BatchNorm2d):
                    self.batchnorm(node, x, m)
                else:
                    raise self.fail(node, f"the module {kind}")
            elif node.op == "call_function":
                f = node.target
                if f in acts:
                    self.activation(node, self.arg(node, args[0]), acts[f])
                elif f in (operator.add, torch.add, operator.mul, torch.mul) and len(args) == 2 and not node.kwargs:
                    self.binary(node, "add" if f in (operator.add, torch.add) else "mul", self.arg(node, args[0]),
                                self.arg(node, args[1]))
                elif f is torch.flatten:
                    if tuple(args[1:]) + tuple(node.kwargs.values()) not in ((1,), (1, -1)):
                        raise self.fail(node, f"torch.flatten with {args[1:]} {node.kwargs}")
                    self.flatten(node, self.arg(node, args[0]))
                elif f is torch.cat:
                    dim = args[1] if len(args) > 1 else node.kwargs.get("dim", 0)
                    self.cat(node, [self.arg(node, a) for a in args[0]], dim)
                elif f is torch.nn.functional.adaptive_avg_pool2d:
                    self.adaptive(node, self.arg(node, args[0]), args[1] if len(args) > 1 else node.kwargs["output_size"])
                elif f is torch.nn.functional.dropout:
                    x = self.arg(node, args[0])
                    self.put(node, self.value[x], self.shape[x], self.image[x])
                else:
                    raise self.fail(node, f"the function {getattr(f, '__name__', f)}")
            elif node.op == "call_method":
                x = self.arg(node, args[0])
                meth = node.target
                if meth in ("relu", "sigmoid"):
                    self.activation(node, x, meth)
                elif meth in ("add", "mul") and len(args) == 2:
                    self.binary(node, meth, x, self.arg(node, args[1]))
                elif meth == "flatten" and tuple(args[1:]) in ((1,), (1, -1)):
                    self.flatten(node, x)
                elif meth in ("view", "reshape") and len(args) == 3 and args[2] == -1 and self._is_batch(args[1], x):
                    self.flatten(node, x)
                elif meth == "size":
                    pass  # only as view's batch size (checked there)
                elif meth == "mean" and self.image[x] and tuple(args[1:2]) in (([2, 3],), ((2, 3),)):
                    keep = bool(node.kwargs.get("keepdim", args[2] if len(args) > 2 else False))
                    self.global_pool(node, x, keep_image=keep)
                elif meth == "contiguous":
                    self.put(node, self.value[x], self.shape[x], self.image[x])
                else:
                    raise self.fail(node, f"the method .{meth}")
            else:
                raise self.fail(node, f"{node.op} {node.target}")
        if not outputs:
            raise ValueError("export_cnn: the model returns nothing")
        return self.b.program(outputs, {"model": "cnn"})

    def _is_batch(self, a: Any, x: Any) -> bool:
        """a is x.size(0) (the batch of view(x.size(0), -1))."""
        return (getattr(a, "op", None) == "call_method" and a.target == "size" and a.args[0] is x
                and tuple(a.args[1:]) == (0,))

    def batchnorm(self, node: Any, x: Any, m: Any) -> None:
        """A BatchNorm2d no convolution takes: y = x * scale + shift per channel."""
        if not self.image[x]:
            raise self.fail(node, "BatchNorm2d on a matrix")
        b, h, w, c = self.shape[x]
        var, mean = (t.detach().double().numpy() for t in (m.running_var, m.running_mean))
        gamma = m.weight.detach().double().numpy() if m.affine else 1.0
        beta = m.bias.detach().double().numpy() if m.affine else 0.0
        scale = np.broadcast_to(gamma / np.sqrt(var + m.eps), (c,))
        shift = np.broadcast_to(beta - mean * scale, (c,))
        name = self.name(node)
        v = self.b.op("mul", [self.value[x], self.b.weight(name + ".scale", scale.astype(np.float32))], name + ".mul")
        self.note(v)
        v = self.b.op("add", [v, self.b.weight(name + ".shift", np.asarray(shift, np.float32))], name)
        self.put(node, v, self.shape[x], True)


def _one_channel_convs(gm: Any) -> list[str]:
    """The convolutions whose groups read one channel each (depthwise): their one-row weights stay
    float32 (the engine's depthwise kernel, or tiny products that gain nothing from compression)."""
    from torch import nn

    return [name for name, m in gm.named_modules() if isinstance(m, nn.Conv2d) and m.in_channels == m.groups != 1]


def keep_faster(compressed: Program, dense: Program, x: np.ndarray, margin: float = 0.0,
                rounds: int = 10) -> list[str]:
    """Puts back the float32 weight of every product (conv2d, linear) of ``compressed`` that the
    engine's own profile on x times slower than the same node of ``dense`` (the program of the same
    graph in float32: its weights under the same names), by more than ``margin`` (0: any slower
    one; a tie stays compressed), in place; returns their names. On a CPU without fast int8
    arithmetic a product with few output channels, or the 3-channel stem, can cost more to quantize
    than it saves. The two programs are profiled in turns,
    ``rounds`` times, and a node's verdict is the median of its rounds' ratios: a slower phase of a
    shared machine slows both sides of a round alike instead of one program's whole profile."""
    ratios: dict[str, list[float]] = {}
    dense(x), compressed(x)  # warm: plans, packed weights, caches
    for _ in range(rounds):  # per program node (a 1x1 convolution runs as a native linear node)
        f32 = dense.profile(x, rounds=1, warmup=False)["by_node"]
        for name, t in compressed.profile(x, rounds=1, warmup=False)["by_node"].items():
            if f32.get(name, 0.0) > 0.0:
                ratios.setdefault(name, []).append(t / f32[name])
    put_back = []
    for n in compressed.nodes:
        if n.op not in ("conv2d", "linear") or n.name not in ratios:
            continue
        ws = [dense.weights.get(name) for name in n.weight_names]
        if not all(isinstance(w, np.ndarray) for w in ws) or float(np.median(ratios[n.name])) <= 1 + margin:
            continue
        for name, w in zip(n.weight_names, ws):
            compressed.weights[name] = w
        for key in ("act_scale", "act_zero_point"):
            n.attrs.pop(key, None)
        put_back.append(n.name)
    if put_back:  # the plans hold the packed compressed weights
        compressed.invalidate()
    return put_back


def winograd_tiles(program: Program, x: np.ndarray) -> None:
    """Fixes, in place, the Winograd tile of every float32-capable 3x3 convolution of stride 1 whose
    ``winograd`` attribute is unset (True): winograd_tile_for on its output's shape for input x."""
    shapes = program.shapes(x)
    for n in program.nodes:
        if n.op != "conv2d" or n.attrs.get("winograd", True) is not True:
            continue
        (b, _, _, c), _ = shapes[n.inputs[0]]  # channels-last
        if winograd_applies(n, c):
            (_, ho, wo, _), _ = shapes[n.outputs[0]]
            n.attrs["winograd"] = winograd_tile_for(b, ho, wo)
    program.invalidate()


def export_cnn(model: Any, example_input: Any, recipe: Any = None, *, calibration_data: Any = None,
               guard: bool = False, faster: bool = True, **options: Any) -> Program:
    """The Program of a convolutional network (a torch.nn.Module that torch.fx traces, NCHW float32
    input): ResNets, MobileNets, EfficientNets and any model built from the supported layers (see the
    module notes).

    example_input: a (batch, c, h, w) tensor or array. recipe: None (float32) or a recipe of
    ``edgecompress.compress`` ("int8", "int8-static", "int4-g32", "sparse-75+int8", ...): the traced
    model (BatchNorms folded) is compressed first; depthwise convolutions stay float32 (the engine's
    own kernel; their one-row weights gain nothing from compression). "int8-static" calibrates one
    input scale per layer on ``calibration_data`` (a tensor or batches; default: example_input).
    ``options`` pass to ``compress``. faster (default): each product stays compressed only where the
    engine runs it faster than in float32, timed on example_input (``keep_faster``; the names of the
    products put back are ``info["float32_products"]``). Each float32 3x3 convolution of stride 1 runs
    in the Winograd tile that costs less on example_input's shapes (``winograd_tiles``). The program's
    ``report`` is compress's report (None for float32) and ``info["error"]`` the relative error of its
    output against the float model on example_input.
    """
    import torch

    from ..compress import compress

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    x = example_input.detach().cpu().numpy() if isinstance(example_input, torch.Tensor) else np.asarray(example_input)
    if x.ndim != 4 or not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"example_input: expected a float (batch, c, h, w) array, got {x.dtype} {x.shape}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    tx = torch.from_numpy(x)
    gm = trace(model)
    with torch.inference_mode():
        want = gm(tx).float().numpy()
    report = None
    dense = _Import(gm, x).run() if recipe is not None and faster else None
    if dense is not None:
        winograd_tiles(dense, x)
    if recipe is not None:
        exclude = list(options.pop("exclude", ())) + _one_channel_convs(gm)
        calib = calibration_data if calibration_data is not None else tx
        report = compress(gm, recipe, calibration_data=calib, example_inputs=(tx,), guard=guard, progress=False,
                          exclude=exclude, **options)
    program = _Import(gm, x).run()
    winograd_tiles(program, x)
    program.report = report
    if dense is not None:
        program.info["float32_products"] = keep_faster(program, dense, x)
    record_error(program, program(x), want, "export_cnn")
    return program
