"""The train / eval / compare / demo commands, and bad input: exit 2, one paragraph, nothing damaged."""

from __future__ import annotations

import csv
import dataclasses
import json
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from repact.cli import main
from repact.train import ConfigError, TrainConfig, resolve_config
from repact.train.stats import t_quantile
from train_fixtures import tree_digest, write_cifar, write_image_folder

FAST = ["--epochs", "1", "--batch-size", "32", "--limit-batches", "3", "--quiet"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exc:  # argparse's own usage errors
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """One RepAct-I run on digits shared by the eval tests."""
    out = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--epochs", "2", "--batch-size", "64", "--limit-batches", "12", "--quiet",
                 "--out", str(out)]) == 0
    return out


def test_train_config_file_and_flag_override(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("act: hardswish\nlr: 0.02\nepochs: 3\nlabel-smoothing: 0.1\nmodel_kwargs: {width: 8}\n")
    rc, out, _ = _run(capsys, "train", "--config", str(cfg), "--epochs", "1", "--batch-size", "32",
                      "--limit-batches", "2", "--quiet", "--out", str(tmp_path / "r"))
    assert rc == 0 and "best epoch 1" in out
    saved = yaml.safe_load((tmp_path / "r" / "config.yaml").read_text())
    assert (saved["act"], saved["lr"], saved["epochs"], saved["label_smoothing"]) == ("hardswish", 0.02, 1, 0.1)
    assert saved["model_kwargs"] == {"width": 8}
    meta = json.loads((tmp_path / "r" / "last.json").read_text())
    assert meta["model_config"]["kwargs"] == {"width": 8, "in_channels": 1}


def test_train_on_cifar100_format_fixture(tmp_path, capsys):
    write_cifar(tmp_path / "data", "cifar100", n_train=64, n_test=16)
    rc, out, _ = _run(capsys, "train", "--dataset", "cifar100", "--data-dir", str(tmp_path / "data"),
                      "--act", "repact_softmax", "--model-kw", "width=8", *FAST, "--out", str(tmp_path / "r"))
    assert rc == 0
    s = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert s["dataset"] == "cifar100" and s["complete"]
    assert json.loads((tmp_path / "r" / "last.json").read_text())["model_config"]["num_classes"] == 100


def test_eval_checkpoint_and_reparameterized(trained, tmp_path, capsys):
    rc, out, _ = _run(capsys, "eval", str(trained), "--json")
    assert rc == 0
    res = json.loads(out)
    summary = json.loads((trained / "summary.json").read_text())
    assert res["results"][0]["acc1"] == pytest.approx(summary["best_acc1"], abs=1e-9)
    assert res["results"][0]["n"] == 359

    dep = tmp_path / "deployed"
    rc, out, _ = _run(capsys, "eval", str(trained / "last"), "--reparameterize", "--save-reparameterized", str(dep),
                      "--json")
    assert rc == 0
    res = json.loads(out)
    assert res["acc1_change"] <= 0.01
    assert res["results"][1]["acc1"] == pytest.approx(summary["last_acc1"], abs=0.01)
    rc, out, _ = _run(capsys, "eval", str(dep), "--json")
    assert rc == 0
    again = json.loads(out)
    assert "(reparameterized)" in again["results"][0]["model"]
    assert abs(again["results"][0]["acc1"] - summary["last_acc1"]) <= 0.01


def test_compare_grid_resumes_and_summarizes(tmp_path, capsys):
    out = tmp_path / "cmp"
    args = ["compare", "--acts", "hardswish,repact", "--seeds", "0,1,2", "--epochs", "1", "--batch-size", "64",
            "--limit-batches", "4", "--out", str(out)]
    rc, text, _ = _run(capsys, *args)
    assert rc == 0 and "| digits | small_cnn | repact |" in text
    for name in ("compare.md", "compare.csv", "runs.csv", "compare.png", "grid.yaml"):
        assert (out / name).is_file(), name
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert len(runs) == 6 and all(r["status"] == "done" for r in runs)
    rows = {r["act"]: r for r in csv.DictReader((out / "compare.csv").open())}
    for act in ("hardswish", "repact"):
        vals = [float(r["last_acc1"]) for r in runs if r["act"] == act]
        assert float(rows[act]["mean"]) == pytest.approx(statistics.mean(vals))
        assert float(rows[act]["std"]) == pytest.approx(statistics.stdev(vals))
        half = t_quantile(0.975, 2) * statistics.stdev(vals) / 3 ** 0.5
        assert float(rows[act]["ci95"]) == pytest.approx(half)
    d = statistics.mean(float(r["last_acc1"]) for r in runs if r["act"] == "repact") - statistics.mean(
        float(r["last_acc1"]) for r in runs if r["act"] == "hardswish")
    assert float(rows["repact"]["delta"]) == pytest.approx(d)
    # the same command again: every run is skipped and the reports are identical
    before = (out / "compare.csv").read_text()
    rc, text, _ = _run(capsys, *args)
    assert rc == 0 and text.count("finished earlier, skipped") == 6 and "training (" not in text
    assert (out / "compare.csv").read_text() == before
    # a different budget into the same folder is refused, not mixed in
    rc, _, err = _run(capsys, *args[:-2], "--epochs", "2", "--out", str(out))
    assert rc == 2 and "epochs=1" in err and "another --out" in err


def test_compare_from_yaml_grid(tmp_path, capsys):
    grid = tmp_path / "grid.yaml"
    grid.write_text("acts: [relu, prelu]\nseeds: [0, 1]\nbaseline: relu\nmetric: best\n"
                    "train: {epochs: 1, batch_size: 64, limit_batches: 2}\n")
    rc, text, _ = _run(capsys, "compare", "--grid", str(grid), "--out", str(tmp_path / "g"))
    assert rc == 0
    md = (tmp_path / "g" / "compare.md").read_text()
    assert "best-epoch top-1" in md and "relu (baseline)" in md and "Δ vs relu" in md


def test_demo_writes_its_report(tmp_path, capsys):
    rc, out, _ = _run(capsys, "demo", "--epochs", "1", "--quiet", "--out", str(tmp_path / "demo"))
    assert rc == 0
    rep = json.loads((tmp_path / "demo" / "demo.json").read_text())
    names = [r["model"] for r in rep["rows"]]
    assert names[:3] == ["HardSwish", "RepAct-I (training form)", "RepAct-I (re-parameterized)"]
    assert rep["rows"][2]["max_error"] <= 1e-5 * max(1.0, rep["verify"]["ref_scale"])
    assert abs(rep["rows"][2]["acc1"] - rep["rows"][1]["acc1"]) <= 0.01
    try:
        import onnxruntime  # noqa: F401

        assert names[3] == "RepAct-I (ONNX Runtime)" and (tmp_path / "demo" / "repact_deployed.onnx").is_file()
        assert abs(rep["rows"][3]["acc1"] - rep["rows"][1]["acc1"]) <= 0.01
    except ImportError:
        assert len(names) == 3
    for key in ("curves_plot", "activations_plot", "report"):
        assert Path(rep["files"][key]).is_file() and rep["files"][key] in out
    assert "| HardSwish |" in out and "latency" in out


# ------------------------------------------------------------------------------------------------
# bad input: exit code 2, one paragraph naming the bad value, no traceback, nothing damaged
# ------------------------------------------------------------------------------------------------


def _bad(capsys, argv, *words):
    rc, _, err = _run(capsys, *argv)
    assert rc == 2, err
    assert "Traceback" not in err and err.strip().count("\n\n") == 0
    flat = " ".join(err.split())  # the message is wrapped at 100 columns
    for w in words:
        assert w in flat, (w, err)
    return err


@pytest.mark.parametrize("argv, words", [
    (["train", "--dataset", "svhn"], ["'svhn'", "cifar100"]),
    (["train", "--model", "vgg99"], ["'vgg99'", "small_cnn"]),
    (["train", "--act", "reluu"], ["'reluu'", "Did you mean"]),
    (["train", "--optimizer", "lion"], ["'lion'", "sgd, adamw, adam"]),
    (["train", "--epochs", "0"], ["epochs", "at least 1"]),
    (["train", "--amp", "--device", "cpu"], ["--amp", "CUDA"]),
    (["train", "--amp"], ["--amp", "CUDA"]),
    (["train", "--epochs", "many"], ["--epochs", "'many'"]),
    (["train", "--resume", "--overwrite", "--out", "x"], ["--resume", "--overwrite"]),
    (["compare", "--acts", "relu,gelu", "--baseline", "hardswish"], ["hardswish", "relu, gelu"]),
    (["compare", "--acts", "relu", "--datasets", "svhn"], ["'svhn'"]),
    (["eval", "/no/such/checkpoint"], ["/no/such/checkpoint"]),
    (["train", "--task", "detection", "--data-kw", "keep_difficult=maybe"],
     ["--data-kw keep_difficult got 'maybe', which is not a boolean", "true/false, 1/0, yes/no"]),
    (["compare", "--acts", "relu", "--seeds", "", "--out", "cmp"], ["the grid's seeds list is empty"]),
    (["compare", "--acts", "relu", "--models", " , ", "--out", "cmp"], ["the grid's models list is empty"]),
])
def test_bad_flags(capsys, tmp_path, monkeypatch, argv, words):
    monkeypatch.chdir(tmp_path)
    _bad(capsys, argv, *words)
    assert not (tmp_path / "runs").exists() and not (tmp_path / "cmp").exists()  # nothing was created


def test_missing_and_malformed_data_folders(capsys, tmp_path):
    _bad(capsys, ["train", "--dataset", "cifar10", "--data-dir", str(tmp_path / "nope"), "--out",
                  str(tmp_path / "r1")], str(tmp_path / "nope"), "cifar-10-batches-py", "--download")
    (tmp_path / "folder" / "train" / "a").mkdir(parents=True)
    _bad(capsys, ["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "folder"), "--out",
                  str(tmp_path / "r2")], str(tmp_path / "folder" / "val"), "train/<class>")
    _bad(capsys, ["train", "--dataset", "mnist", "--data-dir", str(tmp_path), "--out", str(tmp_path / "r3")],
         "MNIST/raw", "train-images-idx3-ubyte")
    assert not any((tmp_path / r).exists() for r in ("r1", "r2", "r3"))


def test_bad_config_files(capsys, tmp_path):
    _bad(capsys, ["train", "--config", str(tmp_path / "missing.yaml")], "missing.yaml", "does not exist")
    (tmp_path / "bad.yaml").write_text("lr: [1, 2\n")
    _bad(capsys, ["train", "--config", str(tmp_path / "bad.yaml")], "bad.yaml", "not valid YAML")
    (tmp_path / "unk.yaml").write_text("learning_rate: 0.1\n")
    _bad(capsys, ["train", "--config", str(tmp_path / "unk.yaml")], "'learning_rate'", "accepted")


def test_booleans_are_not_numbers_and_parse_strictly(capsys, tmp_path):
    (tmp_path / "b.yaml").write_text("epochs: true\n")
    _bad(capsys, ["train", "--config", str(tmp_path / "b.yaml"), "--out", str(tmp_path / "r")],
         "option 'epochs' got True, which is not a valid int (true/false is not a number here)")
    assert not (tmp_path / "r").exists()
    fields = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    numbers = [k for k, t in fields.items() if t.startswith(("int", "float"))]
    assert {"epochs", "batch_size", "lr", "seed", "workers", "img_size", "grad_clip"} <= set(numbers)
    for key in numbers:  # Python counts True as 1: a config must not
        with pytest.raises(ConfigError, match=f"option '{key}' got True"):
            resolve_config({key: True})
    flags = [k for k, t in fields.items() if t == "bool"]
    assert {"amp", "nesterov", "download", "quiet"} <= set(flags)
    for key in flags:
        for bad in ("maybe", 2, 0.5, [True]):
            with pytest.raises(ConfigError, match=f"option '{key}' got .*not a boolean; accepted: true/false"):
                resolve_config({key: bad})
    for word, value in (("yes", True), ("NO", False), ("1", True), (0, False), ("off", False), ("True", True)):
        assert resolve_config({"quiet": word}).quiet is value
    assert resolve_config({"task": "detection", "data_kwargs": {"keep_difficult": "no"}}).data_kwargs == \
        {"keep_difficult": False}


def test_existing_run_and_resume_errors_leave_files_alone(trained, capsys, tmp_path):
    before = tree_digest(trained)
    _bad(capsys, ["train", *FAST, "--out", str(trained)], str(trained), "--resume")
    _bad(capsys, ["train", "--resume", str(trained), "--lr", "0.3"], "'lr'", "may change only")
    _bad(capsys, ["train", "--resume", str(tmp_path)], "no last checkpoint")
    assert tree_digest(trained) == before


def test_bad_checkpoints(trained, capsys, tmp_path):
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 64)
    _bad(capsys, ["eval", str(junk)], str(junk), "not a readable safetensors")
    write_cifar(tmp_path / "c100", "cifar100")
    _bad(capsys, ["eval", str(trained), "--dataset", "cifar100", "--data-dir", str(tmp_path / "c100")],
         "1-channel", "cifar100")
    write_image_folder(tmp_path / "img", classes=("a", "b"))
    _bad(capsys, ["eval", str(trained), "--dataset", "imagefolder", "--data-dir", str(tmp_path / "img")],
         "1-channel")


def test_mismatched_class_count(capsys, tmp_path):
    write_image_folder(tmp_path / "img3", classes=("a", "b", "c"))
    write_image_folder(tmp_path / "img2", classes=("a", "b"))
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path / "img3"), *FAST,
                 "--model-kw", "width=8", "--out", str(tmp_path / "r")]) == 0
    capsys.readouterr()
    _bad(capsys, ["eval", str(tmp_path / "r"), "--dataset", "imagefolder", "--data-dir", str(tmp_path / "img2")],
         "3 output classes", "2")


def test_demo_refuses_a_foreign_folder(capsys, tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    _bad(capsys, ["demo", "--out", str(tmp_path / "mine")], str(tmp_path / "mine"), "empty or new folder")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in (tmp_path / "mine").iterdir()) == ["notes.txt"]


def test_cli_subprocess_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "repact", "train", "--dataset", "imagenet100", "--data-dir",
                           str(tmp_path / "in100")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and str(tmp_path / "in100") in proc.stderr
    assert proc.stderr.startswith("repact train: error:")
