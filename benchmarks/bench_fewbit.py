"""Few-bit backward: memory saved for backward, gradient error and time, against the full backward.

* **Per activation** (RepAct-I layer/channel, ACON-C, SiLU, GELU, HardSwish) on an input of
  ``--shape`` (default 64 x 16 x 32 x 32, N(0, 1)): the bytes autograd saves for backward
  (``saved_tensors_hooks``, distinct storages), their ratio to the full backward's, and the relative
  L2 error of the input gradient and of the parameter gradients for a random upstream gradient.
* **Whole model**: MobileNetV3-Small with RepAct-I (23 conv-block activations, the classifier's
  HardSwish), 32 px, batch ``--batch``: everything autograd saves in a training forward, with
  every activation full or few-bit, and the time of forward + backward (medians of interleaved
  rounds; one thread; reported, never asserted).

    python benchmarks/bench_fewbit.py                 # the tables of docs/training.md
    python benchmarks/bench_fewbit.py --quick         # smoke run
    python benchmarks/bench_fewbit.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch
import torch.nn.functional as F

import repact
from repact.activations import AconC, FewBit
from repact.activations.fewbit import backward_error, saved_bytes, set_backward_bits
from repact.models import create_model
from repact.ops.fewbit import BITS

ACTS = {
    "RepAct-I (layer)": lambda b: repact.RepAct(bits=b),
    "RepAct-I (channel)": lambda b: repact.RepAct(16, granularity="channel", bits=b),
    "ACON-C (channel)": lambda b: AconC(16, bits=b),
    "SiLU": lambda b: FewBit("silu", b),
    "GELU": lambda b: FewBit("gelu", b),
    "HardSwish": lambda b: FewBit("hardswish", b),
}


def per_activation(shape) -> list[dict]:
    rows = []
    x = torch.randn(shape)
    for name, make in ACTS.items():
        torch.manual_seed(0)
        full = make(None)
        with torch.no_grad():  # off the init, as after some training
            for p in full.parameters():
                p.add_(0.2 * torch.randn_like(p))
        base, _ = saved_bytes(full, x.clone().requires_grad_(True))
        row = {"activation": name, "full_bytes": base}
        for bits in BITS:
            few = make(bits)
            few.load_state_dict(full.state_dict())
            nbytes, _ = saved_bytes(few, x.clone().requires_grad_(True))
            err = backward_error(few, x, bits)
            row[bits] = {"bytes": nbytes, "ratio": nbytes / base, **err}
        rows.append(row)
    return rows


def _step_time(model, x, t) -> float:
    t0 = time.perf_counter()
    F.cross_entropy(model(x), t).backward()
    return time.perf_counter() - t0


def whole_model(batch: int, rounds: int) -> dict:
    torch.manual_seed(0)
    models = {}
    for bits in (None, *BITS):
        torch.manual_seed(0)
        m = create_model("mobilenet_v3_small", act="repact", num_classes=10, small_input=True).train()
        if bits is not None:
            set_backward_bits(m, bits)
        models[bits] = m
    x = torch.randn(batch, 3, 32, 32)
    t = torch.randint(0, 10, (batch,))
    out = {}
    for bits, m in models.items():
        nbytes, _ = saved_bytes(lambda: F.cross_entropy(m(x), t))
        out[bits] = {"saved_bytes": nbytes, "times": []}
        _step_time(m, x, t)  # warm-up (and the bins' fit)
    for r in range(rounds):
        order = list(models)
        order = order[r % len(order):] + order[:r % len(order)]
        for bits in order:
            out[bits]["times"].append(_step_time(models[bits], x, t))
    for v in out.values():
        v["median_s"] = statistics.median(v["times"])
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shape", default="64,16,32,32", help="per-activation input shape (default 64,16,32,32)")
    ap.add_argument("--batch", type=int, default=64, help="whole-model batch (default 64)")
    ap.add_argument("--rounds", type=int, default=5, help="timed rounds per variant (default 5)")
    ap.add_argument("--quick", action="store_true", help="smoke run: small shapes, 1 round")
    ap.add_argument("--json", default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    shape = [int(s) for s in args.shape.split(",")]
    if args.quick:
        shape, args.batch, args.rounds = [4, 16, 8, 8], 8, 1
    rows = per_activation(shape)
    print(f"Per activation, input {'x'.join(map(str, shape))} float32: bytes saved for backward (ratio to the full "
          "backward) and relative L2 error of the gradients")
    print()
    print("| activation | full | " + " | ".join(f"{b} bit" for b in BITS) + " | input-grad error " +
          "/".join(f"{b}b" for b in BITS) + " | param-grad error " + "/".join(f"{b}b" for b in BITS) + " |")
    print("|---|---|" + "---|" * len(BITS) + "---|---|")
    for r in rows:
        cells = [f"{r[b]['bytes'] / 2**10:,.0f} KiB ({r[b]['ratio']:.3f}x)" for b in BITS]
        ein = " / ".join(f"{r[b]['input']:.3f}" for b in BITS)
        epar = " / ".join(f"{r[b]['params']:.3f}" for b in BITS) if "params" in r[BITS[0]] else "-"
        print(f"| {r['activation']} | {r['full_bytes'] / 2**10:,.0f} KiB | " + " | ".join(cells) + f" | {ein} | {epar} |")
    whole = whole_model(args.batch, args.rounds)
    base = whole[None]
    print()
    print(f"MobileNetV3-Small + RepAct-I, 32 px, batch {args.batch}, one training forward + backward (1 thread)")
    print()
    print("| backward | saved for backward | vs full | forward + backward (median) | vs full |")
    print("|---|---|---|---|---|")
    for bits, v in whole.items():
        label = "full" if bits is None else f"{bits} bit"
        print(f"| {label} | {v['saved_bytes'] / 2**20:,.1f} MiB | {v['saved_bytes'] / base['saved_bytes']:.3f}x | "
              f"{v['median_s'] * 1e3:,.0f} ms | {v['median_s'] / base['median_s']:.2f}x |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"shape": shape, "per_activation": [{k: v for k, v in r.items()} for r in rows],
                       "whole_model": {str(k): v for k, v in whole.items()}}, fh, indent=2, default=str)


if __name__ == "__main__":
    main()
