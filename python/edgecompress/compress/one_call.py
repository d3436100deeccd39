"""``edgecompress.compress(model, recipe, ...)``: swap a model's layers for compressed modules in one call.

How it works, and why:

1. Plan: every nn.Linear and nn.Conv2d (exact types) gets the default recipe, an override (exact
   name first, then the first matching fnmatch pattern), or none (``exclude``). A pattern that
   matches no layer is an error: it is almost always a typo.
2. Inputs: one forward pass of the float model on ``example_inputs`` (else the first calibration
   batch) with forward pre-hooks records each layer's input. Every measurement below is made on
   these real inputs, so the speed guard times each layer at the shapes the model gives it.
3. Calibration (only for static input quantization: "int8-static" or a QuantConfig with an
   activation spec): the algorithms' own prepare / calibrate / convert on a copy of the model.
4. Build: each layer's compressed module; pruning recipes prune the layer's weight by magnitude
   (compress.prune's masks) without touching the float model until the swap.
5. Measure and guard: the relative output error and the latency of the compressed layer against
   the float layer on the captured input (the fastest of interleaved warm calls: other work on the
   CPU only ever adds time, so the minimum is the steadiest estimate; ~20 ms per layer).
   With ``guard=True`` a slower compressed layer falls back to its recipe's ``fallback`` (pruning ->
   int8) when that is faster, else stays dense; the report says which and why.
6. Swap in place, then run the whole model on the example inputs again: small errors per layer can
   add up to a model that computes noise (one-shot 75% pruning did, layer errors looking modest), so
   the end-to-end error is measured, reported, warned about above ``WARN_ERROR`` and, past
   ``max_error``, undone. Return a CompressReport.
"""

from __future__ import annotations

import copy
import fnmatch
import math
import sys
import warnings
from dataclasses import replace
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..nn import (CompressedModule, Int4Conv2d, Int4Linear, Int8Conv2d, Int8Linear, LowRankConv2d, LowRankLinear,
                  SparseConv2d, SparseLinear)
from ..timing import interleaved_rounds
from ..formats import Int4Weight, Int8Weight, LowRankWeight, SparseWeight
from .lowrank import choose_rank, svd_factors, worth_factorizing
from .prune._common import as_input_tuple, calibration_batches, check_module, eval_mode, set_submodule
from .prune.magnitude import compute_masks, weight_scores
from .prune.masks import parse_pattern
from .quantize.ptq import calibrate, convert, fold_batchnorm, prepare
from .recipes import Recipe, parse_recipe
from .summary import CompressReport, LayerReport

__all__ = ["CompressionWarning", "compress"]

LAYER_TYPES = (nn.Linear, nn.Conv2d)
MODULES = {  # (family, float type) -> compressed module type
    ("int8", nn.Linear): Int8Linear, ("int8", nn.Conv2d): Int8Conv2d,
    ("int4", nn.Linear): Int4Linear, ("int4", nn.Conv2d): Int4Conv2d,
    ("sparse", nn.Linear): SparseLinear, ("sparse", nn.Conv2d): SparseConv2d,
    ("lowrank", nn.Linear): LowRankLinear, ("lowrank", nn.Conv2d): LowRankConv2d,
}
TIME_BUDGET_S = 0.01  # per layer and side, after at least MIN_REPEATS calls
MIN_REPEATS, MAX_REPEATS = 7, 51
# compress() warns when the whole model's relative output error exceeds this: past it the outputs of
# a classifier or a language model stop agreeing with the float model's often enough to matter (int8
# stays near 1%, int4 near 5%; one-shot 75% pruning reached 90-120%).
WARN_ERROR = 0.1

Inputs = tuple[tuple[Any, ...], dict[str, Any]]  # (positional, keyword) arguments of one model call


class CompressionWarning(UserWarning):
    """The compressed model's outputs differ from the float model's more than ``WARN_ERROR``."""


