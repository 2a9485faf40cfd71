"""Host time per call: what repact's own Python costs around its kernels, against ``F.hardswish``.

On a GPU an activation on a small tensor costs what its host path costs: the Python from
``module(x)`` to the kernel launches, and the launches themselves. This benchmark measures the
first part apart from any device. With ``--backend triton`` (the default) the process runs
Triton's interpreter (``TRITON_INTERPRET=1``, CPU tensors) with the launch stubbed out: every
kernel launch returns at once, after repact allocated its outputs and decided everything it
decides per call, so what is timed is repact's code alone. With ``--backend cpu`` the C kernels
run for real (on a 1x8x1x1 tensor they take well under a microsecond).

Every variant is timed per call on a 1x8x1x1 input (``--shape``), ``--inner`` calls per sample,
variants interleaved (the order rotates every round), medians over ``--rounds``; each time is
also given as a ratio to ``F.hardswish`` in the same run: forward rows (no grad) to its forward,
forward + backward rows to its forward + backward (``y = f(x); y.backward(g)``, the input's and
the parameters' gradients cleared before each call, as ``zero_grad(set_to_none=True)`` does).
Times are the calling thread's CPU time by default (``--clock thread``: autograd runs a CPU
backward on the calling thread), so that waiting for a core on a loaded machine is not counted;
``--clock wall`` takes wall time. Prints a table and writes JSON.

    python benchmarks/bench_host.py                      # the triton route, launches stubbed
    python benchmarks/bench_host.py --backend cpu        # the C kernels' route
    python benchmarks/bench_host.py --rounds 40 --inner 200 --out FILE

The rows "do-nothing Function" are a Python ``torch.autograd.Function`` that allocates its outputs
and gradients and does nothing else, with RepAct-I/II's three leaf inputs and RepAct-III's five:
autograd's own cost, the floor under the training rows.

Targets (issue 24): deploy forward <= 3x, training forward + backward <= 2.0x (RepAct-I/II) and
<= 2.5x (RepAct-III) F.hardswish's, on the triton route.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

if __name__ == "__main__" and "cpu" not in sys.argv[1:]:
    # the triton route: Triton's interpreter must be on before Triton is first imported
    os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import repact  # noqa: E402
from repact.deploy import time_interleaved  # noqa: E402
from repact.ops import backend  # noqa: E402

TARGETS = {"deploy": 3.0, "train I/II": 2.0, "train III": 2.5}


def stub_triton_launches() -> None:
    """Make every Triton launch (the interpreter's ``run``) return at once."""
    from triton.runtime.interpreter import InterpretedFunction

    def run(self, *args, grid, warmup, **kwargs):
        return None

    InterpretedFunction.run = run


class _Nothing(torch.autograd.Function):
    """A do-nothing autograd Function (empty outputs and gradients): autograd's own cost of any
    Python Function with these inputs, the floor under every training row."""

    @staticmethod
    def forward(ctx, x, *params):
        ctx.save_for_backward(x, *params)
        return torch.empty_like(x)

    @staticmethod
    def backward(ctx, g):
        return tuple(torch.empty_like(t) for t in ctx.saved_tensors)


def _clear(tensors):
    def clear():
        for t in tensors:
            t.grad = None
    return clear


def variants(shape, with_table: bool):
    """name -> (kind, runner): kind 'fwd' or 'fwdbwd'."""
    x = torch.randn(shape)
    g = torch.randn(shape)
    xg = x.clone().requires_grad_(True)
    out = {}

    def fwd_hswish():
        with torch.no_grad():
            F.hardswish(x)

    def fwdbwd_hswish():
        xg.grad = None
        F.hardswish(xg).backward(g)

    out["F.hardswish fwd"] = ("fwd", "baseline", fwd_hswish)
    out["F.hardswish fwd+bwd"] = ("fwdbwd", "baseline", fwdbwd_hswish)
    for leaves in (3, 5):  # RepAct-I/II's leaf inputs (x, branch weights, slope); RepAct-III's (+ gamma, beta)
        ps = [xg] + [torch.zeros(4, requires_grad=True) for _ in range(leaves - 1)]
        clear_n = _clear(ps)

        def fwdbwd_nothing(ps=ps, clear=clear_n):
            clear()
            _Nothing.apply(*ps).backward(g)

        out[f"do-nothing Function, {leaves} leaves fwd+bwd"] = ("fwdbwd", "floor", fwdbwd_nothing)
    c = shape[1]
    for name, label, group in (("repact", "RepAct-I", "train I/II"), ("repact_softmax", "RepAct-II", "train I/II"),
                               ("repact_bn", "RepAct-III", "train III")):
        for gran in ("layer", "channel"):
            m = repact.create_act(name, channels=c, granularity=gran)
            repact.randomize_activations_(m, seed=1)
            m.train()
            d = repact.reparameterize(m, inplace=False).eval()
            params = [xg, *m.parameters()]
            clear = _clear(params)

            def fwdbwd(m=m, clear=clear):
                clear()
                m(xg).backward(g)

            def fwd_deploy(d=d):
                with torch.no_grad():
                    d(x)

            out[f"{label} {gran} train fwd+bwd"] = ("fwdbwd", group, fwdbwd)
            if name != "repact_softmax":
                out[f"{label} {gran} deploy fwd"] = ("fwd", "deploy", fwd_deploy)
            if name == "repact_bn" and gran == "channel":
                e = repact.create_act(name, channels=c, granularity=gran)
                repact.randomize_activations_(e, seed=2)
                e.eval()
                clear_e = _clear([xg, *e.parameters()])

                def fwdbwd_eval(e=e, clear=clear_e):
                    clear()
                    e(xg).backward(g)

                out[f"{label} {gran} eval fwd+bwd"] = ("fwdbwd", group, fwdbwd_eval)
    if with_table:
        table = repact.PiecewiseQuadratic([-1.0, 0.5, 2.0], torch.randn(1, 4, 3))

        def fwd_table():
            with torch.no_grad():
                table(x)

        out["table (3 knots) deploy fwd"] = ("fwd", "deploy", fwd_table)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", default="triton", choices=["triton", "cpu"],
                    help="triton: the interpreter with launches stubbed (default); cpu: the C kernels, run for real")
    ap.add_argument("--shape", default="1,8,1,1", help="input shape N,C,H,W (default 1,8,1,1)")
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--inner", type=int, default=100, help="calls per sample")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--clock", default="thread", choices=["thread", "wall"],
                    help="thread: the calling thread's CPU time (default); wall: wall time")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "bench_host.json"))
    args = ap.parse_args(argv)
    if args.backend == "triton":
        if os.environ.get("TRITON_INTERPRET") != "1":
            print("error: the triton route needs TRITON_INTERPRET=1 before Triton is imported", file=sys.stderr)
            return 2
        stub_triton_launches()
    torch.set_num_threads(args.threads)
    shape = tuple(int(v) for v in args.shape.split(","))
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    runs = variants(shape, with_table=True)
    with backend(args.backend):
        timings = time_interleaved({k: v[2] for k, v in runs.items()}, warmup=args.warmup, rounds=args.rounds,
                                   inner=args.inner, clock=clock)
    base = {"fwd": timings["F.hardswish fwd"], "fwdbwd": timings["F.hardswish fwd+bwd"]}
    rows = []
    for name, (kind, group, _) in runs.items():
        t = timings[name]
        b = base[kind]
        ratios = [a / c for a, c in zip(t.samples_ms, b.samples_ms)]
        ratios.sort()
        ratio = ratios[len(ratios) // 2] if len(ratios) % 2 else 0.5 * (ratios[len(ratios) // 2 - 1]
                                                                        + ratios[len(ratios) // 2])
        target = TARGETS.get(group)
        rows.append({"variant": name, "kind": kind, "group": group, "us": t.median_ms * 1e3,
                     "p25_us": t.p25_ms * 1e3, "p75_us": t.p75_ms * 1e3, "ratio": ratio, "target": target})
    print(f"host time per call, {args.backend} route{' (launches stubbed)' if args.backend == 'triton' else ''}, "
          f"input {'x'.join(map(str, shape))}, {args.clock} clock; ratio: median of per-round ratios to F.hardswish (same kind)")
    print(f"{'variant':<36} {'us':>8} {'p25-p75 us':>15} {'ratio':>7} {'target':>7}")
    for r in rows:
        tgt = "-" if r["target"] is None else f"<={r['target']:.1f}"
        print(f"{r['variant']:<36} {r['us']:8.1f} {r['p25_us']:7.1f}-{r['p75_us']:<7.1f} {r['ratio']:7.2f} {tgt:>7}")
    meta = {"backend": args.backend, "launch_stubbed": args.backend == "triton", "shape": list(shape),
            "rounds": args.rounds, "inner": args.inner, "threads": args.threads, "clock": args.clock, "torch": torch.__version__,
            "machine": platform.machine(), "processor": platform.processor(), "repact": repact.__file__,
            "note": "medians of interleaved rounds; ratios are per-round ratios to F.hardswish, medians"}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
