"""Model builders by name: ``create_model(name, act=..., num_classes=..., **kwargs)``.

A builder is a plain function taking keyword arguments (torchvision style). ``act`` is anything
``repact.create_act`` takes (a name, a class, a callable) or ``None`` for the architecture's own
activations.
"""

from __future__ import annotations

import difflib
import inspect
from dataclasses import dataclass
from typing import Any, Callable

from torch import nn

__all__ = ["ModelSpec", "register_model", "create_model", "list_models", "get_model_spec", "positive_int",
           "probability", "positive_number", "flag", "MAX_IMAGE_SIDE"]

#: the largest input side a model is built for or fed (a 3 x 4096 x 4096 float image is 192 MiB)
MAX_IMAGE_SIDE = 4096


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    description: str
    #: keywords of the builder's ``**kwargs`` that a checkpoint may record (see :mod:`repact.models.checks`)
    passthrough: tuple[str, ...] = ()


_MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, *, family: str = "", description: str = "", passthrough: tuple[str, ...] = ()):
    """Decorator registering a builder under ``name`` (lower case). ``passthrough``: the keywords its
    ``**kwargs`` forwards that a checkpoint may record (its named keywords may be recorded anyway)."""

    def deco(fn: Callable[..., nn.Module]):
        key = name.lower()
        if key in _MODELS:
            raise ValueError(f"model name {key!r} is already registered")
        doc = description or (inspect.getdoc(fn) or "").split("\n")[0]
        _MODELS[key] = ModelSpec(key, fn, family, doc, tuple(passthrough))
        return fn

    return deco


def list_models(family: str | None = None) -> list[str]:
    return sorted(n for n, s in _MODELS.items() if family is None or s.family == family)


def get_model_spec(name: str) -> ModelSpec:
    key = str(name).strip().lower().replace("-", "_")
    if key not in _MODELS:
        close = difflib.get_close_matches(key, list(_MODELS), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else ""
        raise ValueError(f"unknown model {name!r}.{hint} Available models: {', '.join(list_models())}.")
    return _MODELS[key]


def create_model(name: str, act: Any = None, num_classes: int = 1000, **kwargs: Any) -> nn.Module:
    """Build a registered model with activation ``act`` and ``num_classes`` outputs.

    Arguments a builder cannot take, or values it cannot build with (``width=-5``), raise
    ``ValueError`` naming the argument before any tensor is allocated.
    """
    spec = get_model_spec(name)
    positive_int(spec.name, "num_classes", num_classes)
    params = inspect.signature(spec.builder).parameters
    if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        unknown = sorted(set(kwargs) - set(params))
        if unknown:
            raise ValueError(f"{spec.name} does not take {', '.join(unknown)}; it takes "
                             f"{', '.join(k for k in params if k not in ('act', 'num_classes'))}")
    return spec.builder(act=act, num_classes=num_classes, **kwargs)


# ------------------------------------------------------------------------------------------------
# argument checks for builders: a clear ValueError instead of a failure deep inside torch
# ------------------------------------------------------------------------------------------------


def positive_int(model: str, key: str, value: Any, *, most: int = 1 << 20) -> int:
    """``value`` as an int in [1, most], else ValueError naming the model and argument."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= most:
        raise ValueError(f"{model}: {key} must be an integer from 1 to {most}, got {value!r}")
    return value


def probability(model: str, key: str, value: Any) -> float:
    """``value`` as a float in [0, 1), else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 1:
        raise ValueError(f"{model}: {key} must be a number in [0, 1), got {value!r}")
    return float(value)


def positive_number(model: str, key: str, value: Any, *, most: float = 64.0) -> float:
    """``value`` as a float in (0, most], else ValueError."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value <= most:
        raise ValueError(f"{model}: {key} must be a number above 0 and at most {most:g}, got {value!r}")
    return float(value)


def flag(model: str, key: str, value: Any) -> bool:
    """``value`` as a bool (true/false), else ValueError."""
    if not isinstance(value, bool):
        raise ValueError(f"{model}: {key} must be true or false, got {value!r}")
    return value
