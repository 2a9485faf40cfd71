"""Model-level benchmark: MobileNetV3-Small with RepAct (training and deploy form) vs the HardSwish models.

Every variant runs in the same interleaved rounds (rotating order, warm-up first), per engine and
batch size; the ratio to a baseline is the median of the per-round ratios. Two baselines:

* ``hardswish``: the same network with HardSwish at the 23 sites RepAct replaces (the RepAct
  paper's baseline; like for like),
* ``stock``: torchvision's MobileNetV3-Small (ReLU in the first blocks, HardSwish after).

Two reference models measure a runtime's floor for an activation it cannot fold into the conv:
``abs`` (Abs at the 23 sites: onnxruntime runs it as one unfused pass between layout reorders,
OpenVINO fuses it into the convolution) and ``abs_res`` (``x + |x|``: two uses of the conv output,
so OpenVINO runs it as one standalone elementwise pass). In the export engines ``deploy`` is written
in each runtime's own form (``--target`` of ``repact deploy``), ``deploy_generic`` in the generic
form (before per-runtime forms) and ``deploy_conv`` / ``deploy_basis`` / ``deploy_clamp`` in the
other forms (``--forms``), each where it is not the runtime's own.

Targets of issue 3 (deploy form vs HardSwish model, CPU): eager <= 1.05x, torch.compile <= 1.02x;
of issue 25 (2 threads): onnxruntime <= 1.05x ``abs``, OpenVINO <= 1.05x ``abs_res``; of issue 24 on
a GPU: eager <= 1.1x (batch 128) and <= 1.2x (batch 1), <= 1.05x with CUDA graphs or compiled. Usage::

    python benchmarks/bench_models.py                       # 224 px, batch 1 and 32, all engines
    python benchmarks/bench_models.py --quick               # tiny settings: checks that it runs
    python benchmarks/bench_models.py --engines eager onnxruntime --rounds 40 --json out.json
    python benchmarks/bench_models.py --threads 2 --engines onnxruntime openvino executorch   # the runtimes
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
from torch import nn

from repact.checkpoint import atomic_write_text
from repact.deploy import bench_device
from repact.deploy.bench import ALL_ENGINES, build_variants, cost_report, pick_engines
from repact.deploy.onnx_forms import ONNX_FORMS
from repact.models import create_model

EXPORT_ENGINES = ("onnxruntime", "openvino", "executorch")
#: forms of the deploy model timed beside each runtime's own: variant name -> ``export_onnx`` form
EXTRA_FORMS = ("auto", "conv", "basis", "clamp")


def form_variants(engine: str, forms, onnx_form: str) -> dict[str, str]:
    """Variant name -> export form of the deploy model's other forms under ``engine``: each of ``forms``
    that is not the form ``deploy`` gets there (``auto`` is ``deploy_generic``)."""
    from repact.deploy.bench import engine_form

    own = engine_form(engine, "deploy", onnx_form)
    return {("deploy_generic" if f == "auto" else f"deploy_{f}"): f for f in forms if f != own}


class Abs(nn.Module):
    """|x|: the one-pass reference activation (a pass onnxruntime cannot fuse into the convolution)."""

    def forward(self, x):
        return torch.abs(x)


class AbsResidual(nn.Module):
    """x + |x|: one elementwise pass that reads the conv output twice, so no runtime folds it into the conv."""

    def forward(self, x):
        return x + torch.abs(x)


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
    p.add_argument("--engines", nargs="+", choices=ALL_ENGINES, default=None,
                   help="default: eager, compile, onnxruntime on the CPU (openvino, executorch on request), "
                        "eager and compile on CUDA")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="also cuda-graphs (the eager forward captured in one CUDA graph) and reduce-overhead "
                        "(torch.compile's mode); needs --device cuda")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch and onnxruntime")
    p.add_argument("--onnx-form", choices=("target", *ONNX_FORMS), default="target",
                   help="export form of 'deploy' (default target: each runtime's own)")
    p.add_argument("--forms", nargs="*", choices=EXTRA_FORMS, default=list(EXTRA_FORMS),
                   help="export forms of the deploy model timed beside each runtime's own in onnxruntime and "
                        "OpenVINO (default: all; deploy_generic is 'auto')")
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


def graph_counts(engine: str, models: dict[str, nn.Module], shape, threads: int | None, onnx_form: str,
                 variant_forms: dict[str, str]) -> dict[str, dict[str, int]]:
    """Per variant, the nodes ``engine`` runs after its optimizations (batch 1): what it did with the graph."""
    import tempfile

    from repact.deploy import export_onnx
    from repact.deploy.bench import engine_form
    from repact.deploy.graphs import ort_node_counts, ov_node_counts

    out = {}
    probe = torch.randn(1, *shape)
    with tempfile.TemporaryDirectory(prefix="repact-graphs-") as tmp:
        for k, m in models.items():
            path = export_onnx(m, probe, Path(tmp) / f"{k}.onnx",
                               form=engine_form(engine, k, onnx_form, variant_forms))
            out[k] = (ort_node_counts(path, threads=threads or 1) if engine == "onnxruntime"
                      else ov_node_counts(path, probe.shape, threads=threads or 1))
    return out


def _load() -> str:
    try:
        return Path("/proc/loadavg").read_text().strip()
    except OSError:
        return "unknown"


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.quick:
        args.image_size, args.batch_sizes, args.rounds, args.warmup = 64, [1, 2], 3, 1
    shape = (3, args.image_size, args.image_size)
    probe = torch.randn(1, *shape)
    built, notes = build_variants(args.model, args.act, "hardswish", example_input=probe)
    torch.manual_seed(0)
    refs = {k: create_model(args.model, act=a).eval() for k, a in (("abs", Abs), ("abs_res", AbsResidual))}
    variants = {"hardswish": built["baseline"], "stock": create_model(args.model).eval(), **refs, "train": built["train"]}
    if "deploy" in built:
        variants["deploy"] = built["deploy"]
    t0 = time.perf_counter()
    common = dict(baseline_act="hardswish", input_shape=shape, batch_sizes=args.batch_sizes, warmup=args.warmup,
                  rounds=args.rounds, threads=args.threads, onnx_form=args.onnx_form,
                  ort_spinning=not args.no_ort_spinning, device=args.device)
    torch_engines = [e for e in args.engines if e not in EXPORT_ENGINES]
    export_engines = [e for e in args.engines if e in EXPORT_ENGINES]
    report = None
    if torch_engines:
        report = cost_report(args.model, args.act, engines=torch_engines, variants=variants, **common)
    forms_of = {e: form_variants(e, args.forms, args.onnx_form) for e in export_engines}
    for e in export_engines:  # the other forms beside each runtime's own; the training form only in onnxruntime
        ex = {k: v for k, v in variants.items() if k != "train"}
        if "deploy" in ex:
            ex |= {k: ex["deploy"] for k in forms_of[e]}
        vs = {**ex, "train": variants["train"]} if e == "onnxruntime" else ex
        if e == "executorch":  # XNNPACK lowering takes minutes per file; the generic form's BatchNorm fails it
            vs = {k: v for k, v in ex.items() if k in ("hardswish", "abs", "deploy")}
        part = cost_report(args.model, args.act, engines=[e], variants=vs, variant_forms=forms_of[e], **common)
        if report is None:
            report = part
        else:
            report.latency += part.latency
            report.notes += [n for n in part.notes if n not in report.notes]
            report.environment.update({k: v for k, v in part.environment.items() if k not in report.environment})
    report.notes = notes + report.notes
    # ratios to the stock model too: per engine and batch, deploy / stock from the paired medians
    for row in report.latency:  # (executorch runs no stock model)
        stock = next((r for r in report.latency if r["engine"] == row["engine"] and r["batch"] == row["batch"]
                      and r["variant"] == "stock"), None)
        row["ratio_vs_stock"] = row["ratio"] / stock["ratio"] if stock and stock["ratio"] else None
    data = report.as_dict()
    data["wall_s"] = time.perf_counter() - t0
    data["targets"] = {"eager": 1.05, "compile": 1.02, "onnxruntime_vs_abs": 1.05, "openvino_vs_abs_res": 1.05,
                       "cuda-graphs": 1.05, "reduce-overhead": 1.05}
    data["load_average"] = _load()
    out = Path(args.json)
    atomic_write_text(out, json.dumps(data, indent=2) + "\n")  # the timings first; the graphs below are added
    print(report.table())
    print()
    fmt = (lambda v: f"{v:.3f}" if v is not None else "-")
    cols = ("abs", "abs_res", "deploy_generic", "deploy_conv", "deploy_basis", "deploy_clamp", "deploy", "train")
    print(f"{'engine':<12} {'batch':>5} " + " ".join(f"{c + '/hsw':>18}" for c in cols)
          + f" {'deploy/abs':>11} {'deploy/abs_res':>15}")
    for engine in args.engines:
        for b in args.batch_sizes:
            rows = {r["variant"]: r for r in report.latency if r["engine"] == engine and r["batch"] == b}
            ratio = (lambda k: rows[k]["ratio"] if k in rows else None)
            per = (lambda k: ratio("deploy") / ratio(k) if ratio("deploy") and ratio(k) else None)
            print(f"{engine:<12} {b:>5} " + " ".join(f"{fmt(ratio(c)):>18}" for c in cols)
                  + f" {fmt(per('abs')):>11} {fmt(per('abs_res')):>15}")
    data["graphs"] = {}
    for e in (e for e in args.engines if e in ("onnxruntime", "openvino")):
        data["graphs"][e] = graph_counts(e, {k: v for k, v in variants.items() if k not in ("train", "stock")}
                                         | ({k: variants["deploy"] for k in forms_of[e]} if "deploy" in variants else {}),
                                         shape, args.threads, args.onnx_form, forms_of[e])
        print(f"\n{e}: nodes after its optimizations (batch 1)")
        for k, counts in data["graphs"][e].items():
            print(f"  {k:<15} " + ", ".join(f"{n} {c}" for n, c in counts.items()))
    atomic_write_text(out, json.dumps(data, indent=2) + "\n")
    print(f"\nload average {data['load_average']}; wrote {out} ({data['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
