"""Save and load models that hold edgecompress.nn modules: one safetensors file, never pickle.

File layout: a single ``.safetensors`` file. Its tensors are the model's ``state_dict()`` tensors
under their usual keys: the float parameters and buffers, and for each compressed module its
canonical arrays (``<module>.weight.<array>``, ``<module>.weight.<group>.<array>`` for grouped
convolutions) and ``<module>.bias``. Its metadata header holds one entry, ``"edgecompress"``: a
JSON manifest

    {"format": "edgecompress", "version": 2, "edgecompress_version": "0.1.0",
     "modules": {"<module path>": {"module": "Int8Linear", "version": 2, "config": {...},
                                   "weights": [<weight metadata: format, version, ...>], ...}},
     "recipe": <whatever JSON-able value was passed to save, or null>,
     "report": <the report of edgecompress.compress passed to save (its to_dict()), or null>,
     "tied": {"<key>": "<key of the same tensor>"},
     "sha256": <hex digest of the manifest without it and of every tensor: name, dtype, shape, bytes>}

Tied weights (a language model's head and its embedding) are stored once: "tied" names each state
dict key left out and the key whose tensor it shares; load reads that tensor for both.

``load`` checks the whole file against the model before it changes anything, then swaps each float
module at a saved path (torch.nn.Linear / Conv2d) for its compressed module and loads the float rest.

Why a digest: most damage to a file is caught by the checks of the formats (indices, shapes, dtypes,
keys), but a changed float value or digit of a scale is a valid file that computes something else.
The digest turns any such change into a refusal. Version 1 files (no digest) load as before.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import __version__
from .nn import MODULE_CLASSES, CompressedModule
from .nn._common import decode_extra_state
from .formats._common import show

__all__ = ["from_pretrained", "load", "load_state_dict", "read_manifest", "save"]

FILE_VERSION = 2  # 2: the manifest holds the "sha256" digest of the file's content and the "tied" keys
_KEY = "edgecompress"
_EXTRA = "_extra_state"
_DIGEST = "sha256"
_TIED = "tied"
_MANIFEST_KEYS = {"format", "version", "edgecompress_version", "modules", "recipe", "report"}


def _check_path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path: expected a str or os.PathLike, got {type(path).__name__}")
    return os.fspath(path)


def _check_model(model: Any) -> None:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model: expected a torch.nn.Module, got {type(model).__name__}")


def _prefix(name: str) -> str:
    return f"{name}." if name else ""


def _under(key: str, names: Any) -> bool:
    """Whether state-dict ``key`` belongs to one of the modules ``names``."""
    return any(key.startswith(_prefix(n)) for n in names)


def save(model: nn.Module, path: str | os.PathLike, *, recipe: Any = None, report: Any = None) -> None:
    """Write ``model`` (compressed modules and float rest) to one safetensors file at ``path``.

    ``recipe``: optional JSON-able description of how the model was compressed; ``report``: the
    report ``edgecompress.compress`` returned (or its ``to_dict()``). Both are kept in the manifest
    (see ``read_manifest``). The file is written next to ``path`` and then renamed over it.
    """
    _check_model(model)
    path = _check_path(path)
    report_object = report
    if hasattr(report, "to_dict"):
        report = report.to_dict()
    if report is not None and not isinstance(report, dict):
        raise TypeError(f"report: expected the report of edgecompress.compress, a dict or None, got {type(report).__name__}")
    for name, value in (("recipe", recipe), ("report", report)):
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as e:
            raise ValueError(f"{name}: expected a JSON-able value, got {type(value).__name__} ({e})") from e
    compressed = [name for name, m in model.named_modules() if isinstance(m, CompressedModule)]
    modules: dict[str, Any] = {}
    tensors: dict[str, torch.Tensor] = {}
    saved: dict[tuple[Any, ...], str] = {}  # each saved tensor's memory -> its key, to store tied weights once
    storages: set[int] = set()
    tied: dict[str, str] = {}
    for key, value in model.state_dict().items():
        name = key[: -len(_EXTRA)].rstrip(".")
        if key.endswith(_EXTRA) and name in compressed:
            modules[name] = model.get_submodule(name).get_extra_state()  # (the state dict holds it encoded)
            continue
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"model: state_dict entry {key!r} is a {type(value).__name__}, not a tensor; "
                             "only tensors and edgecompress.nn modules can be saved (no pickle)")
        t = value.detach().to("cpu").contiguous()
        memory = (t.data_ptr(), t.dtype, tuple(t.shape))
        if memory in saved:  # a tied weight: stored once
            tied[key] = saved[memory]
            continue
        if t.untyped_storage().data_ptr() in storages:  # another view of a saved tensor's memory:
            t = t.clone()  # safetensors refuses shared memory
        saved[memory] = key
        storages.add(t.untyped_storage().data_ptr())
        tensors[key] = t
    manifest = {"format": _KEY, "version": FILE_VERSION, "edgecompress_version": __version__,
                "modules": modules, "recipe": recipe, "report": report, _TIED: tied}
    manifest[_DIGEST] = _digest(manifest, tensors)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata={_KEY: json.dumps(manifest)})
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    if hasattr(report_object, "file_bytes"):  # the report of edgecompress.compress learns its file's size
        report_object.file_bytes = os.path.getsize(path)


def _digest(manifest: dict[str, Any], tensors: dict[str, torch.Tensor]) -> str:
    """sha256 of the manifest (without its digest, keys sorted) and of each tensor's name, dtype,
    shape and bytes, in name order."""
    h = hashlib.sha256(json.dumps({k: v for k, v in manifest.items() if k != _DIGEST}, sort_keys=True).encode())
    for key in sorted(tensors):
        t = tensors[key]
        h.update(f"\0{key}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def _open(path: str) -> Any:
    """The safetensors handle of ``path`` (a context manager), or a clear error."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"path: no file at {path!r}")
    try:
        return safe_open(path, framework="pt")
    except SafetensorError as e:
        raise ValueError(f"path: {path!r} is not a complete safetensors file (truncated or corrupt?): {e}") from e


