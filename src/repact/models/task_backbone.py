"""Shared pieces of the detection and segmentation builders: the MobileNetV3-Large backbone with its
activations swapped, local weight files, and tensor-output views of torchvision's task models.

* **Activations.** ``convention="repact"`` swaps every conv-block activation of the backbone (stem,
  expand, depthwise, last conv: 31 sites, ReLU and HardSwish alike; the SE blocks keep theirs),
  ``"standard"`` only its HardSwish sites (20), as :func:`repact.models.create_model` does for
  classification. ``swap_heads=True`` also swaps every activation module of the task's heads
  (the detector's extra layers and heads, the segmentation head). The swap is
  :func:`repact.swap_activations`; its reports are kept in ``model.repact_info["swap"]``.
* **Weights** come only from a local file (``.safetensors``, a repact checkpoint, or ``.pt``/``.pth``
  read with ``weights_only=True``; nothing is downloaded). A *backbone* file holds a MobileNetV3-Large
  classification state dict (keys ``features.*``: torchvision's ImageNet file, or a repact
  ``mobilenet_v3_large`` checkpoint, with or without the same swapped activation; activation
  parameters the file lacks keep their initial values and are listed). A *full* file holds the
  task model's own state dict (keys ``backbone.*``) and must match it exactly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import torch
import torchvision
from torch import nn
from torchvision.ops.misc import Conv2dNormActivation

from ..activations.base import Activation
from ..checkpoint import CheckpointError, load_checkpoint
from ..surgery import SwapReport, swap_activations
from .torchvision_models import MOBILENET_V3_CONVENTIONS

__all__ = ["WEIGHT_KINDS", "DenseView", "backbone_activation_paths", "build_mobilenet_v3_large", "finish_task_model",
           "load_full_weights", "read_state_dict", "read_weights", "rebuild_kwargs", "swap_head_activations",
           "weights_kind"]

WEIGHT_KINDS = ("auto", "backbone", "full")
OUTPUTS = ("default", "dense")


def check_choice(value: Any, choices: Iterable[str], what: str) -> str:
    choices = tuple(choices)
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return value


# --------------------------------------------------------------------------------------------------
# weight files
# --------------------------------------------------------------------------------------------------


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a local weight file without running pickled code.

    ``.safetensors``: a repact checkpoint (its ``model.*`` keys) or a bare state dict; anything else:
    ``torch.load(weights_only=True)``, unwrapping ``{"model": ...}`` / ``{"state_dict": ...}``.
    """
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"weights file {p} does not exist (weights are only read from local files)")
    if p.suffix == ".safetensors":
        try:
            return dict(load_checkpoint(p).model_state)
        except CheckpointError as exc:
            raise ValueError(str(exc)) from None
    try:
        obj = torch.load(p, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (unpickling refusals and corrupt files raise many types)
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"cannot read weights file {p} with weights_only=True: {type(exc).__name__}: {first}") from None
    for key in ("model", "state_dict", "model_state"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
            break
    if not isinstance(obj, Mapping) or not obj or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"weights file {p} does not hold a state dict of tensors")
    return {str(k).removeprefix("module."): v for k, v in obj.items()}


def weights_kind(state: Mapping[str, torch.Tensor], kind: str = "auto") -> str:
    """``"backbone"`` (keys ``features.*``) or ``"full"`` (keys ``backbone.*``) for ``kind="auto"``."""
    check_choice(kind, WEIGHT_KINDS, "weights_kind")
    if kind != "auto":
        return kind
    if any(k.startswith("backbone.") for k in state):
        return "full"
    if any(k.startswith("features.") for k in state):
        return "backbone"
    raise ValueError("cannot tell whether the weights file is a backbone (keys features.*) or a whole model "
                     f"(keys backbone.*): its first keys are {', '.join(list(state)[:3])}")


def read_weights(weights: Any, kind: str = "auto") -> tuple[dict[str, torch.Tensor] | None, str | None]:
    """``(state dict, "backbone" | "full")`` of a local weights file, ``(None, None)`` without one."""
    check_choice(kind, WEIGHT_KINDS, "weights_kind")
    if weights is None:
        return None, None
    state = read_state_dict(weights)
    return state, weights_kind(state, kind)


