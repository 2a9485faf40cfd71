"""Merge benchmark: layers, parameters, FLOPs and latency of deploy forms before and after ``repact.merge_linear``.

For each case the model's annealed activations are set to the identity (``lam = 1``, the end of
``repact train --anneal-acts``), its BatchNorm statistics randomized, and its deploy form (as
``repact deploy`` exports it without ``--merge``) compared with the merged one in the same
interleaved rounds (eager PyTorch, one process; the ratio is the median of per-round ratios).

* ``vanillanet_mini``: every activation between two 1x1 convolutions annealed (VanillaNet's deep
  training strategy): half the convolutions go;
* ``mobilenet_v3_small``: the classifier's HardSwish annealed (Linear after Linear merges) and
  the depthwise activations of the blocks without SE (the 3x3 then 1x1 pair merges only with
  ``--when always``: the merged dense 3x3 costs more multiply-adds).

Usage::

    python benchmarks/bench_merge.py                 # batch 8, 30 rounds
    python benchmarks/bench_merge.py --quick         # tiny settings: checks that it runs
    python benchmarks/bench_merge.py --when always --json out.json

Prints a table and writes JSON (default ``benchmarks/results/bench_merge.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

import repact
from repact.activations.anneal import anneal_activations, annealed_modules
from repact.checkpoint import atomic_write_text
from repact.merge import merge_linear
from repact.models import create_model

QUANTITIES = ("layers", "conv_layers", "batchnorms", "params", "flops", "latency_ms")


def _fail(message: str) -> None:
    print(f"bench_merge.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=("vanillanet_mini", "vanillanet_mini_224", "mobilenet_v3_small"),
                   default=["vanillanet_mini", "vanillanet_mini_224", "mobilenet_v3_small"])
    p.add_argument("--act", default="repact", help="activation of the models (default repact)")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--when", choices=("cheaper", "always"), default="cheaper")
    p.add_argument("--threads", type=int, default=1, help="PyTorch CPU threads (default 1)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=str(Path(__file__).resolve().parent / "results" / "bench_merge.json"))
    p.add_argument("--quick", action="store_true", help="batch 2, 3 rounds, small inputs: checks that it runs")
    args = p.parse_args(argv)
    if args.batch < 1 or args.rounds < 1 or args.threads < 1:
        _fail(f"--batch, --rounds and --threads must be positive, got {args.batch}, {args.rounds}, {args.threads}")
    if args.quick:
        args.batch, args.rounds = 2, 3
    return args


def build_case(name: str, act: str, quick: bool) -> tuple[torch.nn.Module, tuple[int, ...]]:
    """(model with its annealed activations at lam = 1, one sample's shape)."""
    if name == "vanillanet_mini":
        model = create_model("vanillanet_mini", act=act, num_classes=10, width=32, small_input=True)
        shape = (3, 16, 16) if quick else (3, 32, 32)
    elif name == "vanillanet_mini_224":
        model = create_model("vanillanet_mini", act=act, num_classes=100, width=48, depth=4)
        shape = (3, 64, 64) if quick else (3, 224, 224)
    else:
        model = create_model("mobilenet_v3_small", act=act, num_classes=100, convention="standard")
        anneal_activations(model, include=r"^classifier\.1$|^features\.[23]\.block\.1\.2$")
        shape = (3, 64, 64) if quick else (3, 224, 224)
    for _, a in annealed_modules(model):
        a.set_lam(1.0)
    return model.eval(), shape


def run(args) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    results = {}
    for name in args.cases:
        model, shape = build_case(name, args.act, args.quick)
        repact.randomize_batchnorm_(model, args.seed)
        x = torch.randn(args.batch, *shape)
        merged, report = merge_linear(model, x, when=args.when, latency_rounds=args.rounds)
        results[name] = {"input": [args.batch, *shape], "before": report.before, "after": report.after,
                         "ratios": report.ratios(), "verify_max_rel": report.verify["max_rel"],
                         "merged": [f"{m.first} + {m.second}: {m.form}" for m in report.merged],
                         "refused": [f"{r.first} + {r.second} ({r.kind})" for r in report.refused]}
    return {"settings": {k: v for k, v in vars(args).items() if k != "json"},
            "machine": {"torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
                        "threads": args.threads},
            "results": results}


def table(out: dict) -> str:
    rows = [("case", "quantity", "before", "after", "after/before")]
    for name, r in out["results"].items():
        for q in QUANTITIES:
            if q not in r["before"]:
                continue
            b, a = r["before"][q], r["after"][q]
            fmt = (lambda v: f"{v:.2f}") if isinstance(b, float) else (lambda v: f"{v:,}")
            ratio = r["ratios"].get(q)
            rows.append((name, q, fmt(b), fmt(a), f"{ratio:.3f}" if ratio is not None else "-"))
        rows.append((name, "max rel error", "", f"{r['verify_max_rel']:.1e}", ""))
    widths = [max(len(row[i]) for row in rows) for i in range(5)]
    return "\n".join("  ".join(c.ljust(widths[i]) if i < 2 else c.rjust(widths[i]) for i, c in enumerate(row))
                     for row in rows)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = run(args)
    print(table(out))
    atomic_write_text(args.json, json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
