"""Model builders: ``repact.models.create_model(name, act=..., num_classes=..., **kwargs)``."""

from __future__ import annotations

import importlib

from .registry import ModelSpec, create_model, get_model_spec, list_models, register_model

__all__ = ["ModelSpec", "create_model", "get_model_spec", "list_models", "register_model"]

# each family module registers its builders on import
for _family in ("small", "vanillanet", "torchvision_models", "tfnet", "timm_models", "detection", "segmentation"):
    try:
        importlib.import_module(f"{__name__}.{_family}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__name__}.{_family}":
            raise
