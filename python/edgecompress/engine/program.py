"""Program: a graph of typed values and coarse ops with its weights in the canonical formats, planned
once per set of input shapes and run as one native call.

Planning (``_plan``): shapes inferred node by node (ops.OPS), every intermediate value placed in one
arena whose buffers are reused once their last reader has run (first fit, 64-byte aligned), weights
packed for this CPU once per kernel, and the whole list handed to ``_core.EnginePlan``. A call looks
the plan up by its input shapes, allocates the outputs and makes one native call with the GIL
released; Python does nothing per node.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _core
from ..formats import Int4Weight, Int8Weight, SparseWeight
from ..formats.int8 import MAX_K
from ..ops import MAX_K_UINT8
from ..formats._common import show
from ..runtime import _kernel, current_tier
from .ops import ATTRS, LINEAR_WEIGHTS, NATIVE_OP, OPS, REFERENCE, Node, OpError, Shape, packed_weight, winograd_form

__all__ = ["Input", "Program"]

_SPACE_ARENA, _SPACE_INPUT, _SPACE_OUTPUT, _SPACE_CONSTANT = 1, 2, 3, 4
_STATUS = {1: "expected finite values, got NaN or Inf", 2: "a token id out of range of its embedding table",
           4: "offsets or a token count that do not fit the rows they index (a mask changed while the program ran, "
              "or offsets that are not a pack node's)"}
_ALIGN = 64
# Plans kept per program, one per set of input shapes (each holds its arena): callers with many
# sequence lengths reuse the recent ones without memory growing with every length seen.
MAX_PLANS = 32
_PROFILE = os.environ.get("EDGECOMPRESS_PROFILE", "") not in ("", "0")


@dataclass(frozen=True)
class Input:
    """A program input: ``dims`` are ints (fixed) or names (sizes the caller chooses; inputs that
    share a name must agree)."""

    name: str
    dtype: str  # "float32" or "int64"
    dims: tuple[int | str, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "dims": list(self.dims)}


@dataclass
class _Plan:
    native: Any
    outputs: list[Shape]
    owners: list[Node]  # the program node of each native node (a linear with GELU lowers to two)
    labels: list[tuple[str, str]]  # (name, op) of each native node, for profiles


@dataclass(frozen=True)
class _Released:
    """What is left of a linear weight after ``Program.release_weights``: its shape and bytes."""

    shape: tuple[int, int]
    format: str
    tier: str
    nbytes: int


class Program:
    """A model as one native plan. Build one with ``edgecompress.engine.export`` (from a torch model)
    or ``edgecompress.engine.load`` (from a saved file); call it with numpy arrays."""

    def __init__(self, inputs: list[Input], outputs: list[str], nodes: list[Node], weights: dict[str, Any],
                 info: dict[str, Any] | None = None) -> None:
        self.inputs = list(inputs)
        self.outputs = list(outputs)
        self.nodes = list(nodes)
        self.weights = dict(weights)
        self.info = dict(info or {})
        self.report: Any = None  # compress's report when export compressed the model
        self._check()
        self._plans: dict[tuple[Any, ...], _Plan] = {}
        self._packed: dict[tuple[str, str], tuple[Any, int, int]] = {}  # (weight, tier cap) -> packed
        self._pack_inputs = [n.inputs[0] for n in self.nodes if n.op == "pack"]

    # ---- structure ----

    def _check(self) -> None:
        """Every op known with its attributes and operand counts, every operand defined before use,
        every linear weight in a format the engine runs, names unique."""
        defined = {i.name for i in self.inputs} | set(self.weights)
        state: set[str] = set()
        if len(defined) != len(self.inputs) + len(self.weights):
            raise ValueError("program: an input shares its name with a weight or another input")
        for i in self.inputs:
            if i.dtype not in ("float32", "int64"):
                raise ValueError(f"program input {i.name!r}: expected dtype float32 or int64, got {i.dtype!r}")
        for n in self.nodes:
            spec = OPS.get(n.op)
            if spec is None:
                raise ValueError(f"node {n.name!r}: unknown op {n.op!r} (known: {', '.join(sorted(OPS))})")
            if not spec.inputs[0] <= len(n.inputs) <= spec.inputs[1]:
                raise ValueError(f"node {n.name!r} ({n.op}): expected {spec.inputs[0]}..{spec.inputs[1]} inputs, got {len(n.inputs)}")
            if not spec.outputs[0] <= len(n.outputs) <= spec.outputs[1]:
                raise ValueError(f"node {n.name!r} ({n.op}): expected {spec.outputs[0]}..{spec.outputs[1]} outputs, got {len(n.outputs)}")
            missing = [a for a in spec.attrs if a not in n.attrs]
            if missing:
                raise ValueError(f"node {n.name!r} ({n.op}): missing attributes {missing}")
            rules = ATTRS.get(n.op, {})
            for key, value in n.attrs.items():
                if key not in rules:
                    raise ValueError(f"node {n.name!r} ({n.op}): unknown attribute {show(key)} "
                                     f"(known: {', '.join(rules) or 'none'})")
                ok, expected = rules[key]
                if not ok(value):
                    raise ValueError(f"node {n.name!r} ({n.op}): attribute {key!r}: expected {expected}, "
                                     f"got {show(value)}")
            for k, name in enumerate(n.inputs):
                if not isinstance(name, str) or (name == "" and k not in spec.optional):
                    raise ValueError(f"node {n.name!r} ({n.op}): input {k} is required")
                if name and name not in defined:
                    raise ValueError(f"node {n.name!r} ({n.op}): input {name!r} is not defined before it")
                if name in self.weights and not isinstance(self.weights[name], np.ndarray):
                    raise ValueError(f"node {n.name!r} ({n.op}): input {name!r} is a compressed weight "
                                     f"({type(self.weights[name]).__name__}), which only a linear or conv2d node reads (through "
                                     f"its 'weight' attribute)")
            if n.op == "embedding" and "halves" in n.attrs:
                ws = [self.weights.get(x) for x in n.attrs["halves"]]
                uniform = [(isinstance(w, Int4Weight) and w.codebook is None)
                           or (isinstance(w, _Released) and w.format == "Int4Weight") for w in ws]
                if not all(uniform) or ws[0].shape != ws[1].shape:
                    raise ValueError(f"node {n.name!r} (embedding): 'halves' must name two uniform Int4Weights of one shape")
            if n.op == "kv_attention":  # the caches: inputs the node writes, each owned by one node
                for name in n.inputs[1:3]:
                    if name not in {i.name for i in self.inputs if i.dtype == "float32"} or name in state:
                        raise ValueError(f"node {n.name!r} (kv_attention): expected its caches to be float32 program "
                                         f"inputs that no other node writes, got {name!r}")
                    state.add(name)
            if n.op == "pack" and n.inputs[0] not in {i.name for i in self.inputs if i.dtype == "int64"}:
                raise ValueError(f"node {n.name!r} (pack): expected an int64 program input (the mask), got {n.inputs[0]!r}")
            for wname in n.weight_names if n.op in ("linear", "conv2d") else ():
                w = self.weights.get(wname)
                # a released weight (a part of a split program) was checked before it was packed
                if not isinstance(w, _Released):
                    if not isinstance(w, LINEAR_WEIGHTS) or (isinstance(w, np.ndarray) and (w.dtype != np.float32 or w.ndim != 2)):
                        raise ValueError(f"node {n.name!r}: weight {wname!r} is not a float32 matrix or an "
                                         f"Int8Weight, Int4Weight or SparseWeight")
                    # static input quantization is the int8 product's (ops.linear refuses it elsewhere too);
                    # a zero point alone would mean dynamic asymmetric to the oracle and nothing natively
                    if "act_scale" in n.attrs and not isinstance(w, Int8Weight):
                        raise ValueError(f"node {n.name!r}: act_scale applies to an Int8Weight, not a {type(w).__name__}")
                    if "act_zero_point" in n.attrs and "act_scale" not in n.attrs:
                        raise ValueError(f"node {n.name!r}: act_zero_point needs act_scale (static quantization)")
                    # exact int32 sums (ops.linear's bound): int8 activations, or uint8 ones with a zero point
                    int8_input = isinstance(w, Int8Weight) or (isinstance(w, SparseWeight) and w.dtype == "int8")
                    max_k = MAX_K_UINT8 if "act_zero_point" in n.attrs else MAX_K
                    if int8_input and w.shape[1] > max_k:
                        raise ValueError(f"node {n.name!r}: weight {wname!r} has K = {w.shape[1]}, above "
                                         f"{max_k}, the longest K whose int8 products sum exactly in int32")
            for o in n.outputs:
                if o in defined:
                    raise ValueError(f"node {n.name!r}: output {o!r} is defined twice")
                defined.add(o)
        self._state = state
        for k, o in enumerate(self.outputs):
            if not isinstance(o, str) or o not in defined or o in self.weights or o in {i.name for i in self.inputs}:
                raise ValueError(f"program output {show(o)}: expected a value computed by a node")
            if o in self.outputs[:k]:  # the plan writes a value once: a second output would stay unwritten
                raise ValueError(f"program output {o!r}: listed twice")

    @property
    def nbytes(self) -> int:
        """Bytes of the weights as stored (canonical formats)."""
        return sum(w.nbytes for w in self.weights.values())

    def __repr__(self) -> str:
        ops: dict[str, int] = {}
        for n in self.nodes:
            ops[n.op] = ops.get(n.op, 0) + 1
        return (f"Program(inputs={[i.name for i in self.inputs]}, outputs={self.outputs}, nodes={len(self.nodes)} "
                f"{ops}, weights={self.nbytes / 1e6:.1f} MB)")

    # ---- inputs ----

    def _arrays(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[np.ndarray]:
        names = [i.name for i in self.inputs]
        if len(args) > len(names):
            raise TypeError(f"program: expected at most {len(names)} inputs ({', '.join(names)}), got {len(args)}")
        given = dict(zip(names, args))
        for k, v in kwargs.items():
            if k not in names:
                raise TypeError(f"program: unknown input {k!r} (inputs: {', '.join(names)})")
            if k in given:
                raise TypeError(f"program: input {k!r} given twice")
            given[k] = v
        out, sizes = [], {}
        for spec in self.inputs:
            if spec.name not in given:
                raise TypeError(f"program: missing input {spec.name!r} (inputs: {', '.join(names)})")
            a = given[spec.name]
            if not isinstance(a, np.ndarray):
                raise TypeError(f"{spec.name}: expected a numpy array, got {type(a).__name__}")
            if spec.dtype == "float32":
                if a.dtype != np.float32:
                    raise TypeError(f"{spec.name}: expected float32, got {a.dtype}")
            elif a.dtype == np.bool_ or np.issubdtype(a.dtype, np.integer):
                a = a.astype(np.int64, copy=False)
            else:
                raise TypeError(f"{spec.name}: expected an integer array, got {a.dtype}")
            if a.ndim != len(spec.dims):
                raise ValueError(f"{spec.name}: expected {len(spec.dims)} dimensions {tuple(spec.dims)}, got shape {a.shape}")
            for d, size in zip(spec.dims, a.shape):
                if size < 1:
                    raise ValueError(f"{spec.name}: expected no empty dimension, got shape {a.shape}")
                if isinstance(d, int):
                    if size != d:
                        raise ValueError(f"{spec.name}: expected shape {tuple(spec.dims)}, got {a.shape}")
                elif sizes.setdefault(d, (size, spec.name))[0] != size:
                    raise ValueError(f"{spec.name}: dimension {d!r} is {size}, but {sizes[d][1]} has {sizes[d][0]}")
            if spec.name in self._state and not (a.flags.c_contiguous and a.flags.writeable):
                # a state input (a KV cache) is written in place: a copy would lose the writes
                raise TypeError(f"{spec.name}: expected a writeable C-contiguous array (the program updates it in place)")
            out.append(np.ascontiguousarray(a))
        return out

    # ---- the numpy specification ----

    def reference(self, *args: Any, **kwargs: Any) -> Any:
        """The program run by the numpy oracle, node by node: the specification ``__call__`` is
        tested against."""
        env: dict[str, Any] = dict(self.weights)
        arrays = self._arrays(args, kwargs)
        env.update(zip((i.name for i in self.inputs), arrays))
        counts = self._counts(arrays)
        for n in self.nodes:
            self._infer(n, self._input_shapes(n, env), counts)
            outs = REFERENCE[n.op](n, [env[x] if x else None for x in n.inputs] + [None] * (OPS[n.op].inputs[1] - len(n.inputs)), self.weights)
            env.update(zip(n.outputs, outs))
        res = [env[o] for o in self.outputs]
        return res[0] if len(res) == 1 else tuple(res)

    def _input_shapes(self, n: Node, env: dict[str, Any]) -> list[Shape | None]:
        shapes: list[Shape | None] = []
        for x in n.inputs + [""] * (OPS[n.op].inputs[1] - len(n.inputs)):
            if not x:
                shapes.append(None)
            else:
                v = env[x]
                shapes.append(v if isinstance(v, tuple) else (tuple(v.shape), str(v.dtype)))
        return shapes

    # ---- planning ----

    def _counts(self, arrays: list[np.ndarray]) -> dict[str, int]:
        """The tokens (nonzero values) of each input a pack node reads: the sizes that depend on the
        values of the inputs, not only on their shapes."""
        named = dict(zip((i.name for i in self.inputs), arrays))
        return {name: int(np.count_nonzero(named[name])) for name in self._pack_inputs}

    def _infer(self, n: Node, shapes: list[Shape | None], counts: dict[str, int]) -> list[Shape]:
        try:
            if n.op == "pack":
                return OPS[n.op].infer(n, shapes, self.weights, counts[n.inputs[0]])
            return OPS[n.op].infer(n, shapes, self.weights)
        except OpError as e:
            raise ValueError(f"node {n.name!r} ({n.op}): {e}") from None
        except (KeyError, TypeError) as e:  # attributes of the wrong kind (a file's graph)
            raise ValueError(f"node {n.name!r} ({n.op}): invalid attributes ({type(e).__name__}: {e})") from None

    def _packed_weight(self, name: str, form: str = "") -> Any:
        # the packed form depends on the kernels chosen under the tier cap in force (use_isa)
        # (forms "winograd", "winograd_s8": Winograd's transformed products, or None)
        key = (name, current_tier(), form)
        if key not in self._packed:
            w = self.weights[name]
            if isinstance(w, _Released):
                raise ValueError(f"weight {name!r} was released after packing for tier {w.tier!r} "
                                 f"(Program.release_weights); the program runs at that tier only, not at {current_tier()!r}")
            self._packed[key] = packed_weight(w, form)
        return self._packed[key]

    def invalidate(self) -> None:
        """Forget the plans and packed weights made so far: after a node's attributes or the weights
        changed, the next call plans again."""
        self._plans.clear()
        self._packed.clear()

    def release_weights(self) -> None:
        """Pack every product's weight (linear, conv2d) for the current tier now and keep only the packed forms (the
        canonical arrays go, unless another value of the program shares them): the memory of a model
        held once. Afterwards the program runs at this tier only, and ``reference`` cannot run its
        linear nodes."""
        for n in self.nodes:
            for name in n.weight_names if n.op in ("linear", "conv2d") else ():
                if isinstance(self.weights[name], _Released):
                    continue
                w = self.weights[name]
                # the forms the node's lowering asks for (winograd_form: the channels of a 3x3 kernel;
                # the plain one where no Winograd form applies to the weight)
                form = winograd_form(n, w.shape[1] // 9)
                if not form or self._packed_weight(name, form) is None:
                    self._packed_weight(name)
                self.weights[name] = _Released(tuple(w.shape), type(w).__name__, current_tier(), int(w.nbytes))

    def shapes(self, *args: Any, **kwargs: Any) -> dict[str, Shape]:
        """(shape, dtype) of every input and value of the program for these inputs (nothing runs)."""
        arrays = self._arrays(args, kwargs)
        counts = self._counts(arrays)
        shapes: dict[str, Any] = {name: (tuple(w.shape), str(w.dtype)) for name, w in self.weights.items()
                                  if isinstance(w, np.ndarray)}
        shapes.update({i.name: (tuple(a.shape), str(a.dtype)) for i, a in zip(self.inputs, arrays)})
        for n in self.nodes:
            shapes.update(zip(n.outputs, self._infer(n, self._input_shapes(n, shapes), counts)))
        return shapes

    def _plan(self, arrays: list[np.ndarray], counts: dict[str, int]) -> _Plan:
        shapes: dict[str, Any] = {name: (tuple(w.shape), str(w.dtype)) for name, w in self.weights.items()
                                  if isinstance(w, np.ndarray)}
        shapes.update({i.name: (a.shape, str(a.dtype)) for i, a in zip(self.inputs, arrays)})
        alias: dict[str, str] = {}
        last_use: dict[str, int] = {}
        node_shapes = []
        for k, n in enumerate(self.nodes):
            ins = self._input_shapes(n, shapes)
            outs = self._infer(n, ins, counts)
            node_shapes.append(ins)
            for x in n.inputs:
                if x:
                    last_use[alias.get(x, x)] = k
            for o, s in zip(n.outputs, outs):
                shapes[o] = s
            if OPS[n.op].lower is None:  # a view: the output is its input's buffer
                alias[n.outputs[0]] = alias.get(n.inputs[0], n.inputs[0])
        # An output that is a view (a reshape) of a value a node computes: that value is written into
        # the output's buffer (same bytes). A view of an input or a weight would need a copy, and two
        # outputs cannot share one buffer.
        written_to: dict[str, int] = {o: k for k, o in enumerate(self.outputs) if o not in alias}
        for k, o in enumerate(self.outputs):
            if o in alias:
                src = alias[o]
                if src in self.weights or src in {i.name for i in self.inputs}:
                    raise ValueError(f"program output {o!r}: a view of the program's input or weight {src!r} "
                                     "cannot be an output")
                if src in written_to:
                    other = self.outputs[written_to[src]]
                    raise ValueError(f"program output {o!r}: a view of {src!r}, whose buffer output {other!r} "
                                     "already is")
                written_to[src] = k
        constants: list[np.ndarray] = []
        const_index: dict[str, int] = {}
        refs: dict[str, tuple[int, int, int]] = {i.name: (_SPACE_INPUT, k, 0) for k, i in enumerate(self.inputs)}
        refs.update({v: (_SPACE_OUTPUT, k, 0) for v, k in written_to.items()})
        live: list[tuple[int, int, str]] = []  # (offset, size, value) of arena buffers in use
        arena = 0
        native: list[tuple[Any, ...]] = []
        owners: list[Node] = []
        for k, n in enumerate(self.nodes):
            for x in n.inputs:
                if x and x in self.weights and x not in refs:
                    const_index[x] = len(constants)
                    constants.append(self.weights[x])
                    refs[x] = (_SPACE_CONSTANT, const_index[x], 0)
            # buffers whose last reader ran before this node are free again
            live = [b for b in live if last_use.get(b[2], -1) >= k]
            for o in n.outputs:
                if o in refs or o in alias:
                    continue
                shape, dtype = shapes[o]
                size = -(-int(np.prod(shape)) * np.dtype(dtype).itemsize // _ALIGN) * _ALIGN
                offset = 0
                for b in sorted(live):
                    if b[0] - offset >= size:
                        break
                    offset = max(offset, b[0] + b[1])
                live.append((offset, size, o))
                arena = max(arena, offset + size)
                refs[o] = (_SPACE_ARENA, 0, offset)
            if OPS[n.op].lower is None:
                refs[n.outputs[0]] = refs[alias[n.outputs[0]]]
                continue
            r = [refs[x] if x else None for x in n.inputs] + [None] * (OPS[n.op].inputs[1] - len(n.inputs))
            r += [refs[o] for o in n.outputs]
            extra = {"count": counts[n.inputs[0]]} if n.op == "pack" else {}
            lowered = OPS[n.op].lower(n, r, node_shapes[k], self._packed_weight, **extra)
            native += lowered
            owners += [n] * len(lowered)
        outs = [shapes[o] for o in self.outputs]
        plan = _core.EnginePlan(native, arena, constants, [a.nbytes for a in arrays],
                                [int(np.prod(s)) * np.dtype(d).itemsize for s, d in outs], _kernel("engine_f32"))
        op_names = {v: k for k, v in NATIVE_OP.items()}
        labels = [(n.name if op_names[t[0]] in (n.op, "norm") else f"{n.name}/{op_names[t[0]]}",
                   n.op if op_names[t[0]] == "norm" else op_names[t[0]]) for n, t in zip(owners, native)]
        return _Plan(plan, outs, owners, labels)

    def _get_plan(self, arrays: list[np.ndarray]) -> _Plan:
        counts = self._counts(arrays)
        key = (current_tier(),) + tuple(a.shape for a in arrays) + tuple(counts.values())
        plan = self._plans.get(key)
        if plan is None:
            if len(self._plans) >= MAX_PLANS:  # the oldest shape's plan (and its arena) goes
                del self._plans[next(iter(self._plans))]
            plan = self._plans[key] = self._plan(arrays, counts)
        return plan

    # ---- running ----

    def _run(self, args: tuple[Any, ...], kwargs: dict[str, Any], profile: bool) -> tuple[list[np.ndarray], Any, _Plan]:
        arrays = self._arrays(args, kwargs)
        plan = self._get_plan(arrays)
        outs = [np.empty(s, dtype=d) for s, d in plan.outputs]
        status, node, seconds = plan.native.run(arrays, outs, profile)
        if status != 0:
            raise ValueError(self._failure(plan, status, node))
        return outs, seconds, plan

    def _failure(self, plan: _Plan, status: int, index: int) -> str:
        """The message of a native run's failure ``status`` at native node ``index``: the node, and for
        an id out of range the input that holds it."""
        if not 0 <= index < len(plan.owners):
            return f"program: {_STATUS.get(status, 'failed')} (native node {index}); check the inputs"
        n = plan.owners[index]
        where = f"node {n.name!r} ({n.op})"
        if status == 2 and n.op == "embedding":
            table = n.attrs["halves"][0] if "halves" in n.attrs else n.inputs[1]
            rows = self.weights[table].shape[0] if table in self.weights else "?"
            source = n.inputs[0]
            producer = {o: m for m in self.nodes for o in m.outputs}.get(source)
            if producer is not None and producer.op == "gather":  # the ids of the tokens, packed
                source = producer.inputs[0]
            if source in {i.name for i in self.inputs}:
                return f"{source}: expected ids in [0, {rows}) (the table of {where}), got a value outside"
            return (f"{where}: an index computed from the inputs ({n.inputs[0]!r}) is outside its table of {rows} rows "
                    f"(for positions: a sequence longer than the model's position table)")
        return f"{where}: {_STATUS.get(status, 'failed')}; check the inputs"

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the program on numpy arrays (positionally in ``inputs`` order, or by name). Returns the
        output array (a tuple for several)."""
        if _PROFILE:
            outs, seconds, plan = self._run(args, kwargs, True)
            print(self._profile_table(plan.labels, seconds), file=sys.stderr)
        else:
            outs, _, _ = self._run(args, kwargs, False)
        return outs[0] if len(outs) == 1 else tuple(outs)

    def profile(self, *args: Any, rounds: int = 10, warmup: bool = True, **kwargs: Any) -> dict[str, Any]:
        """Time per node and per op type over ``rounds`` runs (after one warm-up run, unless ``warmup``
        is False): a dict with ``"nodes"`` [(name, op, seconds)] of each native node (a program node
        lowered to another op, or to several, is "name/op"), ``"by_node"`` {program node: seconds of its
        native nodes}, ``"ops"`` {op: seconds}, ``"native"`` (the sum) and ``"total"`` (wall time of a
        whole call, Python included), all per run."""
        import time

        plan = self._run(args, kwargs, True)[2] if warmup else self._get_plan(self._arrays(args, kwargs))
        names = plan.labels
        acc = np.zeros(len(names))
        t0 = time.perf_counter()
        for _ in range(rounds):
            _, seconds, _ = self._run(args, kwargs, True)
            acc += np.asarray(seconds)
        total = (time.perf_counter() - t0) / rounds
        acc /= rounds
        ops: dict[str, float] = {}
        by_node: dict[str, float] = {}
        for (name, op), owner, t in zip(names, plan.owners, acc):
            ops[op] = ops.get(op, 0.0) + float(t)
            by_node[owner.name] = by_node.get(owner.name, 0.0) + float(t)
        return {"nodes": [(name, op, float(t)) for (name, op), t in zip(names, acc)], "ops": ops,
                "by_node": by_node, "native": float(acc.sum()), "total": total}

    def _profile_table(self, labels: list[tuple[str, str]], seconds: list[float]) -> str:
        ops: dict[str, float] = {}
        lines = ["edgecompress profile (ms):"]
        for (name, op), t in zip(labels, seconds):
            ops[op] = ops.get(op, 0.0) + t
            lines.append(f"  {name:40s} {op:12s} {t * 1e3:8.3f}")
        lines.append("  per op: " + ", ".join(f"{op} {t * 1e3:.3f}" for op, t in sorted(ops.items(), key=lambda kv: -kv[1])))
        return "\n".join(lines)

    def save(self, path: Any) -> None:
        """Write the program to one safetensors file (see edgecompress.engine.io)."""
        from .io import save

        save(self, path)


def record_error(program: Program, got: np.ndarray, want: np.ndarray, what: str) -> None:
    """Sets ``program.info["error"]``, the relative error ||got - want|| / ||want|| of the program's
    output against the float model's, and warns (CompressionWarning) above 10%."""
    import warnings

    from ..compress import CompressionWarning

    err = float(np.linalg.norm(got - want) / max(float(np.linalg.norm(want)), 1e-30))
    program.info["error"] = err
    if err > 0.1:
        warnings.warn(f"{what}: the program's output differs from the float model's by {err:.1%} of its norm",
                      CompressionWarning, stacklevel=3)
