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

__all__ = ["ModelSpec", "register_model", "create_model", "list_models", "get_model_spec"]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    builder: Callable[..., nn.Module]
    family: str
    description: str


_MODELS: dict[str, ModelSpec] = {}


def register_model(name: str, *, family: str = "", description: str = ""):
    """Decorator registering a builder under ``name`` (lower case)."""

    def deco(fn: Callable[..., nn.Module]):
        key = name.lower()
        if key in _MODELS:
            raise ValueError(f"model name {key!r} is already registered")
        doc = description or (inspect.getdoc(fn) or "").split("\n")[0]
        _MODELS[key] = ModelSpec(key, fn, family, doc)
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
    """Build a registered model with activation ``act`` and ``num_classes`` outputs."""
    spec = get_model_spec(name)
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
    return spec.builder(act=act, num_classes=num_classes, **kwargs)
