"""``repact deploy`` and ``repact verify`` on detection and segmentation models (checkpoints or names):
:func:`repact.deploy.tasks.deploy_task_model` and :func:`~repact.deploy.tasks.verify_task_reparameterization`."""

from __future__ import annotations

import json
import sys
from typing import Any

from . import CLIError

__all__ = ["task_input_size", "deploy_task", "verify_task"]


def task_input_size(args, cfg: dict[str, Any], model) -> int:
    """The square input side: --image-size, --input-shape 3 S S, the checkpoint's, else the model's default."""
    from ..deploy.tasks import default_input_size

    if getattr(args, "input_shape", None):
        shape = list(args.input_shape)
        if len(shape) != 3 or shape[0] != 3 or shape[1] != shape[2]:
            raise CLIError(f"--input-shape {' '.join(map(str, shape))}: detection and segmentation models take "
                           "square RGB images, e.g. --input-shape 3 320 320 (or --image-size 320)")
        size = shape[1]
    elif getattr(args, "image_size", None):
        size = args.image_size
    elif cfg.get("input_shape"):
        size = int(cfg["input_shape"][1])
    else:
        size = default_input_size(model)
    if not 32 <= size <= 4096:
        raise CLIError(f"input size {size} is outside 32 to 4096 pixels; give --image-size")
    return int(size)


def deploy_task(args, model, cfg: dict[str, Any], what: str, task: str) -> int:
    from ..deploy import DeployError
    from ..deploy.tasks import deploy_task_model

    if args.static_batch:
        raise CLIError(f"--static-batch: {task} models are exported with a dynamic batch only")
    size = task_input_size(args, cfg, model)
    print(f"deploying {what} ({task}), input 3 x {size} x {size}")
    try:
        res = deploy_task_model(model, args.out, img_size=size, model_config=cfg, name=args.name, rtol=args.rtol,
                                parity_tol=args.parity_tol, opset=args.opset, onnx_form=args.onnx_form,
                                batch=args.batch, seed=args.seed, overwrite=args.overwrite,
                                allow_unfused=args.allow_unfused, log=print)
    except DeployError as exc:
        print(f"repact deploy: check failed: {exc}", file=sys.stderr)
        return 1
    except FileExistsError as exc:  # written meanwhile by another process
        raise CLIError(str(exc)) from None
    onnx = res.report["onnx"]
    print(f"deployed: {onnx['exported']}; onnxruntime max abs diff {res.onnx_parity:.3e}")
    print(f"not exported (do it in your runtime): {'; '.join(onnx['not_exported'])}")
    print(f"report: {res.report_path}")
    return 0


def verify_task(args, model, cfg: dict[str, Any], what: str, task: str, session) -> int:
    import torch

    from ..deploy import onnx_parity
    from ..deploy.tasks import check_images, dense_view, verify_task_reparameterization
    from ..reparam import deployable_modules

    if args.reference != "module":
        raise CLIError(f"--reference {args.reference} compares classifiers' logits; for a {task} model the deploy "
                       "form is compared with the model's own forward (--reference module)")
    if args.randomize_acts and args.keep_bn:
        raise CLIError(f"--randomize-acts with --keep-bn: a {task} model's check randomizes the BatchNorm statistics "
                       "and the activations together (the default), or neither (--keep-bn)")
    size = task_input_size(args, cfg, model)
    images = check_images(task, args.batch, size, torch.Generator().manual_seed(args.seed))
    result, deployed = verify_task_reparameterization(model, images, randomize=not args.keep_bn, seed=args.seed,
                                                      rtol=args.rtol)
    ok = result.ok(args.rtol)
    out = {"target": what, "task": task, "input_shape": [3, size, size], **result.as_dict(), "rtol": args.rtol,
           "ok": ok, "reparameterized_activations": len({id(m) for _, m in deployable_modules(model)})}
    if session is not None:
        try:
            out["onnx_parity"] = onnx_parity(dense_view(deployed), args.onnx, [images, images[:1]], session=session)
        except Exception as exc:  # noqa: BLE001  (onnxruntime's own types: wrong input shape, ...)
            line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise CLIError(f"--onnx {args.onnx} does not run as the deploy form of {what} on input "
                           f"{tuple(images.shape)}: {line}") from None
        out["ok"] = ok = ok and out["onnx_parity"] <= args.parity_tol
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        stats = "randomized BatchNorm statistics and activations" if not args.keep_bn else \
            "the model's BatchNorm statistics"
        print(f"{what} ({task}), input (3, {size}, {size}), {stats}")
        print(f"deploy vs model: {result}")
        if "onnx_parity" in out:
            print(f"onnxruntime vs deploy: max abs diff {out['onnx_parity']:.3e} (tolerance {args.parity_tol:g})")
        if ok:
            print("OK")
    if not ok:
        why = (f"above the tolerance rtol={args.rtol:g} or {task} outputs differ" if not result.ok(args.rtol) else
               f"onnxruntime differs by {out['onnx_parity']:.3e}, above {args.parity_tol:g}")
        print(f"repact verify: FAILED: {why}", file=sys.stderr)
    return 0 if ok else 1