class NotApplicable(Exception):
    """A recipe cannot compress this layer (the message says why); the layer stays dense."""


def compress(model: nn.Module, recipe: Any, calibration_data: Any = None, example_inputs: Any = None, *,
             overrides: Mapping[str, Any] | None = None, exclude: Sequence[str] = (), guard: bool = True,
             progress: bool = True, max_error: float | None = None) -> CompressReport:
    """Swap ``model``'s nn.Linear and nn.Conv2d layers for edgecompress.nn modules in place.

    recipe: a name ("int8", "int8-static", "int4-g32", "nf4", "sparse-50", "sparse-75+int8", "2:4",
    "lowrank-0.5", ...; see ``edgecompress.compress.recipes``) or a QuantConfig. overrides: {layer
    name or fnmatch pattern: recipe, or None to keep the layer}; exclude: patterns of layers kept
    as they are (these win). calibration_data: a Tensor or an iterable of batches (tensors or (x, y)
    tuples); needed by static input quantization. example_inputs: a Tensor or a tuple of Tensors
    for ``model(*example_inputs)``, or a dict of keyword arguments for ``model(**example_inputs)``
    (Hugging Face models); default: the first calibration batch. guard: time each layer against the
    float one on its real input and keep the faster (needs inputs). progress: a progress bar on
    stderr (tqdm when installed). A QuantConfig with ``fold_batchnorm=True`` folds the BatchNorms
    into the convolutions before them, in place, first.

    After the swap the whole model runs on the example inputs once more: ``report.model_error`` is
    ||y_c - y_f|| / ||y_f|| over its floating-point outputs, ``report.top1_agreement`` the share of
    positions of its first output whose argmax over the last axis is unchanged. Above
    ``WARN_ERROR`` (10%) compress warns (CompressionWarning); above ``max_error`` it puts the
    original layers back and raises ValueError.

    Returns a CompressReport (per layer: format, bytes, error, latencies, notes; whole-model bytes
    and error).
    """
    check_module(model)
    default = parse_recipe(recipe)
    overrides = _check_overrides(overrides)
    exclude = _check_patterns(exclude, "exclude")
    for name, value in (("guard", guard), ("progress", progress)):
        if not isinstance(value, bool):
            raise TypeError(f"{name}: expected a bool, got {type(value).__name__}")
    if max_error is not None:
        if isinstance(max_error, bool) or not isinstance(max_error, (int, float)):
            raise TypeError(f"max_error: expected a float > 0 or None, got {type(max_error).__name__}")
        if not max_error > 0:  # (also NaN)
            raise ValueError(f"max_error: expected a float > 0 or None, got {max_error!r}")
    layers = [name for name, m in model.named_modules() if type(m) in LAYER_TYPES]
    if "" in layers:
        raise ValueError(f"model: is itself a {type(model).__name__}; compress swaps submodules in place, "
                         "so wrap it (e.g. in nn.Sequential)")
    if not layers:
        raise ValueError("model: has no nn.Linear or nn.Conv2d layer to compress")
    for where, patterns in (("overrides", list(overrides)), ("exclude", exclude)):
        for p in patterns:
            if not any(fnmatch.fnmatchcase(n, p) for n in layers):
                raise ValueError(f"{where}: pattern {p!r} matches no Linear or Conv2d layer "
                                 f"(layers: {', '.join(layers)})")
    plan = {name: _lookup(name, default, overrides, exclude) for name in layers}

    batches = None if calibration_data is None else list(calibration_batches(calibration_data, "calibration_data"))
    if batches is not None and not batches:
        raise ValueError("calibration_data: expected at least one batch, got none")
    static = [n for n, r in plan.items() if r is not None and r.config is not None
              and (r.config.lookup(n) or (None, None))[1] is not None]
    if static and batches is None:
        raise ValueError(f"calibration_data: recipe {plan[static[0]].name!r} quantizes inputs statically "
                         "and needs calibration batches, got None")
    call: Inputs | None = None
    if example_inputs is not None:
        call = _call_inputs(example_inputs)
    elif batches is not None:
        call = ((batches[0],), {})
    elif guard or max_error is not None:
        raise ValueError(f"example_inputs: {'max_error' if not guard else 'the speed guard'} needs the model's "
                         "real inputs; pass example_inputs or calibration_data"
                         f"{' (or guard=False)' if guard else ''}")

    for r in {id(r.config): r for r in plan.values() if r is not None and r.config is not None}.values():
        if r.config.fold_batchnorm:
            fold_batchnorm(model)
    report = CompressReport(default.name, guard)
    report.model_bytes_before = state_nbytes(model)
    inputs, y_float = _capture(model, layers, call) if call is not None else ({}, None)
    quantized = _quantize(model, plan, batches, progress)

    tied = _tied_elsewhere(model)
    originals: dict[str, nn.Module] = {}
    for name in _progress(layers, "compress: layers", progress):
        module = model.get_submodule(name)
        row, new = _compress_layer(name, module, plan[name], inputs.get(name), quantized, guard)
        if new is not None and name in tied:
            row.note = (row.note + "; " if row.note else "") + (
                f"weight tied to {tied[name]}: the float copy stays there, so this adds {row.bytes_after} bytes")
        report.layers.append(row)
        if new is not None:
            originals[name] = module
            set_submodule(model, name, new)
    report.model_bytes_after = state_nbytes(model)
    if y_float is not None:
        _check_model_error(model, call, y_float, report, originals, max_error)
    return report