def _manifest(f: Any, path: str) -> dict[str, Any]:
    """The manifest of an open file written by ``save``, after checking it."""
    text = (f.metadata() or {}).get(_KEY)
    if text is None:
        raise ValueError(f"path: {path!r} has no edgecompress manifest (it was not written by edgecompress.save)")
    try:
        manifest = json.loads(text)
    except (ValueError, RecursionError) as e:  # (RecursionError: nested too deep to parse)
        raise ValueError(f"path: the manifest of {path!r} is not valid JSON: {str(e)[:200]}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != _KEY:
        raise ValueError(f"path: the manifest of {path!r} is not an edgecompress manifest")
    version = manifest.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"path: the manifest of {path!r} has no valid file version, got {version!r}")
    if version > FILE_VERSION:
        raise ValueError(f"path: {path!r} has file version {version}, newer than this edgecompress reads "
                         f"(<= {FILE_VERSION}); upgrade edgecompress")
    allowed = _MANIFEST_KEYS | ({_DIGEST, _TIED} if version >= 2 else set())
    required = allowed - ({"report"} if version == 1 else set())  # (early version 1 files have no report)
    if not required <= set(manifest) <= allowed:
        raise ValueError(f"path: the manifest of {path!r} (file version {version}) has the keys "
                         f"{show(sorted(str(k) for k in manifest))}, expected {sorted(allowed)}")
    tied = manifest.get(_TIED, {})
    if not isinstance(tied, dict) or not all(isinstance(v, str) for v in tied.values()):
        raise ValueError(f"path: the manifest of {path!r} has no valid 'tied' table")
    modules = manifest.get("modules")
    if not isinstance(modules, dict) or not all(isinstance(v, dict) for v in modules.values()):
        raise ValueError(f"path: the manifest of {path!r} has no valid 'modules' table")
    for name, extra in modules.items():
        cls = MODULE_CLASSES.get(extra.get("module")) if isinstance(extra.get("module"), str) else None
        if cls is None:
            raise ValueError(f"module {show(name)}: unknown module type {show(extra.get('module'))} in the manifest")
        try:
            cls._check_extra(extra)
        except ValueError as e:
            raise ValueError(f"module {show(name)}: {e}") from None
    return manifest


