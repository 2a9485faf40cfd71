"""repact.analysis.features: the histogram counts every input of the layer once; the segment shares
are the knots' partition; the maps are the layer's own input and output."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from analysis_fixtures import assert_picture, digit_png, shared_run
from repact.analysis.features import feature_data, plot_features, segment_counts
from repact.analysis.figures import save_figure
from repact.analysis.preprocess import load_image, preprocess_from
from repact.checkpoint import build_model, load_checkpoint
from repact.models import create_model


def _captured(model, x, layer):
    got = {}

    def hook(module, inputs, output):
        got.setdefault("io", (inputs[0].clone(), output.clone()))

    h = model.get_submodule(layer).register_forward_hook(hook)
    with torch.no_grad():
        model.eval()(x)
    h.remove()
    return got["io"]


def _check(data, inp, out, knots):
    assert data.n_inputs == inp.numel() == int(data.hist_counts.sum())
    v = inp.reshape(-1).double()
    edges = [-np.inf, *knots, np.inf]
    expect = [int(((v >= lo) & (v < hi)).sum()) for lo, hi in zip(edges[:-1], edges[1:])]
    assert data.segment_counts.tolist() == expect and sum(expect) == inp.numel()
    assert data.segment_shares.sum() == pytest.approx(1.0)
    energy = inp[0].double().pow(2).mean(dim=(1, 2))
    assert data.energies == sorted(data.energies, reverse=True)
    assert data.energies[0] == pytest.approx(float(energy.max()))
    for j, c in enumerate(data.channels):
        np.testing.assert_allclose(data.before[j], inp[0, c].numpy())
        np.testing.assert_allclose(data.after[j], out[0, c].numpy())


def test_features_of_a_real_run(tmp_path):
    run = shared_run("small")
    ckpt = load_checkpoint(run / "last")
    model = build_model(ckpt)
    img = load_image(digit_png(tmp_path / "d.png", 3)[0], preprocess_from(ckpt.model_config, ckpt.state))
    fig, data = plot_features(model, img.tensor, "features.5", top_k=4, display=img.display)
    inp, out = _captured(model, img.tensor, "features.5")
    assert data.knots == (-3.0, 0.0, 3.0) and data.kind == "RepAct" and len(data.channels) == 4
    _check(data, inp, out, data.knots)
    save_figure(fig, tmp_path / "features.pdf")
    assert_picture(tmp_path / "features.pdf")


def test_features_of_a_torchvision_model_default_layer(tmp_path):
    torch.manual_seed(0)
    model = create_model("resnet18", num_classes=10)
    x = torch.randn(2, 3, 32, 32)
    data = feature_data(model, x, top_k=3)
    assert data.layer == "relu" and data.knots == (0.0,)  # the first activation: the stem's in-place ReLU
    model.relu.inplace = False
    inp, out = _captured(model, x, "relu")
    _check(data, inp, out, (0.0,))
    assert data.segments == ["(-inf, 0)", "[0, inf)"]
    assert data.n_inputs == 2 * 64 * 16 * 16


def test_segment_counts_put_a_knot_in_the_segment_it_starts():
    assert segment_counts(torch.tensor([-3.0, -3.0001, 0.0, 2.999, 3.0, 7.0]), (-3.0, 0.0, 3.0)).tolist() == [1, 1, 2, 2]


def test_unknown_layer_names_the_activation_layers():
    with pytest.raises(ValueError, match="features.2, features.5, features.8"):
        feature_data(build_model(shared_run("small") / "last"), torch.zeros(1, 1, 8, 8), "features.99")
    with pytest.raises(ValueError, match="top_k"):
        feature_data(nn.Sequential(nn.ReLU()), torch.zeros(1, 1, 2, 2), top_k=0)
