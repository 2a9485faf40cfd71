"""``repact eval CHECKPOINT``: top-1 / top-5 / loss of a checkpoint, optionally re-parameterized; mAP or
mIoU of a detection or segmentation checkpoint (:mod:`repact.cli._eval_task`)."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

__all__ = ["add_parser", "run", "MAX_ACC_CHANGE"]

#: largest top-1 change (in points) that re-parameterization may cause before eval reports a failure
MAX_ACC_CHANGE = 0.01


def add_parser(sub) -> None:
    p = sub.add_parser(
        "eval", help="evaluate a checkpoint (top-1, top-5, loss; mAP or mIoU for detection and segmentation)",
        description="Evaluate a checkpoint on a dataset's val split (or train split). A detection checkpoint reports "
                    "mAP@0.5, mAP@0.5:0.95 and per-class AP; a segmentation one mIoU, per-class IoU and global pixel "
                    "accuracy. CHECKPOINT is a run folder "
                    "(its best checkpoint, else last) or a checkpoint file. With --reparameterize the deploy form is "
                    "evaluated too, and the command fails (exit 1) if top-1 moves by more than 0.01 points.")
    p.add_argument("checkpoint", metavar="CHECKPOINT")
    p.add_argument("--dataset", default=None, help="dataset (default: the one the checkpoint was trained on)")
    p.add_argument("--data-dir", default=None, help="dataset folder (default: the training run's)")
    p.add_argument("--split", choices=("val", "train"), default="val", help="which split (default val)")
    p.add_argument("--img-size", type=int, default=None, help="input size (default: the checkpoint's)")
    p.add_argument("--batch-size", type=int, default=None, help="batch size (default 256; 8 for detection and "
                   "segmentation)")
    p.add_argument("--limit-batches", type=int, default=None, help="evaluate only this many batches")
    p.add_argument("--workers", type=int, default=0, help="data loader workers")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    p.add_argument("--reparameterize", action="store_true", help="also evaluate the re-parameterized model")
    p.add_argument("--save-reparameterized", default=None, metavar="PATH",
                   help="write the re-parameterized model as a checkpoint PATH.safetensors + PATH.json, once it has "
                        "evaluated equal (implies --reparameterize)")
    p.add_argument("--overwrite", action="store_true", help="let --save-reparameterized replace an existing checkpoint")
    p.add_argument("--confusion", default=None, metavar="F.png", help="also write the confusion matrix picture "
                   "(png, svg or pdf; torchmetrics), with its top-1/top-5")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=run)


def _save_target(text: str, source: Path, overwrite: bool) -> tuple[Path, Path]:
    """The two files --save-reparameterized writes, checked before any work is done."""
    from ..checkpoint import checkpoint_paths
    from . import CLIError

    p = Path(text)
    if text.endswith(("/", "\\")) or p.is_dir():
        raise CLIError(f"--save-reparameterized {text} is a folder; give a checkpoint name such as {p / 'deploy'}")
    tpath, jpath = checkpoint_paths(p)
    src = {q.resolve() for q in checkpoint_paths(source)}
    if tpath.resolve() in src or jpath.resolve() in src:
        raise CLIError(f"--save-reparameterized {text} would replace the checkpoint being evaluated ({source}); "
                       "choose another name")
    taken = [str(q) for q in (tpath, jpath) if q.exists()]
    if taken and not overwrite:
        raise CLIError(f"--save-reparameterized {text}: {' and '.join(taken)} already exist(s); pass --overwrite to "
                       "replace, or choose another name")
    return tpath, jpath


def _finite_logits(model, what: str):
    """A forward hook raising NonFiniteError when ``model``'s logits hold NaN or inf."""
    import torch

    from ..reparam import NonFiniteError

    def hook(_module, _inputs, output):
        if torch.is_tensor(output) and not bool(torch.isfinite(output).all()):
            bad = int((~torch.isfinite(output)).sum())
            raise NonFiniteError(f"the logits of {what} hold {bad} NaN/inf value(s) of {output.numel()}")

    return model.register_forward_hook(hook)