def _activation_keys(model: nn.Module) -> set[str]:
    keys = set()
    for path, m in model.named_modules():
        if isinstance(m, Activation) or type(m).__module__ == "torch.nn.modules.activation":
            keys.update(f"{path}.{k}" if path else k for k in m.state_dict())
    return keys


def _load_backbone_weights(backbone: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Load ``features.*`` of a classification state dict into a MobileNetV3 ``backbone`` (before it is wrapped)."""
    own = {k: v for k, v in backbone.state_dict().items() if k.startswith("features.")}
    given = {k: v for k, v in state.items() if k.startswith("features.")}
    acts = _activation_keys(backbone)
    shape_errors = [f"{k} {tuple(v.shape)} (model {tuple(own[k].shape)})" for k, v in given.items()
                    if k in own and v.shape != own[k].shape]
    if shape_errors:
        raise ValueError("the backbone weights do not fit MobileNetV3-Large features (reduced_tail or dilation "
                         f"differ?): {'; '.join(shape_errors[:3])}")
    missing = sorted(k for k in own if k not in given and k not in acts)
    if missing:
        raise ValueError(f"the backbone weights lack {len(missing)} tensor(s) of the features, e.g. "
                         f"{', '.join(missing[:3])}")
    unexpected = sorted(k for k in given if k not in own)
    if unexpected and not all(_under_activation(k, backbone) for k in unexpected):
        bad = [k for k in unexpected if not _under_activation(k, backbone)]
        raise ValueError(f"the backbone weights have {len(bad)} tensor(s) the features lack, e.g. {', '.join(bad[:3])}")
    backbone.load_state_dict({k: v for k, v in given.items() if k in own}, strict=False)
    return {"kind": "backbone", "loaded": len(given) - len(unexpected),
            "activation_tensors_kept_at_init": sorted(k for k in own if k not in given),
            "ignored_activation_tensors": unexpected,
            "ignored_other": sorted(k for k in state if not k.startswith("features."))}


def _under_activation(key: str, model: nn.Module) -> bool:
    """Whether ``key`` names a tensor of a module sitting where ``model`` has an activation."""
    path = key.rsplit(".", 1)[0]
    try:
        m = model.get_submodule(path)
    except AttributeError:
        return False
    return isinstance(m, Activation) or type(m).__module__ == "torch.nn.modules.activation"


def load_full_weights(model: nn.Module, state: Mapping[str, torch.Tensor]) -> dict[str, Any]:
    """Load a whole task model's state dict (strict), with a one-line error on mismatch."""
    result = model.load_state_dict(dict(state), strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"{len(result.missing_keys)} missing (e.g. {', '.join(result.missing_keys[:3])})")
        if result.unexpected_keys:
            parts.append(f"{len(result.unexpected_keys)} unexpected (e.g. {', '.join(result.unexpected_keys[:3])})")
        raise ValueError("the weights file does not match this model (same act, classes and options?): "
                         + "; ".join(parts))
    return {"kind": "full", "loaded": len(state)}


# --------------------------------------------------------------------------------------------------
# backbone
# --------------------------------------------------------------------------------------------------


def backbone_activation_paths(features: nn.Module, convention: str, prefix: str = "features") -> list[str]:
    """Paths of the conv-block activations of MobileNetV3 ``features`` that ``convention`` swaps."""
    check_choice(convention, MOBILENET_V3_CONVENTIONS, "convention")
    paths = []
    for path, block in features.named_modules():
        if isinstance(block, Conv2dNormActivation) and len(block) == 3:
            if convention == "standard" and not isinstance(block[2], nn.Hardswish):
                continue
            paths.append(".".join(p for p in (prefix, path, "2") if p))
    return paths


def _anchored(paths: Iterable[str]) -> list[str]:
    return [f"^{re.escape(p)}$" for p in paths]


def build_mobilenet_v3_large(
    act: Any, *, convention: str, norm_layer: Callable[..., nn.Module], reduced_tail: bool, dilated: bool,
    weights_state: Mapping[str, torch.Tensor] | None, act_init: str, init: Callable[[nn.Module], None] | None = None,
) -> tuple[nn.Module, SwapReport | None, dict[str, Any] | None]:
    """A torchvision MobileNetV3-Large (no download) with its conv-block activations swapped and a
    backbone weight file loaded; returns ``(model, swap report, weights summary)``."""
    model = torchvision.models.mobilenet_v3_large(weights=None, norm_layer=norm_layer, reduced_tail=reduced_tail,
                                                  dilated=dilated)
    if init is not None:
        init(model)
    report = None
    if act is not None:
        paths = backbone_activation_paths(model.features, convention)
        report = swap_activations(model, act, include=_anchored(paths), init=act_init,
                                  example_input=torch.zeros(1, 3, 64, 64))
    loaded = _load_backbone_weights(model, weights_state) if weights_state is not None else None
    return model, report, loaded


def swap_head_activations(model: nn.Module, act: Any, prefixes: Iterable[str], *, act_init: str) -> SwapReport:
    """Swap every default-target activation module under the module paths ``prefixes`` (the heads).

    No example forward: the detectors' heads run once per feature level with shared weights, which
    surgery's call tracking reads as a module to untie; here each head module keeps one (shared)
    activation, as it keeps one set of conv weights. Channels come from the layer before each
    activation (every head activation sits in a ``Sequential`` after a conv, BatchNorm or linear).
    """
    include = [f"^{re.escape(p)}\\." for p in prefixes]
    return swap_activations(model, act, include=include, init=act_init)


def finish_task_model(model: nn.Module, *, act: Any, swap_heads: bool, heads: Iterable[str], act_init: str,
                      kind: str | None, state: Mapping[str, torch.Tensor] | None, backbone_report: SwapReport | None,
                      loaded: dict[str, Any] | None, outputs: str, dense: type["DenseView"],
                      **info: Any) -> nn.Module:
    """The builders' common tail: swap the heads' activations, load a full weights file, wrap in the
    dense view when asked, and record what was done in ``model.repact_info``."""
    head_report = swap_head_activations(model, act, heads, act_init=act_init) if act is not None and swap_heads \
        else None
    if kind == "full":
        loaded = load_full_weights(model, state)
    if outputs == "dense":
        model = dense(model)
    model.repact_info = {"backbone_swap": swap_summary(backbone_report), "head_swap": swap_summary(head_report),
                         "weights": loaded, **info}
    return model


def rebuild_kwargs(model: nn.Module, kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """The builder keywords that rebuild ``model``'s architecture without its weights file: ``weights``,
    ``weights_kind`` and ``outputs`` dropped, and the choices a weights file made pinned (``repact_info["arch"]``,
    e.g. SSDlite's ``reduced_tail``, which a backbone file turns off)."""
    out = {k: v for k, v in kwargs.items() if k not in ("weights", "weights_kind", "outputs")}
    out.update(getattr(model, "repact_info", {}).get("arch", {}))
    return out


def swap_summary(report: SwapReport | None) -> dict[str, Any]:
    if report is None:
        return {"swapped": 0, "paths": [], "functional_not_swapped": []}
    return {"swapped": len(report), "paths": report.paths,
            "functional_not_swapped": [f"{f.op} in {f.module or '<root>'} x{f.count}" for f in report.functional]}


# --------------------------------------------------------------------------------------------------
# tensor-output views
# --------------------------------------------------------------------------------------------------


class DenseView(nn.Module):
    """A view of a task model that holds the same children (so the same state-dict keys) and whose
    forward returns plain tensors: what ONNX export, onnxruntime parity and cost tools need.

    Subclasses define ``forward``. The wrapped model's weights are shared, not copied.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        for name, child in model._modules.items():
            self.add_module(name, child)
        self.wrapped_type = type(model).__name__
        self.train(model.training)
