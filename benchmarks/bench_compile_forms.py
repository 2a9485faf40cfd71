"""Under torch.compile, the training forms two ways: repact's registered op around its kernels against
the plain expression left to the compiler to fuse (Inductor), with compiled HardSwish beside them.

For each activation and shape, three compiled modules run interleaved (warm-up and compile first,
rotating order, medians over rounds; CUDA events on a GPU):

* ``op``: the registered op (``torch.ops.repact.repact_train`` for RepAct, ``torch.ops.repact.acon``
  for ACON; ``repact.ops.acon.COMPILED_OP`` switched on for this device),
* ``inductor``: the same module compiled with the backend set to ``reference`` (the plain
  expression, which the compiler fuses and recomputes as it likes),
* ``hardswish``: compiled ``nn.Hardswish``, the reference the ratios are taken to,

forward (no grad) and forward + backward. The faster form of each row is what the library should
run under compile on that device (``COMPILED_OP`` for ACON; RepAct's op is ``repact.ops.repact_train``'s
choice). Prints a table and writes JSON.

    python benchmarks/bench_compile_forms.py                              # CPU, MobileNetV3-Small shapes
    python benchmarks/bench_compile_forms.py --quick                      # one small shape, few rounds
    python benchmarks/bench_compile_forms.py --device cuda --mode reduce-overhead
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib
import json
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

import repact
from repact.deploy import bench_device, compile_cache_room, steady_malloc, time_interleaved
from repact.ops import backend

SHAPES = [(64, 16, 56, 56), (64, 72, 28, 28), (64, 576, 7, 7), (128, 16, 112, 112)]
ACTS = ["repact-layer", "repact-channel", "repact_bn-channel", "acon_c", "acon_c_layer"]
MODES = ("default", "reduce-overhead", "max-autotune-no-cudagraphs")
_acon = importlib.import_module("repact.ops.acon")  # (repact.ops.acon is the op itself)


def _fail(message: str) -> int:
    print(f"bench_compile_forms.py: error: {message}", file=sys.stderr)
    return 2


def _act(spec: str, channels: int) -> nn.Module:
    name, _, gran = spec.partition("-")
    kw = {"granularity": gran} if gran else {}
    m = repact.create_act(name, channels=channels, **kw)
    repact.randomize_activations_(m, seed=0)
    return m.train()


@contextlib.contextmanager
def _form(form: str, device: torch.device):
    """The dispatch as the form needs it, around every call of that form's module."""
    if form == "inductor":
        with backend("reference"):
            yield
        return
    saved = dict(_acon.COMPILED_OP)
    _acon.COMPILED_OP[device.type] = form == "op"
    try:
        yield
    finally:
        _acon.COMPILED_OP.clear()
        _acon.COMPILED_OP.update(saved)


def bench(spec: str, shape, args, device: torch.device) -> dict:
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 3).to(device)
    g = torch.randn(shape, generator=gen).to(device)
    xg = x.clone().requires_grad_(True)
    act = _act(spec, shape[1]).to(device)
    mods = {"hardswish": nn.Hardswish(), "op": copy.deepcopy(act), "inductor": copy.deepcopy(act)}
    compiled = {k: torch.compile(m, mode=None if args.mode == "default" else args.mode, dynamic=False)
                for k, m in mods.items()}
    setup: dict[str, float] = {}

    def runner(key, train):
        m = compiled[key]

        def fwd():
            with _form(key, device), torch.no_grad():
                m(x)

        def fwdbwd():
            xg.grad = None
            with _form(key, device):
                m(xg).backward(g)
        return fwdbwd if train else fwd

    out = {}
    with compile_cache_room(8):
        for train in (False, True):
            runners = {k: runner(k, train) for k in compiled}
            for k, fn in runners.items():  # compile outside the timed rounds
                t0 = time.perf_counter()
                fn()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                setup[f"{k}-{'train' if train else 'eval'}"] = time.perf_counter() - t0
            timings = time_interleaved(runners, baseline="hardswish", warmup=args.warmup, rounds=args.rounds,
                                       device=device)
            out["fwdbwd" if train else "fwd"] = {k: t.as_dict() for k, t in timings.items()}
    f, b = out["fwd"], out["fwdbwd"]
    faster = {"fwd": min(("op", "inductor"), key=lambda k: f[k]["median_ms"]),
              "fwdbwd": min(("op", "inductor"), key=lambda k: b[k]["median_ms"])}
    return {"act": spec, "shape": list(shape), "timings": out, "compile_s": setup, "faster": faster,
            "op_over_inductor": {k: out[k]["op"]["median_ms"] / out[k]["inductor"]["median_ms"] for k in out}}


