"""A sweep of bad inputs and faults over the command line, each in a real ``python -m repact`` process.

    PYTHONPATH=src .venv/bin/python tests/cli_sweep.py [--jobs 2] [--quick] [--only WORD] [--json FILE]

Every case runs the CLI in a subprocess and is classified by what a user sees: a traceback (bad),
the exit code against the expected one (2 bad input, 1 fault at run time, 0 success), whether the
error is one line, and for cases that touch run folders whether anything was lost or mixed (folders
that must not change are compared byte for byte; folders that get a run must hold one consistent
run) and whether a checkpoint with non-finite weights was left. Prints a table and the counts; the
exit status is 1 when any case is bad. ``tests/test_cli_errors.py`` does not collect this file;
``--quick`` runs a fast subset (used by ``tests/test_cli_sweep.py``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cli_process

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--epochs", "1", "--batch-size", "32", "--limit-batches", "2", "--quiet"]


@dataclass
class Case:
    name: str
    argv: list[str]  # formatted with the sweep's paths: {good}, {foreign}, {tmp}, ...
    expect: int
    guard: list[str] = field(default_factory=list)  # paths that must not change
    run: str | None = None  # a folder that must end holding exactly one consistent run
    quick: bool = False
    says: list[str] = field(default_factory=list)  # words the error message must hold (formatted like argv)


def cases() -> list[Case]:
    t = "train"
    return [
        # --- train: options -------------------------------------------------------------------
        Case("train unknown dataset", [t, "--dataset", "svhn"], 2),
        Case("train unknown model", [t, "--model", "vgg99"], 2),
        Case("train unknown act", [t, "--act", "reluu"], 2),
        Case("train unknown optimizer", [t, "--optimizer", "lion"], 2),
        Case("train epochs 0", [t, "--epochs", "0"], 2),
        Case("train epochs not a number", [t, "--epochs", "many"], 2),
        Case("train lr nan", [t, "--lr", "nan"], 2),
        Case("train lr negative", [t, "--lr", "-1"], 2),
        Case("train img-size 100000", [t, *FAST, "--img-size", "100000", "--out", "{tmp}/big"], 2, quick=True),
        Case("train img-size 0", [t, "--img-size", "0"], 2),
        Case("train batch-size 0", [t, "--batch-size", "0"], 2),
        Case("train workers -1", [t, "--workers", "-1"], 2),
        Case("train workers 100000", [t, "--workers", "100000"], 2),
        Case("train seed -1", [t, "--seed", "-1"], 2),
        Case("train seed 10**23", [t, "--seed", "99999999999999999999999"], 2),
        Case("train limit-batches 0", [t, "--limit-batches", "0"], 2),
        Case("train label-smoothing 1.5", [t, "--label-smoothing", "1.5"], 2),
        Case("train amp on cpu", [t, "--amp", "--device", "cpu"], 2),
        Case("train device cuda:99", [t, *FAST, "--device", "cuda:99", "--out", "{tmp}/dev"], 2),
        Case("train model-kw width=-5", [t, *FAST, "--model-kw", "width=-5", "--out", "{tmp}/w1"], 2),
        Case("train model-kw width=abc", [t, *FAST, "--model-kw", "width=abc", "--out", "{tmp}/w2"], 2),
        Case("train model-kw without =", [t, "--model-kw", "width"], 2),
        Case("train model-kw width=200000", [t, *FAST, "--model-kw", "width=200000", "--out", "{tmp}/w3"], 2),
        Case("train mnv3 small_input=maybe", [t, *FAST, "--model", "mobilenet_v3_small", "--model-kw",
                                              "small_input=maybe", "--out", "{tmp}/w4"], 2),
        Case("train voc without --task", [t, "--dataset", "voc"], 2),
        Case("train detection missing folder", [t, *FAST, "--task", "detection", "--data-dir", "{tmp}/none",
                                                "--out", "{tmp}/det"], 2),
        Case("train segmentation without --data-dir", [t, "--task", "segmentation"], 2),
        Case("train config missing", [t, "--config", "{tmp}/missing.yaml"], 2),
        Case("train config bad yaml", [t, "--config", "{badyaml}"], 2),
        Case("train config a list", [t, "--config", "{listyaml}"], 2),
        Case("train config not UTF-8", [t, "--config", "{nonutf}"], 2, quick=True, says=["not UTF-8", "{nonutf}"]),
        Case("train config a folder", [t, "--config", "{empty}"], 2, quick=True, says=["{empty} is a folder"]),
        Case("train config /dev/null", [t, "--config", "/dev/null"], 2, quick=True,
             says=["/dev/null is a device", "YAML file"]),
        Case("train --out not UTF-8", [t, *FAST, "--out", "{tmp}/bad\udcff"], 2, quick=True,
             says=["bad\\xff", "not UTF-8"]),
        Case("train segmentation --classes auto", [t, *FAST, "--task", "segmentation", "--classes", "auto",
                                                   "--data-dir", "{seg}", "--out", "{tmp}/segauto"], 2, quick=True,
             says=["'auto'", "'voc' or a list of names"]),
        Case("train detection --year VOC2099", [t, *FAST, "--task", "detection", "--dataset", "voc", "--data-dir",
                                                "{seg}", "--year", "VOC2099", "--out", "{tmp}/y"], 2, quick=True,
             says=["no VOC2099 VOC-format data"]),
        Case("train detection --year 20o7", [t, *FAST, "--task", "detection", "--dataset", "voc", "--data-dir",
                                             "{seg}", "--year", "20o7", "--out", "{tmp}/y"], 2, quick=True,
             says=["year '20o7'", "2007"]),
        Case("train cifar10 missing folder", [t, *FAST, "--dataset", "cifar10", "--data-dir", "{tmp}/none",
                                              "--out", "{tmp}/c"], 2),
        Case("train imagefolder with a corrupt image", [t, *FAST, "--dataset", "imagefolder", "--data-dir",
                                                        "{corrupt}", "--out", "{tmp}/corrupt_run"], -1),
        # --- train: run folders ---------------------------------------------------------------
        Case("train --out is a file", [t, *FAST, "--out", "{junk}"], 2, guard=["junk"]),
        Case("train --out foreign folder", [t, *FAST, "--out", "{foreign}"], 2, guard=["foreign"], quick=True),
        Case("train --out foreign --overwrite", [t, *FAST, "--out", "{foreign}", "--overwrite"], 2,
             guard=["foreign"]),
        Case("train --out existing run", [t, *FAST, "--out", "{good}"], 2, guard=["good"]),
        Case("train --out busy run folder", [t, *FAST, "--out", "{busy}", "--overwrite"], 1, guard=["busy"]),
        Case("train --resume busy run folder", [t, "--resume", "{busy}", "--epochs", "2"], 1, guard=["busy"]),
        Case("train --resume missing", [t, "--resume", "{tmp}/nothing"], 2),
        Case("train --resume empty folder", [t, "--resume", "{empty}"], 2, guard=["empty"]),
        Case("train --resume junk file", [t, "--resume", "{junk}"], 2, guard=["junk"]),
        Case("train --resume crafted header", [t, "--resume", "{crafted}"], 2, guard=["crafted_dir"]),
        Case("train --resume alone", [t, "--resume"], 2),
        Case("train --resume changes lr", [t, "--resume", "{good}", "--lr", "0.3"], 2, guard=["good"]),
        Case("train --resume --overwrite in place", [t, "--resume", "{good}", "--overwrite"], 2, guard=["good"]),
        Case("train --resume into another run", [t, "--resume", "{good}", "--out", "{other}", "--epochs", "2"], 2,
             guard=["good", "other"]),
        Case("train --resume into foreign --overwrite", [t, "--resume", "{good}", "--out", "{foreign}",
                                                         "--overwrite"], 2, guard=["good", "foreign"]),
        Case("train --resume good into new folder", [t, "--resume", "{good}", "--out", "{tmp}/fork", "--epochs", "2"],
             0, guard=["good"], run="{tmp}/fork"),
        Case("train diverges (lr 2, warmup 3)", [t, "--lr", "2", "--warmup-epochs", "3", "--epochs", "3", "--quiet",
                                                 "--out", "{tmp}/nan"], 1),
        Case("train into a run that never finished an epoch", [t, *FAST, "--out", "{unfinished}"], 0,
             run="{unfinished}"),
        # --- eval -------------------------------------------------------------------------------
        Case("eval missing checkpoint", ["eval", "{tmp}/no/such"], 2),
        Case("eval junk file", ["eval", "{junk}"], 2, guard=["junk"]),
        Case("eval crafted header", ["eval", "{crafted}"], 2, guard=["crafted_dir"]),
        Case("eval empty folder", ["eval", "{empty}"], 2),
        Case("eval batch-size 0", ["eval", "{good}", "--batch-size", "0"], 2, guard=["good"]),
        Case("eval unknown dataset", ["eval", "{good}", "--dataset", "svhn"], 2, guard=["good"]),
        Case("eval device cuda:99", ["eval", "{good}", "--device", "cuda:99"], 2, guard=["good"]),
        Case("eval img-size 100000", ["eval", "{good}", "--img-size", "100000"], 2, guard=["good"]),
        Case("eval segmentation checkpoint --dataset digits", ["eval", "{segck}", "--dataset", "digits"], 2,
             quick=True, says=["--dataset digits", "segmentation model", "accepted: voc_seg"]),
        # --- plot, cam, verify, bench, deploy: sizes and paths ----------------------------------------
        Case("plot act --points 10**9", ["plot", "act", "repact", "--points", "1000000000", "--out", "{tmp}/a.png"],
             2, quick=True, says=["1000000000", "2 to 100,000"]),
        Case("plot act --param branch_weight=abc", ["plot", "act", "repact", "--param", "branch_weight=abc",
                                                    "--out", "{tmp}/a.png"], 2, quick=True,
             says=["branch_weight='abc'", "list of numbers"]),
        Case("plot act --out under a file", ["plot", "act", "repact", "--out", "/dev/null/x.png"], 2, quick=True,
             says=["/dev/null is a file"]),
        Case("plot features image a folder", ["plot", "features", "small_cnn", "{empty}", "--out", "{tmp}/f.png"],
             2, quick=True, says=["image {empty} is a folder"]),
        Case("plot features image-size 100000", ["plot", "features", "small_cnn", "{png}", "--image-size", "100000",
                                                 "--out", "{tmp}/f.png"], 2, quick=True,
             says=["--image-size 100000", "1 to 4096"]),
        Case("plot features detection model", ["plot", "features", "ssdlite320_mobilenet_v3_large", "{png}",
                                               "--out", "{tmp}/f.png"], 2, quick=True,
             says=["detection model", "classification and segmentation"]),
        Case("plot evolution binary act_params", ["plot", "evolution", "{badlogs}", "--out", "{tmp}/e.png"], 2,
             says=["act_params.jsonl", "UTF-8"]),
        Case("plot grads wrong-typed grads.jsonl", ["plot", "grads", "{badlogs}", "--out", "{tmp}/g.png"], 2,
             says=["grads.jsonl line 1", "'epochs'"]),
        Case("cam segmentation model", ["cam", "lraspp_mobilenet_v3_large", "{png}", "--out", "{tmp}/c.png"], 2,
             quick=True, says=["segmentation model", "classification models"]),
        Case("cam image-size 100000", ["cam", "small_cnn", "{png}", "--image-size", "100000", "--out",
                                       "{tmp}/c.png"], 2, quick=True, says=["--image-size 100000", "1 to 4096"]),
        Case("verify image-size 100000", ["verify", "small_cnn", "--image-size", "100000"], 2, quick=True,
             says=["100000", "elements"]),
        Case("bench threads 100000", ["bench", "small_cnn", "--threads", "100000", "--json", "{tmp}/b.json"], 2,
             quick=True, says=["--threads 100000", "outside 1 to"]),
        Case("deploy opset 99", ["deploy", "small_cnn", "--out", "{tmp}/d99", "--opset", "99"], 2, quick=True,
             says=["--opset 99", "17 to"]),
        Case("deploy --out a run folder", ["deploy", "{good}", "--out", "{good}"], 2, guard=["good"],
             says=["run folder"]),
        Case("deploy --out inside a run folder", ["deploy", "{good}", "--out", "{good}/deploy"], 2, guard=["good"],
             says=["lies in the run folder"]),
        # --- compare ----------------------------------------------------------------------------
        Case("compare without acts", ["compare", "--out", "{tmp}/cmp"], 2),
        Case("compare baseline not in acts", ["compare", "--acts", "relu,gelu", "--baseline", "hardswish",
                                              "--out", "{tmp}/cmp"], 2),
        Case("compare act listed twice", ["compare", "--acts", "relu,relu", "--out", "{tmp}/cmp"], 2),
        Case("compare seeds not integers", ["compare", "--acts", "relu", "--seeds", "a,b", "--out", "{tmp}/cmp"], 2),
        Case("compare grid file missing", ["compare", "--grid", "{tmp}/nogrid.yaml", "--out", "{tmp}/cmp"], 2),
        Case("compare unknown metric", ["compare", "--acts", "relu", "--metric", "worst"], 2),
        Case("compare unknown act", ["compare", "--acts", "reluu", "--out", "{tmp}/cmp"], 2),
        Case("compare cell in use", ["compare", "--acts", "repact", "--seeds", "0", *FAST[:-1], "--out", "{grid}"], 1,
             guard=["cell"]),
        Case("compare --out a file", ["compare", "--acts", "relu", "--seeds", "0", *FAST[:-1], "--out", "{junk}"], 2,
             guard=["junk"], quick=True, says=["is a file, not a folder"]),
        Case("compare --out a folder of other files", ["compare", "--acts", "relu", "--seeds", "0", *FAST[:-1],
                                                       "--out", "{foreign}"], 2, guard=["foreign"], quick=True,
             says=["notes.txt", "repact compare did not write"]),
        Case("compare grid acts: 5", ["compare", "--grid", "{grid5}", "--out", "{tmp}/cmp5"], 2, quick=True,
             says=["acts must list names", "[5]"]),
        # --- acts, demo, the top level --------------------------------------------------------
        Case("acts unknown family", ["acts", "--family", "nope"], 2, quick=True),
        Case("acts unknown flag", ["acts", "--bogus"], 2),
        Case("demo into a foreign folder", ["demo", "--out", "{foreign}"], 2, guard=["foreign"]),
        Case("demo epochs 0", ["demo", "--epochs", "0", "--out", "{tmp}/demo0"], 2),
        Case("demo --out is a file", ["demo", "--out", "{junk}"], 2, guard=["junk"]),
        Case("unknown command", ["nosuch"], 2),
        Case("no command", [], 2),
    ]


# ------------------------------------------------------------------------------------------------
# fixtures of the sweep
# ------------------------------------------------------------------------------------------------


def _env() -> dict[str, str]:
    return dict(os.environ, PYTHONPATH=str(ROOT / "src"), OMP_NUM_THREADS="1")


def _repact(*argv: str, timeout: float = 900) -> subprocess.CompletedProcess:
    return cli_process.run(argv, env=_env(), timeout=timeout)


def digest(path: Path) -> dict[str, str]:
    if path.is_file():
        return {path.name: hashlib.sha256(path.read_bytes()).hexdigest()}
    if not path.exists():
        return {}
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def prepare(tmp: Path, need_runs: bool) -> tuple[dict[str, str], list]:
    """Create the folders and files the cases refer to; returns (paths, held locks)."""
    sys.path.insert(0, str(ROOT / "src"))
    from repact.train.run_dir import RunFolder

    p = {"tmp": str(tmp)}
    (tmp / "foreign").mkdir()
    (tmp / "foreign" / "notes.txt").write_text("keep me\n")
    p["foreign"] = str(tmp / "foreign")
    (tmp / "empty").mkdir()
    p["empty"] = str(tmp / "empty")
    (tmp / "junk.safetensors").write_bytes(b"\x00" * 64)
    p["junk"] = str(tmp / "junk.safetensors")
    (tmp / "bad.yaml").write_text("lr: [1, 2\n")
    p["badyaml"] = str(tmp / "bad.yaml")
    (tmp / "list.yaml").write_text("- lr\n- 0.1\n")
    p["listyaml"] = str(tmp / "list.yaml")
    (tmp / "latin1.yaml").write_bytes("lr: 0.1  # Gr\u00f6\u00dfe\n".encode("latin-1"))
    p["nonutf"] = str(tmp / "latin1.yaml")
    (tmp / "grid5.yaml").write_text("acts: 5\n")
    p["grid5"] = str(tmp / "grid5.yaml")
    p["png"] = str(tmp / "image.png")
    _png(tmp / "image.png")
    from voc_fixtures import write_segmentation_set

    p["seg"] = str(write_segmentation_set(tmp / "voc_seg", n_train=4, n_val=2, size=32))
    p["segck"] = str(_segmentation_checkpoint(tmp / "seg_model"))
    corrupt = tmp / "corrupt"
    for split in ("train", "val"):
        for c in ("a", "b"):
            d = corrupt / split / c
            d.mkdir(parents=True)
            _png(d / "ok.png")
            _png(d / "ok2.png")
    (corrupt / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    p["corrupt"] = str(corrupt)
    locks = []
    if need_runs:
        for name, act in (("good", "repact"), ("other", "relu"), ("busy", "repact")):
            out = _repact("train", *FAST, "--act", act, "--out", str(tmp / name))
            if out.returncode:
                raise SystemExit(f"setting up the sweep failed: {out.stderr}")
            p[name] = str(tmp / name)
        (tmp / "unfinished").mkdir()
        out = _repact("train", "--lr", "2", "--warmup-epochs", "3", "--epochs", "3", "--quiet", "--out",
                      str(tmp / "unfinished"))
        assert out.returncode == 1 and (tmp / "unfinished" / "config.yaml").exists(), out.stderr
        p["unfinished"] = str(tmp / "unfinished")
        crafted = tmp / "crafted"
        crafted.mkdir()
        _craft(tmp / "good" / "last.safetensors", crafted / "last.safetensors")
        p["crafted"] = str(crafted / "last.safetensors")
        p["crafted_dir"] = str(crafted)
        grid = tmp / "grid"
        cell = grid / "runs" / "digits" / "small_cnn" / "repact" / "seed0"
        cell.mkdir(parents=True)
        p["grid"], p["cell"] = str(grid), str(cell)
        badlogs = tmp / "badlogs"  # a run whose logs hold what no run writes
        shutil.copytree(tmp / "good", badlogs)
        (badlogs / "act_params.jsonl").write_bytes(bytes(range(256)) * 4)
        (badlogs / "grads.jsonl").write_text('{"step": 3, "first_conv": 0.1}\n')
        p["badlogs"] = str(badlogs)
        # folders held by this process's OS lock, as a running training would hold them
        locks = [RunFolder(tmp / "busy").lock(), RunFolder(cell).lock()]
    return p, locks


def _png(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (8, 8), (120, 30, 200)).save(path)


def _segmentation_checkpoint(name: Path) -> Path:
    """A segmentation model's checkpoint as repact train writes it (untrained weights)."""
    from repact.checkpoint import save_checkpoint
    from repact.models import create_model

    model = create_model("lraspp_mobilenet_v3_large", act="repact", num_classes=4)
    config = {"name": "lraspp_mobilenet_v3_large", "act": "repact", "num_classes": 4, "kwargs": {},
              "input_shape": [3, 32, 32], "task": "segmentation"}
    return save_checkpoint(name, model, model_config=config,
                           state={"config": {"task": "segmentation", "dataset": "voc_seg"}})[0]


