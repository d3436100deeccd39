"""The inference engine: a whole model as one native plan, run with numpy alone.

    prog = edgecompress.engine.export(model, example_inputs, recipe="int8")   # torch, transformers
    y = prog(input_ids, attention_mask)                                       # numpy in, numpy out
    prog = edgecompress.engine.export(cnn, images, recipe="int8-static")      # a torch CNN, (b, c, h, w)
    prog.save("model.safetensors")
    prog = edgecompress.engine.load("model.safetensors")                      # numpy only

A Program is a graph of coarse ops (linear on every weight format with fused epilogues, a fused QKV
projection, LayerNorm / RMSNorm with the residual add, softmax, attention with padding mask, causal
mask and grouped-query heads, embedding lookup, element-wise add / mul, mean pooling, reshape views)
whose weights are in the canonical formats; convolutional networks add conv2d (on every weight
format), depthwise_conv2d, pool2d and element-wise activations on channels-last images (engine/cnn.py). ``prog.reference(...)`` runs the numpy specification of the
same graph; ``prog.profile(...)`` (or ``EDGECOMPRESS_PROFILE=1``) gives the time per node and per op.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

from . import zoo
from .cnn import export_cnn
from .io import load, save
from .ops import OPS, Node
from .program import Input, Program, record_error
from .split import cuts, decode, encode, node_seconds, plan, split

__all__ = ["Input", "Node", "OPS", "Program", "cuts", "decode", "encode", "export", "export_cnn", "load", "node_seconds",
           "plan", "save", "split", "zoo"]


def _example(example_inputs: Any) -> dict[str, np.ndarray]:
    if not isinstance(example_inputs, dict) or "input_ids" not in example_inputs:
        raise TypeError("example_inputs: expected a dict with 'input_ids' (and 'attention_mask', optionally "
                        f"'token_type_ids'), got {type(example_inputs).__name__}")
    out = {}
    for k, v in example_inputs.items():
        if k not in ("input_ids", "attention_mask", "token_type_ids"):
            raise ValueError(f"example_inputs: unknown key {k!r} (expected input_ids, attention_mask, token_type_ids)")
        a = v.detach().cpu().numpy() if hasattr(v, "detach") else np.asarray(v)
        if not np.issubdtype(a.dtype, np.integer) or a.ndim != 2:
            raise ValueError(f"example_inputs[{k!r}]: expected an integer (batch, seq) array, got {a.dtype} {a.shape}")
        out[k] = a.astype(np.int64)
    out.setdefault("attention_mask", np.ones_like(out["input_ids"]))
    return out


def export(model: Any, example_inputs: Any, recipe: Any = None, *, pooling: str | None = None, guard: bool = False,
           embeddings: str = "float32", packed: bool = True, **options: Any) -> Program:
    """The Program of a Hugging Face BERT-family encoder (BertModel and its checkpoints such as MiniLM,
    RobertaModel, DistilBertModel), or, when example_inputs is one (batch, c, h, w) image tensor or
    array, of a convolutional network (``export_cnn``, whose arguments ``options`` then carries).

    example_inputs: {"input_ids": (batch, seq), "attention_mask": ..., "token_type_ids": ...} integer
    arrays (numpy or torch). recipe: None (float32) or a recipe of ``edgecompress.compress`` ("int8",
    "int8-static", "int4-g32", "nf4", "sparse-75+int8", "2:4", "lowrank-0.5", ...): the model is
    compressed first by ``compress`` on a copy (same recipes and report; ``options`` such as
    ``overrides`` and ``exclude`` pass through), then imported. ``guard=True`` applies compress's speed
    guard, which times each layer as a torch module against torch's float layer; off by default because
    the engine runs neither (its float products are its own kernels, and a torch timing on a busy
    machine would leave layers in float32 by noise). The task head and pooler are not part of the
    program and are not compressed. pooling: None (output last_hidden_state) or "mean".
    embeddings: "float32" (the token table as it is) or "int8" (the token table quantized per row,
    symmetric, a quarter of its bytes: in a MiniLM-sized model it is most of the file).
    packed (default): each sequence runs at its true length: the tokens of a batch (where the mask is
    not 0) are packed into one matrix for every layer and attention stays within each sequence, so
    padding costs nothing; the output is zero at padded positions (transformers computes values there
    that mean nothing). packed=False runs the padded batch as transformers does.
    The program's ``report`` is compress's report (None for float32), and ``info["error"]`` the relative
    error of its output against the float torch model on the example inputs (on their tokens: the
    positions whose attention mask is not 0).
    """
    import torch

    from ..compress import compress
    from .bert import _family, build

    if isinstance(example_inputs, (torch.Tensor, np.ndarray)) and example_inputs.ndim == 4:
        return export_cnn(model, example_inputs, recipe, guard=guard, **options)

    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    _family(model)  # before running the model: another model fails there with torch's error, not ours
    if pooling not in (None, "mean"):
        raise ValueError(f"pooling: expected None or 'mean', got {pooling!r}")
    if embeddings not in ("float32", "int8"):
        raise ValueError(f"embeddings: expected 'float32' or 'int8', got {embeddings!r}")
    ex = _example(example_inputs)
    torch_ex = {k: torch.from_numpy(v) for k, v in ex.items()}
    model = model.eval()
    with torch.inference_mode():
        want = model(**torch_ex)[0].float().numpy()
    report = None
    target = model
    if recipe is not None:
        target = copy.deepcopy(model)
        exclude = list(options.pop("exclude", ()))
        if getattr(target, "pooler", None) is not None:
            exclude.append("pooler.*")
        report = compress(target, recipe, example_inputs=torch_ex, guard=guard, progress=False, exclude=exclude,
                          **options)
    program = build(target, pooling=pooling, token_type_ids="token_type_ids" in ex, embeddings=embeddings,
                    packed=packed)
    program.report = report
    if pooling == "mean":  # the float model's output pooled the same way
        m = ex["attention_mask"][..., None] != 0
        want = (want * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
    got = program(**ex)
    if pooling is None:  # the tokens only: what a padded position holds is no result (and torch's sdpa
        # path and the engine fill an all-padding row differently)
        keep = ex["attention_mask"] != 0
        got, want = got[keep], want[keep]
    record_error(program, got, want, "export")
    return program
