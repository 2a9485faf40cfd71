"""Segmenters with swapped activations: torchvision's LR-ASPP and DeepLabV3 on a dilated MobileNetV3-Large.

``create_model("lraspp_mobilenet_v3_large", act="repact", num_classes=21)`` builds torchvision's
architecture (never downloading anything) with the backbone's activations swapped (see
:mod:`repact.models.task_backbone` for ``convention``, ``swap_heads`` and ``weights``).
``num_classes`` counts every mask value but 255 (VOC: background + 20 = 21). The models return
torchvision's ``{"out": logits (N, num_classes, H, W)[, "aux": ...]}``, logits at the input size.

``outputs="dense"`` returns a view with the same weights and state-dict keys whose forward returns
the logits tensor (and the auxiliary logits when ``aux_loss=True``): the whole model, ready for
ONNX export. LR-ASPP's gate (a Sigmoid) and the SE blocks' activations are never swapped.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torchvision.models.segmentation.deeplabv3 import _deeplabv3_mobilenetv3
from torchvision.models.segmentation.lraspp import _lraspp_mobilenetv3

from .registry import register_model
from .task_backbone import (OUTPUTS, DenseView, build_mobilenet_v3_large, check_choice, finish_task_model,
                            read_weights)

__all__ = ["DenseSegmentation", "deeplabv3_mobilenet_v3_large", "lraspp_mobilenet_v3_large"]


class DenseSegmentation(DenseView):
    """A torchvision segmentation model returning its logits tensor (or ``(out, aux)``) instead of a dict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        if "aux_classifier" not in self._modules and hasattr(model, "aux_classifier"):
            self.aux_classifier = model.aux_classifier  # DeepLabV3 without aux head holds a plain None
        self._model_forward = type(model).forward  # torchvision's forward, run on this view's (shared) children

    def forward(self, images: torch.Tensor):
        out = self._model_forward(self, images)
        return (out["out"], out["aux"]) if "aux" in out else out["out"]


def _build(arch: str, act: Any, num_classes: int, convention: str, swap_heads: bool, act_init: str, weights: Any,
           kind: str, outputs: str, aux_loss: bool) -> nn.Module:
    check_choice(outputs, OUTPUTS, "outputs")
    state, kind = read_weights(weights, kind)
    backbone, bb_report, loaded = build_mobilenet_v3_large(
        act, convention=convention, norm_layer=nn.BatchNorm2d, reduced_tail=False, dilated=True,
        weights_state=state if kind == "backbone" else None, act_init=act_init)
    if arch == "lraspp":
        model = _lraspp_mobilenetv3(backbone, num_classes)
        heads = ["classifier"]
    else:
        model = _deeplabv3_mobilenetv3(backbone, num_classes, aux_loss)
        heads = ["classifier", "aux_classifier"]
    return finish_task_model(model, act=act, swap_heads=swap_heads, heads=heads, act_init=act_init, kind=kind,
                             state=state, backbone_report=bb_report, loaded=loaded, outputs=outputs,
                             dense=DenseSegmentation)


@register_model("lraspp_mobilenet_v3_large", family="segmentation")
def lraspp_mobilenet_v3_large(
    act: Any = None, num_classes: int = 21, *, convention: str = "repact", swap_heads: bool = False,
    act_init: str = "default", weights: Any = None, weights_kind: str = "auto", outputs: str = "default",
    **kwargs: Any,
) -> nn.Module:
    """LR-ASPP on a dilated MobileNetV3-Large (torchvision's); ``num_classes`` includes the background."""
    if kwargs:
        raise ValueError(f"lraspp_mobilenet_v3_large does not take {', '.join(sorted(kwargs))}")
    return _build("lraspp", act, num_classes, convention, swap_heads, act_init, weights, weights_kind, outputs, False)


@register_model("deeplabv3_mobilenet_v3_large", family="segmentation")
def deeplabv3_mobilenet_v3_large(
    act: Any = None, num_classes: int = 21, *, convention: str = "repact", swap_heads: bool = False,
    act_init: str = "default", weights: Any = None, weights_kind: str = "auto", aux_loss: bool = False,
    outputs: str = "default", **kwargs: Any,
) -> nn.Module:
    """DeepLabV3 on a dilated MobileNetV3-Large (torchvision's); ``aux_loss`` adds the FCN auxiliary head."""
    if kwargs:
        raise ValueError(f"deeplabv3_mobilenet_v3_large does not take {', '.join(sorted(kwargs))}")
    return _build("deeplabv3", act, num_classes, convention, swap_heads, act_init, weights, weights_kind, outputs,
                  bool(aux_loss))
