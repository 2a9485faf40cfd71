"""``repact verify CHECKPOINT_OR_MODEL``: does the deploy form compute the same logits?

Exit codes: 0 within tolerance, 1 above it or outputs not finite, 2 bad input (a checkpoint whose weights
are not finite included: every command that loads one refuses it, :func:`repact.checkpoint.build_model`).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import torch

from . import CLIError
from ._eval_task import checkpoint_task
from ._model_arg import add_model_flags, add_shape_flags, input_shape_of, load_target, probe_input
from ._task_models import verify_task


def add_parser(sub) -> None:
    p = sub.add_parser(
        "verify", help="check that the reparameterized model computes the same logits",
        description="Reparameterize a copy of the model and compare its logits with the model's on random inputs "
                    "(max abs and max relative error). By default the copy's BatchNorm statistics are randomized "
                    "first, as RepVGG's verify does (with default statistics the check is nearly trivial). "
                    "--reference branches compares with the literal branch sum of every RepAct instead of the "
                    "model's fused forward. --onnx FILE also compares onnxruntime on FILE with the deploy form. "
                    "Logits that are not finite fail the check (a checkpoint whose weights are not finite is refused "
                    "as it is loaded). A detection or segmentation model is "
                    "checked on its raw outputs (relative error) and its task outputs (detections; masks).",
    )
    p.add_argument("target", metavar="CHECKPOINT_OR_MODEL", help="a repact checkpoint (.safetensors), a run folder "
                   "(its best checkpoint, else last) or a model name")
    add_model_flags(p)
    add_shape_flags(p)
    p.add_argument("--batch", type=int, default=4, help="batch size of the random inputs (default 4)")
    p.add_argument("--rtol", type=float, default=1e-5, help="max relative error (default 1e-5)")
    p.add_argument("--reference", choices=("module", "branches"), default="module",
                   help="compare with the model's own forward (module, default) or with every RepAct's literal "
                        "branch sum (branches)")
    p.add_argument("--keep-bn", action="store_true", help="keep the BatchNorm statistics instead of randomizing them")
    p.add_argument("--randomize-acts", action="store_true", help="also randomize the activations' parameters")
    p.add_argument("--onnx", default=None, metavar="FILE", help="also compare onnxruntime on this ONNX file")
    p.add_argument("--parity-tol", type=float, default=1e-4, help="max abs onnxruntime difference (default 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def _onnx_session(path: str):
    from ..deploy import ort_session

    p = Path(path)
    if not p.is_file():
        raise CLIError(f"--onnx {path} does not exist" if not p.exists() else f"--onnx {path} is not a file")
    try:
        return ort_session(p)
    except ImportError as exc:
        raise CLIError(f"--onnx needs onnxruntime ({exc}); pip install 'repact[onnx]'") from None
    except Exception as exc:  # noqa: BLE001  (onnxruntime raises its own exception types)
        raise CLIError(f"--onnx {path} is not an ONNX model onnxruntime can load: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def run(args) -> int:
    from ..deploy import describe_activations, onnx_parity, unfused_activations
    from ..reparam import deployable_modules, verify_reparameterization

    if args.batch < 1:
        raise CLIError(f"--batch must be a positive integer, got {args.batch}")
    if not (args.rtol > 0 and args.parity_tol > 0):
        raise CLIError(f"--rtol must be positive (and --parity-tol), got {args.rtol} and {args.parity_tol}")
    if args.onnx and not args.keep_bn:
        raise CLIError("--onnx compares the file with the model's own weights: add --keep-bn")
    session = _onnx_session(args.onnx) if args.onnx else None
    model, cfg, what = load_target(args)
    task = checkpoint_task(cfg)
    if task is not None:
        return verify_task(args, model, cfg, what, task, session)
    if args.reference == "branches" and not any(hasattr(m, "forward_branches") for m in model.modules()):
        raise CLIError(f"--reference branches compares with every RepAct's literal branch sum, but {what} has no "
                       "RepAct; use --reference module")
    shape = input_shape_of(args, cfg, model)
    model = copy.deepcopy(model).eval()
    probe_input(model, shape, what)  # a clear error for a wrong shape; builds lazy activations
    x = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(args.seed))
    result, deployed = verify_reparameterization(model, x, randomize_bn=not args.keep_bn,
                                                 randomize_acts=args.randomize_acts, seed=args.seed,
                                                 reference=args.reference)
    ok = result.ok(args.rtol)
    fused = len(deployable_modules(model))
    out = {"target": what, "input_shape": shape, "randomized_bn": not args.keep_bn, "reference": args.reference,
           **result.as_dict(), "rtol": args.rtol, "ok": ok, "reparameterized_activations": fused}
    if session is not None:
        try:
            parity = onnx_parity(deployed, args.onnx, [x, x[:1]], session=session)
        except ValueError as exc:
            raise CLIError(f"--onnx {args.onnx} does not match {what}: {_first_line(exc)}") from None
        except Exception as exc:  # noqa: BLE001  (onnxruntime's own types: wrong input shape, ...)
            raise CLIError(f"--onnx {args.onnx} does not run on input {tuple(x.shape)}: {_first_line(exc)}") from None
        out["onnx_parity"] = parity
        out["ok"] = ok = ok and parity <= args.parity_tol
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        bn = "randomized BatchNorm statistics" if not args.keep_bn else "the model's BatchNorm statistics"
        ref = "every RepAct's literal branch sum" if args.reference == "branches" else "model"
        print(f"{what}, input {tuple(shape)}, {bn}")
        print(f"deploy vs {ref} logits: {result}")
        if not fused:
            print("note: nothing to re-parameterize; the deploy form is the model itself "
                  f"({describe_activations(unfused_activations(model))})")
        if "onnx_parity" in out:
            print(f"onnxruntime vs deploy: max abs diff {out['onnx_parity']:.3e} (tolerance {args.parity_tol:g})")
        if ok:
            print("OK")
    if not ok:
        why = (f"not finite: {result.nonfinite}" if result.nonfinite else
               f"above the tolerance rtol={args.rtol:g}" if not result.ok(args.rtol) else
               f"onnxruntime differs by {out['onnx_parity']:.3e}, above {args.parity_tol:g}")
        print(f"repact verify: FAILED: {why}", file=sys.stderr)
    return 0 if ok else 1
