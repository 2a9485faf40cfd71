"""Model-level benchmark: MobileNetV3-Small with RepAct (training and deploy form) vs the HardSwish models.

Every variant runs in the same interleaved rounds (rotating order, warm-up first), per engine and
batch size; the ratio to a baseline is the median of the per-round ratios. Two baselines:

* ``hardswish``: the same network with HardSwish at the 23 sites RepAct replaces (the RepAct
  paper's baseline; like for like),
* ``stock``: torchvision's MobileNetV3-Small (ReLU in the first blocks, HardSwish after).

Targets of issue 3 (deploy form vs HardSwish model, CPU): eager <= 1.05x, torch.compile <= 1.02x,
onnxruntime as low as possible; of issue 24 on a GPU: eager <= 1.1x (batch 128) and <= 1.2x
(batch 1), <= 1.05x with CUDA graphs or compiled. Usage::

    python benchmarks/bench_models.py                       # 224 px, batch 1 and 32, all engines
    python benchmarks/bench_models.py --quick               # tiny settings: checks that it runs
    python benchmarks/bench_models.py --engines eager onnxruntime --rounds 40 --json out.json
    python benchmarks/bench_models.py --device cuda        # eager and torch.compile on the GPU: CUDA-event
                                                           # timing, peak torch.cuda.max_memory_allocated
    python benchmarks/bench_models.py --device cuda --cuda-graphs   # also the forward captured in a CUDA
                                                           # graph, and torch.compile(mode="reduce-overhead")

Prints a table and writes JSON (default ``benchmarks/results/bench_models.json``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

from repact.checkpoint import atomic_write_text
from repact.deploy import bench_device
from repact.deploy.bench import ENGINES, build_variants, cost_report, pick_engines
from repact.models import create_model


def _fail(message: str) -> None:
    """Bad input: one line on stderr, exit 2 (no usage block)."""
    print(f"bench_models.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="mobilenet_v3_small")
    p.add_argument("--act", default="repact", help="activation of the training/deploy forms (default repact)")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--engines", nargs="+", choices=ENGINES, default=None,
                   help="default: eager, compile and onnxruntime on the CPU, eager and compile on CUDA")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also cuda-graphs (the eager forward captured in one CUDA graph) and reduce-overhead "
                        "(torch.compile's mode); needs --device cuda")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch and onnxruntime")
    p.add_argument("--onnx-form", choices=("auto", "basis", "where"), default="auto")
    p.add_argument("--no-ort-spinning", action="store_true", help="onnxruntime idle threads do not busy-wait")
    p.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "bench_models.json"))
    p.add_argument("--quick", action="store_true", help="64 px, batch 1 and 2, 3 rounds: checks that everything runs")
    args = p.parse_args(argv)
    try:
        args.device = bench_device(args.device)
    except ValueError as exc:  # one line, no usage block: e.g. --device cuda on a machine without a GPU
        _fail(str(exc))
    try:
        args.engines = pick_engines(args.engines, args.device, args.cuda_graphs)
    except ValueError as exc:
        _fail(str(exc))
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.image_size, args.batch_sizes, args.rounds, args.warmup = 64, [1, 2], 3, 1
    shape = (3, args.image_size, args.image_size)
    probe = torch.randn(1, *shape)
    built, notes = build_variants(args.model, args.act, "hardswish", example_input=probe)
    variants = {"hardswish": built["baseline"], "stock": create_model(args.model).eval(), "train": built["train"]}
    if "deploy" in built:
        variants["deploy"] = built["deploy"]
    t0 = time.perf_counter()
    report = cost_report(args.model, args.act, baseline_act="hardswish", input_shape=shape,
                         batch_sizes=args.batch_sizes, engines=args.engines, warmup=args.warmup, rounds=args.rounds,
                         threads=args.threads, onnx_form=args.onnx_form, variants=variants,
                         ort_spinning=not args.no_ort_spinning, device=args.device)
    report.notes = notes + report.notes
    # ratios to the stock model too: per engine and batch, deploy / stock from the paired medians
    for row in report.latency:
        stock = next(r for r in report.latency if r["engine"] == row["engine"] and r["batch"] == row["batch"]
                     and r["variant"] == "stock")
        row["ratio_vs_stock"] = row["ratio"] / stock["ratio"] if stock["ratio"] else None
    print(report.table())
    print()
    print(f"{'engine':<15} {'batch':>5} {'deploy/hardswish':>17} {'deploy/stock':>13} {'train/hardswish':>16}")
    for engine in args.engines:
        for b in args.batch_sizes:
            rows = {r["variant"]: r for r in report.latency if r["engine"] == engine and r["batch"] == b}
            dep = rows.get("deploy", {})
            fmt = (lambda v: f"{v:.3f}" if v is not None else "-")
            print(f"{engine:<15} {b:>5} {fmt(dep.get('ratio')):>17} {fmt(dep.get('ratio_vs_stock')):>13} "
                  f"{fmt(rows['train']['ratio']):>16}")
    data = report.as_dict()
    data["wall_s"] = time.perf_counter() - t0
    data["targets"] = {"eager": 1.05, "compile": 1.02, "onnxruntime": 1.3, "cuda-graphs": 1.05, "reduce-overhead": 1.05}
    out = Path(args.json)
    atomic_write_text(out, json.dumps(data, indent=2) + "\n")
    print(f"\nwrote {out} ({data['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
