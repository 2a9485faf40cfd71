"""``repact eval`` on a detection or segmentation checkpoint: mAP@0.5, mAP@0.5:0.95 and per-class
AP, or mIoU, per-class IoU and global pixel accuracy, on the run's VOC-format data."""

from __future__ import annotations

import json
import sys
from typing import Any

from . import CLIError

__all__ = ["checkpoint_task", "run_task_eval", "TASK_DEFAULT_BATCH", "json_text", "nonfinite_metrics"]

#: eval batch size of detection and segmentation checkpoints when --batch-size is not given
TASK_DEFAULT_BATCH = 8


def nonfinite_metrics(results: dict[str, Any], where: str = "") -> str:
    """The numbers of ``results`` (nested dicts) that are not finite, as ``"loss of X is nan, ..."``;
    empty when all are. ``repact eval`` fails (exit 1) on any: a NaN metric means the model's outputs
    are not finite numbers, and JSON has no NaN."""
    import math

    bad = []
    for key, v in results.items():
        if isinstance(v, dict):
            inner = nonfinite_metrics(v, f"{key}: ")
            bad += [inner] if inner else []
        elif isinstance(v, float) and not math.isfinite(v):
            bad.append(f"{where}{key} is {v}")
    return "; ".join(bad)


def json_text(obj: Any) -> str:
    """``obj`` as indented JSON; never NaN or Infinity (callers refuse non-finite metrics first)."""
    return json.dumps(obj, indent=2, allow_nan=False)


def checkpoint_task(model_config: dict[str, Any]) -> str | None:
    """``"detection"`` / ``"segmentation"`` for a task model's config (recorded, else its model family), else None."""
    from ..models import get_model_spec
    from ..tasks import TASKS

    task = model_config.get("task")
    if task in TASKS:
        return task
    try:
        family = get_model_spec(str(model_config.get("name"))).family
    except ValueError:
        return None
    return family if family in TASKS else None


def _refuse_classification_flags(args, task: str) -> None:
    given = [flag for flag, on in (("--reparameterize", args.reparameterize),
                                   ("--save-reparameterized", args.save_reparameterized),
                                   ("--confusion", args.confusion)) if on]
    if given:
        raise CLIError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to classification checkpoints; "
                       f"for a {task} checkpoint, repact verify CHECKPOINT checks the re-parameterized model and "
                       "repact deploy CHECKPOINT --out DIR saves it")


def _class_option(ckpt, cfg: dict[str, Any], task: str) -> Any:
    """The class list the checkpoint was trained with (its data record), else the run's --classes."""
    from ..train.task_setup import parse_classes

    names = list((ckpt.state.get("data") or {}).get("classes") or [])
    if task == "detection" and names[:1] == ["__background__"]:
        names = names[1:]
    return names or parse_classes(cfg.get("classes", "voc"))


def run_task_eval(args, ckpt, task_name: str) -> int:
    import torch
    from torch.utils.data import DataLoader

    from ..checkpoint import build_model
    from ..tasks import get_task
    from ..train.objective import METRIC_LABELS
    from ..train.state import check_data_classes

    _refuse_classification_flags(args, task_name)
    task = get_task(task_name)
    model = build_model(ckpt)
    cfg = dict(ckpt.state.get("config", {}))
    mc = ckpt.model_config
    dataset = args.dataset or cfg.get("dataset") or task.default_dataset
    try:
        dataset = task.check_dataset(dataset)
    except ValueError:
        raise CLIError(f"--dataset {dataset}: {ckpt.path} is a {task_name} model, evaluated on VOC-format data; "
                       f"accepted: {', '.join(task.datasets)} (with --data-dir the VOC root)") from None
    same = dataset == cfg.get("dataset")
    data_dir = args.data_dir if args.data_dir is not None else (cfg.get("data_dir") if same else None)
    if data_dir is None:
        raise CLIError(f"{ckpt.path} records no data folder; pass --data-dir (a VOC-format root)")
    shape = mc.get("input_shape") or [3, None, None]
    img_size = args.img_size or shape[1] or cfg.get("img_size")
    options = dict(cfg.get("data_kwargs") or {}) if same else {}
    if args.split == "train":  # the train images with the evaluation transforms (no augmentation)
        options["val_split"] = options.get("train_split", "train")
    _, val_set, info = task.build_data(dataset, data_dir, img_size=img_size, augment="none",
                                       classes=_class_option(ckpt, cfg, task_name), year=cfg.get("year"), **options)
    if info.num_classes != int(mc.get("num_classes", info.num_classes)):
        raise CLIError(f"{ckpt.path} has {mc.get('num_classes')} output classes but {dataset} in {data_dir} has "
                       f"{info.num_classes} ({', '.join(info.classes)}); evaluate it on the data it was trained for")
    check_data_classes(ckpt, info.classes, f"{dataset} in {data_dir}")
    loader = DataLoader(val_set, batch_size=args.batch_size or TASK_DEFAULT_BATCH, shuffle=False,
                        num_workers=args.workers, collate_fn=task.collate_fn)
    device = torch.device(args.device)
    model.to(device)
    summary = task.evaluate(model, loader, device, limit=args.limit_batches)
    bad = nonfinite_metrics(summary)
    if bad:
        print(f"repact eval: FAILED: {bad} ({ckpt.path}: its outputs are not finite numbers)", file=sys.stderr)
        return 1
    label = f"{mc.get('name')} act={mc.get('act')}" + (" (reparameterized)" if mc.get("reparameterized") else "")
    if args.json:
        print(json_text({"checkpoint": str(ckpt.path), "task": task_name, "dataset": dataset, "split": args.split,
                         "results": [{"model": label, **summary}]}))
        return 0
    print(f"{ckpt.path} on {dataset} ({args.split}, {summary['n']} images, {img_size} px)")
    keys = [k for k in ("map50", "map", "map75", "mar100", "miou", "pixel_acc") if k in summary]
    head = [f"{METRIC_LABELS[k]} %" for k in keys] + (["loss"] if "loss" in summary else [])
    print(f"{'model':<48} " + " ".join(f"{h:>15}" for h in head))
    values = [f"{summary[k]:>15.2f}" for k in keys] + ([f"{summary['loss']:>15.4f}"] if "loss" in summary else [])
    print(f"{label:<48} " + " ".join(values))
    per_class, what = (summary["map_per_class"], "AP@0.5:0.95 %") if task_name == "detection" else \
        (summary["iou_per_class"], "IoU %")
    shown = ", ".join(f"{name} {'n/a' if v is None else f'{v:.2f}'}" for name, v in per_class.items())
    print(f"per-class {what}: {shown or 'none (no objects)'}")
    return 0
