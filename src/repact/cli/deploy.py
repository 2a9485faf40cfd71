"""``repact deploy CHECKPOINT_OR_MODEL --out DIR``: reparameterize, verify, export ONNX, check, save.

Exit codes: 0 deployed, 1 a check failed (nothing written), 2 bad input (including files of an
earlier deploy in DIR without --overwrite, and a model with nothing to re-parameterize without
--allow-unfused or --merge). ``--merge`` also folds the BatchNorms and merges the layers that a
linear part leaves apart (``repact.merge_linear``), reporting layers, parameters, FLOPs and latency
before and after.
"""

from __future__ import annotations

import sys

from .._export_forms import ONNX_FORMS
from . import CLIError
from ._eval_task import checkpoint_task
from ._model_arg import add_model_flags, add_shape_flags, input_shape_of, load_target, probe_input
from ._task_models import deploy_task


def add_parser(sub) -> None:
    p = sub.add_parser(
        "deploy", help="reparameterize, verify, export ONNX and save deploy weights",
        description="Reparameterize a checkpoint (or a registered model built by name), verify that the deploy form "
                    "computes the same logits, export it to ONNX (dynamic batch), check the file with onnx.checker, "
                    "compare onnxruntime with PyTorch, and save the deploy weights (safetensors) and a JSON report. "
                    "Nothing is written unless every check passes, and files of an earlier deploy are replaced only "
                    "with --overwrite. Detection and segmentation models (checkpoints of repact train --task ..., or "
                    "their names) are checked on their task outputs too (boxes, scores, labels; masks), with their "
                    "own and with randomized statistics; the segmenters are exported whole, the detectors' backbone "
                    "+ heads (raw outputs), and what is not exported (resize, box decoding, NMS) is listed.",
    )
    p.add_argument("target", metavar="CHECKPOINT_OR_MODEL", help="a repact checkpoint (.safetensors), a run folder "
                   "(its best checkpoint, else last) or a model name")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--name", default="model", help="file stem of the outputs (default: model)")
    p.add_argument("--overwrite", action="store_true", help="replace the files of an earlier deploy under --name in DIR")
    p.add_argument("--allow-unfused", action="store_true",
                   help="deploy a model with nothing to re-parameterize (e.g. ACON, GELU) as it is")
    add_model_flags(p)
    add_shape_flags(p)
    p.add_argument("--batch", type=int, default=2, help="batch size of the random check inputs (default 2)")
    p.add_argument("--rtol", type=float, default=1e-5, help="max relative error of the logits (default 1e-5)")
    p.add_argument("--parity-tol", type=float, default=1e-4, help="max abs PyTorch/onnxruntime difference (default 1e-4)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 17 to the highest torch's exporter writes "
                   "(20 for torch 2.x; default 17)")
    p.add_argument("--static-batch", action="store_true", help="export a fixed batch size instead of a dynamic one")
    p.add_argument("--onnx-form", choices=ONNX_FORMS, default="auto",
                   help="how deploy activations are written to ONNX (default: auto; --target picks it instead)")
    add_edge_flags(p)
    p.add_argument("--randomize-bn", action="store_true",
                   help="also verify a copy with random BatchNorm statistics (a stricter check of the fold)")
    p.add_argument("--seed", type=int, default=0, help="seed of the check inputs")
    m = p.add_argument_group("merging layers (repact.merge_linear)")
    m.add_argument("--merge", action="store_true",
                   help="also fold every BatchNorm into its layer and merge the layers that a linear part (an "
                        "activation annealed to the identity) leaves apart, where exact")
    m.add_argument("--merge-when", choices=("cheaper", "always"), default="cheaper",
                   help="with --merge: cheaper (default) merges a pair only when the merged layer needs no more "
                        "multiply-adds; always merges every exact pair")
    m.add_argument("--latency-rounds", type=int, default=10, metavar="N",
                   help="with --merge: time the deploy form before and after merging, N rounds (default 10; 0: no)")
    m.add_argument("--calibrate", type=int, default=0, metavar="N",
                   help="with --merge: measure each remaining activation's input range on N validation batches of "
                        "the dataset the checkpoint was trained on, and report those that are linear on it")
    p.set_defaults(func=run)


