"""Any timm model with its activations swapped: ``create_model("timm", act=..., model_name="...")``.

timm is imported when the builder runs (``pip install repact[timm]``), never at import time.
Activations are replaced by :func:`repact.surgery.swap_activations` with one example forward, so
every call site gets its own module with its channel count; functional activation calls that
cannot be swapped are listed on ``model.repact_swap_report``.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from .registry import flag, positive_int, register_model

__all__ = ["timm_model"]


#: timm.create_model keywords a checkpoint may record (never pretrained_cfg*, checkpoint_path, cache_dir...)
TIMM_PASSTHROUGH = ("drop_rate", "drop_path_rate", "drop_block_rate", "in_chans", "global_pool")


@register_model("timm", family="timm", passthrough=TIMM_PASSTHROUGH)
def timm_model(act: Any = None, num_classes: int = 1000, *, model_name: str | None = None, pretrained: bool = False,
               targets: Sequence[Any] | None = None, include: Any = None, exclude: Any = None,
               input_size: int = 224, **kwargs: Any) -> nn.Module:
    """A timm model (``model_name=``) with activations of ``targets`` replaced by ``act`` (timm's own when None)."""
    if not model_name or not isinstance(model_name, str):
        raise ValueError("the timm builder needs model_name=, e.g. create_model('timm', model_name='mobilenetv3_small_100')")
    positive_int("timm", "input_size", input_size, most=8192)
    flag("timm", "pretrained", pretrained)
    try:
        import timm
    except ModuleNotFoundError:
        raise ValueError("the timm builder needs timm: pip install 'repact[timm]'") from None
    if model_name not in timm.list_models(pretrained=False):
        raise ValueError(f"unknown timm model {model_name!r}; see timm.list_models()")
    model = timm.create_model(model_name, pretrained=pretrained, num_classes=num_classes, **kwargs)
    if act is None:
        return model
    from ..surgery import DEFAULT_TARGETS, swap_activations

    example = torch.zeros(1, 3, int(input_size), int(input_size))
    report = swap_activations(model, act, targets=targets or DEFAULT_TARGETS, include=include, exclude=exclude,
                              example_input=example)
    model.repact_swap_report = report
    return model
