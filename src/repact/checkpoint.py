"""Checkpoints: safetensors for tensors, JSON for everything else, written atomically.

A checkpoint ``NAME`` is two files side by side:

* ``NAME.safetensors``: the model's state dict (keys ``model.*``) and any other tensors, e.g. the
  optimizer state (keys ``optim.*``); its metadata holds ``{"repact": <JSON header>}``;
* ``NAME.json``: the header again (human-readable): format version, the model config that
  rebuilds the architecture (``create_model`` arguments), and JSON-able state (epoch, metrics,
  scheduler, RNG states, ...).

Nothing is unpickled on load. Each file is written to a temporary file in the same folder and
moved into place with ``os.replace``, the tensors first, so an interrupted save never leaves a
half-written checkpoint under the final name, and the previous checkpoint stays intact until the
new one is complete.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ._modes import eval_mode

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointError",
    "save_checkpoint",
    "load_checkpoint",
    "checkpoint_paths",
    "flatten_state",
    "unflatten_state",
    "atomic_write_bytes",
    "atomic_write_text",
    "build_model",
    "check_model_config",
    "check_weights_finite",
]

FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A checkpoint is missing, unreadable or does not match what it is loaded into."""


@dataclass
class Checkpoint:
    model_state: dict[str, torch.Tensor]
    model_config: dict[str, Any] = field(default_factory=dict)
    state: dict[str, Any] = field(default_factory=dict)
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    path: Path | None = None


def checkpoint_paths(name: str | Path) -> tuple[Path, Path]:
    """(tensor file, JSON file) for a checkpoint name given with or without an extension."""
    p = Path(name)
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise _named(exc, path) from exc
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # mkstemp creates 0600; give the file the usual mode
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            raise _named(exc, path) from exc
        raise


def _named(exc: OSError, path: Path) -> OSError:
    """The same OS error (same class and errno) naming the file that could not be written."""
    return type(exc)(exc.errno, exc.strerror or str(exc), str(path)) if exc.errno else exc


