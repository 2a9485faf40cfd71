"""Checks of a model config before anything is built.

* :func:`check_recorded_kwargs`: a checkpoint's header is data, not instructions. The builder
  keywords a checkpoint may record are those that shape the architecture: the builder's named
  keywords and the ``passthrough`` keywords it registered, with plain JSON values (numbers, strings,
  true/false, null, lists of them). The keywords that fetch weights (``weights``, ``pretrained``)
  are taken only with their "none" value: a checkpoint's weights are its own tensors. So a header
  cannot make a command download weights, read a file it names, or hand timm
  ``pretrained_cfg_overlay`` or ``checkpoint_path``.
* :func:`check_model_fits`: the model's parameters counted on the meta device (nothing allocated)
  against the memory of the device it is for, before it is built for real (``width=1048576``).
"""

from __future__ import annotations

import inspect
import os
from typing import Any, Mapping

import torch
from torch import nn

from .registry import ModelSpec, create_model, get_model_spec

__all__ = ["FETCHING", "recordable_keywords", "check_recorded_kwargs", "parameter_count", "memory_bytes",
           "ModelTooLarge", "check_model_fits"]

#: builder keywords that fetch weights (from a file or the network), and the one value a checkpoint may record
FETCHING: dict[str, Any] = {"weights": None, "pretrained": False}

_SCALARS = (str, bool, int, float, type(None))


def recordable_keywords(spec: ModelSpec) -> tuple[str, ...]:
    """The builder keywords a checkpoint may record for ``spec`` (``act`` and ``num_classes`` are its own entries)."""
    params = inspect.signature(spec.builder).parameters.items()
    named = {k for k, p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return tuple(sorted((named | set(spec.passthrough)) - {"act", "num_classes"} - set(FETCHING)))


def _plain(value: Any) -> bool:
    return isinstance(value, _SCALARS) or (isinstance(value, list) and all(isinstance(v, _SCALARS) for v in value))


def check_recorded_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """``ValueError`` naming the first builder keyword of ``kwargs`` a checkpoint may not record for
    model ``name`` (see the module doc); an unknown ``name`` is a ``ValueError`` too."""
    spec = get_model_spec(name)
    allowed = recordable_keywords(spec)
    for key, value in kwargs.items():
        if key in FETCHING:
            if value is not FETCHING[key]:
                none = "null" if FETCHING[key] is None else "false"
                raise ValueError(f"builder keyword {key}={value!r} fetches weights (a file or the network); a "
                                 f"checkpoint's weights are its own tensors, so it may record {key} only as {none}")
        elif key not in allowed:
            raise ValueError(f"builder keyword {key!r} is not one a checkpoint may record for {spec.name}; "
                             f"accepted: {', '.join(allowed) or 'none'}")
        elif not _plain(value):
            raise ValueError(f"builder keyword {key}={value!r} is not a number, string, true/false, null or a "
                             "list of them")


def parameter_count(name: str, act: Any, num_classes: int, kwargs: Mapping[str, Any]) -> int | None:
    """The parameters of the model, built on the meta device (nothing allocated) without the keywords
    that fetch weights (:data:`FETCHING`: weights do not change the count, and a count must not download
    or read a file); None where its builder cannot run there. Bad arguments raise ``ValueError`` /
    ``TypeError`` as in the real build."""
    kwargs = {k: v for k, v in kwargs.items() if k not in FETCHING}
    built = None
    with torch.random.fork_rng(devices=[]):
        for a in (act, None):  # some activations cannot be built on meta; their parameters are few
            try:
                with torch.device("meta"):
                    built = create_model(name, act=a, num_classes=num_classes, **kwargs)
                break
            except (ValueError, TypeError):
                raise
            except Exception:  # noqa: BLE001 - a builder that cannot run on meta: no estimate
                continue
    if built is None:
        return None
    return sum(p.numel() for p in built.parameters() if not isinstance(p, nn.parameter.UninitializedParameter))


def memory_bytes(device: torch.device) -> int | None:
    """Total memory of ``device`` (physical RAM for the CPU), or None where unknown."""
    try:
        if device.type == "cuda":
            return int(torch.cuda.get_device_properties(device).total_memory)
        return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError, RuntimeError):
        return None


class ModelTooLarge(ValueError):
    """A model whose parameters alone would not fit in the memory of the device it is built for."""


def check_model_fits(name: str, act: Any, num_classes: int, kwargs: Mapping[str, Any], device: torch.device, *,
                     bytes_per_param: int, purpose: str) -> None:
    """:class:`ModelTooLarge` when ``bytes_per_param`` times the model's parameter count (on the meta
    device) exceeds ``device``'s memory; ``purpose`` says what the bytes are for, e.g. "training it
    needs about {gib} GiB for weights, gradients and optimizer state"."""
    n = parameter_count(name, act, num_classes, kwargs)
    if n is None:
        return
    need, have = n * bytes_per_param, memory_bytes(device)
    if have is not None and need > have:
        raise ModelTooLarge(f"model {name!r} with {dict(kwargs)} has {n:,} parameters: "
                            f"{purpose.format(gib=f'{need / 2**30:,.1f}')}, more than the {have / 2**30:,.1f} GiB "
                            f"of {device.type}")
