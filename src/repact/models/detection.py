"""Detectors with swapped activations: torchvision's SSDlite320 and Faster R-CNN (MobileNetV3-Large 320 FPN).

``create_model("ssdlite320_mobilenet_v3_large", act="repact", num_classes=4)`` builds torchvision's
architecture (never downloading anything) with the backbone's activations swapped (see
:mod:`repact.models.task_backbone` for ``convention``, ``swap_heads`` and ``weights``).
``num_classes`` counts torchvision's background class: K object classes -> ``K + 1``.

``outputs="dense"`` returns a :class:`~repact.models.task_backbone.DenseView` with the same
weights and state-dict keys, taking a batch of float images in [0, 1] already resized (SxS) and
returning the network's raw outputs, before any box decoding or NMS:

* SSDlite: ``(bbox_regression (N, A, 4), cls_logits (N, A, num_classes))``;
* Faster R-CNN: the FPN features (3 levels), then the RPN objectness and box deltas per level.

What the dense view leaves out (and ONNX export with it): torchvision's resize transform, anchor
generation, box decoding, score thresholds and NMS, and for Faster R-CNN the proposal selection,
RoIAlign and the second-stage box head and predictor.
"""

from __future__ import annotations

import inspect
from collections import OrderedDict
from functools import partial
from typing import Any

import torch
from torch import nn
from torchvision.models.detection.faster_rcnn import FasterRCNN
from torchvision.models.detection.ssd import SSD
from torchvision.models.detection import _utils as det_utils
from torchvision.models.detection.anchor_utils import AnchorGenerator, DefaultBoxGenerator
from torchvision.models.detection.backbone_utils import _mobilenet_extractor as _fpn_extractor
from torchvision.models.detection.ssdlite import SSDLiteHead, _mobilenet_extractor as _ssd_extractor, _normal_init

from .registry import MAX_IMAGE_SIDE, positive_int, register_model
from .task_backbone import (OUTPUTS, DenseView, build_mobilenet_v3_large, check_choice, finish_task_model,
                            read_weights)

__all__ = ["ActTwoMLPHead", "DenseSSD", "DenseFasterRCNN", "fasterrcnn_mobilenet_v3_large_320_fpn",
           "ssdlite320_mobilenet_v3_large"]


class ActTwoMLPHead(nn.Sequential):
    """torchvision's Faster R-CNN box head (``TwoMLPHead``: flatten, fc6, ReLU, fc7, ReLU) with its two
    ``F.relu`` calls as modules (``act6``, ``act7``) so that surgery can swap them; the same function
    and the same state-dict keys (``fc6.*``, ``fc7.*``)."""

    def __init__(self, in_channels: int, representation_size: int) -> None:
        super().__init__(OrderedDict([
            ("flatten", nn.Flatten(start_dim=1)),
            ("fc6", nn.Linear(in_channels, representation_size)), ("act6", nn.ReLU()),
            ("fc7", nn.Linear(representation_size, representation_size)), ("act7", nn.ReLU()),
        ]))


def _normalize(x: torch.Tensor, mean: list[float], std: list[float]) -> torch.Tensor:
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return (x - m) / s


class DenseSSD(DenseView):
    """SSD's network on resized [0, 1] images: ``(bbox_regression, cls_logits)``."""

    def __init__(self, model: SSD) -> None:
        super().__init__(model)
        self.image_mean, self.image_std = list(model.transform.image_mean), list(model.transform.image_std)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.backbone(_normalize(images, self.image_mean, self.image_std))
        out = self.head(list(features.values()))
        return out["bbox_regression"], out["cls_logits"]


class DenseFasterRCNN(DenseView):
    """Faster R-CNN's backbone + FPN + RPN head on resized [0, 1] images: features, objectness, deltas."""

    def __init__(self, model: FasterRCNN) -> None:
        super().__init__(model)
        self.image_mean, self.image_std = list(model.transform.image_mean), list(model.transform.image_std)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = list(self.backbone(_normalize(images, self.image_mean, self.image_std)).values())
        objectness, deltas = self.rpn.head(features)
        return (*features, *objectness, *deltas)


#: torchvision's detector arguments the builders set themselves (the others pass through)
_SSD_FIXED = {"backbone", "anchor_generator", "size", "num_classes", "head"}
_FRCNN_FIXED = {"backbone", "num_classes", "rpn_anchor_generator", "box_head"}


def _detector_options(cls: type, fixed: set[str]) -> tuple[str, ...]:
    """The keywords of torchvision's detector ``cls`` that a builder passes through."""
    return tuple(sorted(set(inspect.signature(cls.__init__).parameters) - fixed - {"self", "kwargs"}))


def _detector_kwargs(cls: type, kwargs: dict[str, Any], defaults: dict[str, Any], fixed: set[str]) -> dict[str, Any]:
    accepted = _detector_options(cls, fixed)
    bad = sorted(set(kwargs) - set(accepted))
    if bad:
        raise ValueError(f"{cls.__name__} does not take {', '.join(bad)}; it takes {', '.join(accepted)}")
    for key in set(kwargs) & {"min_size", "max_size"}:  # the side images are resized to, bounded like every input
        for v in kwargs[key] if isinstance(kwargs[key], (list, tuple)) else [kwargs[key]]:
            positive_int(cls.__name__, key, v, most=MAX_IMAGE_SIDE)
    return {**defaults, **kwargs}


