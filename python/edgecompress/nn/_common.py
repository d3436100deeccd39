"""What every edgecompress.nn module shares: input checks, the inference-only guard, state_dict.

Why state_dict is not torch's default: a module's arrays depend on the variant of its weight (an
Int4Weight may carry zero points or a codebook, a SparseWeight stores as many values as pruning
left, a LowRankWeight's factors are float32 or int8), so loading by fixed parameter names and shapes
cannot restore them. A module writes each canonical array as a tensor under ``weight.<array>``
(``weight.<group>.<array>`` for a grouped convolution), the bias under ``bias`` and a JSON-able
description under ``_extra_state`` (``get_extra_state``: module type, state version, configuration,
each weight's metadata), stored as a uint8 tensor of its UTF-8 JSON: a state dict of tensors alone
is what safetensors, and so transformers' ``save_pretrained``, can write (loading also takes the
description as a dict). ``_load_from_state_dict`` rebuilds the weights from all of that together,
so a freshly constructed module of the same type loads any variant of its format. The canonical
arrays are read-only; state_dict() hands out copies so that editing a state dict cannot change a
weight behind its packed form.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from .. import ops
from ..formats import Int4Weight, Int8Weight, LowRankWeight, SparseWeight
from ..formats._common import show
from ._library import NO_BACKWARD, register

Weight = Any  # one of the canonical weight classes of edgecompress.formats
_EXTRA = "_extra_state"


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def check_input(x: Any, name: str = "input") -> torch.Tensor:
    """x as a float32, float16 or bfloat16 CPU tensor, or TypeError / ValueError saying what is wrong with it."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
    if x.device.type != "cpu":
        raise ValueError(f"{name}: expected a CPU tensor (edgecompress.nn runs CPU kernels), got device {x.device}")
    if x.layout != torch.strided:
        raise TypeError(f"{name}: expected a dense (strided) tensor, got layout {x.layout}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name}: expected a float32, float16 or bfloat16 tensor, got {x.dtype}")
    return x


def as_numpy(x: torch.Tensor) -> np.ndarray:
    """The tensor's memory as a numpy array: zero-copy when x is contiguous."""
    return x.detach().contiguous().numpy()


class _InferenceOnly(torch.autograd.Function):
    """Runs a kernel on an input that requires grad; a backward pass through it raises."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, run: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
        return run(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> Any:
        raise RuntimeError(NO_BACKWARD)


def _traced(x: torch.Tensor) -> bool:
    """Whether a tracer (torch.compile, torch.export, torch.jit.trace, fake tensors) runs this call."""
    return type(x) is not torch.Tensor or torch.compiler.is_compiling() or torch.jit.is_tracing()


def run_op(op: Callable[[torch.Tensor, int], torch.Tensor], x: torch.Tensor, module: CompressedModule) -> torch.Tensor:
    """``module._run`` on a checked input: the kernels compute in float32, and the result comes back
    in the input's dtype (as a float16 / bfloat16 model expects). A tracer sees the custom op ``op``
    (see _library); eager calls skip the op's dispatch, which costs more than a small layer's kernel."""
    x32 = x if x.dtype == torch.float32 else x.to(torch.float32)  # (no conversion nodes in exported graphs)
    if _traced(x32):
        y = op(x32, module.op_handle)
    elif torch.is_grad_enabled() and x32.requires_grad:  # tracked, and a backward pass raises
        y = _InferenceOnly.apply(x32, module._run)
    else:
        y = module._run(x32)
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def encode_extra_state(extra: dict[str, Any]) -> torch.Tensor:
    """A module's extra state as the uint8 tensor of its UTF-8 JSON (what state_dict() holds)."""
    return torch.frombuffer(bytearray(json.dumps(extra).encode()), dtype=torch.uint8)


