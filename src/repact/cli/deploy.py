"""``repact deploy CHECKPOINT_OR_MODEL --out DIR``: reparameterize, verify, export ONNX, check, save.

Exit codes: 0 deployed, 1 a check failed (nothing written), 2 bad input (including files of an
earlier deploy in DIR without --overwrite, and a model with nothing to re-parameterize without
--allow-unfused).
"""

from __future__ import annotations

import sys

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
    p.add_argument("--onnx-form", choices=("auto", "basis", "where"), default="auto",
                   help="how deploy activations are written to ONNX (default: auto, the fastest exact form)")
    p.add_argument("--randomize-bn", action="store_true",
                   help="also verify a copy with random BatchNorm statistics (a stricter check of the fold)")
    p.add_argument("--seed", type=int, default=0, help="seed of the check inputs")
    p.set_defaults(func=run)


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
    model, cfg, what = load_target(args)
    task = checkpoint_task(cfg)
    if task is not None:
        return deploy_task(args, model, cfg, what, task)
    shape = input_shape_of(args, cfg, model)
    probe_input(model, shape, what)
    print(f"deploying {what}, input {tuple(shape)}")
    try:
        res = deploy_model(model, out, input_shape=shape, model_config=cfg, name=args.name, rtol=args.rtol,
                           parity_tol=args.parity_tol, opset=args.opset, dynamic_batch=not args.static_batch,
                           onnx_form=args.onnx_form, randomize_bn=args.randomize_bn, batch=args.batch,
                           seed=args.seed, overwrite=args.overwrite, allow_unfused=args.allow_unfused, log=print)
    except DeployError as exc:
        print(f"repact deploy: check failed: {exc}", file=sys.stderr)
        return 1
    except FileExistsError as exc:  # written meanwhile by another process
        raise CLIError(str(exc)) from None
    v = res.verify["logits"]
    print(f"deployed: max abs error {v['max_abs']:.3e}, max rel error {v['max_rel']:.3e}; "
          f"onnxruntime max abs diff {res.onnx_parity:.3e}")
    print(f"report: {res.report_path}")
    return 0