def _craft(src: Path, dst: Path) -> None:
    """A checkpoint whose header has a list where a mapping belongs."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(src), "pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        header = json.loads(f.metadata()["repact"])
    header["state"]["config"] = ["lr", 0.1]
    header["model_config"]["kwargs"] = [1, 2]
    save_file(tensors, str(dst), metadata={"repact": json.dumps(header)})


# ------------------------------------------------------------------------------------------------
# running and classifying
# ------------------------------------------------------------------------------------------------


def _nonfinite_checkpoints(folder: Path) -> list[str]:
    import torch

    from repact.checkpoint import load_checkpoint

    bad = []
    for f in folder.glob("*.safetensors") if folder.is_dir() else []:
        ck = load_checkpoint(f)
        if any(t.is_floating_point() and not torch.isfinite(t).all() for t in ck.model_state.values()):
            bad.append(f.name)
    return bad


def _one_run_problem(run: Path) -> str | None:
    """None when every file of ``run`` belongs to one run, else what is wrong."""
    import yaml

    from repact.checkpoint import load_checkpoint

    try:
        cfg = yaml.safe_load((run / "config.yaml").read_text())
        last = load_checkpoint(run / "last").state
        summary = json.loads((run / "summary.json").read_text())
        epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    except (OSError, ValueError, KeyError) as exc:
        return f"incomplete run: {exc}"
    ident = ("act", "seed", "model", "dataset", "lr")
    if any(last["config"][k] != cfg[k] for k in ident) or summary["act"] != cfg["act"]:
        return "config, checkpoint and summary disagree"
    if Path(cfg["out"]).resolve() != run.resolve():
        return f"config.yaml records out={cfg['out']}"
    if epochs != list(range(1, last["epoch"] + 1)):
        return f"metrics epochs {epochs} vs checkpoint epoch {last['epoch']}"
    return None


def run_case(case: Case, paths: dict[str, str]) -> dict:
    argv = [a.format(**paths) for a in case.argv]
    before = {k: digest(Path(paths[k])) for k in case.guard}
    t0 = time.perf_counter()
    proc = _repact(*argv)
    took = time.perf_counter() - t0
    err = proc.stderr.strip()
    lines = [x for x in err.splitlines() if x.strip()]
    problems = []
    if "Traceback" in err:
        problems.append("traceback")
    if case.expect >= 0 and proc.returncode != case.expect:
        problems.append(f"exit {proc.returncode}, expected {case.expect}")
    if case.expect < 0 and proc.returncode not in (0, 1, 2):
        problems.append(f"exit {proc.returncode}")
    if proc.returncode != 0 and len(lines) != 1:
        problems.append(f"{len(lines)} lines on stderr")
    problems += [f"the message lacks {w!r}" for w in (w.format(**paths) for w in case.says) if w not in err]
    lost = [k for k in case.guard if digest(Path(paths[k])) != before[k]]
    if lost:
        problems.append(f"changed: {', '.join(lost)}")
    if case.run is not None:
        why = _one_run_problem(Path(case.run.format(**paths)))
        if why:
            problems.append(f"mixed run: {why}")
    nonfinite = []
    for out in (argv[argv.index("--out") + 1],) if "--out" in argv else ():
        nonfinite = _nonfinite_checkpoints(Path(out))
        if nonfinite:
            problems.append(f"non-finite checkpoint kept: {', '.join(nonfinite)}")
    message = lines[-1] if lines else (proc.stdout.strip().splitlines() or [""])[-1]
    return {"name": case.name, "argv": argv, "rc": proc.returncode, "expect": case.expect, "seconds": round(took, 1),
            "traceback": "Traceback" in err, "lines": len(lines), "lost": bool(lost),
            "mixed": any(p.startswith("mixed") for p in problems), "nonfinite": bool(nonfinite),
            "problems": problems, "message": message}


def _placeholders(case: Case) -> set[str]:
    import string

    texts = [*case.argv, *(["{" + g + "}" for g in case.guard]), *([case.run] if case.run else [])]
    return {f for t in texts for _, f, _, _ in string.Formatter().parse(t) if f}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--jobs", type=int, default=2, help="cases run at once (default 2)")
    ap.add_argument("--quick", action="store_true", help="only the fast subset (no trained runs needed)")
    ap.add_argument("--only", default=None, help="only cases whose name contains this")
    ap.add_argument("--json", default=None, help="also write the results to this JSON file")
    args = ap.parse_args(argv)
    selected = [c for c in cases() if (not args.quick or c.quick) and (args.only is None or args.only in c.name)]
    cheap = {"tmp", "foreign", "empty", "junk", "badyaml", "listyaml", "corrupt", "nonutf", "grid5", "png", "seg",
             "segck"}
    need_runs = any(_placeholders(c) - cheap for c in selected)
    with tempfile.TemporaryDirectory(prefix="repact-sweep-") as tmp:
        paths, locks = prepare(Path(tmp), need_runs)
        try:
            with ThreadPoolExecutor(max(1, args.jobs)) as pool:
                results = list(pool.map(lambda c: run_case(c, paths), selected))
        finally:
            for lock in locks:
                lock.close()
        for r in results:
            r["message"] = r["message"].replace(tmp, "$TMP")
    width = max(len(r["name"]) for r in results)
    print(f"{'case':<{width}}  exit  want  lines  verdict  message")
    for r in results:
        verdict = "ok" if not r["problems"] else "BAD"
        want = "any" if r["expect"] < 0 else str(r["expect"])
        msg = r["message"] if len(r["message"]) <= 110 else r["message"][:107] + "..."
        print(f"{r['name']:<{width}}  {r['rc']:>4}  {want:>4}  {r['lines']:>5}  {verdict:<7}  {msg}")
        for p in r["problems"]:
            print(f"{'':<{width}}  -> {p}")
    counts = {
        "cases": len(results),
        "ok": sum(not r["problems"] for r in results),
        "tracebacks": sum(r["traceback"] for r in results),
        "wrong_exit_code": sum(any(p.startswith("exit") for p in r["problems"]) for r in results),
        "multi_line_errors": sum(any("lines on stderr" in p for p in r["problems"]) for r in results),
        "lost_or_changed": sum(r["lost"] for r in results),
        "mixed_runs": sum(r["mixed"] for r in results),
        "nonfinite_checkpoints_kept": sum(r["nonfinite"] for r in results),
        "exit_codes": {str(k): sum(r["rc"] == k for r in results) for k in sorted({r["rc"] for r in results})},
    }
    print("\n" + json.dumps(counts))
    if args.json:
        Path(args.json).write_text(json.dumps({"counts": counts, "results": results}, indent=2) + "\n")
    return 0 if counts["ok"] == counts["cases"] else 1


if __name__ == "__main__":
    sys.exit(main())