@register_model("ssdlite320_mobilenet_v3_large", family="detection", passthrough=_detector_options(SSD, _SSD_FIXED))
def ssdlite320_mobilenet_v3_large(
    act: Any = None, num_classes: int = 21, *, convention: str = "repact", swap_heads: bool = False,
    act_init: str = "default", weights: Any = None, weights_kind: str = "auto", img_size: int = 320,
    reduced_tail: bool | None = None, outputs: str = "default", **kwargs: Any,
) -> nn.Module:
    """SSDlite320 with a MobileNetV3-Large backbone (torchvision's); ``num_classes`` includes the background.

    ``img_size``: the square input size (anchors follow it). ``reduced_tail``: halve the last stage
    (torchvision's choice without a pretrained backbone; default: on unless a backbone file is given).
    Other keywords go to torchvision's ``SSD`` (``score_thresh``, ``nms_thresh``, ``detections_per_img``...).
    """
    check_choice(outputs, OUTPUTS, "outputs")
    positive_int("ssdlite320_mobilenet_v3_large", "img_size", img_size, most=MAX_IMAGE_SIDE)
    state, kind = read_weights(weights, weights_kind)
    if reduced_tail is None:
        reduced_tail = kind != "backbone"
    norm_layer = partial(nn.BatchNorm2d, eps=0.001, momentum=0.03)
    ssd_kwargs = _detector_kwargs(SSD, kwargs, {"score_thresh": 0.001, "nms_thresh": 0.55, "detections_per_img": 300,
                                                "topk_candidates": 300, "image_mean": [0.5, 0.5, 0.5],
                                                "image_std": [0.5, 0.5, 0.5]}, _SSD_FIXED)
    backbone, bb_report, loaded = build_mobilenet_v3_large(
        act, convention=convention, norm_layer=norm_layer, reduced_tail=reduced_tail, dilated=False,
        weights_state=state if kind == "backbone" else None, act_init=act_init,
        init=_normal_init if kind != "backbone" else None)
    extractor = _ssd_extractor(backbone, 6, norm_layer)
    size = (int(img_size), int(img_size))
    anchors = DefaultBoxGenerator([[2, 3] for _ in range(6)], min_ratio=0.2, max_ratio=0.95)
    channels = det_utils.retrieve_out_channels(extractor, size)
    head = SSDLiteHead(channels, anchors.num_anchors_per_location(), num_classes, norm_layer)
    model = SSD(extractor, anchors, size, num_classes, head=head, **ssd_kwargs)
    return finish_task_model(model, act=act, swap_heads=swap_heads, heads=["backbone.extra", "head"],
                             act_init=act_init, kind=kind, state=state, backbone_report=bb_report, loaded=loaded,
                             outputs=outputs, dense=DenseSSD, img_size=int(img_size),
                             arch={"reduced_tail": bool(reduced_tail)})


@register_model("fasterrcnn_mobilenet_v3_large_320_fpn", family="detection",
                passthrough=_detector_options(FasterRCNN, _FRCNN_FIXED))
def fasterrcnn_mobilenet_v3_large_320_fpn(
    act: Any = None, num_classes: int = 21, *, convention: str = "repact", swap_heads: bool = False,
    act_init: str = "default", weights: Any = None, weights_kind: str = "auto", trainable_backbone_layers: int = 6,
    outputs: str = "default", **kwargs: Any,
) -> nn.Module:
    """Faster R-CNN, MobileNetV3-Large FPN backbone, 320 px (torchvision's); ``num_classes`` includes the background.

    The backbone keeps BatchNorm (torchvision freezes it only with pretrained weights); the box head
    is :class:`ActTwoMLPHead`. Other keywords go to torchvision's ``FasterRCNN`` (``min_size``,
    ``max_size``, ``rpn_*``, ``box_*``); the defaults are torchvision's 320 variant's.
    """
    check_choice(outputs, OUTPUTS, "outputs")
    state, kind = read_weights(weights, weights_kind)
    frcnn_kwargs = _detector_kwargs(FasterRCNN, kwargs, {"min_size": 320, "max_size": 640, "rpn_pre_nms_top_n_test": 150,
                                                         "rpn_post_nms_top_n_test": 150, "rpn_score_thresh": 0.05},
                                    _FRCNN_FIXED)
    backbone, bb_report, loaded = build_mobilenet_v3_large(
        act, convention=convention, norm_layer=nn.BatchNorm2d, reduced_tail=False, dilated=False,
        weights_state=state if kind == "backbone" else None, act_init=act_init)
    extractor = _fpn_extractor(backbone, True, int(trainable_backbone_layers))
    sizes = ((32, 64, 128, 256, 512),) * 3
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    resolution = 7  # torchvision's MultiScaleRoIAlign output size
    box_head = ActTwoMLPHead(extractor.out_channels * resolution**2, 1024)
    model = FasterRCNN(extractor, num_classes, rpn_anchor_generator=anchors, box_head=box_head, **frcnn_kwargs)
    return finish_task_model(model, act=act, swap_heads=swap_heads, heads=["rpn.head", "roi_heads.box_head"],
                             act_init=act_init, kind=kind, state=state, backbone_report=bb_report, loaded=loaded,
                             outputs=outputs, dense=DenseFasterRCNN, img_size=int(frcnn_kwargs["min_size"]))