def current_umask() -> int:
    """The process umask (read without changing it for longer than a moment)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# nested state <-> (flat tensors, JSON skeleton)
# ---------------------------------------------------------------------------------------------

_TENSOR_TAG = "__tensor__"


def flatten_state(obj: Any, prefix: str, tensors: dict[str, torch.Tensor]) -> Any:
    """Move every tensor of a nested dict/list structure into ``tensors`` (under ``prefix.path``)
    and return a JSON-able skeleton that refers to them."""
    if torch.is_tensor(obj):
        key = prefix
        tensors[key] = obj.detach().cpu().contiguous()
        return {_TENSOR_TAG: key}
    if isinstance(obj, Mapping):
        out = {}
        for k, v in obj.items():
            out[str(k)] = flatten_state(v, f"{prefix}.{k}", tensors)
        if any(not isinstance(k, str) for k in obj):
            return {"__intkeys__": True, "items": out}
        return out
    if isinstance(obj, (list, tuple)):
        return {"__list__": [flatten_state(v, f"{prefix}.{i}", tensors) for i, v in enumerate(obj)],
                "__tuple__": isinstance(obj, tuple)}
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    raise TypeError(f"cannot store a {type(obj).__name__} at {prefix!r} in a checkpoint")


def unflatten_state(obj: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """Inverse of :func:`flatten_state`."""
    if isinstance(obj, dict):
        if _TENSOR_TAG in obj and len(obj) == 1:
            key = obj[_TENSOR_TAG]
            if key not in tensors:
                raise CheckpointError(f"the checkpoint's JSON refers to tensor {key!r} that its tensor file lacks")
            return tensors[key]
        if "__list__" in obj:
            items = [unflatten_state(v, tensors) for v in obj["__list__"]]
            return tuple(items) if obj.get("__tuple__") else items
        if obj.get("__intkeys__"):
            return {int(k) if k.lstrip("-").isdigit() else k: unflatten_state(v, tensors) for k, v in obj["items"].items()}
        return {k: unflatten_state(v, tensors) for k, v in obj.items()}
    return obj


# ---------------------------------------------------------------------------------------------
# save / load
# ---------------------------------------------------------------------------------------------


def save_checkpoint(
    name: str | Path,
    model: nn.Module | Mapping[str, torch.Tensor],
    *,
    model_config: Mapping[str, Any] | None = None,
    state: Mapping[str, Any] | None = None,
) -> tuple[Path, Path]:
    """Write ``NAME.safetensors`` and ``NAME.json`` atomically; returns both paths.

    ``state`` may hold tensors at any depth (an optimizer's ``state_dict()``, RNG states): they go
    to the tensor file under ``state.*`` and the JSON keeps references to them.
    """
    from safetensors.torch import save as st_save

    tpath, jpath = checkpoint_paths(name)
    sd = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    tensors: dict[str, torch.Tensor] = {}
    for k, v in sd.items():
        if not torch.is_tensor(v):
            raise TypeError(f"model state {k!r} is a {type(v).__name__}, not a tensor")
        tensors[f"model.{k}"] = v.detach().cpu().contiguous()
    skeleton = flatten_state(dict(state or {}), "state", tensors)
    header = {
        "format": "repact-checkpoint",
        "version": FORMAT_VERSION,
        "model_config": dict(model_config or {}),
        "state": skeleton,
    }
    text = json.dumps(header, indent=2, sort_keys=True, default=_json_default)
    # tensors that share storage must be cloned for safetensors
    seen: dict[tuple[int, int], str] = {}
    for k, v in list(tensors.items()):
        key = (v.untyped_storage().data_ptr(), v.storage_offset()) if v.numel() else (id(v), 0)
        if key in seen:
            tensors[k] = v.clone()
        seen[key] = k
    atomic_write_bytes(tpath, st_save(tensors, metadata={"repact": text}))
    atomic_write_text(jpath, text + "\n")
    return tpath, jpath


def _json_default(o: Any) -> Any:
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (set, frozenset)):
        return sorted(o)
    if hasattr(o, "item"):
        return o.item()
    raise TypeError(f"cannot store a {type(o).__name__} in a checkpoint header")


def load_checkpoint(name: str | Path) -> Checkpoint:
    """Read a checkpoint without unpickling anything.

    ``name`` may be the ``.safetensors`` file, the ``.json`` file or the common stem. The header
    is read from the tensor file's metadata (the JSON file is a readable copy and may be absent).
    """
    from safetensors import SafetensorError
    from safetensors.torch import load as st_load

    tpath, jpath = checkpoint_paths(name)
    if not tpath.exists():
        hint = f" (found {jpath.name} but not its tensors)" if jpath.exists() else ""
        raise CheckpointError(f"no checkpoint at {Path(name)}: {tpath} does not exist{hint}")
    data = tpath.read_bytes()
    try:
        tensors = st_load(data)
        header_text = _metadata(data).get("repact")
    except (SafetensorError, ValueError, RuntimeError, OSError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{tpath} is not a readable safetensors file: {exc}") from None
    if header_text is None:
        if jpath.exists():
            try:
                header_text = jpath.read_text(encoding="utf-8")
            except UnicodeDecodeError as exc:
                raise CheckpointError(f"{jpath} is not a readable repact header: {exc}") from None
        else:
            # a bare state dict saved by safetensors: all keys are model keys
            return Checkpoint(model_state=dict(tensors), path=tpath)
    try:
        header = json.loads(header_text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise CheckpointError(f"{tpath} has a malformed repact header: {exc}") from None
    if not isinstance(header, dict) or header.get("format") != "repact-checkpoint":
        raise CheckpointError(f"{tpath} is not a repact checkpoint (its header is not a repact-checkpoint mapping)")
    version = header.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{tpath} has a malformed repact header: version {version!r} is not an integer")
    if version > FORMAT_VERSION:
        raise CheckpointError(
            f"{tpath} was written by a newer repact (format {version}); this one reads up to {FORMAT_VERSION}"
        )
    for key in ("model_config", "state"):
        if not isinstance(header.get(key, {}), dict):
            raise CheckpointError(f"{tpath} has a malformed repact header: {key!r} is a "
                                  f"{type(header[key]).__name__}, not a mapping")
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    others = {k: v for k, v in tensors.items() if not k.startswith("model.")}
    try:
        state = unflatten_state(header.get("state", {}), others)
    except (TypeError, AttributeError, ValueError, KeyError, RecursionError) as exc:
        if isinstance(exc, CheckpointError):
            raise CheckpointError(f"{tpath}: {exc}") from None
        raise CheckpointError(f"{tpath} has a malformed repact header: its state cannot be read ({exc})") from None
    return Checkpoint(model_state=model_state, model_config=dict(header.get("model_config", {})), state=state,
                      tensors=others, path=tpath)


def _metadata(data: bytes) -> dict[str, str]:
    n = int.from_bytes(data[:8], "little")
    if n <= 0 or n > len(data) - 8:
        raise ValueError("bad header length")
    head = json.loads(data[8 : 8 + n])
    return dict(head.get("__metadata__", {}) or {})


def build_model(ckpt: Checkpoint | str | Path, *, strict: bool = True) -> nn.Module:
    """Rebuild the model recorded in a checkpoint's ``model_config`` and load its weights.

    ``model_config`` holds ``create_model`` arguments: ``name``, ``act``, ``num_classes`` and any
    builder keywords (``kwargs``). A model saved after ``reparameterize`` records
    ``"reparameterized": true`` and is rebuilt in its deploy form. ``"anneal"`` re-wraps the
    activations a training run annealed, ``"structure"`` puts the modules a deploy changed (merged
    layers, activations annealed to nothing) at their paths (:func:`repact.merge.apply_structure`).

    The header is data, not instructions: before anything is built, the model config is checked
    (:func:`check_model_config`: types, only builder keywords that shape the architecture, never
    ones that fetch weights from a file or the network, and a model that fits in memory, counted
    on the meta device, its structure record included) and the weights must be finite
    (:func:`check_weights_finite`). Each refusal is a :class:`CheckpointError` naming the file.
    """
    from .activations.anneal import anneal_activations
    from .merge.layers import apply_structure
    from .models import create_model
    from .reparam import reparameterize

    if not isinstance(ckpt, Checkpoint):
        ckpt = load_checkpoint(ckpt)
    cfg = dict(ckpt.model_config)
    if "name" not in cfg:
        raise CheckpointError(
            f"{ckpt.path} records no model config (name, act, num_classes); load its state dict into a model you build"
        )
    check_model_config(cfg, ckpt.path)
    check_weights_finite(ckpt)
    try:
        model = create_model(cfg["name"], act=cfg.get("act"), num_classes=cfg.get("num_classes", 1000),
                             **cfg.get("kwargs", {}))
        if cfg.get("anneal"):  # activations wrapped by repact train --anneal-include
            anneal_activations(model, cfg["anneal"].get("include"))
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{ckpt.path} records a model that cannot be built: {exc}") from None
    _prime_lazy(model, cfg)
    if cfg.get("reparameterized"):
        model = reparameterize(model)
    if cfg.get("structure"):  # modules a deploy put in place of others (merged layers, annealed activations)
        try:
            apply_structure(model, cfg["structure"])
        except ValueError as exc:
            raise CheckpointError(f"{ckpt.path}: {exc}") from None
    try:
        model.load_state_dict(ckpt.model_state, strict=strict)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        raise CheckpointError(
            f"{ckpt.path} does not match model {cfg['name']!r} with act {cfg.get('act')!r}: "
            + " ".join(line.strip() for line in first[:4])
        ) from None
    return model


#: bytes per parameter while loading a checkpoint: the model's weight and the checkpoint's copy (fp32)
LOAD_BYTES_PER_PARAM = 8

#: the model config's entries and the JSON types each may have
_MODEL_CONFIG_TYPES: dict[str, tuple[type, ...]] = {
    "name": (str,), "act": (str, type(None)), "num_classes": (int,), "kwargs": (dict,), "input_shape": (list,),
    "reparameterized": (bool,), "task": (str,), "preprocess": (dict,), "anneal": (dict,), "structure": (dict,),
}


def check_model_config(cfg: Mapping[str, Any], path: Path | None) -> None:
    """Refuse, naming the file, a model config whose entries have the wrong types, whose builder
    keywords a checkpoint may not record (:func:`repact.models.checks.check_recorded_kwargs`: nothing
    that fetches weights, reads a file or the network), whose recorded input is absurdly large, or
    whose model would not fit in memory (its parameters counted on the meta device, nothing allocated)."""
    from .models.checks import check_model_fits, check_recorded_kwargs
    from .models.registry import MAX_IMAGE_SIDE

    for key, types in _MODEL_CONFIG_TYPES.items():
        if key not in cfg:
            continue
        v = cfg[key]
        if not isinstance(v, types) or (isinstance(v, bool) and bool not in types):
            want = " or ".join("null" if t is type(None) else t.__name__ for t in types)
            raise CheckpointError(f"{path}: its model config's {key!r} is {v!r} ({type(v).__name__}), not a {want}; "
                                  "the file is damaged or was not written by repact")
    pre = cfg.get("preprocess") or {}
    recorded = {"input_shape": cfg.get("input_shape"),  # one sample's shape; preprocess: a square image
                "preprocess": [pre.get(k, 1) for k in ("channels", "img_size", "img_size")]}
    most = 3 * MAX_IMAGE_SIDE**2
    for key, values in recorded.items():
        if values is not None and not (all(_positive_int(v) for v in values) and math.prod(values) <= most):
            raise CheckpointError(f"{path}: its model config's {key} asks for inputs of {values}; accepted: positive "
                                  f"integers, at most {most:,} values (3 x {MAX_IMAGE_SIDE} x {MAX_IMAGE_SIDE})")
    _check_deploy_records(cfg, path)
    if "name" not in cfg:
        return
    try:
        check_recorded_kwargs(cfg["name"], cfg.get("kwargs", {}))
    except ValueError as exc:
        raise CheckpointError(f"{path}: its model config is refused: {exc}") from None
    try:
        check_model_fits(cfg["name"], cfg.get("act"), cfg.get("num_classes", 1000), cfg.get("kwargs", {}),
                         torch.device("cpu"), bytes_per_param=LOAD_BYTES_PER_PARAM,
                         purpose="loading it needs about {gib} GiB")
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path} records a model that cannot be built: {exc}") from None


def _check_deploy_records(cfg: Mapping[str, Any], path: Path | None) -> None:
    """The ``anneal`` record holds one regex (or null); the ``structure`` record only modules that
    ``repact.merge.module_spec`` writes, whose tensors fit in memory (counted, not allocated)."""
    from .merge.layers import check_structure
    from .models.checks import memory_bytes

    anneal = cfg.get("anneal")
    if anneal is not None and (set(anneal) != {"include"} or not isinstance(anneal["include"], (str, type(None)))):
        raise CheckpointError(f"{path}: its model config's anneal record is {anneal!r}, not "
                              "{\"include\": REGEX or null}; the file is damaged or was not written by repact")
    if "structure" not in cfg:
        return
    try:
        n = check_structure(cfg["structure"])
    except ValueError as exc:
        raise CheckpointError(f"{path}: {exc}; the file is damaged or was not written by repact") from None
    have = memory_bytes(torch.device("cpu"))
    if have is not None and n * LOAD_BYTES_PER_PARAM > have:
        raise CheckpointError(f"{path}: its structure record asks for modules of {n:,} values, "
                              f"{n * LOAD_BYTES_PER_PARAM / 2**30:,.1f} GiB to load, more than the "
                              f"{have / 2**30:,.1f} GiB of memory")


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v > 0


def check_weights_finite(ckpt: Checkpoint) -> None:
    """Refuse, naming the file and its first such tensors, a checkpoint whose weights hold NaN or inf:
    the one check of every command that rebuilds a model from a checkpoint (``train --resume`` too)."""
    from .reparam import nonfinite_tensors

    bad = nonfinite_tensors(ckpt.model_state)
    if bad:
        shown = ", ".join(f"{name} ({n} of {numel})" for _, name, n, numel in bad[:3])
        more = f" and {len(bad) - 3} more tensor(s)" if len(bad) > 3 else ""
        raise CheckpointError(f"{ckpt.path} holds non-finite weights (NaN/inf): {shown}{more}; no model is built "
                              "from it (a diverged run? use an earlier checkpoint)")


def _prime_lazy(model: nn.Module, cfg: Mapping[str, Any]) -> None:
    """Run one dummy forward so lazy channel-wise activations create their parameters."""
    from .activations.base import Activation

    if not any(isinstance(m, Activation) and not m._built for m in model.modules()):
        return
    shape = cfg.get("input_shape")
    if not shape:
        raise CheckpointError("the model has lazy activations and the checkpoint records no input_shape to build them")
    with eval_mode(model), torch.no_grad():
        model(torch.zeros([1, *[int(s) for s in shape]]))
