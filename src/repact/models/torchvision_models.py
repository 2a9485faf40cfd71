"""torchvision networks with their activations replaced by name, following each paper's convention.

* ``mobilenet_v3_small`` / ``mobilenet_v3_large``: ``convention="repact"`` (default) replaces every
  activation of the conv blocks (stem, expand, depthwise, last conv; 23 and 31 layers), ignoring
  the architecture's ReLU/HardSwish choice, as the RepAct code does; the SE blocks and the
  classifier keep theirs. ``convention="standard"`` replaces HardSwish wherever the architecture
  uses it (conv blocks and classifier) and keeps its ReLU blocks and SE blocks.
* ``shufflenet_v2_x0_5`` ... ``x2_0``: every ReLU (37 layers for x0.5/x1.0).
* ``mobilenet_v2``: every ReLU6.
* ``resnet18`` / ``resnet50``: ACON's convention (``convention="acon"``): in a bottleneck only the
  activation after the 3x3 conv, in a basic block both; the stem keeps its ReLU.
  ``convention="all"`` replaces every ReLU. The blocks keep one activation module per call site
  (``act1``, ``act2``, ``act3``) instead of torchvision's shared ``relu``; the state-dict keys
  are torchvision's, so its weights load.

``act=None`` builds the architecture with its own activations (torchvision's model). Every builder
takes ``small_input=True`` (stem adapted to 32x32 images: stride 1, no max-pool) and passes
``weights=`` through to torchvision (never downloaded unless you ask).
"""

from __future__ import annotations

from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck, ResNet
from torchvision.ops.misc import Conv2dNormActivation

from ..registry import create_act
from .registry import flag, positive_number, probability, register_model

__all__ = ["MOBILENET_V3_CONVENTIONS", "RESNET_CONVENTIONS", "ActBasicBlock", "ActBottleneck"]

MOBILENET_V3_CONVENTIONS = ("repact", "standard")
RESNET_CONVENTIONS = ("acon", "all")


def _act(act: Any, channels: int, default: nn.Module) -> nn.Module:
    """A new activation for ``channels`` channels, or ``default`` when ``act`` is None."""
    if act is None:
        return default
    module = create_act(act, channels=channels)
    return module if module is not None else nn.Identity()


def _check_choice(value: str, choices: tuple[str, ...], what: str) -> str:
    if value not in choices:
        raise ValueError(f"{what} must be one of {', '.join(choices)}, got {value!r}")
    return value


def _no_extra(name: str, kwargs: dict[str, Any]) -> None:
    if kwargs:
        raise ValueError(f"{name} does not take {', '.join(sorted(kwargs))}")


def _stem_stride_one(conv: nn.Conv2d) -> None:
    conv.stride = (1, 1)


# --------------------------------------------------------------------------------------------------
# MobileNetV3
# --------------------------------------------------------------------------------------------------


def _mobilenet_v3(arch: str, act: Any, num_classes: int, convention: str, small_input: bool, weights: Any,
                  dropout: float) -> nn.Module:
    _check_choice(convention, MOBILENET_V3_CONVENTIONS, "convention")
    flag(arch, "small_input", small_input)
    dropout = probability(arch, "dropout", dropout)
    builder = getattr(torchvision.models, arch)
    model = builder(weights=weights, num_classes=num_classes, dropout=dropout)
    if small_input:
        _stem_stride_one(model.features[0][0])
    if act is None:
        return model
    for block in model.features.modules():
        if not (isinstance(block, Conv2dNormActivation) and len(block) == 3):
            continue
        old = block[2]
        if convention == "standard" and not isinstance(old, nn.Hardswish):
            continue
        block[2] = _act(act, block[0].out_channels, old)
    if convention == "standard":
        for i, m in enumerate(model.classifier):
            if isinstance(m, nn.Hardswish):
                model.classifier[i] = _act(act, model.classifier[i - 1].out_features, m)
    return model


@register_model("mobilenet_v3_small", family="torchvision")
def mobilenet_v3_small(act: Any = None, num_classes: int = 1000, *, convention: str = "repact",
                       small_input: bool = False, weights: Any = None, dropout: float = 0.2,
                       **kwargs: Any) -> nn.Module:
    """MobileNetV3-Small; convention "repact" replaces all 23 conv-block activations."""
    _no_extra("mobilenet_v3_small", kwargs)
    return _mobilenet_v3("mobilenet_v3_small", act, num_classes, convention, small_input, weights, dropout)


@register_model("mobilenet_v3_large", family="torchvision")
def mobilenet_v3_large(act: Any = None, num_classes: int = 1000, *, convention: str = "repact",
                       small_input: bool = False, weights: Any = None, dropout: float = 0.2,
                       **kwargs: Any) -> nn.Module:
    """MobileNetV3-Large; convention "repact" replaces all 31 conv-block activations."""
    _no_extra("mobilenet_v3_large", kwargs)
    return _mobilenet_v3("mobilenet_v3_large", act, num_classes, convention, small_input, weights, dropout)


# --------------------------------------------------------------------------------------------------
# ShuffleNetV2 and MobileNetV2: every activation of the architecture
# --------------------------------------------------------------------------------------------------


def _replace_in_sequentials(model: nn.Module, act: Any, kind: type[nn.Module]) -> None:
    """Replace every ``kind`` module sitting in a Sequential after a BatchNorm."""
    for seq in model.modules():
        if not isinstance(seq, nn.Sequential):
            continue
        channels = None
        for i, m in enumerate(seq):
            if isinstance(m, nn.BatchNorm2d):
                channels = m.num_features
            elif isinstance(m, kind):
                if channels is None:
                    raise RuntimeError(f"no BatchNorm before activation {i} of {type(seq).__name__}")
                seq[i] = _act(act, channels, m)


