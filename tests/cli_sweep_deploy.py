"""Bad-input sweep of `repact verify`, `deploy`, `bench` and `eval --reparameterize/--save-reparameterized`.

Every case runs the real command in a fresh process and is classified: a traceback (bad), the exit
code against the one expected (2 bad input, 1 a failed check), whether stderr is one line (and
one message, when the CLI wraps a long line), and whether files that existed before are intact.

    PYTHONPATH=src .venv/bin/python tests/cli_sweep_deploy.py [--jobs 2] [--json out.json]

Prints the table and the counts; exits 1 when a case ends in a traceback, an unexpected exit
code, or a clobbered file.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cli_process

SRC = Path(__file__).resolve().parents[1] / "src"
MESSAGE_STARTS = ("repact ", "FAILED", "usage:")


@dataclass
class Case:
    name: str
    argv: list[str]
    expect: int  # exit code
    keep: list[str] = field(default_factory=list)  # files (relative to the work folder) that must stay as they are


@dataclass
class Outcome:
    case: Case
    rc: int
    seconds: float
    traceback: bool
    lines: int
    messages: int
    clobbered: list[str]
    first: str

    @property
    def ok(self) -> bool:
        return not self.traceback and self.rc == self.case.expect and not self.clobbered


def _fixtures(work: Path) -> None:
    """Checkpoints and files the cases read (written in-process, once)."""
    sys.path.insert(0, str(SRC))
    import torch

    import repact
    from repact.checkpoint import save_checkpoint
    from repact.models import create_model

    def ckpt(name, poison=None, dataset="digits"):
        torch.manual_seed(0)
        model = create_model("small_cnn", act="repact_bn", num_classes=10)
        model.eval()(torch.zeros(1, 1, 8, 8))
        repact.randomize_batchnorm_(model, seed=1)
        if poison:
            with torch.no_grad():
                poison(model)
        cfg = {"name": "small_cnn", "act": "repact_bn", "num_classes": 10, "kwargs": {"in_channels": 1},
               "input_shape": [1, 8, 8]}
        state = {"config": {"dataset": dataset, "img_size": 8}} if dataset else {}
        save_checkpoint(work / name, model, model_config=cfg, state=state)

    ckpt("good")
    ckpt("nan", lambda m: m.features[0].weight.view(-1)[0].fill_(float("nan")))
    ckpt("huge", lambda m: (m.features[3].weight.mul_(1e30), m.features[6].weight.mul_(1e30)))
    ckpt("nobn", lambda m: m.features[1].running_var.fill_(float("inf")))
    ckpt("nodata", dataset=None)
    ckpt("existing")  # a file an eval must not replace
    (work / "corrupt.safetensors").write_bytes(os.urandom(256))
    (work / "fake.onnx").write_text("this is not an ONNX protobuf\n")
    (work / "a_file.txt").write_text("keep me\n")
    (work / "a_folder").mkdir()
    (work / "bench_dir.json").mkdir()
    deployed = work / "deployed"
    rc = cli_process.run(["deploy", "small_cnn", "--act", "repact", "--image-size", "8", "--out", str(deployed)],
                         env=_env(), cwd=work)
    if rc.returncode != 0:
        raise SystemExit(f"fixture deploy failed:\n{rc.stderr}")


def _cases() -> list[Case]:
    dep = ["deployed/model.onnx", "deployed/model_deploy.safetensors", "deployed/model_deploy.json",
           "deployed/model_deploy_report.json"]
    good = ["good.safetensors", "good.json"]
    s8 = ["--image-size", "8"]
    return [
        # verify
        Case("verify: unknown model name", ["verify", "mobilenet_v9"], 2),
        Case("verify: missing checkpoint", ["verify", "missing.safetensors"], 2),
        Case("verify: corrupt safetensors", ["verify", "corrupt.safetensors"], 2, ["corrupt.safetensors"]),
        Case("verify: NaN weight", ["verify", "nan.safetensors"], 1),
        Case("verify: inf BN statistics, --keep-bn", ["verify", "nobn.safetensors", "--keep-bn"], 1),
        Case("verify: logits overflow (finite weights)", ["verify", "huge.safetensors", "--keep-bn"], 1),
        Case("verify: 3 channels into small_cnn", ["verify", "small_cnn", "--act", "repact", "--input-shape", "3", "8", "8"], 2),
        Case("verify: absurd input shape", ["verify", "small_cnn", "--input-shape", "3", "100000", "100000"], 2),
        Case("verify: --onnx not an ONNX file", ["verify", "good.safetensors", "--keep-bn", "--onnx", "fake.onnx"], 2,
             ["fake.onnx"]),
        Case("verify: --onnx missing", ["verify", "good.safetensors", "--keep-bn", "--onnx", "nope.onnx"], 2),
        Case("verify: --onnx of another model", ["verify", "small_cnn", "--act", "repact", "--model-arg", "in_channels=3",
                                                 *s8, "--keep-bn", "--onnx", "deployed/model.onnx"], 2, dep),
        Case("verify: --onnx without --keep-bn", ["verify", "good.safetensors", "--onnx", "deployed/model.onnx"], 2, dep),
        Case("verify: --reference branches, no RepAct", ["verify", "small_cnn", "--act", "acon_c", *s8,
                                                         "--reference", "branches"], 2),
        Case("verify: --reference bogus", ["verify", "small_cnn", "--reference", "bogus"], 2),
        Case("verify: --batch 0", ["verify", "small_cnn", "--batch", "0"], 2),
        Case("verify: --rtol nan", ["verify", "small_cnn", "--rtol", "nan"], 2),
        Case("verify: width=-5", ["verify", "small_cnn", "--model-arg", "width=-5"], 2),
        Case("verify: unknown builder keyword", ["verify", "resnet18", "--model-arg", "depth=3"], 2),
        Case("verify: --act on a checkpoint", ["verify", "good.safetensors", "--act", "relu"], 2),
        Case("verify: unknown activation", ["verify", "small_cnn", "--act", "repactt"], 2),
        # deploy
        Case("deploy: earlier deploy, no --overwrite", ["deploy", "small_cnn", "--act", "repact_bn", *s8,
                                                        "--out", "deployed"], 2, dep),
        Case("deploy: --out is a file", ["deploy", "small_cnn", "--act", "repact", *s8, "--out", "a_file.txt"], 2,
             ["a_file.txt"]),
        Case("deploy: --name with a folder", ["deploy", "small_cnn", "--act", "repact", *s8, "--out", "d1",
                                              "--name", "../escape"], 2),
        Case("deploy: nothing to fuse (acon_c)", ["deploy", "small_cnn", "--act", "acon_c", *s8, "--out", "d2"], 2),
        Case("deploy: nothing to fuse (gelu)", ["deploy", "small_cnn", "--act", "gelu", *s8, "--out", "d3"], 2),
        Case("deploy: NaN weight", ["deploy", "nan.safetensors", "--out", "d4"], 1),
        Case("deploy: logits overflow", ["deploy", "huge.safetensors", "--out", "d5"], 1),
        Case("deploy: NaN weight over an earlier deploy", ["deploy", "nan.safetensors", "--out", "deployed",
                                                           "--overwrite"], 1, dep),
        Case("deploy: --opset 16", ["deploy", "small_cnn", "--act", "repact", "--opset", "16", "--out", "d6"], 2),
        Case("deploy: zero input size", ["deploy", "small_cnn", "--act", "repact", "--input-shape", "1", "0", "8",
                                         "--out", "d7"], 2),
        Case("deploy: wrong channel count", ["deploy", "small_cnn", "--act", "repact", "--input-shape", "3", "8", "8",
                                             "--out", "d8"], 2),
        Case("deploy: corrupt checkpoint", ["deploy", "corrupt.safetensors", "--out", "d9"], 2),
        Case("deploy: --onnx-form bogus", ["deploy", "small_cnn", "--onnx-form", "bogus", "--out", "d10"], 2),
        Case("deploy: missing --out", ["deploy", "small_cnn", "--act", "repact"], 2),
        # bench
        Case("bench: --device cuda (no GPU)", ["bench", "small_cnn", "--device", "cuda"], 2),
        Case("bench: --device tpu", ["bench", "small_cnn", "--device", "tpu"], 2),
        Case("bench: unknown model", ["bench", "nosuchnet"], 2),
        Case("bench: --rounds 0", ["bench", "small_cnn", "--rounds", "0"], 2),
        Case("bench: --batch-sizes 0", ["bench", "small_cnn", "--batch-sizes", "0"], 2),
        Case("bench: --json is a folder", ["bench", "small_cnn", "--json", "bench_dir.json"], 2),
        Case("bench: wrong channel count", ["bench", "small_cnn", "--input-shape", "3", "8", "8", "--json", "b.json"], 2),
        Case("bench: unknown activation", ["bench", "small_cnn", "--act", "nope", "--json", "b.json"], 2),
        Case("bench: --threads 0", ["bench", "small_cnn", "--threads", "0"], 2),
        # eval --reparameterize / --save-reparameterized
        Case("eval: NaN weight --reparameterize", ["eval", "nan.safetensors", "--reparameterize"], 1),
        Case("eval: logits overflow --reparameterize", ["eval", "huge.safetensors", "--reparameterize"], 1),
        Case("eval: logits overflow, save", ["eval", "huge.safetensors", "--save-reparameterized", "huge_deploy"], 1),
        Case("eval: save over the source", ["eval", "good.safetensors", "--save-reparameterized", "good"], 2, good),
        Case("eval: save over an existing file", ["eval", "good.safetensors", "--save-reparameterized", "existing"], 2,
             ["existing.safetensors", "existing.json"]),
        Case("eval: save into a folder path", ["eval", "good.safetensors", "--save-reparameterized", "a_folder"], 2),
        Case("eval: missing checkpoint", ["eval", "missing.safetensors", "--reparameterize"], 2),
        Case("eval: corrupt checkpoint", ["eval", "corrupt.safetensors", "--reparameterize"], 2),
        Case("eval: --device cuda (no GPU)", ["eval", "good.safetensors", "--reparameterize", "--device", "cuda"], 2),
        Case("eval: --batch-size 0", ["eval", "good.safetensors", "--reparameterize", "--batch-size", "0"], 2),
        Case("eval: no dataset recorded", ["eval", "nodata.safetensors", "--reparameterize"], 2),
    ]


def _env() -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), os.environ.get("PYTHONPATH", "")]))
    env.pop("REPACT_DEBUG", None)
    return env


def _run(case: Case, work: Path) -> Outcome:
    before = {f: (work / f).read_bytes() for f in case.keep if (work / f).is_file()}
    missing = [f for f in case.keep if f not in before]
    if missing:
        raise SystemExit(f"{case.name}: fixture files {missing} are absent")
    t0 = time.perf_counter()
    p = cli_process.run(case.argv, env=_env(), cwd=work, timeout=900)
    seconds = time.perf_counter() - t0
    err = p.stderr
    lines = [line for line in err.splitlines() if line.strip()]
    clobbered = [f for f, data in before.items() if not (work / f).is_file() or (work / f).read_bytes() != data]
    first = next((line for line in lines if line.startswith(MESSAGE_STARTS)), lines[0] if lines else "")
    if not first and p.stdout.strip():
        first = p.stdout.strip().splitlines()[-1]
    return Outcome(case, p.returncode, seconds, "Traceback (most recent call last)" in err, len(lines),
                   sum(line.startswith(MESSAGE_STARTS) for line in lines), clobbered, first)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    ap.add_argument("--json", default=None, help="also write the outcomes as JSON")
    args = ap.parse_args(argv)
    cases = _cases()
    with tempfile.TemporaryDirectory(prefix="repact-sweep-") as tmp:
        work = Path(tmp)
        _fixtures(work)
        with ThreadPoolExecutor(max(1, args.jobs)) as pool:
            outcomes = list(pool.map(lambda c: _run(c, work), cases))
    print(f"{'#':>2} {'case':<44} {'exit':>4} {'want':>4} {'tb':>3} {'lines':>5} {'msgs':>4} {'files':>9}  first line")
    for i, o in enumerate(outcomes, 1):
        files = "-" if not o.case.keep else ("CLOBBERED" if o.clobbered else "kept")
        mark = "" if o.ok else "  <-- "
        print(f"{i:>2} {o.case.name:<44} {o.rc:>4} {o.case.expect:>4} {'YES' if o.traceback else 'no':>3} "
              f"{o.lines:>5} {o.messages:>4} {files:>9}  {o.first[:110]}{mark}")
    n = len(outcomes)
    counts = {
        "cases": n,
        "tracebacks": sum(o.traceback for o in outcomes),
        "unexpected_exit": sum(o.rc != o.case.expect for o in outcomes),
        "exit_2": sum(o.rc == 2 for o in outcomes),
        "exit_1": sum(o.rc == 1 for o in outcomes),
        "exit_0": sum(o.rc == 0 for o in outcomes),
        "one_line": sum(o.lines == 1 for o in outcomes),
        "one_message": sum(o.messages == 1 and not o.traceback for o in outcomes),
        "with_files_to_keep": sum(bool(o.case.keep) for o in outcomes),
        "clobbered": sum(bool(o.clobbered) for o in outcomes),
    }
    print("\n" + ", ".join(f"{k} {v}" for k, v in counts.items()))
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": counts, "cases": [
            {"name": o.case.name, "argv": o.case.argv, "rc": o.rc, "expect": o.case.expect, "traceback": o.traceback,
             "stderr_lines": o.lines, "messages": o.messages, "clobbered": o.clobbered, "first": o.first,
             "seconds": round(o.seconds, 2)} for o in outcomes]}, indent=2) + "\n")
    bad = counts["tracebacks"] + counts["unexpected_exit"] + counts["clobbered"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