def add_edge_flags(p) -> None:
    """--target, --quantize and the calibration flags (issue 25)."""
    from .._export_forms import TARGETS

    p.add_argument("--target", choices=TARGETS, default=None, dest="runtime",
                   help="the runtime the ONNX file is for; picks the export form it runs fastest (generic: the "
                        "--onnx-form default; openvino also checks OpenVINO's outputs when it is installed; executorch "
                        "also writes NAME.pte for ExecuTorch's XNNPACK delegate, batch 1, checked against PyTorch)")
    p.add_argument("--quantize", choices=("int8",), default=None,
                   help="also write an INT8 model: static post-training quantization with per-channel weights; with "
                        "--target openvino NNCF's, written as OpenVINO IR NAME_int8.xml + .bin (needs "
                        "'repact[openvino]'), else onnxruntime's (QDQ) of the plain basis form, NAME_int8.onnx; "
                        "FP32 vs INT8 top-1, per-channel activation ranges and latency (that runtime) in the report")
    p.add_argument("--calibration-data", default=None, metavar="DIR",
                   help="image folder with train/<class>/ (calibration) and val/<class>/ (accuracy), for --quantize")
    p.add_argument("--calibration-images", type=int, default=500, metavar="N",
                   help="class-balanced train images to calibrate on (default 500)")
    p.add_argument("--val-images", type=int, default=None, metavar="N", help="val images to evaluate (default: all)")


def check_edge_flags(args) -> None:
    """One-line errors for --quantize and its calibration flags, before anything is built."""
    from pathlib import Path

    if args.runtime == "executorch":
        from ..deploy.executorch_export import executorch_available

        if not executorch_available():
            raise CLIError("--target executorch needs ExecuTorch, which is not installed: pip install "
                           "'repact[executorch]'")
    if args.quantize and args.runtime == "openvino":
        from ..deploy.quantize import QuantizeError
        from ..deploy.quantize_openvino import require_openvino_quantize

        try:
            require_openvino_quantize("--target openvino --quantize int8")
        except QuantizeError as exc:
            raise CLIError(str(exc)) from None
    if args.quantize and not args.calibration_data:
        raise CLIError("--quantize int8 needs --calibration-data DIR (an image folder with train/ and val/)")
    if args.calibration_data and not args.quantize:
        raise CLIError("--calibration-data is used by --quantize int8 only")
    if args.calibration_images < 1 or (args.val_images is not None and args.val_images < 1):
        raise CLIError(f"--calibration-images and --val-images must be positive, got {args.calibration_images} "
                       f"and {args.val_images}")
    if args.calibration_data:
        root = Path(args.calibration_data)
        missing = [s for s in ("train", "val") if not (root / s).is_dir()]
        if missing:
            raise CLIError(f"--calibration-data {root} has no {' or '.join(s + '/' for s in missing)} folder; give an "
                           "image folder with train/<class>/ and val/<class>/")


def quantize_deployed(args, model, res, shape) -> None:
    """--quantize int8: write the INT8 model beside the deploy (``NAME_int8.onnx``, or ``NAME_int8.xml`` + ``.bin``
    for OpenVINO) and add an ``int8`` entry to its report."""
    import json

    from ..checkpoint import atomic_write_text
    from ..deploy.int8_report import int8_file, int8_report, int8_runtime
    from ..deploy.pipeline import json_ready
    from ..reparam import reparameterize

    deployed = reparameterize(model, inplace=False).eval()
    runtime = int8_runtime(args.runtime)
    int8 = int8_file(res.onnx_path, args.name, runtime)
    rep = int8_report(deployed, res.onnx_path, int8, args.calibration_data, shape, runtime=runtime,
                      calibration_images=args.calibration_images, val_images=args.val_images, seed=args.seed, say=print)
    res.report["int8"] = rep
    atomic_write_text(res.report_path, json.dumps(json_ready(res.report), indent=2, sort_keys=True) + "\n")
    lat = {(r["batch"], r["variant"]): r for r in rep[f"latency_{runtime}"]}
    ratios = ", ".join(f"batch {b}: {lat[(b, 'int8')]['ratio']:.2f}x" for b in sorted({k[0] for k in lat}))
    written = ", ".join(str(int8.with_name(f)) for f in rep["files"])
    print(f"int8: wrote {written}; top-1 FP32 {rep['top1_fp32']:.2f}% -> INT8 {rep['top1_int8']:.2f}% "
          f"({rep['val_images']} val images); INT8 / FP32 time ({runtime}) {ratios}")