def _call_inputs(example_inputs: Any) -> Inputs:
    """(args, kwargs) of ``example_inputs``: a Tensor, a tuple of Tensors or a dict of keyword arguments."""
    if isinstance(example_inputs, Mapping):
        kwargs = dict(example_inputs)
        bad = [k for k in kwargs if not isinstance(k, str)]
        if bad or not any(isinstance(v, torch.Tensor) for v in kwargs.values()):
            raise TypeError("example_inputs: expected a dict of keyword arguments (str keys) holding at least one "
                            f"Tensor, got keys {list(kwargs)!r}")
        return (), kwargs
    try:
        return as_input_tuple(example_inputs), {}
    except TypeError:
        raise TypeError("example_inputs: expected a Tensor, a tuple of Tensors or a dict of keyword arguments, "
                        f"got {type(example_inputs).__name__}") from None


def state_nbytes(model: nn.Module) -> int:
    """Bytes of the model's state: parameters and buffers (tied or shared memory counted once) and the
    canonical arrays of its compressed modules, i.e. what ``edgecompress.save`` writes as tensors."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for key, value in model.state_dict().items():
        if isinstance(value, torch.Tensor) and not key.endswith("_extra_state"):  # (a module's metadata)
            key = (value.untyped_storage().data_ptr(), value.untyped_storage().nbytes())
            if key not in seen:
                seen.add(key)
                total += value.untyped_storage().nbytes()
    return total


def _tied_elsewhere(model: nn.Module) -> dict[str, str]:
    """Linear / Conv2d layer name -> another module whose parameter is the same tensor as its weight."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        owners.setdefault(id(p), []).append(name.rsplit(".", 1)[0] if "." in name else "")
    tied = {}
    for name, m in model.named_modules():
        if type(m) in LAYER_TYPES:
            others = [o for o in owners.get(id(m.weight), []) if o != name]
            if others:
                tied[name] = others[0]
    return tied


def _float_outputs(out: Any) -> list[torch.Tensor]:
    """The floating-point tensors of a model's output (a tensor, or nested tuples / lists / dicts, such as
    Hugging Face's ModelOutput), in order."""
    if isinstance(out, torch.Tensor):
        return [out.detach()] if out.is_floating_point() else []
    if isinstance(out, Mapping):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return [t for o in out for t in _float_outputs(o)]
    return []


