"""repact.analysis.cam: a logit that depends on one image region gives a CAM that peaks there; the
default target layer is the last conv stage; in-place activations do not corrupt the maps; a
plain image file is preprocessed as the checkpoint records."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analysis_fixtures import assert_picture, digit_png, shared_run
from repact.analysis.cam import cam_grid, compute_cams, default_target_layer
from repact.analysis.figures import save_figure
from repact.analysis.preprocess import preprocess_from
from repact.checkpoint import build_model, load_checkpoint
from repact.models import create_model

ROWS, COLS = slice(0, 8), slice(20, 32)  # the region: top right of a 32 x 32 image (asymmetric on purpose)


class RegionNet(nn.Module):
    """Two conv stages; the logits see only ROWS x COLS, masked before or after the second stage."""

    def __init__(self, mask_before_stage: bool) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.ReLU(inplace=True))
        self.stage = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.ReLU(inplace=True))
        self.fc = nn.Linear(8, 2)
        with torch.no_grad():  # positive weights: every map and every gradient of class 0 is >= 0
            for conv in (self.stem[0], self.stage[0]):
                conv.weight.abs_()
            self.fc.weight[0].abs_()
        mask = torch.zeros(1, 1, 32, 32)
        mask[..., ROWS, COLS] = 1
        self.register_buffer("mask", mask)
        self.before = mask_before_stage

    def forward(self, x):
        h = self.stem(x)
        h = self.stage(h * self.mask if self.before else h)
        return self.fc((h if self.before else h * self.mask).mean(dim=(2, 3)))


def _assert_peaks_in_region(cam: np.ndarray, bleed: int) -> None:
    inside = np.zeros(cam.shape, dtype=bool)
    inside[max(0, ROWS.start - bleed):ROWS.stop + bleed, COLS.start - bleed:COLS.stop + bleed] = True
    r, c = np.unravel_index(int(cam.argmax()), cam.shape)
    assert inside[r, c], f"the CAM peaks at ({r}, {c}), outside the region"
    assert cam[inside].mean() > 10 * max(cam[~inside].mean(), 1e-6)


@pytest.mark.parametrize("method,before", [("gradcam", True), ("gradcam++", True), ("hirescam", False),
                                           ("layercam", False), ("hirescam", True)])
def test_cam_is_highest_where_the_logit_looks(method, before):
    model = RegionNet(before)
    x = torch.rand(2, 3, 32, 32)
    res = compute_cams(model, x, method, target=0)
    assert res.layer == "stage"  # the last conv stage, found from the model
    assert res.cams.shape == (2, 32, 32)
    for cam in res.cams:
        _assert_peaks_in_region(cam, bleed=1 if before else 0)
    # the region's content matters: a map on an input blank outside the region is the same inside it
    blank = x.clone()
    keep = torch.zeros_like(blank, dtype=torch.bool)
    keep[..., ROWS.start:ROWS.stop + 2, COLS.start - 2:] = True
    blank[~keep] = 0
    again = compute_cams(model, blank, method, target=0)
    np.testing.assert_allclose(again.probs, res.probs, rtol=1e-5, atol=1e-6)


def test_default_target_layer_is_the_last_conv_stage():
    x = torch.randn(1, 3, 64, 64)
    assert default_target_layer(create_model("mobilenet_v3_small", act="repact", num_classes=10), x) == "features.12"
    assert default_target_layer(create_model("resnet18", act="repact", num_classes=10), x) == "layer4.1"
    assert default_target_layer(create_model("shufflenet_v2_x0_5", num_classes=10), x) == "conv5"
    # FReLU holds a depthwise conv of its own: it is an activation's inside, not a conv stage
    frelu_cnn = create_model("small_cnn", act="frelu", num_classes=10, in_channels=3)
    assert default_target_layer(frelu_cnn, torch.randn(1, 3, 16, 16)) == "features"
    with pytest.raises(ValueError, match="no conv layer with a spatial output"):
        default_target_layer(nn.Sequential(nn.Flatten(), nn.Linear(12, 2)), torch.randn(1, 3, 2, 2))


def test_in_place_activations_do_not_corrupt_the_maps():
    """An in-place ReLU right after the target layer overwrites the tensor grad-cam keeps as its
    activations; compute_cams must give the Grad-CAM of the layer's real output."""
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Sequential(nn.Conv2d(6, 6, 3, padding=1)),
                          nn.ReLU(inplace=True), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(6, 4)).eval()
    x = torch.randn(1, 3, 12, 12)
    ours = compute_cams(model, x, "gradcam", target=1)
    assert ours.layer == "1" and model[2].inplace  # the target stage; the caller's model is left as it was
    # Grad-CAM by hand on the stage's output A (the input keeps its size, so no resize is involved)
    a = model[1](model[0](x)).detach().requires_grad_(True)
    logit = model[5](model[4](model[3](torch.relu(a))))[0, 1]
    (g,) = torch.autograd.grad(logit, a)
    cam = torch.relu((g.mean(dim=(2, 3), keepdim=True) * a).sum(1))[0].detach().numpy()
    cam = cam - cam.min()
    cam = cam / (1e-7 + cam.max())
    assert cam.max() > 0.5 and (a < 0).any()
    np.testing.assert_allclose(ours.cams[0], cam, atol=2e-4)  # grad-cam adds 1e-7 to each max it divides by
    with GradCAM(model=model, target_layers=[model[1]]) as raw:
        corrupted = raw(input_tensor=x, targets=[ClassifierOutputTarget(1)])
    assert np.abs(corrupted[0] - cam).max() > 0.05  # what grad-cam alone gives on the in-place model


def test_cam_grid_on_a_real_run_reads_plain_image_files(tmp_path):
    run = shared_run("small")
    ckpt = load_checkpoint(run / "last")
    model = build_model(ckpt).eval()
    pre = preprocess_from(ckpt.model_config, ckpt.state)
    assert pre == ckpt.model_config["preprocess"]
    assert (pre["img_size"], pre["channels"], pre["mean"], pre["std"]) == (8, 1, [0.305], [0.376])
    images = [digit_png(tmp_path / f"d{i}.png", i)[0] for i in range(2)]
    hs = build_model(shared_run("hardswish") / "last")
    fig, data = cam_grid([("repact", model, pre), ("hardswish", hs, pre)], images)
    assert [[c.model for c in row] for row in data.cells] == [["repact", "hardswish"]] * 2
    from PIL import Image

    for path, row in zip(images, data.cells):
        x = torch.from_numpy(np.asarray(Image.open(path), dtype=np.float32) / 255.0)
        x = ((x - 0.305) / 0.376).reshape(1, 1, 8, 8)
        for cell, m in zip(row, (model, hs)):
            with torch.no_grad():
                p = torch.softmax(m.eval()(x), 1)[0]
            assert cell.target == cell.predicted == int(p.argmax())
            assert cell.score == pytest.approx(float(p.max()), rel=1e-5)
            assert cell.target_name == str(cell.target) and cell.cam.shape == (8, 8)
    save_figure(fig, tmp_path / "cam.png")
    assert_picture(tmp_path / "cam.png")


def test_checkpoints_without_a_record_fall_back_to_their_training_state():
    ckpt = load_checkpoint(shared_run("small") / "last")
    mc = {k: v for k, v in ckpt.model_config.items() if k != "preprocess"}
    assert preprocess_from(mc, ckpt.state) == ckpt.model_config["preprocess"]
    named = preprocess_from({"name": "resnet18"}, None, img_size=96)
    assert (named["img_size"], named["augment"], named["mean"]) == (96, "imagenet", [0.485, 0.456, 0.406])