def read_manifest(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON manifest of a file written by ``save`` (modules, formats, versions, recipe)."""
    path = _check_path(path)
    with _open(path) as f:
        return _manifest(f, path)


def load(path: str | os.PathLike, model: nn.Module) -> nn.Module:
    """Restore a file written by ``save`` into ``model`` (a fresh model of the saved architecture)
    in place, and return it.

    Each saved compressed module replaces the torch.nn.Linear / Conv2d (or the compressed module of
    the same type) at its path, which must have the same configuration (features, channels, kernel,
    stride, padding, dilation, groups, bias). The float parameters and buffers must match the file's
    keys and shapes exactly. Any mismatch, a truncated file or a version newer than this edgecompress
    raises ValueError before the model is changed.
    """
    _check_model(model)
    path = _check_path(path)
    with _open(path) as f:
        manifest = _manifest(f, path)
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    try:
        intact = manifest["version"] < 2 or manifest[_DIGEST] == _digest(manifest, tensors)
    except RecursionError:  # a manifest nested about as deep as json parses: not one save wrote
        intact = False
    if not intact:
        raise ValueError(f"path: the content of {path!r} does not match its sha256 digest (the file was changed "
                         "or damaged after it was saved)")
    for key, source in manifest.get(_TIED, {}).items():  # (checked by _manifest)
        if key in tensors or source not in tensors:
            raise ValueError(f"path: tied key {show(key)} of {path!r} names {show(source)}, which the file does "
                             "not hold, or is itself stored")
        tensors[key] = tensors[source]
    replacements, rest = _read_checked(tensors, manifest, model)
    return _swap_in(model, replacements, rest)


def load_state_dict(model: nn.Module, state_dict: dict[str, Any]) -> nn.Module:
    """Restore the ``state_dict()`` of a model holding edgecompress.nn modules (e.g. read back from
    what transformers' ``save_pretrained`` wrote) into ``model``, a fresh model of the saved
    architecture, in place, and return it: as ``load``, with the compressed modules found by their
    ``<path>._extra_state`` entries. Weights tied to a loaded one (which ``save_pretrained`` leaves
    out of its files) may be missing."""
    _check_model(model)
    if not isinstance(state_dict, dict):
        raise TypeError(f"state_dict: expected a dict, got {type(state_dict).__name__}")
    swappable = (nn.Linear, nn.Conv2d, CompressedModule)
    modules: dict[str, Any] = {}
    named = dict(model.named_modules())
    for key, value in state_dict.items():
        name = key[: -len(_EXTRA)].rstrip(".")
        if key.endswith(_EXTRA) and isinstance(named.get(name), swappable):
            try:
                extra = decode_extra_state(value)
            except ValueError as e:
                raise ValueError(f"module {name!r}: {e}") from None
            if not isinstance(extra, dict):
                raise ValueError(f"module {name!r}: expected its extra state to be a dict, got {type(extra).__name__}")
            modules[name] = extra
    replacements, rest = _read_checked(state_dict, {"modules": modules}, model)
    return _swap_in(model, replacements, rest)


def from_pretrained(model_class: Any, path: str | os.PathLike) -> nn.Module:
    """A transformers model with edgecompress.nn modules from the directory its ``save_pretrained``
    wrote: ``model_class`` (e.g. ``transformers.BertModel``) is built from the saved config, then
    ``load_state_dict`` restores the saved tensors (one or several safetensors shards) into it. The
    model is returned in eval mode."""
    path = _check_path(path)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"path: no directory at {path!r}")
    config_class = getattr(model_class, "config_class", None)
    if config_class is None or not hasattr(config_class, "from_pretrained"):
        raise TypeError(f"model_class: expected a transformers model class, got {model_class!r}")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as fh:
            files = sorted(set(json.load(fh)["weight_map"].values()))
    else:
        files = ["model.safetensors"]
    state: dict[str, torch.Tensor] = {}
    for name in files:
        with _open(os.path.join(path, name)) as f:
            state.update((k, f.get_tensor(k)) for k in f.keys())
    model = model_class(config_class.from_pretrained(path))
    return load_state_dict(model, state).eval()


def _swap_in(model: nn.Module, replacements: dict[str, CompressedModule], rest: dict[str, torch.Tensor]) -> nn.Module:
    """Put checked compressed modules in place and load the float rest."""
    for name, new in replacements.items():
        target = model.get_submodule(name)
        if isinstance(target, type(new)):
            target.assign(new)
        else:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, new)
    model.load_state_dict(rest, strict=False)
    return model


def _read_checked(tensors: dict[str, torch.Tensor], manifest: dict[str, Any],
                  model: nn.Module) -> tuple[dict[str, CompressedModule], dict[str, torch.Tensor]]:
    """The compressed modules (by path) and the float tensors of a file, checked against ``model``."""
    keys = set(tensors)
    replacements: dict[str, CompressedModule] = {}
    for name, extra in manifest["modules"].items():
        cls = MODULE_CLASSES[extra["module"]]  # (checked by _manifest)
        try:
            target = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"module {name!r}: saved as {cls.__name__}, but the model has no module there") from None
        if isinstance(target, cls):
            expected = target.config()
        elif isinstance(target, cls.FLOAT_CLASS) and name:
            expected = cls.float_config(target)
        else:
            what = f"{cls.__name__} (the root module is not swapped)" if not name else (
                f"{cls.__name__} or the {cls.FLOAT_CLASS.__name__} it replaces")
            raise ValueError(f"module {name!r}: saved as {cls.__name__}; expected the model to have {what} "
                             f"there, got {type(target).__name__}")
        own = {k[len(_prefix(name)):]: tensors[k] for k in keys if k.startswith(_prefix(name))}
        own[_EXTRA] = extra
        try:
            new, used = cls.from_state(own)
        except (TypeError, ValueError) as e:
            raise ValueError(f"module {name!r}: {e}") from e
        if set(own) - used:
            raise ValueError(f"module {name!r}: unexpected tensors {sorted(set(own) - used)[:5]} in the file")
        if new.config() != expected:
            raise ValueError(f"module {name!r}: saved {cls.__name__} {new.config()} does not match the model's "
                             f"{type(target).__name__} {expected}")
        replacements[name] = new
    expected_rest = {k: v for k, v in model.state_dict().items() if not _under(k, replacements)}
    rest = {k: tensors[k] for k in keys if not _under(k, replacements)}
    missing = sorted(k for k in set(expected_rest) - set(rest) if not _tied(k, rest, expected_rest))
    unexpected = sorted(set(rest) - set(expected_rest))
    if missing or unexpected:
        raise ValueError(f"path: the file does not match the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    for k, t in rest.items():
        if tuple(t.shape) != tuple(expected_rest[k].shape):
            raise ValueError(f"path: {k!r} has shape {tuple(t.shape)} in the file, "
                             f"{tuple(expected_rest[k].shape)} in the model")
        if t.dtype != expected_rest[k].dtype:  # load_state_dict would convert, reading float bits as ints
            raise ValueError(f"path: {k!r} has dtype {t.dtype} in the file, {expected_rest[k].dtype} in the model")
    return replacements, rest


def _tied(key: str, present: Any, tensors: dict[str, torch.Tensor]) -> bool:
    """Whether the model's tensor ``key`` is the same memory as one of the ``present`` keys (tied)."""
    t = tensors[key]
    return any(k in present and tensors[k].data_ptr() == t.data_ptr() and tensors[k].shape == t.shape
               for k in tensors if k != key)
