"""A whole training epoch (data included) against the training step alone, on a real image folder.

For each activation: ``repact train``'s engine runs one epoch on the folder (default the CIFAR-10
JPEG q75 copy, MobileNetV3-Small, 32 px, ``small_input``, batch 64), with the decoded-image cache
(``--cache on``) or reading the JPEG files (``off``); its ``train_images_per_s`` is training images
over the wall time of the training phase, data loading included. Right before and right after each
epoch, ``bench_train.py``'s step (the same model, synthetic tensors already in memory) is timed;
the epoch's ratio is its throughput over the mean of those two step throughputs, so a load change
on a shared machine hits both alike. With ``--rounds R`` every (activation, cache) pair runs R such
step-epoch-step sequences, interleaved, and the table gives the median ratio. Target from the
issue (reported, not asserted): >= 0.9.

    python benchmarks/bench_epoch.py                                      # hardswish and repact, cached, 50,000 images
    python benchmarks/bench_epoch.py --train-subset 10000 --cache on,off  # shorter epochs; with and without the cache
    python benchmarks/bench_epoch.py --acts hardswish,relu,repact,repact_bn --train-subset 10000 --rounds 2
    python benchmarks/bench_epoch.py --quick                              # smoke run: 640 images

The cache is built (or found) before anything is timed; its build time is reported apart. Once per
round and cache mode the data pipeline alone is timed too (the epoch's train loader, one pass, no
model): its share of a step says how much of the gap to the step is data and how much the rest.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402  (the step this benchmark compares with)

from repact.checkpoint import atomic_write_text  # noqa: E402
from repact.data import build_datasets  # noqa: E402
from repact.deploy import time_interleaved  # noqa: E402
from repact.train import TrainConfig, train  # noqa: E402
from repact.train.dist import DistEnv  # noqa: E402
from repact.train.setup import build_data, make_loaders  # noqa: E402

TARGET_RATIO = 0.9
DEFAULT_DATA = Path(os.environ.get("REPACT_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data")) \
    / "cifar10-jpeg"


def step_images_per_s(args, act: str, num_classes: int, device: torch.device) -> float:
    """bench_train's training step for (model, act, size, batch): batch / median step time."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, num_classes, (args.batch,), generator=g).to(device)
    model, opt = bench_train.build(args.model, act, args.size, num_classes, device)
    t = time_interleaved({act: bench_train.make_step(model, opt, x, y, device)}, warmup=args.warmup,
                         rounds=args.step_rounds, inner=args.steps)[act]
    return args.batch / (t.median_ms / 1e3)


def prepare_cache(args, mode: str) -> dict:
    """Build (or find) the decoded-image cache before anything is timed."""
    t0 = time.perf_counter()
    tr, va, info = build_datasets("imagefolder", args.data_dir, img_size=args.size, cache=mode)
    return {"mode": mode, "cached": tr.decoded is not None, "prepare_s": time.perf_counter() - t0,
            "decode_s": tr.decoded.meta.get("decode_s") if tr.decoded is not None else None,
            "train_images": info.train_size, "val_images": info.val_size}


def epoch_config(args, act: str, mode: str, out: Path | None = None) -> TrainConfig:
    return TrainConfig(model=args.model, act=act, dataset="imagefolder", data_dir=str(args.data_dir),
                       img_size=args.size, epochs=1, batch_size=args.batch, workers=args.workers, cache=mode,
                       train_subset=args.train_subset, limit_val_batches=args.limit_val_batches,
                       device=args.device, quiet=True, out=str(out) if out else None)


def loader_images_per_s(args, mode: str) -> float:
    """One pass of the epoch's train loader alone (reading, augmenting, batching; no model)."""
    cfg = epoch_config(args, "hardswish", mode)
    train_set, val_set, _ = build_data(cfg)
    loader = make_loaders(cfg, train_set, val_set, DistEnv(), torch.device("cpu"))[0]
    t0, n = time.perf_counter(), 0
    for _, y in loader:
        n += len(y)
    return n / (time.perf_counter() - t0)


