"""``repact train / eval / deploy / verify / compare`` on detection (BCCD) and segmentation (a VOC-format
fixture written here): run folders, resume, metrics, deploy, and bad input as one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader

from conftest import shared_data
from repact.checkpoint import build_model, load_checkpoint
from repact.cli import main
from voc_fixtures import SEG_CLASSES, write_segmentation_set

pytest.importorskip("torchmetrics")

# a constant schedule: one epoch resumed to two follows the same learning rates as two in one go
SEG_FAST = ["--task", "segmentation", "--classes", ",".join(SEG_CLASSES), "--img-size", "64", "--batch-size", "4",
            "--limit-batches", "2", "--optimizer", "adamw", "--lr", "1e-3", "--schedule", "constant", "--quiet"]
DET_FAST = ["--task", "detection", "--dataset", "voc", "--classes", "auto", "--img-size", "96", "--batch-size", "4",
            "--limit-batches", "2", "--optimizer", "adamw", "--lr", "1e-3", "--quiet"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main([str(a) for a in argv])
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture(scope="module")
def seg_root(tmp_path_factory) -> Path:
    return write_segmentation_set(tmp_path_factory.mktemp("voc_seg"), n_train=16, n_val=8, size=64)


@pytest.mark.slow
def test_segmentation_train_resume_eval_deploy(seg_root, tmp_path, capsys):
    whole, part = tmp_path / "whole", tmp_path / "part"
    rc, out, err = _run(capsys, "train", *SEG_FAST, "--data-dir", seg_root, "--epochs", "2", "--out", whole)
    assert rc == 0, err
    assert "val mIoU" in out and "best epoch" in out and "mIoU" in out.splitlines()[-2]
    s = json.loads((whole / "summary.json").read_text())
    assert s["task"] == "segmentation" and s["primary_metric"] == "miou" and s["model"] == "lraspp_mobilenet_v3_large"
    assert set(s["iou_per_class"]) == set(SEG_CLASSES) and s["best_miou"] == s["miou"]
    hist = [json.loads(x) for x in (whole / "metrics.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2] and all(h["val_images"] == 8 for h in hist)
    assert {"train_loss_out", "val_miou", "val_pixel_acc", "val_loss"} <= set(hist[0])
    assert s["miou"] == max(h["val_miou"] for h in hist) and s["last_miou"] == hist[-1]["val_miou"]
    assert (whole / "curves.png").stat().st_size > 0 and (whole / "activations.png").stat().st_size > 0
    ck = load_checkpoint(whole / "best")
    assert ck.model_config["task"] == "segmentation" and ck.state["best_metric"] == "miou"

    # resume: one epoch, then a second one from the checkpoint, equals two epochs in one go
    assert _run(capsys, "train", *SEG_FAST, "--data-dir", seg_root, "--epochs", "1", "--out", part)[0] == 0
    rc, out, err = _run(capsys, "train", "--resume", part, "--epochs", "2", "--quiet")
    assert rc == 0 and "resuming" in out, err
    a, b = load_checkpoint(whole / "last"), load_checkpoint(part / "last")
    for k, v in a.model_state.items():
        assert torch.equal(v, b.model_state[k]), k
    assert a.state["history"][-1]["val_miou"] == b.state["history"][-1]["val_miou"]

    # eval reads the task from the checkpoint; its mIoU is the best epoch's
    rc, out, err = _run(capsys, "eval", whole, "--json")
    assert rc == 0, err
    res = json.loads(out)
    assert res["task"] == "segmentation" and res["results"][0]["n"] == 8
    assert res["results"][0]["miou"] == pytest.approx(s["miou"], abs=1e-9)
    assert res["results"][0]["pixel_acc"] == pytest.approx(s["pixel_acc"], abs=1e-9)
    rc, out, _ = _run(capsys, "eval", whole)
    assert rc == 0 and "mIoU %" in out and "pixel acc %" in out and "per-class IoU %: background" in out

    # deploy exports the whole model; verify checks the checkpoint and the ONNX file
    rc, out, err = _run(capsys, "deploy", whole, "--out", tmp_path / "dep")
    assert rc == 0, err
    report = json.loads((tmp_path / "dep" / "model_deploy_report.json").read_text())
    assert report["task"] == "segmentation" and report["onnx"]["exported"].startswith("the whole model")
    assert report["model_config"]["reparameterized"] and report["weights"]["reload_max_abs"] == 0.0
    assert "not exported" in out
    rebuilt = build_model(tmp_path / "dep" / "model_deploy")
    assert not any(type(m).__name__ == "RepAct" for m in rebuilt.modules())
    rc, out, err = _run(capsys, "verify", whole / "best.safetensors", "--keep-bn", "--onnx",
                        tmp_path / "dep" / "model.onnx")
    assert rc == 0 and "masks: 0 differing" in out and out.strip().endswith("OK"), err


@pytest.mark.slow
def test_detection_on_bccd_train_resume_eval_deploy(tmp_path, capsys):
    bccd = shared_data("BCCD")
    run = tmp_path / "det"
    rc, out, err = _run(capsys, "train", *DET_FAST, "--data-dir", bccd, "--epochs", "1", "--out", run)
    assert rc == 0, err
    assert "val mAP@0.5" in out and "(mAP@0.5:0.95" in out
    assert "repact train: warning: VOC detection" in err and "degenerate box" in err  # BCCD's zero-area boxes
    rc, out, err = _run(capsys, "train", "--resume", run, "--epochs", "2", "--quiet")
    assert rc == 0 and "resuming" in out, err
    s = json.loads((run / "summary.json").read_text())
    assert s["task"] == "detection" and s["epochs_done"] == 2 and s["primary_metric"] == "map50"
    assert {"map50", "map", "map75", "mar100", "best_map50", "last_map50", "last_map"} <= set(s)
    assert set(s["map_per_class"]) <= {"Platelets", "RBC", "WBC"}
    hist = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert {"train_bbox_regression", "train_classification", "val_map50", "val_map"} <= set(hist[0])
    assert all(h["val_images"] == 16 for h in hist)  # --limit-batches 2 of 2 x 4
    ck = load_checkpoint(run / "last")
    assert ck.model_config["task"] == "detection" and ck.model_config["kwargs"] == {"img_size": 96,
                                                                                    "reduced_tail": True}
    assert ck.state["data"]["classes"] == ["__background__", "Platelets", "RBC", "WBC"]

    rc, out, err = _run(capsys, "eval", run, "--json", "--limit-batches", "2", "--batch-size", "8")
    assert rc == 0, err
    res = json.loads(out)["results"][0]
    assert res["n"] == 16 and res["map50"] == pytest.approx(s["map50"], abs=1e-9)
    rc, out, _ = _run(capsys, "eval", run, "--limit-batches", "1")
    assert rc == 0 and "mAP@0.5 %" in out and "mAP@0.5:0.95 %" in out and "per-class AP@0.5:0.95 %" in out

    rc, out, err = _run(capsys, "deploy", run / "last", "--out", tmp_path / "dep")
    assert rc == 0, err
    assert "not exported" in out and "NMS" in out
    report = json.loads((tmp_path / "dep" / "model_deploy_report.json").read_text())
    assert report["task"] == "detection" and report["onnx"]["input_size"] == 96
    assert report["verify"]["own_statistics"]["outputs"]["equal"] is not False
    rc, out, err = _run(capsys, "verify", run / "last")
    assert rc == 0 and "detections:" in out and out.strip().endswith("OK"), err


@pytest.mark.slow
def test_compare_ranks_a_segmentation_grid_by_miou(seg_root, tmp_path, capsys):
    out_dir = tmp_path / "grid"
    rc, out, err = _run(capsys, "compare", "--task", "segmentation", "--acts", "hardswish,repact", "--seeds", "0",
                        "--data-dir", seg_root, "--classes", ",".join(SEG_CLASSES), "--img-size", "64",
                        "--batch-size", "4", "--epochs", "1", "--limit-batches", "1", "--out", out_dir)
    assert rc == 0, err
    md = (out_dir / "compare.md").read_text()
    assert "last-epoch mIoU % (mean ± std)" in md and "voc_seg | lraspp_mobilenet_v3_large | repact" in md
    runs = (out_dir / "runs.csv").read_text().splitlines()
    assert runs[0].startswith("dataset,model,act,seed,status,run_dir,last_miou,best_miou")
    rows = [json.loads((out_dir / "runs" / "voc_seg" / "lraspp_mobilenet_v3_large" / a / "seed0" /
                        "summary.json").read_text()) for a in ("hardswish", "repact")]
    assert all(r["task"] == "segmentation" for r in rows)


@pytest.mark.parametrize("argv, words", [
    (["train", "--dataset", "voc"], ["'voc' is a detection dataset", "--task detection"]),
    (["train", "--model", "ssdlite320_mobilenet_v3_large"], ["is a detection model", "--task detection"]),
    (["train", "--task", "poses"], ["unknown task 'poses'", "classification, detection, segmentation"]),
    (["train", "--classes", "auto", "--swap-heads"], ["--classes, --swap-heads apply to --task detection"]),
    (["train", "--task", "detection", "--data-dir", ".", "--swap-act", "repact"],
     ["--swap-act fine-tune a pretrained classifier"]),
    (["train", "--task", "detection"], ["--data-dir"]),
    (["train", "--task", "detection", "--model", "small_cnn"], ["small model", "family detection"]),
    (["train", "--task", "segmentation", "--dataset", "voc"], ["takes datasets voc_seg", "'voc'"]),
    (["train", "--task", "segmentation", "--augment", "crop-flip"], ["for task segmentation", "none, flip, light"]),
    (["train", "--task", "segmentation", "--label-smoothing", "0.1"], ["label_smoothing applies to classification"]),
])
def test_bad_task_options_are_one_line_errors(tmp_path, capsys, argv, words):
    rc, out, err = _run(capsys, *argv, "--epochs", "1", "--out", tmp_path / "r")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("repact train: error:"), err
    for w in words:
        assert w in err, (w, err)
    assert not (tmp_path / "r").exists()


def test_bad_task_data_and_weights_are_one_line_errors(seg_root, tmp_path, capsys):
    cases = [
        (["--data-dir", tmp_path / "none"], "does not exist"),
        (["--data-dir", seg_root, "--data-kw", "bogus=1"], "bogus"),
        (["--data-dir", seg_root, "--weights", tmp_path / "missing.pt"], "does not exist (weights are only read"),
        (["--data-dir", seg_root, "--classes", ","], "names no class"),
    ]
    for extra, word in cases:
        rc, out, err = _run(capsys, "train", *SEG_FAST, "--epochs", "1", *extra, "--out", tmp_path / "r")
        assert rc == 2 and err.count("\n") == 1 and word in err, (extra, err)
        assert not (tmp_path / "r").exists()


def test_task_checkpoints_refuse_classification_only_flags(seg_root, tmp_path, capsys):
    run = tmp_path / "r"
    assert _run(capsys, "train", *SEG_FAST, "--data-dir", seg_root, "--epochs", "1", "--limit-batches", "1",
                "--out", run)[0] == 0
    rc, _, err = _run(capsys, "eval", run, "--reparameterize")
    assert rc == 2 and "repact verify" in err and err.count("\n") == 1
    rc, _, err = _run(capsys, "deploy", run, "--out", tmp_path / "d", "--static-batch")
    assert rc == 2 and "dynamic batch only" in err and not (tmp_path / "d").exists()
    rc, _, err = _run(capsys, "deploy", run, "--out", tmp_path / "d", "--input-shape", "3", "64", "32")
    assert rc == 2 and "square RGB images" in err
    rc, _, err = _run(capsys, "verify", run, "--reference", "branches")
    assert rc == 2 and "--reference module" in err


def test_model_config_of_a_backbone_weights_run_rebuilds_without_the_file(tmp_path):
    """A MobileNetV3 backbone file turns SSDlite's reduced tail off; the recorded config pins it."""
    import torchvision

    from repact.data.common import DataInfo
    from repact.tasks import get_task

    path = tmp_path / "mnv3.pth"
    torch.save(torchvision.models.mobilenet_v3_large(weights=None).state_dict(), path)
    info = DataInfo("voc", 4, 3, 96, ["__background__", "a", "b", "c"])
    model, cfg = get_task("detection").build_model(act="repact", info=info, img_size=96, weights=str(path))
    assert cfg["kwargs"] == {"img_size": 96, "reduced_tail": False} and cfg["task"] == "detection"
    from repact.checkpoint import save_checkpoint

    save_checkpoint(tmp_path / "ck", model, model_config=cfg)
    path.unlink()  # the weights file is not needed to rebuild
    again = build_model(tmp_path / "ck")
    for (k, a), b in zip(model.state_dict().items(), again.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.slow
def test_segmentation_under_ddp_sees_every_val_image_once(seg_root, tmp_path):
    import os
    import subprocess
    import sys

    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                           "-m", "repact", "train", *SEG_FAST, "--data-dir", str(seg_root), "--epochs", "1",
                           "--out", str(out)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert hist[0]["val_images"] == 8 and hist[0]["train_images"] == 2 * 2 * 4  # both ranks counted once
    ck = load_checkpoint(out / "last")
    assert ck.state["world_size"] == 2
    # the mIoU synced over the ranks is the mIoU of the whole val split
    from repact.tasks import get_task

    task = get_task("segmentation")
    _, val, _ = task.build_data("voc_seg", seg_root, img_size=64, classes=SEG_CLASSES)
    model = build_model(ck)
    res = task.evaluate(model, DataLoader(val, batch_size=8, collate_fn=task.collate_fn))
    assert res["miou"] == pytest.approx(hist[0]["val_miou"], abs=1e-6)
