"""Time a paper-scale study grid's runs on the machine at hand, without its data.

The (c1) grid (``configs/studies/cifar100-paper.yaml``: CIFAR-100, the ``repact-paper`` recipe,
224 px, batch 32, 8 loader workers) cannot run where nobody has CIFAR-100 or a GPU, so its wall
time per run is stated as an estimate. This benchmark measures it: it writes a synthetic folder in
CIFAR-100's on-disk layout (torchvision's python pickles; random 32x32 images, 500 per class, the
real dataset's sizes), runs the grid file itself through ``repact compare`` for two short epochs per
activation (``--epochs 2 --limit-batches N --limit-val-batches M``, seed 0, everything else as the
file says), and reads the second epoch's metrics (the first pays for CUDA's start and cuDNN's
autotuning): training images per second (data loading included) and validation images per second.
The expected time of a whole run is then

    epochs x (train images / train img/s + val images / val img/s)

with the grid's epochs (150) and the real dataset's sizes. Image content does not change the
cost of a step or of the augmentations, so synthetic pixels time the real pipeline.

    python benchmarks/bench_paper_grid.py --device cuda                     # every activation of (c1)
    python benchmarks/bench_paper_grid.py --device cuda --acts hardswish,repact --limit-batches 600
    python benchmarks/bench_paper_grid.py --device cpu --limit-batches 2 --limit-val-batches 1 --workers 0  # smoke run

Every epoch starts its loader workers afresh (as a real run does), which weighs more in a short
epoch, so the rates are a little low and the estimate errs long.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from repact.checkpoint import atomic_write_text  # noqa: E402
from repact.train.compare import load_grid_file  # noqa: E402
from repact.train.config import resolve_config  # noqa: E402

CIFAR100_TRAIN, CIFAR100_VAL, CIFAR100_CLASSES = 50_000, 10_000, 100


def write_synthetic_cifar100(root: Path, train: int = CIFAR100_TRAIN, val: int = CIFAR100_VAL,
                             seed: int = 0) -> Path:
    """A ``cifar-100-python`` folder (train, test, meta pickles) of random images, labels cycling
    through the 100 classes; returns ``root`` (the ``--data-dir``)."""
    rng = np.random.default_rng(seed)
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", train), ("test", val)):
        data = rng.integers(0, 256, size=(n, 3 * 32 * 32), dtype=np.uint8)
        labels = [i % CIFAR100_CLASSES for i in range(n)]
        with open(folder / name, "wb") as fh:
            pickle.dump({b"data": data, b"fine_labels": labels, b"coarse_labels": [lab // 5 for lab in labels]}, fh)
    with open(folder / "meta", "wb") as fh:
        pickle.dump({b"fine_label_names": [f"class{i:03d}" for i in range(CIFAR100_CLASSES)]}, fh)
    return root


def run_rates(metrics_csv: Path) -> dict:
    """Training and validation images per second of a run's last epoch (metrics.csv)."""
    with open(metrics_csv, newline="") as fh:
        row = list(csv.DictReader(fh))[-1]
    train_images, train_rate = float(row["train_images"]), float(row["train_images_per_s"])
    val_time = float(row["epoch_time_s"]) - train_images / train_rate
    val_images = float(row["val_images"])
    return {"train_images": int(train_images), "train_images_per_s": train_rate,
            "val_images": int(val_images), "val_images_per_s": val_images / max(val_time, 1e-9)}


def estimate_run_h(rates: dict, epochs: int, train: int = CIFAR100_TRAIN, val: int = CIFAR100_VAL) -> float:
    return epochs * (train / rates["train_images_per_s"] + val / rates["val_images_per_s"]) / 3600


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grid", default=str(ROOT / "configs/studies/cifar100-paper.yaml"))
    p.add_argument("--acts", default=None, help="comma-separated subset of the grid's activations")
    p.add_argument("--device", default="cuda")
    p.add_argument("--limit-batches", type=int, default=150,
                   help="training batches per epoch (two epochs per activation)")
    p.add_argument("--limit-val-batches", type=int, default=40)
    p.add_argument("--workers", type=int, default=None, help="loader workers (default: the grid's)")
    p.add_argument("--extra", nargs=argparse.REMAINDER, default=[], help="further repact compare flags")
    p.add_argument("--out", default="benchmarks/results/bench_paper_grid.json")
    args = p.parse_args(argv)

    grid = load_grid_file(args.grid)
    if grid.get("datasets") != ["cifar100"]:
        sys.exit(f"bench_paper_grid.py: {args.grid} trains on {grid.get('datasets')}; this benchmark "
                 "writes synthetic CIFAR-100 and times grids on ['cifar100'] only")
    epochs = resolve_config(grid.get("train", {})).epochs
    acts = args.acts.split(",") if args.acts else list(grid["acts"])

    with tempfile.TemporaryDirectory(prefix="repact-bench-paper-") as tmp:
        tmp = Path(tmp)
        t0 = time.perf_counter()
        data = write_synthetic_cifar100(tmp / "data")
        print(f"synthetic CIFAR-100 written in {time.perf_counter() - t0:.1f} s", flush=True)
        cmd = [sys.executable, "-m", "repact", "compare", "--grid", args.grid, "--data-dir", str(data),
               "--out", str(tmp / "runs"), "--acts", ",".join(acts), "--seeds", "0", "--epochs", "2",
               "--limit-batches", str(args.limit_batches), "--limit-val-batches", str(args.limit_val_batches),
               "--device", args.device, "--baseline", acts[0], *args.extra]
        if args.workers is not None:
            cmd += ["--workers", str(args.workers)]
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
        wall = time.perf_counter() - t0
        rows = []
        with open(tmp / "runs" / "runs.csv", newline="") as fh:  # compare's table of its runs, in grid order
            for run in csv.DictReader(fh):
                rates = run_rates(Path(run["run_dir"]) / "metrics.csv")
                rows.append({"act": run["act"], **rates, "estimated_run_h": estimate_run_h(rates, epochs)})

    import torch

    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") and torch.cuda.is_available() \
        else platform.processor() or platform.machine()
    print(f"\n{Path(args.grid).name} on {device_name}: the second of two epochs of {args.limit_batches} batches "
          f"per activation; a run = {epochs} epochs x ({CIFAR100_TRAIN:,} train + {CIFAR100_VAL:,} val images)")
    print(f"{'act':<16}{'train img/s':>12}{'val img/s':>11}{'est. h/run':>12}")
    for r in rows:
        print(f"{r['act']:<16}{r['train_images_per_s']:>12.0f}{r['val_images_per_s']:>11.0f}"
              f"{r['estimated_run_h']:>12.2f}")
    payload = {"grid": str(args.grid), "device": device_name, "torch": torch.__version__, "epochs": epochs,
               "limit_batches": args.limit_batches, "limit_val_batches": args.limit_val_batches,
               "compare_wall_s": wall, "rows": rows}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
