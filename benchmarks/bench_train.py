"""Training-step throughput and memory: a RepAct-I model against the same model with HardSwish.

MobileNetV3-Small (all 23 conv-block activations replaced, the RepAct convention), batch 64, at
32 px (``small_input=True``) and 224 px by default. One SGD training step = forward, cross-entropy,
backward, optimizer step (no weight decay on activation parameters, as in ``repact train``).

* **Time**: the variants run interleaved in one process (order rotated each round, ``--steps``
  steps per sample, medians over ``--rounds``); the ratio is the median of per-round ratios to
  HardSwish, so load changes on a shared machine hit both alike.
* **Memory**: on CUDA the peak allocated memory of a training step (``max_memory_allocated``);
  on CPU the bytes autograd saves for backward (exact, from saved-tensor hooks) and the peak
  RSS growth of a few steps in a fresh process per variant.
* **CUDA** (``--device cuda``): each timed sample is measured by CUDA events around its steps
  (synchronized), ``--amp`` runs the steps under float16 autocast with a gradient scaler.

Targets from the issue (reported, never asserted): RepAct-I throughput >= 0.77x HardSwish
(<= 1.3x time per step) and peak memory <= 1.2x.

    python benchmarks/bench_train.py                       # 32 and 224 px, batch 64
    python benchmarks/bench_train.py --quick               # smoke run: 32 px, batch 8, few rounds
    python benchmarks/bench_train.py --sizes 32 --rounds 20 --out results/train32.json
    python benchmarks/bench_train.py --compile             # the same steps with torch.compile'd models
    python benchmarks/bench_train.py --device cuda --sizes 224 --batch 128 --amp   # on a GPU
    python benchmarks/bench_train.py --device cuda --amp --cuda-graphs   # compiled, CUDA graphs replayed

With ``--compile`` the forward (and with it the backward) of every variant is ``torch.compile``d
before the timed rounds; the saved-for-backward bytes are still those of the eager model. Each
compiled variant's first step is timed on its own (``first_step_s``: compiling included, the
figure a user waits for). ``--cuda-graphs`` (CUDA only) compiles with ``mode="reduce-overhead"``:
the compiled forward and backward are replayed as CUDA graphs (the optimizer step and the AMP
scaler stay eager).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import repact
from repact.deploy import bench_device, compile_cache_room, cuda_peak_bytes, time_interleaved
from repact.models import create_model, list_models
from repact.train import TrainConfig
from repact.train.optim import build_optimizer

TARGET_THROUGHPUT = 0.77
TARGET_MEMORY = 1.2


def build(model_name: str, act: str, size: int, num_classes: int, device: torch.device, seed: int = 0):
    torch.manual_seed(seed)
    kw = {"small_input": True} if size <= 64 else {}
    model = create_model(model_name, act=act, num_classes=num_classes, **kw).to(device).train()
    opt = build_optimizer(model, TrainConfig(lr=0.01, weight_decay=4e-4))
    return model, opt


def make_step(model: nn.Module, opt, x: torch.Tensor, y: torch.Tensor, device: torch.device, amp: bool = False):
    """One SGD training step; with ``amp`` (CUDA) under float16 autocast with a gradient scaler.
    Nothing synchronizes: on CUDA the timer's events do."""
    if not amp:
        def step():
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        return step
    scaler = torch.amp.GradScaler(device.type)

    def amp_step():
        with torch.autocast(device.type, dtype=torch.float16):
            loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return amp_step


def saved_for_backward_bytes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """Bytes of the distinct non-parameter storages autograd keeps for backward in one step."""
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        ptr = t.untyped_storage().data_ptr()
        if ptr not in params:
            seen[ptr] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = F.cross_entropy(model(x), y)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(seen.values())


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()


