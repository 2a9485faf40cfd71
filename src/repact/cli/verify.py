"""``repact verify CHECKPOINT_OR_MODEL``: does the deploy form compute the same logits?

Exit codes: 0 within tolerance, 1 above it, 2 bad input.
"""

from __future__ import annotations

import copy
import json

import torch

from . import CLIError
from ._model_arg import add_model_flags, add_shape_flags, input_shape_of, load_target


def add_parser(sub) -> None:
    p = sub.add_parser(
        "verify", help="check that the reparameterized model computes the same logits",
        description="Reparameterize a copy of the model and compare its logits with the model's on random inputs "
                    "(max abs and max relative error). By default the copy's BatchNorm statistics are randomized "
                    "first, as RepVGG's verify does (with default statistics the check is nearly trivial). "
                    "--onnx FILE also compares onnxruntime on FILE with the deploy form.",
    )
    p.add_argument("target", metavar="CHECKPOINT_OR_MODEL", help="a repact checkpoint (.safetensors) or a model name")
    add_model_flags(p)
    add_shape_flags(p)
    p.add_argument("--batch", type=int, default=4, help="batch size of the random inputs (default 4)")
    p.add_argument("--rtol", type=float, default=1e-5, help="max relative error (default 1e-5)")
    p.add_argument("--keep-bn", action="store_true", help="keep the BatchNorm statistics instead of randomizing them")
    p.add_argument("--randomize-acts", action="store_true", help="also randomize the activations' parameters")
    p.add_argument("--onnx", default=None, metavar="FILE", help="also compare onnxruntime on this ONNX file")
    p.add_argument("--parity-tol", type=float, default=1e-4, help="max abs onnxruntime difference (default 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..reparam import verify_reparameterization

    if args.batch < 1:
        raise CLIError(f"--batch must be a positive integer, got {args.batch}")
    if not (args.rtol > 0 and args.parity_tol > 0):
        raise CLIError(f"--rtol must be positive (and --parity-tol), got {args.rtol} and {args.parity_tol}")
    model, cfg, what = load_target(args)
    shape = input_shape_of(args, cfg)
    x = torch.randn(args.batch, *shape, generator=torch.Generator().manual_seed(args.seed))
    model = copy.deepcopy(model).eval()
    with torch.no_grad():
        model(x[:1])  # builds lazy activations
    result, deployed = verify_reparameterization(model, x, randomize_bn=not args.keep_bn,
                                                 randomize_acts=args.randomize_acts, seed=args.seed)
    ok = result.ok(args.rtol)
    out = {"target": what, "input_shape": shape, "randomized_bn": not args.keep_bn, **result.as_dict(),
           "rtol": args.rtol, "ok": ok}
    if args.onnx:
        from pathlib import Path

        from ..deploy import onnx_parity

        if not Path(args.onnx).is_file():
            raise CLIError(f"--onnx {args.onnx} does not exist")
        if not args.keep_bn:
            raise CLIError("--onnx compares the file with the model's own weights: add --keep-bn")
        parity = onnx_parity(deployed, args.onnx, [x, x[:1]])
        out["onnx_parity"] = parity
        out["ok"] = ok = ok and parity <= args.parity_tol
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        bn = "randomized BatchNorm statistics" if not args.keep_bn else "the model's BatchNorm statistics"
        print(f"{what}, input {tuple(shape)}, {bn}")
        print(f"deploy vs model logits: {result}")
        if "onnx_parity" in out:
            print(f"onnxruntime vs deploy: max abs diff {out['onnx_parity']:.3e} (tolerance {args.parity_tol:g})")
        print("OK" if ok else f"FAILED: above the tolerance rtol={args.rtol:g}")
    return 0 if ok else 1
