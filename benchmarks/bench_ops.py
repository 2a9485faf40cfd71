"""Per-op cost of every RepAct and ACON variant against HardSwish, ReLU and an official-style RepAct.

For each shape (MobileNetV3-Small activation shapes by default) and each variant, this measures in
one interleaved run (variant order shuffled every repetition, medians over repetitions):

* forward time (no grad), and forward + backward time (input requires grad);
* memory kept for backward: bytes of the distinct non-parameter tensors autograd saves, as a
  multiple of the input's size;

for the training form and the deploy form, eager and ``torch.compile``d. Times are reported as
ratios to HardSwish in the same run. Prints a table and writes JSON. By default glibc is told to
keep freed memory (``repact.deploy.steady_malloc``), so that page faults on fresh memory do not
land on whichever variant happens to run after a heap trim.

On ``--device cuda`` times come from CUDA events around each call (synchronized), and each row
also reports the peak memory of a forward + backward (``torch.cuda.max_memory_allocated``) as a
multiple of HardSwish's; the same table and JSON otherwise.

    python benchmarks/bench_ops.py                      # all shapes, eager + compiled
    python benchmarks/bench_ops.py --quick              # one small shape, few repetitions
    python benchmarks/bench_ops.py --no-compile --shapes 64,16,56,56
    python benchmarks/bench_ops.py --device cuda --dtype float16
    python benchmarks/bench_ops.py --groups baseline acon   # HardSwish, ReLU and the ACON rows only
    python benchmarks/bench_ops.py --threads 1 --clock thread  # one thread, its CPU time: steady on a busy machine

``--clock thread`` times each call by the calling thread's CPU time (``time.thread_time``), which
a machine shared with other work does not inflate; with one thread (``--threads 1``) that thread
does all the work, so that is the call's cost.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

import repact
from repact.deploy import compile_cache_room, steady_malloc
from repact.ops import get_backend, native_available, triton_available

DEFAULT_SHAPES = [(64, 16, 56, 56), (64, 72, 28, 28), (64, 576, 7, 7), (128, 16, 112, 112)]
ACON_NAMES = ["acon_a", "acon_b", "acon_c", "acon_c_layer", "meta_acon"]


class OfficialStyleRepAct(nn.Module):
    """RepAct-I written from the paper's formula in the official style: each branch on its own copy."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((4,), 0.25))
        self.prelu = nn.PReLU()

    def forward(self, x):
        w = self.weight
        return (w[0] * x.clone() + w[1] * F.relu(x.clone()) + w[2] * self.prelu(x.clone())
                + w[3] * F.hardswish(x.clone()))


GROUPS = ("baseline", "repact-train", "repact-deploy", "acon")


def _variants(channels: int, with_compile: bool, device: str = "cpu",
              groups=GROUPS) -> dict[str, tuple[str, nn.Module]]:
    """name -> (group, module) of the given groups (baseline, repact-train, repact-deploy, acon;
    HardSwish, the reference, always)."""
    out: dict[str, tuple[str, nn.Module]] = {
        "hardswish": ("baseline", nn.Hardswish()),
        "relu": ("baseline", nn.ReLU()),
        "official-style RepAct-I": ("baseline", OfficialStyleRepAct()),
    }
    for name, label in (("repact", "RepAct-I"), ("repact_softmax", "RepAct-II"), ("repact_bn", "RepAct-III")):
        for gran in ("layer", "channel"):
            m = repact.create_act(name, channels=channels, granularity=gran)
            repact.randomize_activations_(m)
            tag = f"{label} {gran}"
            out[f"{tag} train"] = ("repact-train", m)
            out[f"{tag} deploy"] = ("repact-deploy", repact.reparameterize(m, inplace=False).eval())
    for name in ACON_NAMES:
        try:
            out[name] = ("acon", repact.create_act(name, channels=channels))
        except ValueError:
            print(f"note: activation {name!r} is not registered; skipped", file=sys.stderr)
    out = {k: (grp, m.to(device)) for k, (grp, m) in out.items() if grp in groups or k == "hardswish"}
    if with_compile:
        # every RepAct form, HardSwish (the reference) and ACON-C; the rest stay eager to keep the
        # run's compile time bounded (each compiled variant recompiles per shape)
        for key in list(out):
            group, m = out[key]
            if group in ("repact-train", "repact-deploy") or key in ("hardswish", "acon_c"):
                out[f"{key} [compiled]"] = (group, torch.compile(m, dynamic=False))
    return out


