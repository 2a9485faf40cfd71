"""Class activation maps through the ``grad-cam`` package (``repact cam``): the target layer is by
default the last conv stage (the block holding the last conv whose output is still a spatial map),
in-place activations are switched off on a copy of the model, and the result is a grid of inputs x
models with each model's predicted class and score."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .._modes import eval_mode
from .curves import disable_inplace
from .figures import MissingDependency, pyplot

__all__ = ["CAM_METHODS", "CamResult", "CamCell", "CamData", "cam_method", "default_target_layer", "compute_cams",
           "cam_grid"]

#: --method names -> pytorch_grad_cam class names
CAM_METHODS = {"gradcam": "GradCAM", "gradcam++": "GradCAMPlusPlus", "hirescam": "HiResCAM", "xgradcam": "XGradCAM",
               "layercam": "LayerCAM", "eigencam": "EigenCAM", "eigengradcam": "EigenGradCAM",
               "gradcam-elementwise": "GradCAMElementWise", "scorecam": "ScoreCAM", "ablationcam": "AblationCAM",
               "fullgrad": "FullGrad"}


def cam_method(name: str):
    """The ``pytorch_grad_cam`` class for a method name (``ValueError`` listing the names otherwise)."""
    key = str(name).strip().lower().replace("_", "-")
    key = {"gradcampp": "gradcam++", "grad-cam": "gradcam", "grad-cam++": "gradcam++"}.get(key, key)
    if key not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {name!r}; accepted: {', '.join(CAM_METHODS)}")
    try:
        import pytorch_grad_cam
    except ImportError:
        raise MissingDependency("grad-cam is not installed; pip install 'repact[analysis]'") from None
    return getattr(pytorch_grad_cam, CAM_METHODS[key])


def _inside(name: str, prefixes: Sequence[str]) -> bool:
    return any(p and (name == p or name.startswith(p + ".")) for p in prefixes)


@torch.no_grad()
def default_target_layer(model: nn.Module, example: torch.Tensor) -> str:
    """Path of the last conv stage: the module holding the last conv (in forward order, outside the
    activation layers) whose output is a spatial map larger than 1x1; the conv itself when the model
    holds it directly."""
    from ..train.optim import activation_modules  # (repact.train pulls in torchvision: not at `repact --help`)

    acts = [n for n, _ in activation_modules(model)]
    seen: list[tuple[str, tuple[int, ...]]] = []
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: seen.append((n, tuple(o.shape))))
             for n, m in model.named_modules() if isinstance(m, nn.Conv2d) and not _inside(n, acts)]
    try:
        with eval_mode(model):
            model(example)
    finally:
        for h in hooks:
            h.remove()
    spatial = [n for n, shape in seen if len(shape) == 4 and shape[-1] * shape[-2] > 1]
    if not spatial:
        raise ValueError("the model has no conv layer with a spatial output to attach a CAM to; name one with --layer")
    last = spatial[-1]
    return last.rsplit(".", 1)[0] if "." in last else last


@dataclass
class CamResult:
    cams: np.ndarray  # (N, H, W) in [0, 1], the input's size
    probs: np.ndarray  # (N, classes) softmax of the logits
    targets: list[int]  # the class each map explains
    layer: str
    predicted: list[int] = field(default_factory=list)  # top-1 class of each input


def compute_cams(model: nn.Module, x: torch.Tensor, method: str = "gradcam", layer: str | None = None,
                 target: int | None = None) -> CamResult:
    """CAMs of ``x`` (N, C, H, W) for ``target`` (default: each input's predicted class)."""
    cls = cam_method(method)
    net = disable_inplace(copy.deepcopy(model).cpu().float().eval())
    x = x.detach().float().cpu()
    if layer is None:
        layer = default_target_layer(net, x[:1])
    try:
        target_layer = net.get_submodule(layer)
    except AttributeError:
        convs = [n for n, m in net.named_modules() if isinstance(m, nn.Conv2d)][-3:]
        raise ValueError(f"--layer {layer!r} is not a module of the model (its last convs: {', '.join(convs)})") from None
    with torch.no_grad():
        logits = net(x)
    probs = torch.softmax(logits.double(), dim=1).numpy()
    if target is not None and not 0 <= target < probs.shape[1]:
        raise ValueError(f"class {target} is out of range: the model has {probs.shape[1]} classes (0..{probs.shape[1] - 1})")
    predicted = [int(i) for i in logits.argmax(1)]  # from the logits: near-equal scores round to equal probabilities
    classes = [int(target)] * len(x) if target is not None else predicted
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with cls(model=net, target_layers=[target_layer]) as cam:
        maps = cam(input_tensor=x, targets=[ClassifierOutputTarget(c) for c in classes])
    return CamResult(np.asarray(maps, dtype=np.float32), probs, classes, layer, predicted)


@dataclass
class CamCell:
    image: str
    model: str
    cam: np.ndarray
    target: int
    target_name: str
    score: float  # softmax probability of the explained class
    predicted: int
    layer: str
    display: np.ndarray | None = None  # the input crop the model saw, (H, W, 3) in [0, 1]


@dataclass
class CamData:
    method: str
    cells: list[list[CamCell]] = field(default_factory=list)  # [image][model]


def _class_name(pre: Mapping[str, Any], idx: int) -> str:
    classes = pre.get("classes") or []
    return str(classes[idx]) if idx < len(classes) else f"class {idx}"


def cam_grid(models: Sequence[tuple[str, nn.Module, Mapping[str, Any]]], images: Sequence[str], method: str = "gradcam",
             layer: str | None = None, target: int | None = None):
    """(figure, :class:`CamData`): rows = images, columns = the input and each ``(label, model,
    preprocess)``'s CAM overlaid, titled with the explained class and its score."""
    from .preprocess import load_image

    if not models or not images:
        raise ValueError("give at least one model and one image")
    cam_method(method)
    from pytorch_grad_cam.utils.image import show_cam_on_image

    data = CamData(method)
    shown: list[np.ndarray] = []
    for path in images:
        row = []
        first = None
        for label, model, pre in models:
            img = load_image(path, pre)
            first = img.display if first is None else first
            res = compute_cams(model, img.tensor, method, layer, target)
            t = res.targets[0]
            row.append(CamCell(str(path), label, res.cams[0], t, _class_name(pre, t), float(res.probs[0, t]),
                               res.predicted[0], res.layer, img.display))
        data.cells.append(row)
        shown.append(first)
    plt = pyplot()
    rows, cols = len(images), len(models) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(2.4 * cols, 2.5 * rows), squeeze=False)
    for r, row in enumerate(data.cells):
        axes[r][0].imshow(shown[r], interpolation="nearest")
        axes[r][0].set_title(_short_path(row[0].image), fontsize=7)
        for c, cell in enumerate(row, 1):
            overlay = show_cam_on_image(cell.display, cell.cam, use_rgb=True, image_weight=0.5)
            axes[r][c].imshow(overlay, interpolation="nearest")
            pred = "" if cell.predicted == cell.target else " (not top-1)"
            axes[r][c].set_title(f"{cell.model}\n{cell.target_name} {cell.score:.2f}{pred}", fontsize=7)
        for ax in axes[r]:
            ax.set_axis_off()
    layers = sorted({cell.layer for row in data.cells for cell in row})
    fig.suptitle(f"{method} at {', '.join(layers)}", fontsize=8)
    fig.tight_layout()
    return fig, data


def _short_path(p: str, width: int = 28) -> str:
    from pathlib import Path

    name = Path(p).name
    return name if len(name) <= width else "…" + name[-(width - 1):]