def decode_extra_state(value: Any) -> Any:
    """The extra state a state dict holds: decoded from a uint8 tensor (or numpy array) of UTF-8
    JSON, else as it is (a dict, or something the checks of ``_check_extra`` refuse)."""
    if not isinstance(value, (torch.Tensor, np.ndarray)):
        return value
    a = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
    if a.dtype != np.uint8 or a.ndim != 1:
        raise ValueError(f"expected the extra state as a 1-D uint8 tensor of JSON text, got {a.dtype} "
                         f"of shape {a.shape}")
    try:
        return json.loads(a.tobytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        raise ValueError(f"expected the extra state as UTF-8 JSON text, got bytes that are not: "
                         f"{type(e).__name__}") from None


def bias_tensor(bias: Any, n: int) -> torch.Tensor | None:
    """A float32 CPU copy of ``bias`` (a tensor, a numpy array or None) of shape (n,)."""
    if bias is None:
        return None
    if isinstance(bias, torch.Tensor):
        t = bias.detach()
    elif isinstance(bias, np.ndarray):
        t = torch.from_numpy(np.array(bias))  # a writeable copy: from_numpy refuses read-only memory
    else:
        raise TypeError(f"bias: expected a torch.Tensor, a numpy array or None, got {type(bias).__name__}")
    if not t.is_floating_point():
        raise TypeError(f"bias: expected a float tensor, got {t.dtype}")
    if tuple(t.shape) != (n,):
        raise ValueError(f"bias: expected shape ({n},), got {tuple(t.shape)}")
    t = t.to("cpu", torch.float32, copy=True).contiguous()
    if not torch.isfinite(t).all():
        raise ValueError("bias: expected finite values, got NaN or Inf")
    return t


def weight_prefix(index: int, count: int) -> str:
    """Where a module's weight number ``index`` of ``count`` keeps its arrays in a state dict."""
    return "weight." if count == 1 else f"weight.{index}."


def storage_bits(w: Weight) -> int | str:
    """Bits per stored weight value (LowRankWeight with one factor of each: "8/32")."""
    if isinstance(w, Int4Weight):
        return 4
    if isinstance(w, LowRankWeight):
        return {"float32": 32, "int8": 8}.get(w.dtype, "8/32")
    if isinstance(w, SparseWeight):
        return 8 if w.dtype == "int8" else 32
    return 8


def describe(w: Weight) -> str:
    """The format's own options, for repr."""
    if isinstance(w, Int8Weight):
        return f"granularity={w.granularity!r}"
    if isinstance(w, Int4Weight):
        kind = "codebook" if w.codebook is not None else ("symmetric" if w.symmetric else "asymmetric")
        return f"group_size={w.group_size}, {kind}, compute={w.compute!r}"
    if isinstance(w, SparseWeight):
        return f"layout={w.format!r}, dtype={w.dtype!r}"
    return f"rank={w.rank}, dtype={w.dtype!r}"


class CompressedModule(nn.Module):
    """Base of the edgecompress.nn modules: canonical weights, a float32 bias buffer, state_dict.

    Subclasses set ``WEIGHT_CLASS`` (the weight format), ``FLOAT_CLASS`` (the torch module they
    replace) and ``CONFIG_KEYS``, and define ``config()``, ``float_config(module)`` and ``_build``.
    """

    WEIGHT_CLASS: type = object
    FLOAT_CLASS: type = nn.Module
    CONFIG_KEYS: tuple[str, ...] = ()
    VERSION = 1  # of the module's state (its extra state and key layout)

    def __init__(self, weights: Sequence[Weight], bias: Any) -> None:
        super().__init__()
        for w in weights:
            if not isinstance(w, self.WEIGHT_CLASS):
                raise TypeError(f"weight: expected {self.WEIGHT_CLASS.__name__}, got {type(w).__name__}")
        self.weights: tuple[Weight, ...] = tuple(weights)
        self.register_buffer("bias", bias_tensor(bias, sum(w.shape[0] for w in self.weights)))
        self.op_handle = register(self)  # how the custom ops find this module (see _library)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # a copy (deepcopy, pickle) is a module of its own: the original's handle points elsewhere
        super().__setstate__(state)
        self.op_handle = register(self)

    # --- what subclasses define ---------------------------------------------------------------------

    def config(self) -> dict[str, Any]:
        """The torch-level configuration (JSON-able: lists, not tuples) a float module must share."""
        raise NotImplementedError

    @classmethod
    def float_config(cls, module: nn.Module) -> dict[str, Any]:
        """config() of the compressed module that would replace the float ``module``."""
        raise NotImplementedError

    @classmethod
    def _build(cls, weights: list[Weight], bias: np.ndarray | None, config: dict[str, Any]) -> CompressedModule:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------------------

    def _bias_numpy(self) -> np.ndarray | None:
        # float32 even after model.half() or .to(torch.bfloat16), which convert buffers too
        return None if self.bias is None else self.bias.to(torch.float32).numpy()

    def _act_args(self) -> dict[str, Any]:
        """Keyword arguments of ``ops.linear`` for the activations (none for most formats)."""
        return {}

    @property
    def nbytes(self) -> int:
        """Bytes of the canonical weight arrays (what a file holds, without the bias)."""
        return sum(w.nbytes for w in self.weights)

    @property
    def sparsity(self) -> float:
        """Fraction of the weight's values that are not stored (0 for the dense formats)."""
        stored = sum(w.shape[0] * w.shape[1] * (1 - getattr(w, "sparsity", 0.0)) for w in self.weights)
        return 1.0 - stored / sum(w.shape[0] * w.shape[1] for w in self.weights)

    def extra_repr(self) -> str:
        config = ", ".join(f"{k}={tuple(v) if isinstance(v, list) else v!r}" for k, v in self.config().items())
        float_nbytes = 4 * sum(w.shape[0] * w.shape[1] for w in self.weights)
        return (f"{config}, format={self.WEIGHT_CLASS.FORMAT!r}, {describe(self.weights[0])}, "
                f"bits={storage_bits(self.weights[0])}, sparsity={self.sparsity:.3f}, "
                f"nbytes={self.nbytes} (float32: {float_nbytes})")

    def get_extra_state(self) -> dict[str, Any]:
        return {"module": type(self).__name__, "version": self.VERSION, "config": self.config(),
                "weights": [w.state_dict()["metadata"] for w in self.weights]}

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        for i, w in enumerate(self.weights):
            pre = prefix + weight_prefix(i, len(self.weights))
            for key, a in w.state_dict().items():
                if key != "metadata":
                    destination[pre + key] = torch.from_numpy(np.array(a))
        super()._save_to_state_dict(destination, prefix, keep_vars)  # bias, then the extra state
        destination[prefix + _EXTRA] = encode_extra_state(destination[prefix + _EXTRA])

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, local_metadata: dict[str, Any],
                              strict: bool, missing_keys: list[str], unexpected_keys: list[str],
                              error_msgs: list[str]) -> None:
        if prefix + _EXTRA not in state_dict:
            if strict:
                missing_keys.append(prefix + _EXTRA)
            return
        own = {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}
        where = f"{type(self).__name__} at {prefix[:-1]!r}" if prefix else type(self).__name__
        try:
            new, used = type(self).from_state(own)
        except (TypeError, ValueError) as e:
            raise ValueError(f"state_dict for {where}: {e}") from e
        if new.config() != self.config():
            raise ValueError(f"state_dict for {where}: it holds {new.config()}, this module is {self.config()}")
        unexpected_keys.extend(prefix + k for k in own if k not in used)
        self.assign(new)

    def assign(self, other: CompressedModule) -> None:
        """Take the weights and bias of ``other`` (same type and config()) in place."""
        self.weights = other.weights
        self.bias = other.bias

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> tuple[CompressedModule, set[str]]:
        """A module of this class from its own state dict entries (keys without the module's
        prefix; tensors or numpy arrays, and the extra state: a dict or its encoded tensor); also
        returns the keys it used."""
        if _EXTRA in state:
            state = dict(state, **{_EXTRA: decode_extra_state(state[_EXTRA])})
        return cls._from_state(state)

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> tuple[CompressedModule, set[str]]:
        """from_state once the extra state is a dict (what subclasses extend)."""
        config, metas = cls._check_extra(state.get(_EXTRA))
        used = {_EXTRA}
        arrays = {}
        for k, v in state.items():
            if k != _EXTRA:
                arrays[k] = v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)
        weights = []
        for i, meta in enumerate(metas):
            pre = weight_prefix(i, len(metas))
            d: dict[str, Any] = {k[len(pre):]: a for k, a in arrays.items() if k.startswith(pre)}
            d["metadata"] = meta
            w = cls.WEIGHT_CLASS.from_state_dict(d)
            used |= {pre + k for k in w.state_dict() if k != "metadata"}
            weights.append(w)
        bias = None
        if config["bias"]:
            if "bias" not in arrays:
                raise ValueError("missing tensor 'bias'")
            bias = arrays["bias"]
            if bias.dtype != np.float32:  # what state_dict() writes; an int32 label would read float bits as ints
                raise TypeError(f"bias: expected a float32 tensor, got {bias.dtype}")
            used.add("bias")
        module = cls._build(weights, bias, config)
        if module.config() != config:
            raise ValueError(f"the weights make {module.config()}, the saved configuration says {show(config)}")
        return module, used

    @classmethod
    def _extra_keys(cls, version: int) -> dict[str, bool]:
        """The keys of an extra state of state version ``version``, each with whether it is required
        (a key a state of that version does not have is refused: a misspelling would otherwise
        load as its default in silence)."""
        return {"module": True, "version": True, "config": True, "weights": True}

    @classmethod
    def _check_extra(cls, extra: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """(config, weight metadata) of an extra state, after checking what it claims."""
        if not isinstance(extra, dict):
            raise ValueError(f"expected {cls.__name__} extra state (a dict), got {type(extra).__name__}")
        if extra.get("module") != cls.__name__:
            raise ValueError(f"expected {cls.__name__} state, got state of {show(extra.get('module'))}")
        version = extra.get("version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise ValueError(f"expected a state version (an int >= 1), got {show(version)}")
        if version > cls.VERSION:
            raise ValueError(f"{cls.__name__} state version {version} is newer than this edgecompress "
                             f"reads (<= {cls.VERSION}); upgrade edgecompress")
        keys = cls._extra_keys(version)
        missing = sorted(k for k, required in keys.items() if required and k not in extra)
        unknown = sorted(str(k) for k in extra if k not in keys)
        if missing or unknown:
            raise ValueError(f"{cls.__name__} state version {version}: expected the keys {sorted(keys)} in the extra "
                             f"state" + (f", missing {missing}" if missing else "")
                             + (f", unknown {show(unknown)}" if unknown else ""))
        config = extra.get("config")
        if not isinstance(config, dict) or set(config) != set(cls.CONFIG_KEYS):
            raise ValueError(f"expected a config with keys {sorted(cls.CONFIG_KEYS)}, got {show(config)}")
        metas = extra.get("weights")
        if not isinstance(metas, list) or not metas or not all(isinstance(m, dict) for m in metas):
            raise ValueError(f"expected a non-empty list of weight metadata, got {show(metas)}")
        for meta in metas:
            fmt, v = meta.get("format"), meta.get("version")
            if fmt != cls.WEIGHT_CLASS.FORMAT:
                raise ValueError(f"expected weights of format {cls.WEIGHT_CLASS.FORMAT!r}, got {show(fmt)}")
            if isinstance(v, int) and v > cls.WEIGHT_CLASS.VERSION:
                raise ValueError(f"weight format {fmt!r} version {v} is newer than this edgecompress reads "
                                 f"(<= {cls.WEIGHT_CLASS.VERSION}); upgrade edgecompress")
        return config, metas


def static_input(act_scale: Any, act_zero_point: Any) -> dict[str, Any] | None:
    """Checked static input quantization, as ``ops.linear`` takes it: {"scale", "zero_point"} (zero
    point None: symmetric int8; an int in [0, 255]: asymmetric uint8), or None (dynamic, per row)."""
    if act_scale is None:
        if act_zero_point is not None:
            raise ValueError("act_zero_point: only meaningful with act_scale (static quantization)")
        return None
    scheme = ops._SCHEMES["symmetric" if act_zero_point is None else "asymmetric"]
    scale, zero_point = ops._static_quant(act_scale, act_zero_point, scheme)
    return {"scale": scale, "zero_point": None if act_zero_point is None else zero_point}


class StaticInput:
    """Mixin of the int8 modules: optional static quantization of the input (``act_scale`` and, for
    asymmetric uint8, ``act_zero_point``), e.g. from calibration; without it each call quantizes
    its input per row (a convolution's per image, but for a 1x1 kernel of stride 1 without padding:
    ops.conv2d). Kept in the extra state under ``"input_quant"``: None when dynamic. States
    before ``INPUT_QUANT_SINCE`` (the module's state version that made it required) left it out
    when dynamic; from that version on a state without it is refused, since a lost key would
    otherwise switch a static layer to dynamic quantization."""

    INPUT_QUANT_SINCE = 1  # set by each module class

    def __init__(self, *args: Any, act_scale: float | None = None, act_zero_point: int | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.input_quant = static_input(act_scale, act_zero_point)

    @classmethod
    def from_float(cls, module: nn.Module, *, act_scale: float | None = None, act_zero_point: int | None = None,
                   **options: Any) -> CompressedModule:
        """As the base ``from_float``, plus the static input quantization (see the class)."""
        m = super().from_float(module, **options)
        m.input_quant = static_input(act_scale, act_zero_point)
        return m

    def _act_args(self) -> dict[str, Any]:
        q = self.input_quant
        if q is None:
            return {}
        return {"act_scheme": "symmetric" if q["zero_point"] is None else "asymmetric",
                "act_scale": q["scale"], "act_zero_point": q["zero_point"]}

    def get_extra_state(self) -> dict[str, Any]:
        return dict(super().get_extra_state(), input_quant=None if self.input_quant is None else dict(self.input_quant))

    @classmethod
    def _extra_keys(cls, version: int) -> dict[str, bool]:
        return dict(super()._extra_keys(version), input_quant=version >= cls.INPUT_QUANT_SINCE)

    @classmethod
    def _from_state(cls, state: dict[str, Any]) -> tuple[CompressedModule, set[str]]:
        module, used = super()._from_state(state)
        q = state[_EXTRA].get("input_quant")
        if q is not None and (not isinstance(q, dict) or set(q) != {"scale", "zero_point"}):
            raise ValueError(f"expected input_quant {{'scale', 'zero_point'}} in the extra state, got {show(q)}")
        module.input_quant = None if q is None else static_input(q["scale"], q["zero_point"])
        return module, used

    def assign(self, other: CompressedModule) -> None:
        super().assign(other)
        self.input_quant = other.input_quant

    def extra_repr(self) -> str:
        q = self.input_quant
        if q is None:
            return super().extra_repr()
        zp = "" if q["zero_point"] is None else f", act_zero_point={q['zero_point']}"
        return f"{super().extra_repr()}, act_scale={q['scale']:.6g}{zp}"