def _shufflenet_v2(arch: str, act: Any, num_classes: int, small_input: bool, weights: Any) -> nn.Module:
    flag(arch, "small_input", small_input)
    model = getattr(torchvision.models, arch)(weights=weights, num_classes=num_classes)
    if small_input:
        _stem_stride_one(model.conv1[0])
        model.maxpool = nn.Identity()
    if act is not None:
        _replace_in_sequentials(model, act, nn.ReLU)
    return model


def _register_shufflenet(width: str) -> None:
    arch = f"shufflenet_v2_{width}"

    def builder(act: Any = None, num_classes: int = 1000, *, small_input: bool = False, weights: Any = None,
                **kwargs: Any) -> nn.Module:
        _no_extra(arch, kwargs)
        return _shufflenet_v2(arch, act, num_classes, small_input, weights)

    builder.__name__ = arch
    builder.__doc__ = f"ShuffleNetV2 {width.replace('_', '.')}; every ReLU is replaced."
    register_model(arch, family="torchvision")(builder)
    globals()[arch] = builder


for _width in ("x0_5", "x1_0", "x1_5", "x2_0"):
    _register_shufflenet(_width)


@register_model("mobilenet_v2", family="torchvision")
def mobilenet_v2(act: Any = None, num_classes: int = 1000, *, small_input: bool = False, weights: Any = None,
                 dropout: float = 0.2, width_mult: float = 1.0, **kwargs: Any) -> nn.Module:
    """MobileNetV2; every ReLU6 is replaced."""
    _no_extra("mobilenet_v2", kwargs)
    flag("mobilenet_v2", "small_input", small_input)
    dropout = probability("mobilenet_v2", "dropout", dropout)
    width_mult = positive_number("mobilenet_v2", "width_mult", width_mult)
    model = torchvision.models.mobilenet_v2(weights=weights, num_classes=num_classes, dropout=dropout,
                                            width_mult=width_mult)
    if small_input:
        _stem_stride_one(model.features[0][0])
    if act is not None:
        _replace_in_sequentials(model, act, nn.ReLU6)
    return model


# --------------------------------------------------------------------------------------------------
# ResNet: one activation module per call site
# --------------------------------------------------------------------------------------------------


class ActBasicBlock(BasicBlock):
    """torchvision's BasicBlock with its shared ``relu`` split into ``act1`` (after bn1) and ``act2`` (after the add)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.relu
        self.act1: nn.Module = nn.ReLU(inplace=True)
        self.act2: nn.Module = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.act2(out + identity)


class ActBottleneck(Bottleneck):
    """torchvision's Bottleneck with ``act1`` (after the first 1x1), ``act2`` (after the 3x3), ``act3`` (after the add)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        del self.relu
        self.act1: nn.Module = nn.ReLU(inplace=True)
        self.act2: nn.Module = nn.ReLU(inplace=True)
        self.act3: nn.Module = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.act3(out + identity)


def _resnet(block: type[nn.Module], layers: list[int], weights_enum: Any, act: Any, num_classes: int,
            convention: str, small_input: bool, weights: Any) -> ResNet:
    _check_choice(convention, RESNET_CONVENTIONS, "convention")
    flag("resnet", "small_input", small_input)
    if weights is not None:
        weights = weights_enum.verify(weights)
        if num_classes != len(weights.meta["categories"]):
            raise ValueError(f"weights {weights} have {len(weights.meta['categories'])} classes, not {num_classes}")
    model = ResNet(block, layers, num_classes=num_classes)
    if weights is not None:
        model.load_state_dict(weights.get_state_dict(progress=True, check_hash=True))
    if small_input:
        model.conv1 = nn.Conv2d(3, model.conv1.out_channels, 3, 1, 1, bias=False)
        model.maxpool = nn.Identity()
    if act is None:
        return model
    if convention == "all":
        model.relu = _act(act, model.bn1.num_features, model.relu)
    for stage in (model.layer1, model.layer2, model.layer3, model.layer4):
        for blk in stage:
            if isinstance(blk, ActBottleneck):
                blk.act2 = _act(act, blk.bn2.num_features, blk.act2)
                if convention == "all":
                    blk.act1 = _act(act, blk.bn1.num_features, blk.act1)
                    blk.act3 = _act(act, blk.bn3.num_features, blk.act3)
            else:
                blk.act1 = _act(act, blk.bn1.num_features, blk.act1)
                blk.act2 = _act(act, blk.bn2.num_features, blk.act2)
    return model


@register_model("resnet18", family="torchvision")
def resnet18(act: Any = None, num_classes: int = 1000, *, convention: str = "acon", small_input: bool = False,
             weights: Any = None, **kwargs: Any) -> nn.Module:
    """ResNet-18; both activations of every basic block are replaced (ACON convention)."""
    _no_extra("resnet18", kwargs)
    return _resnet(ActBasicBlock, [2, 2, 2, 2], torchvision.models.ResNet18_Weights, act, num_classes, convention,
                   small_input, weights)


@register_model("resnet50", family="torchvision")
def resnet50(act: Any = None, num_classes: int = 1000, *, convention: str = "acon", small_input: bool = False,
             weights: Any = None, **kwargs: Any) -> nn.Module:
    """ResNet-50; only the activation after each bottleneck's 3x3 conv is replaced (ACON convention)."""
    _no_extra("resnet50", kwargs)
    return _resnet(ActBottleneck, [3, 4, 6, 3], torchvision.models.ResNet50_Weights, act, num_classes, convention,
                   small_input, weights)