def one_epoch(args, act: str, mode: str, out: Path) -> dict:
    res = train(epoch_config(args, act, mode, out), keep_model=False)
    h = res.history[0]
    val_s = h["epoch_time_s"] - h["train_images"] / h["train_images_per_s"]  # the rest of the epoch: validation
    return {"train_images_per_s": h["train_images_per_s"], "train_images": h["train_images"],
            "epoch_time_s": h["epoch_time_s"], "val_images": h["val_images"], "val_acc1": h["val_acc1"],
            "val_images_per_s": h["val_images"] / max(val_s, 1e-9)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data-dir", type=Path, default=DEFAULT_DATA, help="ImageFolder tree (train/ + val/)")
    p.add_argument("--model", default="mobilenet_v3_small")
    p.add_argument("--acts", default="hardswish,repact")
    p.add_argument("--size", type=int, default=32)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--cache", default="on", help="comma-separated cache modes to time: on, off, auto")
    p.add_argument("--workers", type=int, default=0, help="data loader workers of the epoch (default 0)")
    p.add_argument("--train-subset", type=int, default=None, help="epoch over a class-balanced subset of N images")
    p.add_argument("--limit-val-batches", type=int, default=None)
    p.add_argument("--rounds", type=int, default=1, help="step-epoch-step sequences per (act, cache), interleaved")
    p.add_argument("--step-rounds", type=int, default=10)
    p.add_argument("--steps", type=int, default=2, help="training steps per timed sample")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="smoke run: 640 training images, 2 val batches")
    p.add_argument("--out", default="benchmarks/results/bench_epoch.json")
    args = p.parse_args(argv)
    if args.quick:
        args.train_subset, args.limit_val_batches, args.step_rounds, args.steps = 640, 2, 4, 1
    if args.rounds < 1:
        p.error(f"--rounds must be at least 1, got {args.rounds}")
    if not (args.data_dir / "train").is_dir():
        p.error(f"{args.data_dir} is not an ImageFolder tree with train/ and val/ (give --data-dir)")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    acts = [a.strip() for a in args.acts.split(",") if a.strip()]
    modes = [m.strip() for m in args.cache.split(",") if m.strip()]
    t_start = time.time()
    caches = {m: prepare_cache(args, m) for m in modes}
    num_classes = len([d for d in (args.data_dir / "train").iterdir() if d.is_dir()])
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for mode in modes:
                caches[mode].setdefault("loader_images_per_s_rounds", []).append(loader_images_per_s(args, mode))
                for act in acts:
                    before = step_images_per_s(args, act, num_classes, device)
                    ep = one_epoch(args, act, mode, Path(tmp) / f"{act}-{mode}-{r}")
                    after = step_images_per_s(args, act, num_classes, device)
                    step = statistics.mean([before, after])
                    rows.append({"round": r, "act": act, "cache": mode, "cached": caches[mode]["cached"], **ep,
                                 "step_images_per_s": step, "step_images_per_s_before": before,
                                 "step_images_per_s_after": after, "ratio": ep["train_images_per_s"] / step})
                    print(f"round {r + 1}/{args.rounds} {act} cache {mode}: epoch {ep['train_images_per_s']:.1f} "
                          f"img/s, step {step:.1f} img/s, ratio {rows[-1]['ratio']:.3f}", flush=True)
    for c in caches.values():
        c["loader_images_per_s"] = statistics.median(c["loader_images_per_s_rounds"])
    summary = []
    for mode in modes:
        for act in acts:
            mine = [x for x in rows if x["act"] == act and x["cache"] == mode]
            ratio = statistics.median(x["ratio"] for x in mine)
            step_ips = statistics.median(x["step_images_per_s"] for x in mine)
            summary.append({"act": act, "cache": mode, "cached": caches[mode]["cached"], "rounds": len(mine),
                            "train_images": mine[0]["train_images"],
                            "train_images_per_s": statistics.median(x["train_images_per_s"] for x in mine),
                            "step_images_per_s": step_ips,
                            # data pipeline time / step time, for one batch
                            "data_share_of_step": step_ips / caches[mode]["loader_images_per_s"],
                            "ratio": ratio, "ratio_min": min(x["ratio"] for x in mine),
                            "ratio_max": max(x["ratio"] for x in mine),
                            "epoch_time_s": statistics.median(x["epoch_time_s"] for x in mine),
                            "val_images_per_s": statistics.median(x["val_images_per_s"] for x in mine),
                            "val_images": mine[0]["val_images"], "meets_target": ratio >= TARGET_RATIO})
    print(f"\n{args.model}, {args.size} px, batch {args.batch}, {args.workers} loader worker(s), "
          f"{torch.get_num_threads()} threads, data {args.data_dir}")
    for m, c in caches.items():
        print(f"cache {m}: {'cached' if c['cached'] else 'not cached'}, prepared in {c['prepare_s']:.1f} s"
              + (f" (decoding took {c['decode_s']:.1f} s when built)" if c["decode_s"] else "")
              + f"; the data pipeline alone: {c['loader_images_per_s']:.0f} img/s "
                f"({1e3 * args.batch / c['loader_images_per_s']:.1f} ms per batch)")
    head = (f"{'act':<12} {'cache':<6} {'epoch img/s':>12} {'step img/s':>11} {'ratio':>6} {'range':>13} "
            f"{'data/step':>9} {'images':>7} {'epoch s':>8} {'val img/s':>10}  target >= {TARGET_RATIO}")
    print(head)
    print("-" * len(head))
    for r in summary:
        print(f"{r['act']:<12} {r['cache']:<6} {r['train_images_per_s']:12.1f} {r['step_images_per_s']:11.1f} "
              f"{r['ratio']:6.3f} {r['ratio_min']:6.3f}-{r['ratio_max']:<6.3f} {r['data_share_of_step']:9.3f} "
              f"{r['train_images']:>7} "
              f"{r['epoch_time_s']:8.1f} {r['val_images_per_s']:10.1f}  {'ok' if r['meets_target'] else 'MISS'}")
    print(f"(medians over {args.rounds} round(s); data/step: the data pipeline's time per batch over the step's; "
          f"epoch s: the whole epoch, validation of {summary[0]['val_images']} images included)")
    meta = {"device": str(device), "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "wall_s": time.time() - t_start,
            "loadavg": os.getloadavg() if hasattr(os, "getloadavg") else None}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "target_ratio": TARGET_RATIO, "caches": caches, "summary": summary, "runs": rows}
    atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