def table(rows: list[dict]) -> str:
    lines = [f"{'act':<18} {'shape':<18} {'hswish f / f+b ms':>18} {'op f / f+b x':>14} {'inductor f / f+b x':>19}"
             f" {'op/inductor f+b':>15}  faster (f+b)"]
    for r in rows:
        t = r["timings"]
        hs = f"{t['fwd']['hardswish']['median_ms']:.3f} / {t['fwdbwd']['hardswish']['median_ms']:.3f}"
        op = f"{t['fwd']['op']['ratio']:.2f} / {t['fwdbwd']['op']['ratio']:.2f}"
        ind = f"{t['fwd']['inductor']['ratio']:.2f} / {t['fwdbwd']['inductor']['ratio']:.2f}"
        lines.append(f"{r['act']:<18} {'x'.join(map(str, r['shape'])):<18} {hs:>18} {op:>14} {ind:>19} "
                     f"{r['op_over_inductor']['fwdbwd']:>15.2f}  {r['faster']['fwdbwd']}")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--acts", nargs="+", default=ACTS, metavar="ACT",
                   help=f"activation[-granularity] (default: {' '.join(ACTS)})")
    p.add_argument("--shapes", nargs="+", default=None, metavar="N,C,H,W", help="default: MobileNetV3-Small shapes")
    p.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    p.add_argument("--mode", default="default", choices=MODES, help="torch.compile mode (default: default)")
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one small shape, 3 rounds: checks that it runs")
    p.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_compile_forms.json"))
    args = p.parse_args(argv)
    try:
        device = bench_device(args.device)
        shapes = [tuple(int(v) for v in s.split(",")) for s in args.shapes] if args.shapes else SHAPES
    except ValueError as exc:
        return _fail(str(exc) if "device" in str(exc) else f"--shapes takes N,C,H,W integers: {exc}")
    if args.mode == "reduce-overhead" and device.type != "cuda":
        return _fail(f"--mode reduce-overhead replays CUDA graphs and needs --device cuda; this run is on {device}")
    if args.rounds < 1 or args.warmup < 0:
        return _fail(f"--rounds must be >= 1 and --warmup >= 0, got {args.rounds} and {args.warmup}")
    for spec in args.acts:
        try:
            _act(spec, 4)
        except (ValueError, TypeError) as exc:
            return _fail(f"--acts {spec}: {exc}")
    if args.quick:
        shapes, args.rounds, args.warmup = [(4, 8, 12, 12)], 3, 1
    steady = steady_malloc() if device.type == "cpu" else False
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    meta = {"torch": torch.__version__, "device": str(device), "mode": args.mode, "threads": torch.get_num_threads(),
            "machine": platform.machine(), "steady_malloc": steady, "rounds": args.rounds,
            "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
            "compiled_op_default": dict(_acon.COMPILED_OP)}
    rows = []
    for shape in shapes:
        for spec in args.acts:
            print(f"{spec} {shape} ...", file=sys.stderr, flush=True)
            torch._dynamo.reset()
            rows.append(bench(spec, shape, args, device))
            out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")  # kept if stopped early
    print(table(rows))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