@torch.no_grad()
def _check_model_error(model: nn.Module, call: Inputs, y_float: list[torch.Tensor], report: CompressReport,
                       originals: dict[str, nn.Module], max_error: float | None) -> None:
    """Run the compressed model on the example inputs; record, warn or raise (putting the original layers back)."""
    with eval_mode(model):
        y = _float_outputs(model(*call[0], **call[1]))
    if not y_float or len(y) != len(y_float) or any(a.shape != b.shape for a, b in zip(y, y_float)):
        return  # no floating-point output to compare
    diff = math.sqrt(sum(float((a.double() - b.double()).square().sum()) for a, b in zip(y, y_float)))
    norm = math.sqrt(sum(float(b.double().square().sum()) for b in y_float))
    report.model_error = diff / norm if norm > 0 else (0.0 if diff == 0 else 1.0)  # (as each layer's error)
    if y[0].ndim >= 1 and y[0].shape[-1] >= 2:
        report.top1_agreement = float((y[0].argmax(-1) == y_float[0].argmax(-1)).double().mean())
    if not report.model_error > WARN_ERROR and not math.isnan(report.model_error):
        return
    worst = sorted((r for r in report.layers if r.swapped and r.error is not None), key=lambda r: -r.error)[:3]
    where = ", ".join(f"{r.name} {r.error:.3g}" for r in worst)
    top1 = "" if report.top1_agreement is None else f" (top-1 agreement {report.top1_agreement:.1%})"
    what = (f"the compressed model's relative output error on example_inputs is {report.model_error:.3g}{top1}; "
            f"largest layer errors: {where or 'none measured'}")
    if max_error is not None and not report.model_error <= max_error:
        for name, module in originals.items():
            set_submodule(model, name, module)
        raise ValueError(f"max_error: {what}, above max_error={max_error:g}; the model was left as it was. "
                         "Exclude the layers with the largest errors, use a milder recipe, or prune gradually "
                         "with fine-tuning (edgecompress.compress.prune) before compressing")
    warnings.warn(f"{what}, above {WARN_ERROR:g}: the model may no longer work. Pass max_error= to make this an "
                  "error; exclude the worst layers, use a milder recipe, or prune gradually with fine-tuning "
                  "before compressing", CompressionWarning, stacklevel=3)


def _check_patterns(patterns: Any, where: str) -> list[str]:
    if isinstance(patterns, str) or not isinstance(patterns, Iterable):
        raise TypeError(f"{where}: expected a list of layer names or fnmatch patterns, got {patterns!r}")
    patterns = list(patterns)
    for p in patterns:
        if not isinstance(p, str) or not p:
            raise TypeError(f"{where}: expected non-empty str patterns, got {p!r}")
    return patterns


def _check_overrides(overrides: Any) -> dict[str, Recipe | None]:
    if overrides is None:
        return {}
    if not isinstance(overrides, Mapping):
        raise TypeError(f"overrides: expected a dict {{layer pattern: recipe or None}}, got {type(overrides).__name__}")
    _check_patterns(list(overrides), "overrides")
    return {p: None if r is None else parse_recipe(r, f"overrides[{p!r}]") for p, r in overrides.items()}


def _lookup(name: str, default: Recipe, overrides: dict[str, Recipe | None], exclude: list[str]) -> Recipe | None:
    if any(fnmatch.fnmatchcase(name, p) for p in exclude):
        return None
    if name in overrides:
        return overrides[name]
    return next((r for p, r in overrides.items() if fnmatch.fnmatchcase(name, p)), default)


def _progress(items: Sequence[Any], desc: str, enabled: bool) -> Iterable[Any]:
    """``items`` with a progress bar on stderr: tqdm when installed, else one rewritten line."""
    if not enabled:
        yield from items
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        tqdm = None
    if tqdm is not None:
        yield from tqdm(items, desc=desc, file=sys.stderr, leave=False)
        return
    for i, item in enumerate(items):
        print(f"\r{desc}: {i + 1}/{len(items)}", end="", file=sys.stderr, flush=True)
        yield item
    print(file=sys.stderr, flush=True)


