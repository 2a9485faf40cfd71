"""Reparameterize, verify and export detection and segmentation models.

* :func:`verify_task_reparameterization`: reparameterizes a copy and compares the network's raw
  outputs (detector logits and box regressions, segmentation logits; relative error) and the task
  outputs (detections; masks) of the two forms, by default after randomizing every BatchNorm's
  statistics and every activation's parameters.
* :func:`deploy_task_model`: the deploy pipeline for these models: both checks (the model's own
  statistics and randomized ones), ONNX export of the :class:`~repact.models.task_backbone.DenseView`
  (segmentation: the whole model; detectors: backbone + heads), checker, onnxruntime parity at
  batch 1, B and B+1, deploy weights (a repact checkpoint that ``repact.checkpoint.build_model``
  rebuilds as the full task model, checked by a reload), and a JSON report that lists what was
  not exported. Files land in ``out_dir`` only when every check passed.

**Equal detections.** Detections are compared as sets per image: every detection must find one in
the other form with the same label, a score within ``score_tol`` and a box within ``box_tol``
pixels. A detector's post-processing sorts scores, so candidates whose scores tie (untrained and
randomized detectors have many exactly equal scores) may come out in another order, and with them
NMS and the top-k cut may keep a different one of several equally scored boxes. Such pairs (same
label and score, different box, the score shared by another detection of that label) are counted
as ``tie_swaps``; any other difference is a
``mismatch`` and fails the check, except after a tie swap: the box NMS kept instead suppresses
other boxes, so later differences cannot be told from real ones, and ``equal`` is then None
(the dense comparison decides; both numbers are reported). Masks likewise: a pixel whose predicted
class differs counts as a mismatch unless its two top reference logits are within twice the
accepted error (``rtol`` times the logits' largest magnitude) of each other. The tolerances are
the accepted ones, never the measured error: a form that is off changes masks and boxes beyond them.
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from .._modes import eval_mode
from ..models.task_backbone import DenseView, rebuild_kwargs
from ..reparam import VerifyResult, randomize_activations_, randomize_batchnorm_, reparameterize, verify
from .pipeline import (DeployError, DeployResult, check_finite_weights, check_fusible, deploy_cost, export_checked,
                       publish, refuse_existing, save_deploy_weights, staging_folder, versions)

__all__ = ["NOT_EXPORTED", "TaskVerifyResult", "check_images", "compare_detections", "compare_masks",
           "default_input_size", "deploy_task_model", "dense_view", "task_of", "verify_task_reparameterization"]

NOT_EXPORTED = {
    "SSD": ["the resize to the model's fixed input size (the ONNX model takes float RGB images in [0, 1], "
            "already resized; the normalization is inside)",
            "anchor (default box) generation and box decoding", "score threshold, per-class top-k and NMS"],
    "FasterRCNN": ["the resize and padding transform (the ONNX model takes float RGB images in [0, 1], already "
                   "resized; the normalization is inside)",
                   "anchor generation, proposal decoding, RPN NMS and proposal selection",
                   "the second stage: MultiScaleRoIAlign, the box head and predictor, box decoding, score threshold "
                   "and NMS"],
    "segmentation": ["the input resize (the ONNX model takes ImageNet-normalized images of the exported size)"],
}


def task_of(model: nn.Module) -> str:
    """``"detection"`` or ``"segmentation"`` for a torchvision task model or its dense view."""
    from torchvision.models.detection.faster_rcnn import FasterRCNN
    from torchvision.models.detection.ssd import SSD

    from ..models.detection import DenseFasterRCNN, DenseSSD
    from ..models.segmentation import DenseSegmentation

    if isinstance(model, (SSD, FasterRCNN, DenseSSD, DenseFasterRCNN)):
        return "detection"
    if isinstance(model, DenseSegmentation) or hasattr(model, "classifier") and hasattr(model, "backbone"):
        return "segmentation"
    raise ValueError(f"{type(model).__name__} is neither a torchvision detector (SSD, FasterRCNN) nor a "
                     "segmentation model (LRASPP, DeepLabV3)")


def dense_view(model: nn.Module) -> DenseView:
    """The tensor-output view of ``model`` (same weights); a dense view is returned as it is."""
    from torchvision.models.detection.faster_rcnn import FasterRCNN
    from torchvision.models.detection.ssd import SSD

    from ..models.detection import DenseFasterRCNN, DenseSSD
    from ..models.segmentation import DenseSegmentation

    if isinstance(model, DenseView):
        return model
    if isinstance(model, SSD):
        return DenseSSD(model)
    if isinstance(model, FasterRCNN):
        return DenseFasterRCNN(model)
    task_of(model)
    return DenseSegmentation(model)


def _not_exported(model: nn.Module) -> list[str]:
    name = getattr(model, "wrapped_type", type(model).__name__)
    return NOT_EXPORTED.get(name, NOT_EXPORTED["segmentation"])


# --------------------------------------------------------------------------------------------------
# comparing task outputs
# --------------------------------------------------------------------------------------------------


def compare_detections(reference: Sequence[Mapping[str, torch.Tensor]], candidate: Sequence[Mapping[str, torch.Tensor]],
                       *, score_tol: float = 1e-5, box_tol: float = 1e-3) -> dict[str, Any]:
    """Match two lists of torchvision detections (one dict per image); see the module docstring."""
    out = {"detections": 0, "matched": 0, "tie_swaps": 0, "mismatched": 0, "max_score_error": 0.0,
           "max_box_error": 0.0}
    if len(reference) != len(candidate):
        raise ValueError(f"{len(reference)} images of reference detections but {len(candidate)} of candidate")
    for r, c in zip(reference, candidate):
        rb, rs, rl = r["boxes"].double(), r["scores"].double(), r["labels"]
        cb, cs, cl = c["boxes"].double(), c["scores"].double(), c["labels"]
        out["detections"] += len(rs)
        free = torch.ones(len(cs), dtype=torch.bool)
        left: list[int] = []
        for i in range(len(rs)):
            box_err = (cb - rb[i]).abs().amax(dim=1) if len(cs) else cb.new_zeros(0)
            ok = free & (cl == rl[i]) & ((cs - rs[i]).abs() <= score_tol) & (box_err <= box_tol)
            if ok.any():
                j = int(torch.where(ok, box_err, torch.full_like(box_err, float("inf"))).argmin())
                free[j] = False
                out["matched"] += 1
                out["max_score_error"] = max(out["max_score_error"], float((cs[j] - rs[i]).abs()))
                out["max_box_error"] = max(out["max_box_error"], float(box_err[j]))
            else:
                left.append(i)
        for i in left:  # same label and score, another box, where that score is tied: another pick among ties
            same_r = (rl == rl[i]) & ((rs - rs[i]).abs() <= score_tol)
            same_c = (cl == rl[i]) & ((cs - rs[i]).abs() <= score_tol)
            ok = free & same_c
            if ok.any() and max(int(same_r.sum()), int(same_c.sum())) >= 2:
                free[int(ok.nonzero()[0])] = False
                out["tie_swaps"] += 1
            else:
                out["mismatched"] += 1
        out["mismatched"] += int(free.sum())
    # a pick among tied boxes changes what NMS suppresses next: after a tie swap, later differences
    # cannot be told from real ones here (the dense comparison decides); without one they are real
    out["equal"] = True if out["mismatched"] == 0 else (None if out["tie_swaps"] else False)
    return out


def compare_masks(reference_logits: torch.Tensor, candidate_logits: torch.Tensor, *, rtol: float = 1e-5
                  ) -> dict[str, Any]:
    """Predicted classes (argmax over dim 1) of two logit tensors; a differing pixel whose two top
    reference logits are within ``2 * rtol * max|reference|`` of each other is a tie, not a mismatch."""
    r, c = reference_logits.double(), candidate_logits.double()
    tol = rtol * float(r.abs().max()) if r.numel() else 0.0
    differ = r.argmax(1) != c.argmax(1)
    top2 = r.topk(2, dim=1).values if r.shape[1] > 1 else torch.cat([r, r], 1)
    margin = top2[:, 0] - top2[:, 1]
    mismatched = int((differ & (margin > 2 * tol)).sum())
    return {"pixels": int(differ.numel()), "differing": int(differ.sum()), "mismatched": mismatched,
            "equal": mismatched == 0}


# --------------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------------


@dataclass
class TaskVerifyResult:
    """Dense outputs (``dense``: max abs / rel error) and task outputs (``outputs``) of two forms."""

    task: str
    dense: VerifyResult
    outputs: dict[str, Any] = field(default_factory=dict)
    randomized: bool = False

    def ok(self, rtol: float = 1e-5) -> bool:
        """Dense outputs within ``rtol``, and task outputs equal (or, for detections after a tie swap,
        undecidable: ``equal`` is None, and the dense comparison decides)."""
        return self.dense.ok(rtol) and self.outputs.get("equal") is not False

    def as_dict(self) -> dict[str, Any]:
        return {"task": self.task, "randomized": self.randomized, "dense": self.dense.as_dict(),
                "outputs": dict(self.outputs)}

    def __str__(self) -> str:
        o = self.outputs
        if self.task == "detection":
            what = (f"detections: {o['matched']}/{o['detections']} matched, {o['tie_swaps']} tie swap(s), "
                    f"{o['mismatched']} mismatched (max score err {o['max_score_error']:.1e}, box err "
                    f"{o['max_box_error']:.1e} px)")
        else:
            what = f"masks: {o['differing']} differing pixel(s) of {o['pixels']}, {o['mismatched']} not explained by ties"
        return f"dense outputs: {self.dense}; {what}"


@torch.no_grad()
def _task_outputs(model: nn.Module, images: torch.Tensor, task: str):
    if task == "detection":
        return model(list(images))
    out = model(images)
    return out["out"] if isinstance(out, Mapping) else (out[0] if isinstance(out, tuple) else out)


def _compare(reference: nn.Module, candidate: nn.Module, images: torch.Tensor, task: str, randomized: bool,
             score_tol: float, rtol: float) -> TaskVerifyResult:
    dense = verify(dense_view(reference), dense_view(candidate), images)
    with eval_mode(reference, candidate):
        a, b = _task_outputs(reference, images, task), _task_outputs(candidate, images, task)
    if task == "detection":
        box_tol = max(1e-3, 10 * rtol * float(images.shape[-1]))  # regressions scale with the image side
        outputs = compare_detections(a, b, score_tol=score_tol, box_tol=box_tol)
    else:
        outputs = compare_masks(a, b, rtol=rtol)
    return TaskVerifyResult(task, dense, outputs, randomized)


def verify_task_reparameterization(model: nn.Module, images: torch.Tensor, *, randomize: bool = True, seed: int = 0,
                                   score_tol: float = 1e-5, rtol: float = 1e-5) -> tuple[TaskVerifyResult, nn.Module]:
    """Reparameterize a copy of ``model`` and compare it with the training form on ``images``
    (a float batch N x 3 x S x S: detectors take [0, 1] images, segmenters normalized ones).

    ``randomize`` first gives a copy of the model random BatchNorm statistics and activation
    parameters (``model`` itself is not changed). ``rtol``: the accepted relative error, which also
    sets the box tolerance and the mask tie margin. Returns ``(result, deployed copy)``.
    """
    task = task_of(model)
    ref = copy.deepcopy(model).eval()
    if randomize:
        randomize_batchnorm_(ref, seed)
        randomize_activations_(ref, seed)
    deployed = reparameterize(ref, inplace=False).eval()
    return _compare(ref, deployed, images, task, randomize, score_tol, rtol), deployed


# --------------------------------------------------------------------------------------------------
# the deploy pipeline
# --------------------------------------------------------------------------------------------------


def check_images(task: str, batch: int, size: int, generator: torch.Generator) -> torch.Tensor:
    """Random inputs for the checks: [0, 1] images for detectors (they normalize inside), about
    ImageNet-normalized ones for segmenters."""
    x = torch.rand(batch, 3, size, size, generator=generator)
    return (x - 0.45) / 0.226 if task == "segmentation" else x


def default_input_size(model: nn.Module) -> int:
    """The detector's own input size (its transform's), else 512 (segmentation)."""
    transform = getattr(model, "transform", None)
    if transform is not None:
        fixed = getattr(transform, "fixed_size", None)
        return int(fixed[0]) if fixed else int(transform.min_size[0])
    return 512


def _saved_config(model: nn.Module, model_config: Mapping[str, Any] | None, size: int) -> dict[str, Any]:
    cfg = copy.deepcopy(dict(model_config or {}))
    cfg["kwargs"] = rebuild_kwargs(model, cfg.get("kwargs", {}))  # the checkpoint holds the weights
    cfg["task"] = task_of(model)
    cfg["reparameterized"] = True
    cfg["input_shape"] = [3, size, size]
    return cfg


def deploy_task_model(
    model: nn.Module,
    out_dir: str | os.PathLike,
    *,
    img_size: int | None = None,
    model_config: Mapping[str, Any] | None = None,
    name: str = "model",
    rtol: float = 1e-5,
    parity_tol: float = 1e-4,
    opset: int = 17,
    onnx_form: str = "auto",
    batch: int = 2,
    seed: int = 0,
    overwrite: bool = False,
    allow_unfused: bool = False,
    log: Callable[[str], None] | None = None,
) -> DeployResult:
    """Check, export and save a detection or segmentation model (see the module docstring).

    ``img_size``: the square input side for the checks and the export (default: the detector's own
    input size; 512 for segmentation). ``model_config``: ``create_model`` arguments (``name``,
    ``act``, ``num_classes``, ``kwargs``) recorded with the deploy weights. Files of an earlier deploy
    under ``name`` in ``out_dir`` are replaced only with ``overwrite`` (``FileExistsError`` otherwise);
    a model with nothing to re-parameterize is refused unless ``allow_unfused``, and one whose weights
    are not finite fails (:class:`DeployError`).
    The staging, ONNX checks, reload check and report are :func:`repact.deploy.deploy_model`'s. The model's weights and
    train/eval modes are left as they were.
    """
    say = log or (lambda s: None)
    if not name or any(ch in name for ch in "/\\") or name.startswith("."):
        raise ValueError(f"name must be a plain file stem, got {name!r}")
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"{out} exists and is not a folder")
    if not overwrite:
        refuse_existing(out, name)
    task = task_of(model)
    size = int(img_size or default_input_size(model))
    gen = torch.Generator().manual_seed(seed)
    x = check_images(task, batch, size, gen)
    with eval_mode(model):
        check_finite_weights(model, "the model")
        check_fusible(model, model_config, allow_unfused, say)
        checks = {}
        for randomized in (False, True):
            res, _ = verify_task_reparameterization(model, x, randomize=randomized, seed=seed, rtol=rtol)
            label = "randomized_bn_and_activations" if randomized else "own_statistics"
            say(f"verify ({label.replace('_', ' ')}): {res}")
            checks[label] = res.as_dict()
            if not res.ok(rtol):
                raise DeployError(f"the deploy form differs from the model ({label.replace('_', ' ')}): {res}; "
                                  f"tolerance rtol={rtol:g}; nothing was written")
        deployed = reparameterize(model, inplace=False).eval()
        dense_train, dense_deploy = dense_view(model), dense_view(deployed)
        return _export_and_save(model, deployed, dense_train, dense_deploy, out, x, size, task, checks,
                                _saved_config(model, model_config, size), name, rtol, parity_tol, opset, onnx_form, batch,
                                gen, overwrite, say)


def _export_and_save(model, deployed, dense_train, dense_deploy, out, x, size, task, checks, cfg, name, rtol,
                     parity_tol, opset, onnx_form, batch, gen, overwrite, say) -> DeployResult:
    noise = check_images(task, batch + 1, size, gen)
    with staging_folder(out) as stage:
        onnx_report = export_checked(dense_deploy, x, [x, x[:1], noise], stage / f"{name}.onnx", opset=opset,
                                     dynamic_batch=True, onnx_form=onnx_form, parity_tol=parity_tol, say=say)
        weights = save_deploy_weights(deployed, cfg, stage, name, x, view=dense_view, say=say)
        exported = ("the whole model (logits at the input size)" if task == "segmentation"
                    else "backbone + heads (raw regressions and logits, no post-processing)")
        onnx_report.update({"input_size": size, "exported": exported, "not_exported": _not_exported(dense_train)})
        report = {
            "format": "repact-deploy-report", "version": 1, "task": task, "model_config": cfg,
            "tolerances": {"rtol": rtol, "parity_tol": parity_tol}, "verify": checks, "onnx": onnx_report,
            "weights": weights, "cost": deploy_cost(model, deployed, dense_train, dense_deploy, x),
            "versions": versions(),
        }
        say(f"not exported: {'; '.join(_not_exported(dense_train))}")
        return publish(stage, out, name, report, overwrite, say)
