"""Recipes of ``edgecompress.compress``: what happens to one layer, by name. Plain data; the work is in
:mod:`.one_call`.

| name | layer becomes |
|---|---|
| ``"int8"`` | Int8Linear / Int8Conv2d: int8 weights per output channel, inputs quantized per row in each call |
| ``"int8-static"`` | the same with one static input scale per layer from calibration (asymmetric uint8) |
| ``"int4-g32"`` (g64, g128) | Int4Linear / Int4Conv2d: 4-bit groups of 32 along K, scales searched by MSE |
| ``"nf4"`` | Int4 with the NF4 codebook, groups of 32 |
| ``"sparse-50"`` (any 1-99) | magnitude pruning to 50% per layer, float32 SparseLinear / SparseConv2d in the layout timed fastest here |
| ``"sparse-75+int8"`` | magnitude pruning to 75% in blocks of 4 consecutive weights along K (the int8 kernels' unit), int8 values in the bsr1x4 layout |
| ``"2:4"`` (1:4, 4:8; ``+int8``) | 2 of every 4 weights along K kept by magnitude, stored as a SparseWeight |
| ``"lowrank-0.5"`` (any ratio in (0, 1); ``+int8``) | truncated SVD to half the parameters, LowRankLinear / LowRankConv2d |
| a ``QuantConfig`` | its plan: int8 or int4 weights, static input scales when it quantizes activations |

The N:M recipes store the weight in the dedicated N:M layout when ``SparseWeight`` has one, else in
the fastest general layout (``format="auto"``). A pruning recipe that the speed guard finds slower
than float32 falls back to ``"int8"`` (``fallback``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Optional

from .prune.masks import N_M
from .quantize.config import QuantConfig, QuantSpec

__all__ = ["RECIPE_NAMES", "Recipe", "parse_recipe"]

RECIPE_NAMES = ("int8", "int8-static", "int4-g32", "int4-g64", "int4-g128", "nf4", "sparse-50", "sparse-75",
                "sparse-90", "sparse-50+int8", "sparse-75+int8", "2:4", "2:4+int8", "lowrank-0.5",
                "lowrank-0.5+int8")
_GRAMMAR = ("int8, int8-static, int4-g32|g64|g128, nf4, sparse-<1..99>[+int8], 2:4|1:4|4:8[+int8], "
            "lowrank-<ratio in (0, 1)>[+int8], or a QuantConfig")

# Static input quantization after ReLUs: asymmetric uint8 keeps the full 256 levels for the positive
# range. The convolutions keep their BatchNorm (no folding): compress swaps layers, it does not
# rewrite the model.
INT8_STATIC = QuantConfig(weight=QuantSpec(bits=8), activation=QuantSpec(bits=8, symmetric=False, granularity="tensor"),
                          fold_batchnorm=False)


@dataclass(frozen=True)
class Recipe:
    """One layer's treatment. ``family``: "int8", "int4", "sparse", "lowrank" or "quant" (a
    QuantConfig's plan, ``config``). ``options``: the format's ``from_float`` options. ``pattern`` and
    ``sparsity``: the pruning of "sparse"; ``param_ratio``: the rank rule of "lowrank".
    ``fallback``: the recipe name tried when this one is slower than float32."""

    name: str
    family: str
    options: dict[str, Any] = field(default_factory=dict, hash=False)
    pattern: str = "unstructured"
    sparsity: Optional[float] = None
    param_ratio: Optional[float] = None
    config: Optional[QuantConfig] = field(default=None, hash=False)
    fallback: Optional[str] = None


def parse_recipe(recipe: Any, name: str = "recipe") -> Recipe:
    """The Recipe of a recipe name, a QuantConfig or a Recipe; ValueError for an unknown name."""
    if isinstance(recipe, Recipe):
        return recipe
    if isinstance(recipe, QuantConfig):
        return Recipe("QuantConfig", "quant", config=recipe)
    if not isinstance(recipe, str):
        raise TypeError(f"{name}: expected a recipe name (str) or a QuantConfig, got {type(recipe).__name__}")
    if recipe == "int8":
        return Recipe(recipe, "int8", {"granularity": "channel"})
    if recipe == "int8-static":
        return Recipe(recipe, "quant", config=INT8_STATIC)
    if recipe == "nf4":
        return Recipe(recipe, "int4", {"group_size": 32, "codebook": "nf4"})
    m = re.fullmatch(r"int4-g(32|64|128)", recipe)
    if m:
        return Recipe(recipe, "int4", {"group_size": int(m[1]), "method": "mse"})
    base, plus_int8 = (recipe[:-5], True) if recipe.endswith("+int8") else (recipe, False)
    dtype = "int8" if plus_int8 else "float32"
    m = re.fullmatch(r"sparse-([1-9][0-9]?)", base)
    if m:
        if plus_int8:  # blocks of 1 x 4 along K: what the int8 kernels read, and no stored zeros
            return Recipe(recipe, "sparse", {"dtype": dtype, "format": "bsr1x4"}, pattern="1x4",
                          sparsity=int(m[1]) / 100, fallback="int8")
        return Recipe(recipe, "sparse", {"dtype": dtype}, sparsity=int(m[1]) / 100, fallback="int8")
    if base in N_M:
        n, m_ = N_M[base]
        return Recipe(recipe, "sparse", {"dtype": dtype}, pattern=base, sparsity=1 - n / m_, fallback="int8")
    m = re.fullmatch(r"lowrank-(0?\.[0-9]*[1-9][0-9]*)", base)
    if m:
        return Recipe(recipe, "lowrank", {"dtype": dtype}, param_ratio=float(m[1]))
    raise ValueError(f"{name}: unknown recipe {recipe!r}; expected {_GRAMMAR}")
