"""``repact deploy CHECKPOINT_OR_MODEL --out DIR``: reparameterize, verify, export ONNX, check, save.

Exit codes: 0 deployed, 1 a check failed (nothing written), 2 bad input (including files of an
earlier deploy in DIR without --overwrite, and a model with nothing to re-parameterize without
--allow-unfused or --merge). ``--merge`` also folds the BatchNorms and merges the layers that a
linear part leaves apart (``repact.merge_linear``), reporting layers, parameters, FLOPs and latency
before and after.
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
    if args.latency_rounds < 0 or args.calibrate < 0:
        raise CLIError(f"--latency-rounds and --calibrate must be 0 or more, got {args.latency_rounds} and "
                       f"{args.calibrate}")
    if args.calibrate and not args.merge:
        raise CLIError("--calibrate measures merge candidates; add --merge")
    model, cfg, what = load_target(args)
    task = checkpoint_task(cfg)
    if task is not None:
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
                           onnx_form=args.onnx_form, randomize_bn=args.randomize_bn, batch=args.batch,
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
