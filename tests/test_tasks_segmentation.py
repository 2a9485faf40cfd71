"""The segmentation task by hand (no engine) on a VOC-format fixture written here: LR-ASPP learns."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from repact.tasks import get_task
from voc_fixtures import SEG_CLASSES, write_segmentation_set

pytest.importorskip("torchmetrics")


@pytest.fixture(scope="module")
def seg_data(tmp_path_factory):
    root = write_segmentation_set(tmp_path_factory.mktemp("voc_seg"), n_train=48, n_val=16, size=64)
    task = get_task("segmentation")
    train, val, info = task.build_data("voc_seg", root, img_size=64, classes=SEG_CLASSES, augment="flip")
    return task, train, val, info


def test_lraspp_with_repact_learns_well_above_chance(seg_data):
    task, train, val, info = seg_data
    torch.manual_seed(0)
    model, _ = task.build_model(act="repact", info=info)
    gen = torch.Generator().manual_seed(0)
    train_loader = DataLoader(train, batch_size=8, shuffle=True, drop_last=True, generator=gen,
                              collate_fn=task.collate_fn)
    val_loader = DataLoader(val, batch_size=16, collate_fn=task.collate_fn)
    before = task.evaluate(model, val_loader)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-4)
    model.train()
    for _ in range(7):  # 42 steps
        for batch in train_loader:
            loss, logs = task.loss(model, batch, "cpu")
            opt.zero_grad()
            loss.backward()
            opt.step()
    after = task.evaluate(model, val_loader)
    # chance: every pixel called background (its IoU over 4 classes)
    masks = torch.cat([m for _, m in val_loader])
    valid = masks != 255
    all_background = 100.0 * float((masks[valid] == 0).float().mean()) / len(SEG_CLASSES)
    assert after["miou"] > max(50.0, all_background + 25.0, before["miou"] + 25.0), (before, after, all_background)
    assert after["pixel_acc"] > 90.0 and after["loss"] < before["loss"]
    assert all(after["iou_per_class"][c] > 20.0 for c in SEG_CLASSES)


def test_loss_ignores_255_and_adds_the_auxiliary_head(seg_data):
    task, train, _, info = seg_data
    model, _ = task.build_model("deeplabv3_mobilenet_v3_large", info=info, aux_loss=True)
    images, masks = task.collate_fn([train[0], train[1]])
    model.train()
    loss, logs = task.loss(model, (images, masks), "cpu")
    assert set(logs) == {"loss_out", "loss_aux"}
    assert float(loss.detach()) == pytest.approx(logs["loss_out"] + 0.5 * logs["loss_aux"], rel=1e-5)
    # the ignored pixels do not count: changing the prediction target there changes nothing
    assert bool((masks == 255).any())
    out = model(images)["out"]
    full = torch.nn.functional.cross_entropy(out, masks, ignore_index=255)
    relabel = masks.clone()
    relabel[masks == 255] = 1
    assert not torch.isclose(full, torch.nn.functional.cross_entropy(out, relabel, ignore_index=255))