def _saved_bytes(module: nn.Module, x: torch.Tensor) -> int:
    params = {p.data_ptr() for p in module.parameters()} | {b.data_ptr() for b in module.buffers()}
    seen: dict[int, int] = {}

    def pack(t):
        if t.data_ptr() not in params:
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    xi = x.detach().clone().requires_grad_(True)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = module(xi)
    del y
    return sum(seen.values())


def _timer(fn: Callable[[], object], device: str = "cpu", clock: Callable[[], float] = time.perf_counter) -> float:
    if device == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize()
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    t0 = clock()
    fn()
    return clock() - t0


def _peak_bytes(fn: Callable[[], object]) -> int:
    """Peak CUDA memory a call allocates beyond what was allocated before it."""
    torch.cuda.synchronize()
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before


def bench_shape(shape, reps: int, with_compile: bool, warmup: int, seed: int, device: str = "cpu",
                dtype: torch.dtype = torch.float32, groups=GROUPS,
                clock: Callable[[], float] = time.perf_counter) -> list[dict]:
    if with_compile:
        torch._dynamo.reset()  # the previous shape's modules are gone; so may their cache entries
    torch.manual_seed(seed)
    x = (torch.randn(shape) * 3).to(device=device, dtype=dtype)
    g = torch.randn(shape).to(device=device, dtype=dtype)
    variants = _variants(shape[1], with_compile, device, groups)
    rows = {k: {"variant": k, "group": grp, "fwd": [], "fwdbwd": []} for k, (grp, _) in variants.items()}
    xg = x.clone().requires_grad_(True)
    # float16/bfloat16 inputs run as under AMP: float32 parameters, autocast on
    amp = (lambda: torch.autocast(device, dtype=dtype)) if dtype != torch.float32 else contextlib.nullcontext

    def fwd(m):
        with torch.no_grad(), amp():
            m(x)

    def fwdbwd(m):
        xg.grad = None
        for p in m.parameters():
            p.grad = None
        with amp():
            y = m(xg)
        y.backward(g.to(y.dtype))

    # each compiled module compiles with grad on and off
    with compile_cache_room(2 * len(variants)) if with_compile else contextlib.nullcontext():
        for key, (_, m) in variants.items():  # warm-up (and compile)
            m.train(not key.endswith("deploy") and "deploy [compiled]" not in key)
            for _ in range(warmup):
                fwd(m)
                fwdbwd(m)
        order = list(variants)
        rnd = random.Random(seed)
        for _ in range(reps):
            rnd.shuffle(order)
            for key in order:
                m = variants[key][1]
                rows[key]["fwd"].append(_timer(lambda: fwd(m), device, clock))
                rows[key]["fwdbwd"].append(_timer(lambda: fwdbwd(m), device, clock))
        if device == "cuda":
            for key, (_, m) in variants.items():
                rows[key]["peak"] = _peak_bytes(lambda: fwdbwd(m))
    base = rows["hardswish"]
    base_fwd = statistics.median(base["fwd"])
    base_fb = statistics.median(base["fwdbwd"])
    xbytes = x.numel() * x.element_size()
    out = []
    for key, r in rows.items():
        m = variants[key][1]
        compiled = key.endswith("[compiled]")
        with amp():
            saved = None if compiled else _saved_bytes(m, x) / xbytes
        f, fb = statistics.median(r["fwd"]), statistics.median(r["fwdbwd"])
        out.append({
            "shape": list(shape), "variant": key, "group": r["group"], "compiled": compiled,
            "fwd_ms": f * 1e3, "fwdbwd_ms": fb * 1e3, "fwd_ratio": f / base_fwd, "fwdbwd_ratio": fb / base_fb,
            "saved_x_input": saved,
        })
        if "peak" in r:
            out[-1]["peak_bytes"] = r["peak"]
            out[-1]["peak_ratio"] = r["peak"] / max(base.get("peak", 1), 1)
    # compiled rows compare against compiled HardSwish
    comp = next((o for o in out if o["variant"] == "hardswish [compiled]"), None)
    if comp:
        for o in out:
            if o["compiled"]:
                o["fwd_ratio_vs_compiled_hardswish"] = o["fwd_ms"] / comp["fwd_ms"]
                o["fwdbwd_ratio_vs_compiled_hardswish"] = o["fwdbwd_ms"] / comp["fwdbwd_ms"]
    return out


