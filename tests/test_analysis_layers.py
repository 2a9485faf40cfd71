"""repact.analysis.layers and the pictures every run writes: the curves are the deployed functions,
the heatmap holds the effective branch weights, curves.png holds the recorded metrics."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from analysis_fixtures import assert_picture, shared_run
from repact import reparameterize
from repact.analysis.figures import save_figure
from repact.analysis.layers import activation_layers, plot_layers
from repact.analysis.runs import plot_run_curves, run_curves
from repact.checkpoint import build_model
from repact.models import create_model
from repact.train.optim import activation_modules


def _check_against_deploy_form(model, data):
    acts = activation_modules(model)
    assert [c.label for c in data.curves] == [n for n, _ in acts]
    deployed = dict(activation_modules(reparameterize(model, inplace=False)))
    for c in data.curves:
        x = torch.from_numpy(c.x)
        with torch.no_grad():
            y = deployed[c.label].double().eval()(x.reshape(-1, 1, 1, 1).expand(-1, c.channels, 1, 1).clone())
        np.testing.assert_allclose(c.y, y.reshape(-1, c.channels).T.numpy(), rtol=1e-6, atol=1e-6)
        assert c.knots == (-3.0, 0.0, 3.0)


def test_layers_of_a_real_run_are_its_deployed_functions(tmp_path):
    run = shared_run("small")
    model = build_model(run / "last")
    fig, data = plot_layers(model)
    _check_against_deploy_form(model, data)
    assert data.branches == ["identity", "relu", "prelu", "hardswish"]
    for j, (name, m) in enumerate(activation_modules(model)):
        np.testing.assert_allclose(data.branch_weights[:, j], m.branch_weight.detach().double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(data.reference.y[0], torch.nn.functional.hardswish(torch.from_numpy(data.reference.x)))
    save_figure(fig, tmp_path / "layers.svg")
    assert_picture(tmp_path / "layers.svg")


def test_every_run_writes_curves_and_activations_pictures():
    run = shared_run("small")
    assert_picture(run / "curves.png")
    assert_picture(run / "activations.png")
    data = run_curves(run)
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert data.epochs == [1, 2, 3]
    for key in ("train_loss", "val_loss", "train_acc1", "val_acc1"):
        assert data.values[key] == [r[key] for r in recs]
    fig, again = plot_run_curves(run)
    lines = fig.axes[1].get_lines()
    assert list(lines[1].get_ydata()) == again.values["val_acc1"]


def test_layers_of_a_torchvision_model_softmaxed_weights():
    torch.manual_seed(3)
    model = create_model("mobilenet_v3_small", act="repact_softmax", num_classes=10, small_input=True)
    with torch.no_grad():
        for _, m in activation_modules(model):
            m.branch_weight.copy_(torch.randn(4))
            m.prelu_weight.copy_(torch.rand(1))
    fig, data = plot_layers(model, points=201)
    assert len(data.curves) == 23
    _check_against_deploy_form(model, data)
    for j, (_, m) in enumerate(activation_modules(model)):
        np.testing.assert_allclose(data.branch_weights[:, j], torch.softmax(m.branch_weight.detach().double(), 0).numpy(),
                                   rtol=1e-6)
        assert data.branch_weights[:, j].sum() == pytest.approx(1.0)
    assert len(fig.axes) == 23 + 2  # the panels, the heatmap and its colour bar


def test_a_model_with_its_own_activations_draws_torch_layers():
    model = create_model("mobilenet_v3_small", num_classes=10)  # torchvision's own ReLU/HardSwish, in place
    names = [n for n, _ in activation_layers(model)]
    assert names and all(isinstance(model.get_submodule(n), (torch.nn.ReLU, torch.nn.Hardswish)) for n in names)
    fig, data = plot_layers(model, points=101)
    kinds = {c.kind for c in data.curves}
    assert kinds == {"ReLU", "Hardswish"} and data.branch_weights is None
    hs = next(c for c in data.curves if c.kind == "Hardswish")
    np.testing.assert_allclose(hs.y[0], data.reference.y[0])
    assert all(getattr(model.get_submodule(n), "inplace", False) for n in names if "features.0" in n)  # untouched


def test_layers_of_a_mobilenet_run():
    run = shared_run("mnv3")
    model = build_model(run / "last")
    _, data = plot_layers(model, points=201)
    assert len(data.curves) == 23
    _check_against_deploy_form(model, data)
    assert_picture(run / "activations.png")
