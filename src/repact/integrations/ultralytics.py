"""Ultralytics YOLO with repact activations: swap, re-parameterize, verify, export to ONNX.

Needs ``pip install ultralytics`` (or ``pip install 'repact[yolo]'``); Ultralytics is AGPL-3.0, so
it is an optional extra and is imported only inside these functions. Every function takes an
``ultralytics.YOLO`` (any ``ultralytics.engine.model.Model``) or its network (``YOLO(...).model``, an
``ultralytics.nn.tasks.BaseModel`` such as ``DetectionModel``), and changes that network in place
unless it says otherwise. The work is the library's: :func:`repact.swap_activations` swaps,
:func:`repact.reparameterize` re-parameterizes, :func:`repact.verify_reparameterization` checks,
and the deploy pipeline's ONNX export and onnxruntime parity check export.

**One activation per Conv.** Ultralytics' ``Conv.default_act`` is a single ``nn.SiLU()`` shared by
every ``Conv`` of every model built in the process; the swap gives each call site its own module
(surgery walks ``named_modules(remove_duplicate=False)``), so no two Convs share RepAct parameters,
and the class attribute itself is left as it is (models built later still get SiLU). ``model.fuse()``
(Ultralytics' conv + BatchNorm fold, ``Conv.forward_fuse``) keeps calling each Conv's new ``act``.

**Training through Ultralytics' trainer.** ``YOLO.train()`` rebuilds the network from its YAML and
copies matching weights into it, so activations swapped before it are lost: swap the network the
trainer builds (e.g. in a ``DetectionTrainer`` subclass whose ``get_model`` calls
:func:`swap_yolo_activations`), or train the network with your own loop.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..registry import create_act
from ..reparam import VerifyResult, deployable_modules, reparameterize, verify_reparameterization
from ..surgery import DEFAULT_TARGETS, swap_activations

__all__ = ["NOT_EXPORTED", "YoloPredictions", "export_yolo_onnx", "reparameterize_yolo", "swap_yolo_activations",
           "verify_yolo_reparameterization", "yolo_network"]

#: what :func:`export_yolo_onnx` leaves to Ultralytics' own pre- and post-processing
NOT_EXPORTED = [
    "the letterbox resize and padding, BGR->RGB and the /255 scaling (the ONNX model takes float RGB images in "
    "[0, 1] of the exported size)",
    "confidence threshold and NMS (Ultralytics' post-processing)",
    "scaling boxes back to the original image",
]


def _ultralytics():
    """The ``ultralytics`` classes this module needs; a clear ImportError when it is not installed."""
    try:
        importlib.import_module("ultralytics")  # first: a cached submodule would hide a missing package
        engine = importlib.import_module("ultralytics.engine.model")
        tasks = importlib.import_module("ultralytics.nn.tasks")
    except ImportError as exc:
        raise ImportError(
            "repact.integrations.ultralytics needs the ultralytics package: pip install ultralytics "
            "(or pip install 'repact[yolo]'); note that Ultralytics is AGPL-3.0"
        ) from exc
    return engine.Model, tasks.BaseModel


def yolo_network(model: Any) -> nn.Module:
    """The ``nn.Module`` of an ``ultralytics.YOLO`` (its ``.model``), or ``model`` itself when it is one.

    ``TypeError`` for anything else, naming what is accepted.
    """
    model_cls, base_cls = _ultralytics()
    net = model.model if isinstance(model, model_cls) else model
    if not isinstance(net, base_cls):
        what = type(net).__name__ if net is model else f"a {type(model).__name__} holding {type(net).__name__}"
        raise TypeError("expected an Ultralytics YOLO model: an ultralytics.YOLO (ultralytics.engine.model.Model) "
                        "or its network (YOLO(...).model, an ultralytics.nn.tasks.BaseModel such as "
                        f"DetectionModel), got {what}"
                        + ("; build the model first, e.g. ultralytics.YOLO('yolov8n.yaml')" if isinstance(model, str) else ""))
    return net


def _example_images(net: nn.Module, batch: int, imgsz: int, seed: int = 0) -> torch.Tensor:
    p = next(iter(net.parameters()), None)
    device = p.device if p is not None else torch.device("cpu")
    dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
    g = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, imgsz, imgsz, generator=g).to(device=device, dtype=dtype)


def _act_factory(act: Any, act_kwargs: dict[str, Any]) -> Any:
    """``act`` itself, or a factory building ``act`` with ``act_kwargs`` (one instance per call site)."""
    if not act_kwargs:
        return act

    def build(channels: int | None = None, **extra: Any) -> nn.Module:
        return create_act(act, channels, **{**act_kwargs, **extra})

    build.__name__ = act if isinstance(act, str) else getattr(act, "__name__", type(act).__name__)
    return build


def swap_yolo_activations(
    model: Any,
    act: Any = "repact",
    *,
    targets: Any = DEFAULT_TARGETS,
    include: Any = None,
    exclude: Any = None,
    init: str = "default",
    imgsz: int = 64,
    **act_kwargs: Any,
) -> nn.Module:
    """Replace the activations of a YOLO network (in place) by ``act``; returns the network.

    In YOLOv8/YOLO11 these are the ``nn.SiLU`` of every ``ultralytics.nn.modules.Conv`` (backbone, neck
    and the Detect head's box and class branches); Convs built with ``act=False`` hold ``nn.Identity``
    and are left alone, as is everything that is not a ``targets`` module. Each call site gets its
    own new activation (see the module docstring on the shared ``Conv.default_act``).

    Args:
        act: a registered name (``"repact"``), class or factory; ``act_kwargs`` go to it
            (``variant="bn"``, ``granularity="channel"``...).
        targets, include, exclude, init: as in :func:`repact.swap_activations`.
        imgsz: side of the random example image (a multiple of 32) for surgery's example forward,
            which finds channel counts and activations called as functions (those are not swapped).

    What was swapped is recorded in ``network.repact_info["swap"]`` (``swapped``: the count, ``paths``,
    ``functional_not_swapped``).
    """
    from ..models.task_backbone import swap_summary

    net = yolo_network(model)
    report = swap_activations(net, _act_factory(act, act_kwargs), targets=targets, include=include, exclude=exclude,
                              init=init, example_input=_example_images(net, 1, imgsz))
    info = dict(getattr(net, "repact_info", None) or {})
    info["swap"] = {**swap_summary(report), "act": report.act, "init": init}
    net.repact_info = info
    return net


def reparameterize_yolo(model: Any, *, inplace: bool = True) -> nn.Module:
    """Replace every re-parameterizable activation (RepAct) of the network by its single-branch deploy
    form (:func:`repact.reparameterize`); returns the network (a converted copy with ``inplace=False``).

    Works before or after Ultralytics' ``fuse()``; RepAct-III folds its BatchNorm with the running
    statistics, so call it on the trained model in the state you deploy.
    """
    net = yolo_network(model)
    return reparameterize(net, inplace=inplace)


def verify_yolo_reparameterization(
    model: Any, *, images: torch.Tensor | None = None, imgsz: int = 64, batch: int = 2, seed: int = 0,
    randomize: bool = True,
) -> tuple[VerifyResult, nn.Module]:
    """Compare the training form with a re-parameterized copy in eval mode; returns ``(result, deployed)``.

    Runs on a copy of the network (``model`` is not changed): with ``randomize`` every BatchNorm gets
    random statistics and every repact activation random parameters first (as
    :func:`repact.verify_reparameterization` does, whose check this is), then both forms run on
    ``images`` (default: ``batch`` random [0, 1] images of ``imgsz`` px). Every output tensor is
    compared: the decoded predictions and the raw head outputs (box distributions, class logits, the
    neck's feature maps). ``result.ok(1e-5)`` is the usual acceptance. ``ValueError`` when the
    network has nothing to re-parameterize.
    """
    net = yolo_network(model)
    if not deployable_modules(net):
        raise ValueError("the YOLO network has no re-parameterizable activation (swap first with "
                         "swap_yolo_activations(model, 'repact'), or it is re-parameterized already)")
    ref = copy.deepcopy(net).eval()
    x = images if images is not None else _example_images(ref, batch, imgsz, seed)
    return verify_reparameterization(ref, x, randomize_bn=randomize, randomize_acts=randomize, seed=seed)


class YoloPredictions(nn.Module):
    """The network's decoded predictions alone, ``(N, 4 + nc, anchors)``: boxes (xywh, input pixels)
    then class scores after the sigmoid, the layout of Ultralytics' own ONNX export's ``output0``
    (for a detection model; segmentation and pose models append their extra channels). The
    network is shared, not copied."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.net(images)
        return out[0] if isinstance(out, (tuple, list)) else out


def export_yolo_onnx(
    model: Any,
    path: str | Path,
    *,
    imgsz: int = 640,
    batch: int = 2,
    opset: int = 17,
    dynamic_batch: bool = True,
    onnx_form: str = "auto",
    parity_tol: float = 1e-4,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Re-parameterize a copy of the network and export its eval forward to ONNX at ``path``.

    Exported: the whole network on float RGB images in [0, 1] of ``imgsz`` x ``imgsz`` px (input
    ``input``, dynamic batch), returning the decoded predictions (:class:`YoloPredictions`; box
    decoding and the sigmoid are in the graph). Not exported: :data:`NOT_EXPORTED` (the letterbox
    pre-processing, confidence threshold and NMS, which are Ultralytics' post-processing).
    The file is written by :func:`repact.deploy.export_onnx` (atomically, checked by
    ``onnx.checker``) and run by onnxruntime against PyTorch at batch ``batch``, 1 and ``batch + 1``;
    a difference above ``parity_tol`` raises :class:`repact.deploy.DeployError` and leaves no file.
    ``model`` is not changed. Returns a report: the export's (file, opset, export forms, parity)
    plus ``input_size``, ``exported``, ``not_exported`` and ``unfused`` (activations without a
    deploy form, exported as they are). Needs the ``onnx`` extra.
    """
    from ..deploy.pipeline import export_checked, unfused_activations

    net = yolo_network(model)
    deployed = reparameterize(copy.deepcopy(net), inplace=True).eval()
    view = YoloPredictions(deployed).eval()
    x = _example_images(deployed, batch, imgsz, seed)
    noise = _example_images(deployed, batch + 1, imgsz, seed + 1)
    out = Path(path)
    report = export_checked(view, x, [x, x[:1], noise], out, opset=opset, dynamic_batch=dynamic_batch,
                            onnx_form=onnx_form, parity_tol=parity_tol, say=log or (lambda s: None))
    report.update({"input_size": int(imgsz), "exported": "the whole network: decoded boxes (xywh, px) and class "
                   "scores, (N, 4 + nc, anchors)", "not_exported": list(NOT_EXPORTED),
                   "unfused": unfused_activations(deployed)})
    return report
