"""What checking the decoded-image cache by content costs when a run opens it.

Two costs are added to every run that uses the cache (``repact.data.cache``): the key reads and
hashes every image file of the split (``split_key``: blake2b of each file's bytes), and opening the
cache checks ``pixels.u8`` (crc32 per 64 MiB chunk), ``index.npy`` and ``meta.json`` against the
checksums written with them (``verify``). For comparison: the ``os.stat`` of every file that the key
was made of before (sizes and modification times), and a whole cache hit (``open_decoded``: key +
check). Wall and CPU seconds, best of ``--rounds`` (files and pixels in the page cache after the
first round), with the load average, since the development machine is shared.

    PYTHONPATH=src python benchmarks/bench_cache_check.py      # ../shared/data/cifar10-jpeg/train
    PYTHONPATH=src python benchmarks/bench_cache_check.py --split DIR --rounds 5 --out results/x.json

The split's cache is built (or found) first, under ``--cache-dir`` (default: a temporary folder).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def _timed(fn, rounds: int) -> tuple[float, float]:
    """(wall, cpu) seconds of the fastest round."""
    best = (float("inf"), float("inf"))
    for _ in range(rounds):
        w, c = time.perf_counter(), time.process_time()
        fn()
        best = min(best, (time.perf_counter() - w, time.process_time() - c))
    return best


def main() -> None:
    here = Path(__file__).resolve().parents[1]
    shared = Path(os.environ.get("REPACT_SHARED_DATA", here.parent / "shared" / "data"))
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--split", type=Path, default=shared / "cifar10-jpeg" / "train")
    ap.add_argument("--cache-dir", type=Path, default=None)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=here / "benchmarks" / "results" / "bench_cache_check.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["REPACT_DATA_CACHE"] = str(args.cache_dir or tmp)
        from repact.checkpoint import atomic_write_text
        from repact.data.cache import open_decoded, split_key, verify
        from repact.data.folders import ClassFolder, _class_dirs

        classes = _class_dirs(args.split)
        samples = ClassFolder(str(args.split), classes).samples
        t0 = time.perf_counter()
        cache = open_decoded(args.split, samples, classes, "on", say=lambda _: None)
        ready_s = time.perf_counter() - t0
        print(f"cache of {len(samples):,} images ready in {ready_s:.1f} s: {cache.dir}")
        files = sum(os.stat(p).st_size for p, _ in samples)
        pixels = (cache.dir / "pixels.u8").stat().st_size
        load_before = os.getloadavg()[0]
        cases = [("stat", "os.stat of every file (the former key)", 0,
                  lambda: [os.stat(p) for p, _ in samples]),
                 ("key", "split_key: blake2b of every file", files,
                  lambda: split_key(args.split, samples, classes)),
                 ("check", "verify: crc32 of pixels.u8 + index + meta", pixels,
                  lambda: verify(cache.dir, len(samples))),
                 ("hit", "open_decoded, a hit (key + check)", files + pixels,
                  lambda: open_decoded(args.split, samples, classes, "on", say=lambda _: None))]
        rows = []
        for name, what, nbytes, fn in cases:
            wall, cpu = _timed(fn, args.rounds)
            rows.append({"case": name, "what": what, "bytes": nbytes, "wall_s": wall, "cpu_s": cpu,
                         "mb_per_cpu_s": nbytes / 1e6 / cpu if nbytes and cpu else None})
        load_after = os.getloadavg()[0]
    head = f"{'case':<6} {'what':<44} {'MB read':>8} {'wall s':>7} {'cpu s':>6} {'MB/cpu s':>9}"
    print(f"\n{args.split}: {len(samples):,} images, {files / 1e6:.1f} MB of files, {pixels / 1e6:.1f} MB of pixels; "
          f"best of {args.rounds}; load average {load_before:.1f} -> {load_after:.1f} ({os.cpu_count()} cores)")
    print(head)
    print("-" * len(head))
    for r in rows:
        rate = f"{r['mb_per_cpu_s']:9.0f}" if r["mb_per_cpu_s"] else f"{'-':>9}"
        print(f"{r['case']:<6} {r['what']:<44} {r['bytes'] / 1e6:8.1f} {r['wall_s']:7.2f} {r['cpu_s']:6.2f} {rate}")
    payload = {"meta": {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
                        "python": platform.python_version(), "date": time.strftime("%Y-%m-%d %H:%M:%S"),
                        "loadavg_before": load_before, "loadavg_after": load_after},
               "split": str(args.split), "images": len(samples), "file_bytes": files, "pixel_bytes": pixels,
               "rounds": args.rounds, "cache_ready_s": ready_s, "rows": rows}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