def _table(rows: list[dict]) -> str:
    lines = []
    for shape in sorted({tuple(r["shape"]) for r in rows}, key=lambda s: DEFAULT_SHAPES.index(s) if s in DEFAULT_SHAPES else 99):
        lines.append(f"\nshape {shape}  (ratios: eager rows vs eager HardSwish, [compiled] rows vs compiled HardSwish)")
        peak = any("peak_ratio" in r for r in rows)
        lines.append(f"{'variant':<36} {'fwd ms':>8} {'fwd x':>7} {'f+b ms':>8} {'f+b x':>7} {'saved':>6}"
                     + (f" {'peak':>6}" if peak else ""))
        for r in rows:
            if tuple(r["shape"]) != shape:
                continue
            fr = r.get("fwd_ratio_vs_compiled_hardswish", r["fwd_ratio"])
            br = r.get("fwdbwd_ratio_vs_compiled_hardswish", r["fwdbwd_ratio"])
            saved = "-" if r["saved_x_input"] is None else f"{r['saved_x_input']:.2f}"
            lines.append(f"{r['variant']:<36} {r['fwd_ms']:8.2f} {fr:7.2f} {r['fwdbwd_ms']:8.2f} {br:7.2f} {saved:>6}"
                         + (f" {r['peak_ratio']:6.2f}" if "peak_ratio" in r else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="*", default=None, help="shapes as N,C,H,W (default: MobileNetV3-Small shapes)")
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--quick", action="store_true", help="one small shape, 5 repetitions, no compile")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                    help="cuda: CUDA tensors (Triton kernels under the auto backend), CUDA-event timing, peak memory")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"],
                    help="input dtype; float16/bfloat16 run under torch.autocast, as in AMP training")
    ap.add_argument("--groups", nargs="+", default=list(GROUPS), choices=GROUPS, metavar="GROUP",
                    help=f"the rows to run (default all: {' '.join(GROUPS)}); HardSwish always runs")
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    ap.add_argument("--clock", choices=("wall", "thread"), default="wall",
                    help="wall (default) or thread: the calling thread's CPU time (CPU, with --threads 1)")
    ap.add_argument("--no-steady-malloc", action="store_true",
                    help="leave glibc free to mmap/trim (then page faults land on whichever variant runs after a trim)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_ops.json"))
    args = ap.parse_args(argv)
    shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else DEFAULT_SHAPES
    reps, compile_ = args.reps, not args.no_compile
    if args.quick:
        shapes, reps, compile_ = [(8, 16, 28, 28)], 5, False
    if args.device == "cuda" and not torch.cuda.is_available():
        print("error: --device cuda but no CUDA device is available", file=sys.stderr)
        return 2
    if args.threads is not None and args.threads < 1:
        print(f"error: --threads must be a positive integer, got {args.threads}", file=sys.stderr)
        return 2
    if args.clock == "thread" and (args.device != "cpu" or args.threads != 1):
        print("error: --clock thread times the calling thread only; use it with --device cpu --threads 1",
              file=sys.stderr)
        return 2
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    steady = False if (args.no_steady_malloc or args.device == "cuda") else steady_malloc()
    dtype = getattr(torch, args.dtype)
    meta = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "processor": platform.processor(), "native_kernels": native_available(), "reps": reps,
        "steady_malloc": steady, "device": args.device, "dtype": args.dtype, "backend": get_backend(),
        "triton": triton_available(), "groups": args.groups, "clock": args.clock,
        "gpu": torch.cuda.get_device_name() if args.device == "cuda" else None,
        "note": "medians of interleaved repetitions; ratios are to HardSwish (eager or compiled) in the same run",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, shape in enumerate(shapes):
        print(f"benchmarking {shape} ...", file=sys.stderr, flush=True)
        rows += bench_shape(shape, reps, compile_, args.warmup, args.seed, args.device, dtype, args.groups, clock)
        # written after every shape: a run stopped by a time limit keeps the shapes it finished
        meta["complete"] = i == len(shapes) - 1
        out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(_table(rows))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