def rss_child(model_name: str, act: str, size: int, batch: int, num_classes: int, steps: int,
              compiled: bool = False) -> int:
    """Peak RSS growth (bytes) over ``steps`` training steps, measured in a fresh process."""
    code = (
        "import sys, json, resource, torch\n"
        "sys.path.insert(0, %r)\n"
        "import bench_train as b\n"
        "dev = torch.device('cpu')\n"
        "m, o = b.build(%r, %r, %d, %d, dev)\n"
        "mc = torch.compile(m) if %r else m\n"
        "g = torch.Generator().manual_seed(0)\n"
        "x = torch.randn(%d, 3, %d, %d, generator=g); y = torch.randint(0, %d, (%d,), generator=g)\n"
        "base = b._rss_bytes()\n"
        "step = b.make_step(mc, o, x, y, dev)\n"
        "for _ in range(%d): step()\n"
        "peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024\n"
        "print(json.dumps(max(0, peak - base)))\n"
    ) % (str(Path(__file__).resolve().parent), model_name, act, size, num_classes, compiled, batch, size, size,
         num_classes, batch, steps)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return int(json.loads(out.stdout.strip().splitlines()[-1]))


def bench_size(args, size: int, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, size, size, generator=g).to(device)
    y = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
    models = {act: build(args.model, act, size, args.classes, device) for act in args.acts}
    mode = "reduce-overhead" if args.cuda_graphs else None
    runners = {act: make_step(torch.compile(m, mode=mode) if args.compile else m, o, x, y, device, args.amp)
               for act, (m, o) in models.items()}
    first_step: dict[str, float] = {}
    # the variants share MobileNetV3.forward: one cache entry each, or a loud failure, never eager
    with compile_cache_room(2 * len(models)) if args.compile else contextlib.nullcontext():
        if args.compile:  # each variant's first step on its own: the compile time a user waits for
            for act, step in runners.items():
                t0 = time.perf_counter()
                step()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                first_step[act] = time.perf_counter() - t0
        timings = time_interleaved(runners, baseline=args.acts[0], warmup=args.warmup, rounds=args.rounds,
                                   inner=args.steps, device=device)
    rows = {}
    for act, (m, o) in models.items():
        t = timings[act]
        row = {"step_ms": t.median_ms, "step_ms_p25": t.p25_ms, "step_ms_p75": t.p75_ms,
               "images_per_s": args.batch / (t.median_ms / 1e3), "time_ratio": t.ratio,
               "time_ratio_p25": t.ratio_p25, "time_ratio_p75": t.ratio_p75,
               "throughput_ratio": (1.0 / t.ratio) if t.ratio else None,
               "params": sum(p.numel() for p in m.parameters()),
               "act_layers": sum(isinstance(mm, repact.Activation) or isinstance(mm, nn.Hardswish)
                                 for mm in m.modules()),
               "saved_for_backward_bytes": saved_for_backward_bytes(m, x, y)}
        if act in first_step:
            row["first_step_s"] = first_step[act]
        if device.type == "cuda":
            runners[act]()  # the optimizer state exists from here on
            row["peak_bytes"] = cuda_peak_bytes(runners[act], device)
            row["peak_kind"] = "cuda max_memory_allocated during one step"
        elif not args.no_rss:
            row["peak_bytes"] = rss_child(args.model, act, size, args.batch, args.classes, args.rss_steps,
                                          args.compile)
            row["peak_kind"] = f"CPU peak RSS growth over {args.rss_steps} steps (fresh process)"
        rows[act] = row
    base = rows[args.acts[0]]
    for act, row in rows.items():
        row["saved_ratio"] = row["saved_for_backward_bytes"] / base["saved_for_backward_bytes"]
        if "peak_bytes" in row and base.get("peak_bytes"):
            row["peak_ratio"] = row["peak_bytes"] / base["peak_bytes"]
        mem_ratio = row.get("peak_ratio", row["saved_ratio"])
        row["meets_throughput_target"] = row["throughput_ratio"] is not None and \
            row["throughput_ratio"] >= TARGET_THROUGHPUT
        row["meets_memory_target"] = mem_ratio <= TARGET_MEMORY
    return rows