@torch.no_grad()
def _capture(model: nn.Module, names: list[str], call: Inputs) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """Each layer's input in one forward pass (the first call's, for a layer called more than once),
    and the model's floating-point outputs."""
    seen: dict[str, torch.Tensor] = {}

    def hook(name: str) -> Callable[..., None]:
        def record(module: nn.Module, args: tuple) -> None:
            if name not in seen and args and isinstance(args[0], torch.Tensor):
                seen[name] = args[0].detach().clone()
        return record

    handles = [model.get_submodule(n).register_forward_pre_hook(hook(n)) for n in names]
    try:
        with eval_mode(model):
            out = _float_outputs(model(*call[0], **call[1]))
    finally:
        for h in handles:
            h.remove()
    return seen, [t.clone() for t in out]


def _quantize(model: nn.Module, plan: dict[str, Recipe | None], batches: list[torch.Tensor] | None,
              progress: bool) -> dict[str, Any]:
    """The QuantizedLayer of each layer whose recipe is a QuantConfig: prepare / calibrate / convert
    on a copy of the model, once per config."""
    out: dict[str, Any] = {}
    configs = {id(r.config): r.config for r in plan.values() if r is not None and r.config is not None}
    for key, config in configs.items():
        mine = [n for n, r in plan.items() if r is not None and id(r.config) == key]
        others = [n for n in plan if n not in mine]  # quantized by another recipe, or excluded
        prepared = prepare(model, replace(config, exclude=[*config.exclude, *others]))
        for x in _progress(batches or [], "compress: calibration", progress):
            calibrate(prepared, [x])
        result = convert(prepared)
        out.update({n: result.layers.get(n) for n in mine})
    return out


# --- one layer ---------------------------------------------------------------------------------------

