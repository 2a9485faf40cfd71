"""BCCD detection: SSDlite-MobileNetV3 with HardSwish and with RepAct, trained for a fixed time each.

For each activation: build the model from scratch (same seed), measure val mAP@0.5 and
mAP@0.5:0.95 untrained, train, measure again. ``--total-s`` is the wall time of the whole
benchmark: each activation gets an equal share, and its training stops when its share less two
evaluations (the measured one before, the same again after) is spent. Prints a table and writes
JSON. Uses the library's task interface (``repact.tasks.get_task("detection")``), not the engine.

    PYTHONPATH=src .venv/bin/python benchmarks/bench_voc.py --total-s 900 --json results/bench_voc.json

Defaults: BCCD at ../shared/data/BCCD (or $REPACT_SHARED_DATA/BCCD), 320 px, batch 8, AdamW
lr 1e-3, light augmentation (flip + photometric), 15 minutes in all.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from repact.data.voc import DataWarning  # noqa: E402
from repact.tasks import get_task  # noqa: E402

ACTS = {"hardswish": None, "repact": "repact"}  # None: torchvision's own activations (HardSwish/ReLU)


def _default_data() -> Path:
    shared = Path(os.environ.get("REPACT_SHARED_DATA", ROOT.parent / "shared" / "data"))
    return shared / "BCCD"


def run_one(label: str, act, args, task, train_set, val_set, info, share_s: float) -> dict:
    start = time.perf_counter()
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    model, _ = task.build_model("ssdlite320_mobilenet_v3_large", act=act, info=info, img_size=args.img_size)
    gen = torch.Generator().manual_seed(args.seed)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True, drop_last=True, generator=gen,
                              collate_fn=task.collate_fn, num_workers=args.workers)
    val_loader = DataLoader(val_set, batch_size=8, collate_fn=task.collate_fn, num_workers=args.workers)
    model.to(device)
    t0 = time.perf_counter()
    before = task.evaluate(model, val_loader, device, limit=args.eval_batches)
    eval_s = time.perf_counter() - t0
    budget_s = share_s - eval_s - (t0 - start) - eval_s  # what is left once the final evaluation is paid for
    if budget_s <= 0:
        raise SystemExit(f"{label}: --total-s leaves no training time (evaluation alone takes {eval_s:.0f} s)")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    steps, images, train_s, last = 0, 0, 0.0, float("nan")
    model.train()
    train_start = time.perf_counter()  # training wall time: data loading and augmentation included
    while train_s < budget_s:
        for batch in train_loader:
            loss, _ = task.loss(model, batch, device)
            if not torch.isfinite(loss):
                raise RuntimeError(f"{label}: the loss became {float(loss)} at step {steps}")
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            train_s = time.perf_counter() - train_start
            steps += 1
            images += len(batch[0])
            last = float(loss.detach())
            if steps % 10 == 0:
                print(f"  {label}: step {steps}, loss {last:.3f}, {train_s:.0f}/{budget_s:.0f} s", flush=True)
            if train_s >= budget_s:
                break
    after = task.evaluate(model, val_loader, device, limit=args.eval_batches)
    return {"act": label, "steps": steps, "images_seen": images, "epochs": images / len(train_set),
            "train_s": train_s, "eval_s": eval_s, "wall_s": time.perf_counter() - start, "final_loss": last,
            "untrained": {k: before[k] for k in ("map50", "map")}, "trained": {k: after[k] for k in ("map50", "map")},
            "trained_per_class_map": after["map_per_class"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, default=_default_data())
    p.add_argument("--acts", nargs="+", default=list(ACTS), choices=list(ACTS))
    p.add_argument("--total-s", type=float, default=900.0,
                   help="wall time of the whole benchmark (s), shared equally by the activations")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--img-size", type=int, default=320)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--eval-batches", type=int, default=None, help="limit val batches (default: all 87 images)")
    p.add_argument("--workers", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (default 1: 2 threads ran ~20x slower on a shared 2-core machine)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args(argv)
    if not (args.data_dir / "Annotations").is_dir():
        print(f"BCCD not found at {args.data_dir} (set --data-dir or REPACT_SHARED_DATA)", file=sys.stderr)
        return 2
    begin = time.perf_counter()
    torch.set_num_threads(args.threads)
    task = get_task("detection")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)  # BCCD's two zero-area boxes, dropped and counted
        train_set, val_set, info = task.build_data("voc", args.data_dir, img_size=args.img_size, classes="auto",
                                                   augment="light")
    print(f"BCCD: {len(train_set)} train / {len(val_set)} val images, classes {info.classes[1:]}, "
          f"{args.img_size} px, {args.total_s:.0f} s in all")
    share_s = (args.total_s - (time.perf_counter() - begin)) / len(args.acts)
    rows = [run_one(label, ACTS[label], args, task, train_set, val_set, info, share_s) for label in args.acts]
    print(f"\n{'act':<10} {'steps':>6} {'epochs':>7} {'train s':>8} {'wall s':>7} {'mAP50 untrained':>16} "
          f"{'mAP50 trained':>14} {'mAP trained':>12}")
    for r in rows:
        print(f"{r['act']:<10} {r['steps']:>6} {r['epochs']:>7.1f} {r['train_s']:>8.0f} {r['wall_s']:>7.0f} "
              f"{r['untrained']['map50']:>16.2f} {r['trained']['map50']:>14.2f} {r['trained']['map']:>12.2f}")
    print(f"total wall time {time.perf_counter() - begin:.0f} s")
    result = {"benchmark": "bench_voc", "dataset": str(args.data_dir), "model": "ssdlite320_mobilenet_v3_large",
              "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
              "torch": torch.__version__, "machine": platform.machine(), "cpu_threads": args.threads, "runs": rows,
              "metric_note": "COCO-style AP (torchmetrics MeanAveragePrecision, pycocotools), percent"}
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