def print_table(results: dict, args) -> None:
    mode = ("torch.compile (reduce-overhead: CUDA graphs)" if args.cuda_graphs else "torch.compile") \
        if args.compile else "eager"
    print(f"\n{args.model} ({mode}), batch {args.batch}, {args.rounds} interleaved rounds x {args.steps} steps "
          f"(ratios vs {args.acts[0]})")
    head = (f"{'size':>5} {'act':<10} {'step ms':>9} {'img/s':>8} {'time x':>7} {'thru x':>7} "
            f"{'saved MB':>9} {'saved x':>8} {'peak MB':>8} {'peak x':>7}  targets")
    print(head)
    print("-" * len(head))
    for size, rows in results.items():
        for act, r in rows.items():
            peak = f"{r['peak_bytes'] / 2**20:8.1f}" if "peak_bytes" in r else f"{'n/a':>8}"
            peak_x = f"{r['peak_ratio']:7.3f}" if "peak_ratio" in r else f"{'n/a':>7}"
            ok = "" if act == args.acts[0] else (
                ("thru ok" if r["meets_throughput_target"] else "thru MISS") + ", "
                + ("mem ok" if r["meets_memory_target"] else "mem MISS"))
            print(f"{size:>5} {act:<10} {r['step_ms']:9.2f} {r['images_per_s']:8.1f} {r['time_ratio']:7.3f} "
                  f"{r['throughput_ratio']:7.3f} {r['saved_for_backward_bytes'] / 2**20:9.1f} "
                  f"{r['saved_ratio']:8.3f} {peak} {peak_x}  {ok}")
    if args.compile:
        firsts = ", ".join(f"{size} px {act} {r['first_step_s']:.1f} s" for size, rows in results.items()
                           for act, r in rows.items())
        print(f"first step (compiling included): {firsts}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="mobilenet_v3_small")
    p.add_argument("--acts", default="hardswish,repact", help="comma-separated; the first is the baseline")
    p.add_argument("--sizes", default="32,224")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=2, help="training steps per timed sample")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps per variant first")
    p.add_argument("--rss-steps", type=int, default=3)
    p.add_argument("--no-rss", action="store_true", help="skip the fresh-process RSS measurement (CPU)")
    p.add_argument("--device", default="auto", help="auto (CUDA when there is one), cpu or cuda[:N]")
    p.add_argument("--amp", action="store_true", help="float16 autocast and a gradient scaler (CUDA only)")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--compile", action="store_true", help="torch.compile every model before timing")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="compile with mode='reduce-overhead': CUDA graphs replay the compiled forward and backward "
                        "(CUDA only; implies --compile)")
    p.add_argument("--quick", action="store_true", help="smoke run: 32 px, batch 8, 3 rounds of 1 step")
    p.add_argument("--out", default="benchmarks/results/bench_train.json")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.batch, args.rounds, args.steps, args.warmup, args.rss_steps = "32", 8, 4, 1, 2, 2
    args.acts = [a.strip() for a in args.acts.split(",") if a.strip()]
    if args.model not in list_models():
        p.error(f"model {args.model!r} is not registered (have: {', '.join(list_models())})")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        device = bench_device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    except ValueError as exc:  # one line, no usage block: e.g. --device cuda on a machine without a GPU
        print(f"bench_train.py: error: {exc}", file=sys.stderr)
        return 2
    if args.amp and device.type != "cuda":
        print("bench_train.py: error: --amp runs on CUDA only; drop it or use --device cuda", file=sys.stderr)
        return 2
    if args.cuda_graphs and device.type != "cuda":
        print(f"bench_train.py: error: --cuda-graphs replays CUDA graphs and needs a CUDA device; this run is on "
              f"{device}{'' if torch.cuda.is_available() else ' (torch sees no CUDA GPU on this machine)'}",
              file=sys.stderr)
        return 2
    args.compile = args.compile or args.cuda_graphs
    sizes = [int(s) for s in args.sizes.split(",")]
    t0 = time.time()
    results = {str(s): bench_size(args, s, device) for s in sizes}
    print_table(results, args)
    meta = {"device": str(device), "cpu": platform.processor() or platform.machine(),
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "threads": torch.get_num_threads(), "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_s": time.time() - t0}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "config": {k: v for k, v in vars(args).items()},
               "targets": {"throughput_ratio_min": TARGET_THROUGHPUT, "memory_ratio_max": TARGET_MEMORY},
               "results": results}
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    tmp.replace(out)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
