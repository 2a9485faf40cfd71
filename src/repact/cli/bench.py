"""``repact bench MODEL``: params, FLOPs and latency of the baseline, training-form and deploy-form models."""

from __future__ import annotations

import json
from pathlib import Path

from .._export_forms import ONNX_FORMS
from . import CLIError
from ._model_arg import add_shape_flags, build_named, input_shape_of, parse_model_args, probe_input


def max_threads() -> int:
    """The most --threads accepted: four per core this process may run on."""
    from ..train.compare import usable_cores

    return 4 * usable_cores()


def add_parser(sub) -> None:
    p = sub.add_parser(
        "bench", help="cost table: params, FLOPs, latency (eager, torch.compile, onnxruntime, openvino, executorch, "
                      "CUDA graphs)",
        description="Build MODEL with a baseline activation (default hardswish), with --act (training form) and its "
                    "reparameterized copy (deploy form); count params and FLOPs (pointwise activation work included) "
                    "and time them interleaved (warm-up, medians, per-round ratios to the baseline) in each engine "
                    "and batch size. Prints a table and writes JSON. Random weights; nothing is downloaded.",
    )
    p.add_argument("model", metavar="MODEL", help="a registered model name, e.g. mobilenet_v3_small")
    p.add_argument("--act", default="repact", help="activation of the training/deploy forms (default repact)")
    p.add_argument("--baseline-act", default="hardswish", help="activation of the baseline model (default hardswish)")
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE", help="builder keyword (repeatable)")
    add_shape_flags(p)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32], metavar="B", help="default: 1 32")
    p.add_argument("--engines", nargs="+", default=None,
                   choices=("eager", "compile", "onnxruntime", "openvino", "executorch", "cuda-graphs",
                            "reduce-overhead"),
                   help="default: eager, compile and onnxruntime on the CPU (openvino and executorch, when "
                        "installed, on request), eager and compile on CUDA; cuda-graphs (the eager forward "
                        "captured in a CUDA graph) and reduce-overhead (torch.compile's mode) run on CUDA only")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also time the engines that replay CUDA graphs, cuda-graphs and reduce-overhead "
                        "(needs --device cuda)")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]: CUDA-event timing and peak memory "
                                                   "(torch.cuda.max_memory_allocated)")
    p.add_argument("--rounds", type=int, default=20, help="timed rounds per engine and batch size (default 20)")
    p.add_argument("--warmup", type=int, default=3, help="untimed calls per model first (default 3)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads, up to 4 per core (default: torch's)")
    p.add_argument("--onnx-form", choices=("target", *ONNX_FORMS), default="target",
                   help="export form of the deploy model (default target: each engine's own form, as repact deploy "
                        "--target ENGINE writes it; auto: the generic form)")
    p.add_argument("--no-ort-spinning", action="store_true", help="stop onnxruntime's idle threads busy-waiting")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="JSON output (default: bench-MODEL-ACT.json)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..checkpoint import atomic_write_text
    from ..deploy import bench_device, cost_report, pick_engines
    from ..models import get_model_spec

    device = bench_device(args.device)  # before anything is built: a clear line without a GPU
    try:  # unknown, device-mismatched or not-installed engines: one line before anything is built
        engines = pick_engines(args.engines, device, args.cuda_graphs)
    except ValueError as exc:
        raise CLIError(str(exc)) from None
    get_model_spec(args.model)  # unknown names: a clear error listing the choices
    if args.rounds < 1 or args.warmup < 0 or any(b < 1 for b in args.batch_sizes):
        raise CLIError("--rounds and --batch-sizes must be positive and --warmup >= 0")
    if args.image_size is not None and args.image_size < 1:
        raise CLIError(f"--image-size must be a positive integer, got {args.image_size}")
    if args.threads is not None and not 1 <= args.threads <= max_threads():
        raise CLIError(f"--threads {args.threads} is outside 1 to {max_threads()} (4 per core of the "
                       f"{max_threads() // 4} this process may use: more only queue for the same cores)")
    out = Path(args.json or f"bench-{args.model}-{args.act}.json")
    if out.exists() and out.is_dir():
        raise CLIError(f"--json {out} is a folder; give a file name")
    kwargs = parse_model_args(args.model_arg)
    probe = build_named(args.model, args.baseline_act, args.num_classes, kwargs)
    build_named(args.model, args.act, args.num_classes, kwargs)  # an unknown --act fails here, in one line
    shape = input_shape_of(args, {"name": args.model}, probe, batch=max(args.batch_sizes))
    probe_input(probe, shape, f"model {args.model}")
    report = cost_report(
        args.model, args.act, baseline_act=args.baseline_act, input_shape=shape,
        batch_sizes=args.batch_sizes, engines=engines, warmup=args.warmup, rounds=args.rounds,
        num_classes=args.num_classes, threads=args.threads, model_kwargs=kwargs,
        onnx_form=args.onnx_form, seed=args.seed, ort_spinning=not args.no_ort_spinning, device=device,
    )
    print(report.table())
    atomic_write_text(out, json.dumps(report.as_dict(), indent=2) + "\n")
    print(f"wrote {out}")
    return 0
