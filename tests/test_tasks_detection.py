"""The detection task by hand (no engine) on real BCCD: SSDlite's loss falls, evaluation, exact deploy."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import DataLoader, Subset

from conftest import shared_data
from repact.data.common import DataError
from repact.data.voc import DataWarning
from repact.deploy.tasks import verify_task_reparameterization
from repact.tasks import get_task

pytest.importorskip("pycocotools")

SIZE = 128  # SSDlite at a tiny input (anchors follow img_size) keeps the test short


@pytest.fixture(scope="module")
def trained():
    root = shared_data("BCCD")
    task = get_task("detection")
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataWarning)
        train, val, info = task.build_data("voc", root, img_size=SIZE, classes="auto", augment="none")
    model, config = task.build_model(act="repact", info=info, img_size=SIZE)
    batch = task.collate_fn([train[i] for i in range(4)])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model.train()
    losses = []
    for _ in range(6):
        loss, logs = task.loss(model, batch, "cpu")
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        final, _ = task.loss(model, batch, "cpu")
    return task, model, config, info, val, losses, float(final), logs


def test_data_info_counts_the_background(trained):
    task, model, config, info, val, *_ = trained
    assert info.classes == ["__background__", "Platelets", "RBC", "WBC"] and info.num_classes == 4
    assert (info.train_size, info.val_size) == (205, 87)
    assert config == {"name": "ssdlite320_mobilenet_v3_large", "act": "repact", "num_classes": 4,
                      "kwargs": {"img_size": SIZE, "reduced_tail": True}, "input_shape": [3, SIZE, SIZE],
                      "task": "detection"}


def test_ssdlite_loss_falls_over_a_few_steps(trained):
    _, _, _, _, _, losses, final, logs = trained
    assert all(torch.isfinite(torch.tensor(losses)))
    assert set(logs) == {"bbox_regression", "classification"}
    assert final < 0.5 * losses[0], losses


def test_evaluate_reports_map_keys(trained):
    task, model, _, info, val, *_ = trained
    loader = DataLoader(Subset(val, range(4)), batch_size=2, collate_fn=task.collate_fn)
    summary = task.evaluate(model, loader, classes=info.classes)
    assert {"map50", "map", "map75", "mar100", "map_per_class", "n"} <= set(summary)
    assert summary["n"] == 4 and 0.0 <= summary["map"] <= summary["map50"] <= 100.0
    assert set(summary["map_per_class"]) <= {"Platelets", "RBC", "WBC"}
    assert model.training  # restored


def test_reparameterized_trained_detector_gives_the_same_detections(trained):
    task, model, _, _, val, *_ = trained
    images = torch.stack(task.collate_fn([val[i] for i in range(2)])[0])
    own, _ = verify_task_reparameterization(model, images, randomize=False)
    assert own.dense.max_rel <= 1e-5
    assert own.outputs["equal"] is True and own.outputs["mismatched"] == 0, own
    assert own.outputs["detections"] > 0 and own.outputs["max_box_error"] < 1e-2
    rand, _ = verify_task_reparameterization(model, images, randomize=True, seed=3)
    assert rand.ok(1e-5), rand
    assert rand.outputs["matched"] + rand.outputs["tie_swaps"] >= 0.9 * rand.outputs["detections"], rand


def test_task_refuses_other_families_and_datasets():
    task = get_task("detection")
    with pytest.raises(ValueError, match="model 'lraspp_mobilenet_v3_large' is a segmentation model; task detection"):
        task.check_model("lraspp_mobilenet_v3_large")
    with pytest.raises(ValueError, match="model 'mobilenet_v3_small' is a torchvision model; task detection takes models of family detection"):
        task.check_model("mobilenet_v3_small")
    with pytest.raises(DataError, match="task detection takes datasets voc, got 'cifar10'"):
        task.build_data("cifar10", ".")
    with pytest.raises(ValueError, match="unknown task 'depth'"):
        get_task("depth")