def _compress_layer(name: str, module: nn.Module, recipe: Recipe | None, x: torch.Tensor | None,
                    quantized: dict[str, Any], guard: bool) -> tuple[LayerReport, nn.Module | None]:
    """The report row of one layer and the module that replaces it (None: it stays)."""
    kind = type(module).__name__
    before = 4 * module.weight.numel()
    row = LayerReport(name, kind, None if recipe is None else recipe.name, "dense", kind, before, before)
    if recipe is None:
        row.note = "excluded"
        return row, None
    if x is None and guard:
        row.note = "no input seen on the example inputs: not timed, left dense"
        return row, None
    with torch.no_grad():
        y_float = None if x is None else module(x)
    n = module.out_channels if isinstance(module, nn.Conv2d) else module.out_features
    rows = 1 if y_float is None else max(1, y_float.numel() // n)  # rows of the product the kernels see
    row.rows = None if x is None else rows
    try:
        new = _build(recipe, name, module, rows, quantized)
    except NotApplicable as e:
        row.note = str(e)
        return row, None
    if x is None:
        _fill(row, new, None, None, None)
        return row, new
    error, t_float, t_new = _measure(module, new, x, y_float)
    _fill(row, new, error, t_float, t_new)
    if not guard or t_new <= t_float:
        return row, new
    slower = f"{recipe.name} {t_new * 1e3:.3f} ms > fp32 {t_float * 1e3:.3f} ms"
    if recipe.fallback is not None:
        fallback = _build(parse_recipe(recipe.fallback), name, module, rows, quantized)
        error_fb, t_float_fb, t_fb = _measure(module, fallback, x, y_float)
        if t_fb <= t_float_fb:
            _fill(row, fallback, error_fb, t_float_fb, t_fb)
            row.note = f"{slower}: fell back to {recipe.fallback}"
            return row, fallback
        slower += f" (fallback {recipe.fallback} {t_fb * 1e3:.3f} ms too)"
    row.format, row.module, row.bytes_after, row.error, row.latency_after_s = "dense", kind, before, 0.0, t_float
    row.note = f"slower: {slower}; left dense"
    return row, None


def _fill(row: LayerReport, new: CompressedModule, error: float | None, t_float: float | None,
          t_new: float | None) -> None:
    row.format, row.module, row.bytes_after = describe_format(new), type(new).__name__, new.nbytes
    row.error, row.latency_before_s, row.latency_after_s = error, t_float, t_new


def describe_format(m: CompressedModule) -> str:
    """A short name of a compressed module's format: "int8", "int8 static", "int4 g32", "nf4 g32",
    "sparse csr f32 50%", "lowrank r32", ..."""
    w = m.weights[0]
    if isinstance(w, Int8Weight):
        return "int8 static" if getattr(m, "input_quant", None) else "int8"
    if isinstance(w, Int4Weight):
        kind = "int4" if w.codebook is None else ("nf4" if w.codebook.ndim == 1 else "kmeans4")
        return f"{kind} g{w.group_size}"
    if isinstance(w, SparseWeight):
        return f"sparse {w.format} {'i8' if w.dtype == 'int8' else 'f32'} {m.sparsity:.0%}"
    return f"lowrank r{w.rank}" + ("" if w.dtype == "float32" else f" {w.dtype}")


def _build(recipe: Recipe, name: str, module: nn.Module, rows: int, quantized: dict[str, Any]) -> CompressedModule:
    """The compressed module ``recipe`` makes of ``module``, or NotApplicable."""
    if recipe.family == "quant":
        return _from_quantized(module, quantized.get(name))
    cls = MODULES[recipe.family, type(module)]
    if recipe.family in ("int8", "int4"):
        return cls.from_float(module, **recipe.options)
    if recipe.family == "sparse":
        return _sparse(cls, recipe, name, module, rows)
    return _lowrank(cls, recipe, module)


def _from_quantized(module: nn.Module, q: Any) -> CompressedModule:
    if q is None:
        raise NotApplicable("excluded by its QuantConfig")
    if q.weight is None:
        raise NotApplicable(f"{q.weight_spec.bits}-bit weights are simulated only (no deployment format)")
    groups = module.groups if isinstance(module, nn.Conv2d) else 1
    if isinstance(q.weight, Int4Weight):  # its groups run along torch's (c, kh, kw): the conv keeps that order
        return _module(MODULES["int4", type(module)], module, _group_rows(q.weight, groups), patch_order="chw")
    weight = q.weight
    if isinstance(module, nn.Conv2d):  # per-row scales: the columns move to the faster (kh, kw, c) order freely
        qweight = weight.qweight.reshape(module.weight.shape).transpose(0, 2, 3, 1)
        weight = Int8Weight(np.ascontiguousarray(qweight).reshape(weight.shape), weight.scale)
    return _module(MODULES["int8", type(module)], module, _group_rows(weight, groups), act_scale=q.input_scale,
                   act_zero_point=q.input_zero_point)


def _group_rows(w: Int8Weight | Int4Weight, groups: int) -> list[Int8Weight | Int4Weight]:
    """The (N, K) weight of a convolution's ``groups`` as one weight per group (its N / groups rows)."""
    if groups == 1:
        return [w]
    n = w.shape[0] // groups

    def rows(a: np.ndarray | None, g: int) -> np.ndarray | None:
        return None if a is None else np.ascontiguousarray(a[g * n:(g + 1) * n])

    if isinstance(w, Int8Weight):  # a per-tensor scale (1,) is every group's
        return [Int8Weight(rows(w.qweight, g), w.scale if w.scale.shape == (1,) else rows(w.scale, g))
                for g in range(groups)]
    table = w.codebook is not None and w.codebook.ndim == 2
    return [Int4Weight(rows(w.qweight, g), rows(w.scale, g), rows(w.zero_point, g),
                       rows(w.codebook, g) if table else w.codebook, k=w.shape[1], compute=w.compute)
            for g in range(groups)]


def _module(cls: type, module: nn.Module, weights: list[Any], *, patch_order: str = "hwc",
            **options: Any) -> CompressedModule:
    """A ``cls`` module with ``weights`` (one per group) and the float ``module``'s bias and geometry;
    ``patch_order``: the order of a convolution weight's columns, (kh, kw, c) "hwc" or torch's "chw"."""
    if isinstance(module, nn.Linear):
        return cls(weights[0], module.bias, **options)
    return cls(weights, module.bias, kernel_size=module.kernel_size, stride=module.stride, padding=module.padding,
               dilation=module.dilation, groups=module.groups, padding_mode=module.padding_mode,
               patch_order=patch_order, **options)


def _sparse(cls: type, recipe: Recipe, name: str, module: nn.Module, rows: int) -> CompressedModule:
    pattern = parse_pattern(recipe.pattern)
    scores = weight_scores(module, "magnitude")
    try:  # (conv masks: N:M groups and 1x4 blocks along (kh, kw, c), the order from_float builds)
        mask = compute_masks({name: module}, {name: scores}, recipe.sparsity, pattern, "layer")[name]
    except ValueError as e:  # N:M on a K that is not a multiple of M
        raise NotApplicable(f"{recipe.pattern} does not apply: {str(e).split(': ', 1)[-1]}") from None
    pruned = copy.deepcopy(module)
    with torch.no_grad():
        pruned.weight.mul_(mask.to(pruned.weight.dtype))
    if "format" in recipe.options:  # a layout the recipe names (int8 1 x 4 blocks)
        return cls.from_float(pruned, **recipe.options)
    if pattern.is_nm:
        try:  # the dedicated N:M layout, where SparseWeight has it
            return cls.from_float(pruned, format=recipe.pattern, **recipe.options)
        except ValueError as e:
            if not str(e).startswith("format:"):
                raise
    return cls.from_float(pruned, format="auto", rows=rows, **recipe.options)


def _lowrank(cls: type, recipe: Recipe, module: nn.Module) -> CompressedModule:
    w = module.weight.detach()
    if isinstance(module, nn.Conv2d):  # K in the faster (kh, kw, c) order (the SVD only moves v's columns)
        w = w.permute(0, 2, 3, 1)
    groups = getattr(module, "groups", 1)
    matrices = w.reshape(groups, w.shape[0] // groups, -1)  # one (N, K) matrix per group
    shape = tuple(matrices.shape[1:])
    # the param_ratio rule does not look at the singular values
    rank = choose_rank(torch.empty(0), shape, param_ratio=recipe.param_ratio)
    if not worth_factorizing(rank, shape):
        raise NotApplicable(f"rank {rank} of a {shape[0]}x{shape[1]} weight saves no parameters")
    weights = []
    for matrix in matrices:
        u, v = (f.numpy().astype(np.float32) for f in svd_factors(matrix, rank))
        if recipe.options["dtype"] == "int8":
            u, v = Int8Weight.from_float(u), Int8Weight.from_float(v)
        weights.append(LowRankWeight(u, v))
    return _module(cls, module, weights)


@torch.no_grad()
def _measure(float_module: nn.Module, new: nn.Module, x: torch.Tensor,
             y_float: torch.Tensor) -> tuple[float, float, float]:
    """(relative output error, float seconds, compressed seconds): the fastest of interleaved warm calls."""
    y = new(x)  # also packs the weight for this CPU
    norm = float(y_float.double().norm())
    diff = float((y.double() - y_float.double()).norm())
    error = diff / norm if norm > 0 else (0.0 if diff == 0 else 1.0)
    times = interleaved_rounds({"float": lambda: float_module(x), "compressed": lambda: new(x)}, MAX_REPEATS,
                               warmup=0, budget=2 * TIME_BUDGET_S, min_rounds=MIN_REPEATS)
    return error, min(times["float"]), min(times["compressed"])