def run(args) -> int:
    from pathlib import Path

    from ..deploy import DeployError, deploy_model, deploy_outputs
    from ..deploy.onnx_export import check_opset
    from ..train.run_dir import run_folder_of, same_folder

    try:
        check_opset(args.opset, 17, name="--opset")
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    if args.batch < 1:
        raise CLIError(f"--batch must be a positive integer, got {args.batch}")
    if not (args.rtol > 0 and args.parity_tol > 0):
        raise CLIError(f"--rtol and --parity-tol must be positive, got {args.rtol} and {args.parity_tol}")
    if not args.name or any(c in args.name for c in "/\\") or args.name.startswith("."):
        raise CLIError(f"--name must be a plain file stem (no folders, not starting with a dot), got {args.name!r}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise CLIError(f"--out {out} exists and is not a folder")
    run = run_folder_of(out)
    if run is not None:  # files of its own in a run folder make repact train refuse to replace or resume it
        raise CLIError(f"--out {out} {'is' if same_folder(run, out) else 'lies in'} the run folder {run}, which holds "
                       f"one run and nothing else; give a folder outside it, e.g. {run.parent / (run.name + '-deploy')}")
    taken = [p.name for p in deploy_outputs(out, args.name) if p.exists() or p.is_symlink()]
    if taken and not args.overwrite:
        raise CLIError(f"--out {out} already holds {', '.join(taken)}; pass --overwrite to replace them, or choose "
                       "another --out or --name")
    check_edge_flags(args)
    if args.latency_rounds < 0 or args.calibrate < 0:
        raise CLIError(f"--latency-rounds and --calibrate must be 0 or more, got {args.latency_rounds} and "
                       f"{args.calibrate}")
    if args.calibrate and not args.merge:
        raise CLIError("--calibrate measures merge candidates; add --merge")
    model, cfg, what = load_target(args)
    task = checkpoint_task(cfg)
    if task is not None:
        if args.runtime or args.quantize:
            raise CLIError("--target and --quantize apply to classifiers; detection and segmentation models are "
                           "exported with the generic form")
        if args.merge:
            raise CLIError(f"--merge applies to classification models; {what} is a {task} model")
        return deploy_task(args, model, cfg, what, task)
    shape = input_shape_of(args, cfg, model)
    probe_input(model, shape, what)
    calibration = _calibration_batches(args.target, args.calibrate, args.batch) if args.calibrate else None
    print(f"deploying {what}, input {tuple(shape)}")
    try:
        res = deploy_model(model, out, input_shape=shape, model_config=cfg, name=args.name, rtol=args.rtol,
                           parity_tol=args.parity_tol, opset=args.opset, dynamic_batch=not args.static_batch,
                           onnx_form=args.onnx_form, target=args.runtime, randomize_bn=args.randomize_bn, batch=args.batch,
                           seed=args.seed, overwrite=args.overwrite, allow_unfused=args.allow_unfused,
                           merge=args.merge_when if args.merge else None, merge_latency_rounds=args.latency_rounds if args.merge else 0,
                           calibration=calibration, log=print)
    except DeployError as exc:
        print(f"repact deploy: check failed: {exc}", file=sys.stderr)
        return 1
    except FileExistsError as exc:  # written meanwhile by another process
        raise CLIError(str(exc)) from None
    v = res.verify["logits"]
    print(f"deployed: max abs error {v['max_abs']:.3e}, max rel error {v['max_rel']:.3e}; "
          f"onnxruntime max abs diff {res.onnx_parity:.3e}")
    if "merge" in res.report:
        from ..merge import MergeReport

        mr = res.report["merge"]
        print(MergeReport(before=mr["before"], after=mr["after"]).table())
    if args.quantize:
        quantize_deployed(args, model, res, shape)
    print(f"report: {res.report_path}")
    return 0


def _calibration_batches(target: str, n: int, batch: int) -> list:
    """The inputs of the first ``n`` validation batches of the dataset a checkpoint was trained on."""
    from itertools import islice

    from torch.utils.data import DataLoader

    from ..checkpoint import load_checkpoint
    from ..train.config import resolve_config
    from ..train.setup import build_data
    from ._model_arg import run_checkpoint

    try:
        saved = dict(load_checkpoint(run_checkpoint(target)).state.get("config") or {})
    except (ValueError, OSError):
        saved = {}
    if not saved.get("dataset"):
        raise CLIError(f"--calibrate measures on the dataset a checkpoint was trained on, and {target} records none "
                       "(a model name, or a checkpoint not written by repact train)")
    saved.pop("out", None)
    _, val_set, _ = build_data(resolve_config(saved))
    loader = DataLoader(val_set, batch_size=max(batch, 32), shuffle=False)
    return [x for x, _ in islice(loader, n)]