def _save_deployed(deployed, target: tuple[Path, Path], mc: dict, state: dict) -> None:
    """Save, rebuild from the files and compare every tensor, then move both files into place."""
    import os
    import shutil
    import tempfile

    import torch

    from ..checkpoint import build_model, save_checkpoint
    from . import CLIError

    tpath, jpath = target
    tpath.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=".repact-eval-", dir=tpath.parent))
    try:
        st, sj = save_checkpoint(stage / "deploy", deployed, model_config=mc, state=state)
        rebuilt = build_model(st).state_dict()
        mine = deployed.state_dict()
        if set(rebuilt) != set(mine) or any(not torch.equal(rebuilt[k], mine[k].cpu()) for k in mine):
            raise CLIError(f"the saved checkpoint does not rebuild the re-parameterized model; nothing written to "
                           f"{tpath}")
        os.replace(st, tpath)
        os.replace(sj, jpath)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def run(args) -> int:
    import torch
    from torch.utils.data import DataLoader

    from ..checkpoint import build_model, load_checkpoint
    from ..data import build_datasets, dataset_channels
    from ..reparam import NonFiniteError, check_finite, reparameterize
    from ..train.config import img_size_problem
    from ..train.evaluate import evaluate, evaluate_pair
    from ..train.state import check_data_classes
    from . import CLIError
    from ._eval_task import checkpoint_task, json_text, nonfinite_metrics, run_task_eval
    from ._model_arg import run_checkpoint

    for name in ("batch_size", "limit_batches", "img_size"):
        v = getattr(args, name)
        if v is not None and v < 1:
            raise CLIError(f"--{name.replace('_', '-')} must be a positive integer, got {v}")
    if img_size_problem(args.img_size):
        raise CLIError(f"--img-size {img_size_problem(args.img_size)}")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise CLIError(f"--device {args.device} was asked for but torch sees no CUDA device; use --device cpu")
    if args.confusion:
        from ..analysis.figures import output_path

        args.confusion = str(output_path(args.confusion, None, "confusion", "--confusion")[0])  # fails before any work
    source = run_checkpoint(args.checkpoint)
    target = _save_target(args.save_reparameterized, source, args.overwrite) if args.save_reparameterized else None
    ckpt = load_checkpoint(source)
    task = checkpoint_task(ckpt.model_config)
    if task is not None:
        return run_task_eval(args, ckpt, task)
    model = build_model(ckpt)
    cfg = dict(ckpt.state.get("config", {}))
    mc = ckpt.model_config
    dataset = args.dataset or cfg.get("dataset")
    if not dataset:
        raise CLIError(f"{ckpt.path} records no dataset; pass --dataset (digits, mnist, fashion_mnist, cifar10, "
                       "cifar100, imagefolder, imagenet100)")
    shape = mc.get("input_shape") or [None, None, None]
    img_size = args.img_size or (shape[1] if shape[1] else cfg.get("img_size"))
    in_ch = shape[0]
    channels = 3 if (in_ch == 3 and dataset_channels(dataset) == 1) else None
    if in_ch == 1 and dataset_channels(dataset) == 3:
        raise CLIError(f"{ckpt.path} takes 1-channel images but {dataset} has 3 channels")
    data_dir = args.data_dir if args.data_dir is not None else (cfg.get("data_dir") if dataset == cfg.get("dataset")
                                                                else None)
    train_set, val_set, info = build_datasets(dataset, data_dir, img_size=img_size,
                                              augment=cfg.get("augment", "auto") if dataset == cfg.get("dataset")
                                              else "auto", channels=channels)
    if info.num_classes != int(mc.get("num_classes", info.num_classes)):
        raise CLIError(f"{ckpt.path} has {mc.get('num_classes')} output classes but {dataset} has "
                       f"{info.num_classes}; evaluate it on the dataset it was trained for")
    check_data_classes(ckpt, info.classes, f"{dataset} in {data_dir}" if data_dir else dataset)
    ds = val_set if args.split == "val" else train_set
    if args.split == "train":
        ds.transform = val_set.transform  # no augmentation when measuring
    loader = DataLoader(ds, batch_size=args.batch_size or 256, shuffle=False, num_workers=args.workers)
    device = torch.device(args.device)
    model.to(device)
    label = f"{mc.get('name')} act={mc.get('act')}" + (" (reparameterized)" if mc.get("reparameterized") else "")
    written: list[str] = []
    deployed = reparameterize(copy.deepcopy(model)) if args.reparameterize or args.save_reparameterized else None
    hooks = [_finite_logits(model, "the model")]
    if deployed is not None:
        hooks.append(_finite_logits(deployed, "the re-parameterized model"))
    try:
        if deployed is not None:
            check_finite(deployed, "the re-parameterized model")
            res = evaluate_pair(model, deployed, loader, device, limit=args.limit_batches)
        else:
            res = evaluate(model, loader, device, limit=args.limit_batches)
    except NonFiniteError as exc:
        print(f"repact eval: FAILED: {exc}" + ("; nothing written" if target else ""), file=sys.stderr)
        return 1
    finally:
        for h in hooks:
            h.remove()
    if deployed is None:
        rows, extra = [(label, res)], {}
    else:
        rows = [(label, res["reference"]), (label + " reparameterized", res["candidate"])]
        change = abs(res["candidate"]["acc1"] - res["reference"]["acc1"])
        extra = {"max_abs_logit_error": res["max_abs_logit_error"], "top1_flips": res["top1_flips"],
                 "acc1_change": change}
    bad = nonfinite_metrics({name: r for name, r in rows} | extra)
    if bad:
        print(f"repact eval: FAILED: {bad} ({ckpt.path}: its outputs are not finite numbers)"
              + ("; nothing written" if target else ""), file=sys.stderr)
        return 1
    if target and extra["acc1_change"] <= MAX_ACC_CHANGE:
        from ..merge.layers import deploy_model_config

        mc2 = deploy_model_config(mc, model, deployed)
        _save_deployed(deployed.cpu(), target, mc2, {"config": cfg, "source": str(ckpt.path)})
        written = [str(p) for p in target]
    if args.confusion:
        from ..analysis.confusion import write_confusion

        conf = write_confusion(model, loader, info.num_classes, args.confusion, device, args.limit_batches, info.classes)
        extra["confusion"] = {"path": str(args.confusion), "acc1": conf.acc1, "acc5": conf.acc5, "n": conf.n}
    if args.json:
        print(json_text({"checkpoint": str(ckpt.path), "dataset": dataset, "split": args.split,
                         "results": [{"model": r[0], **r[1]} for r in rows], **extra,
                         **({"written": written} if target else {})}))
    else:
        print(f"{ckpt.path} on {dataset} ({args.split}, {rows[0][1]['n']} images)")
        print(f"{'model':<48} {'top-1 %':>9} {'top-5 %':>9} {'loss':>8}")
        for name, r in rows:
            print(f"{name:<48} {r['acc1']:>9.2f} {r['acc5']:>9.2f} {r['loss']:>8.4f}")
        if "confusion" in extra:
            c = extra["confusion"]
            print(f"wrote {c['path']} (confusion matrix, torchmetrics: top-1 {c['acc1']:.2f}%, top-5 {c['acc5']:.2f}%)")
        if "acc1_change" in extra:
            print(f"re-parameterization: top-1 change {extra['acc1_change']:.4f} points, "
                  f"{extra['top1_flips']} changed predictions, max |logit error| {extra['max_abs_logit_error']:.3e}")
        if written:
            print(f"wrote {' and '.join(written)} (the re-parameterized model; it rebuilds with repact.checkpoint."
                  "build_model)")
    if extra.get("acc1_change", 0.0) > MAX_ACC_CHANGE:
        print(f"repact eval: re-parameterization changed top-1 by {extra['acc1_change']:.4f} points "
              f"(more than {MAX_ACC_CHANGE})" + ("; nothing written" if target else ""), file=sys.stderr)
        return 1
    return 0
