"""INT8 after re-parameterization (issue 25, point 3): FP32 vs INT8 top-1 and latency of a trained
RepAct model's deploy form beside the INT8 HardSwish model, in one command.

Each run folder's ``best`` checkpoint is deployed with ``repact deploy --target RUNTIME --quantize int8``
(the HardSwish model as it is, ``--allow-unfused``), both quantized the same way: onnxruntime's static
QDQ quantization (``--runtime onnxruntime``, the default) or NNCF's for OpenVINO (``--runtime
openvino``, an OpenVINO IR), calibrated on N class-balanced training images; top-1 of the FP32 and
the INT8 files on the whole validation split (``--val-images N`` for fewer) with that runtime,
per-channel activation ranges. The four files are then timed together with that runtime in
interleaved rounds (medians, ratios to the INT8 HardSwish model; onnxruntime's idle threads do not
spin) at batch 1 and 32. Usage::

    python benchmarks/bench_int8.py --runs RUN_REPACT RUN_HARDSWISH --data DIR [--runtime openvino] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from repact.checkpoint import atomic_write_text
from repact.cli import main as repact_main
from repact.deploy.int8_report import int8_latency


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs=2, required=True, metavar=("REPACT_RUN", "HARDSWISH_RUN"),
                   help="run folders of `repact train` (their best checkpoint is deployed)")
    p.add_argument("--data", required=True, help="image folder with train/ and val/ (the runs' data)")
    p.add_argument("--out", default=None, help="folder for the deployed files (default: a temporary folder)")
    p.add_argument("--runtime", choices=("onnxruntime", "openvino"), default="onnxruntime",
                   help="quantize, evaluate and time with this runtime (openvino: NNCF, needs 'repact[openvino]')")
    p.add_argument("--calibration-images", type=int, default=500)
    p.add_argument("--val-images", type=int, default=None, help="evaluate on the first N val images (default: all)")
    p.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 32])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=40)
    p.add_argument("--json", default=None,
                   help="output JSON (default: benchmarks/results/bench_int8.json, bench_int8_openvino.json)")
    args = p.parse_args(argv)
    if args.json is None:
        stem = "bench_int8" if args.runtime == "onnxruntime" else f"bench_int8_{args.runtime}"
        args.json = str(Path(__file__).resolve().parent / "results" / f"{stem}.json")
    return args


def deploy_int8(run: Path, name: str, out: Path, args, extra: list[str]) -> dict:
    rc = repact_main(["deploy", str(run / "best.safetensors"), "--out", str(out), "--name", name, "--overwrite",
                      "--quantize", "int8", "--calibration-data", args.data,
                      "--calibration-images", str(args.calibration_images), "--target", args.runtime,
                      *(["--val-images", str(args.val_images)] if args.val_images else []), *extra])
    if rc != 0:
        print(f"bench_int8.py: repact deploy of {run} failed (exit {rc})", file=sys.stderr)
        sys.exit(rc)
    return json.loads((out / f"{name}_deploy_report.json").read_text())


def main(argv=None) -> int:
    import tempfile

    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="repact-int8-") as tmp:
        out = Path(args.out or tmp)
        runs = dict(zip(("repact", "hardswish"), (Path(r) for r in args.runs)))
        reports = {"repact": deploy_int8(runs["repact"], "repact", out, args, []),
                   "hardswish": deploy_int8(runs["hardswish"], "hardswish", out, args, ["--allow-unfused"])}
        shape = reports["repact"]["model_config"]["input_shape"]
        files = {f"{k}_{p}": out / (reports[k]["onnx"]["file"] if p == "fp32" else reports[k]["int8"]["file"])
                 for k in ("hardswish", "repact") for p in ("int8", "fp32")}
        latency = int8_latency(files, shape, args.batch_sizes, runtime=args.runtime, threads=args.threads,
                               rounds=args.rounds, baseline="hardswish_int8", spinning=False)
    load = Path("/proc/loadavg").read_text().strip() if Path("/proc/loadavg").exists() else "unknown"
    print(f"\n{args.runtime}: {reports['repact']['int8']['format']}")
    print(f"\n{'model':<10} {'top-1 FP32':>10} {'top-1 INT8':>10} {'loss':>6} {'median bits':>11} {'min bits':>8}")
    for k, rep in reports.items():
        q = rep["int8"]
        r = q["activation_ranges"]
        fmt = (lambda v: f"{v:.2f}" if v is not None else "-")
        print(f"{k:<10} {q['top1_fp32']:>10.2f} {q['top1_int8']:>10.2f} {q['top1_loss']:>6.2f} "
              f"{fmt(r['median_bits']):>11} {fmt(r['min_bits']):>8}")
    print(f"\n{'file':<16} {'batch':>5} {'median ms':>10} {'x hardswish_int8':>17}")
    for row in latency:
        print(f"{row['variant']:<16} {row['batch']:>5} {row['median_ms']:>10.3f} {row['ratio']:>17.3f}")
    data = {"runs": {k: str(v) for k, v in runs.items()}, "data": args.data, "runtime": args.runtime,
            "threads": args.threads, "val_images": reports["repact"]["int8"]["val_images"],
            "calibration_images": args.calibration_images, "load_average": load,
            "int8": {k: rep["int8"] for k, rep in reports.items()},
            "onnx": {k: rep["onnx"] for k, rep in reports.items()}, "latency": latency,
            "versions": reports["repact"]["versions"], "wall_s": time.perf_counter() - t0}
    path = Path(args.json)
    atomic_write_text(path, json.dumps(data, indent=2) + "\n")
    print(f"\nload average {load}; wrote {path} ({data['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
