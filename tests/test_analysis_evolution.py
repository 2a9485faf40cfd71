"""repact.analysis.evolution: the drawn shapes are the run's recorded parameters, epoch by epoch."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from analysis_fixtures import assert_picture, shared_run
from repact.analysis.evolution import evolution_data, load_recorded, plot_evolution
from repact.analysis.figures import save_figure
from repact.analysis.layers import layer_curves
from repact.checkpoint import build_model


def _branch_sum(rec, x):
    """RepAct-I from its recorded numbers, branch by branch (independent of repact's fused form)."""
    w, a = rec["branch_weight"], rec["prelu_weight"]
    return w[0] * x + w[1] * F.relu(x) + w[2] * torch.where(x >= 0, x, a * x) + w[3] * F.hardswish(x)


def test_evolution_data_equals_the_recorded_parameters(tmp_path):
    run = shared_run("small")
    recorded = [json.loads(line) for line in (run / "act_params.jsonl").read_text().splitlines()]
    data = evolution_data(run, points=301)
    assert data.epochs == [r["epoch"] for r in recorded] == [0, 1, 2, 3]
    assert data.layers == list(recorded[0]["layers"]) and len(data.layers) == 3
    x = torch.from_numpy(data.x)
    for r in recorded:
        e = r["epoch"]
        for j, name in enumerate(data.layers):
            rec = r["layers"][name]
            assert data.params[name][e] == rec
            np.testing.assert_allclose(data.curves[name][data.epochs.index(e)], _branch_sum(rec, x).numpy(),
                                       rtol=1e-6, atol=1e-6)
            left = float(_branch_sum(rec, torch.tensor(0.0)) - _branch_sum(rec, torch.tensor(-1.0)))
            assert data.stats[j, data.epochs.index(e)] == pytest.approx(left, rel=1e-6, abs=1e-7)
    # epoch 0 is the initialization (every layer equal), the last epoch is the final model
    assert np.allclose(data.stats[:, 0], data.stats[0, 0])
    last_model = {c.label: c for c in layer_curves(build_model(run / "last"), points=301)}
    for name in data.layers:
        np.testing.assert_allclose(data.curves[name][-1], last_model[name].y.mean(axis=0), rtol=1e-6, atol=1e-6)
    fig, again = plot_evolution(run, points=201)
    assert again.layers == data.layers
    save_figure(fig, tmp_path / "evolution.png")
    assert_picture(tmp_path / "evolution.png")


def test_evolution_of_a_mobilenet_run(tmp_path):
    run = shared_run("mnv3")
    data = evolution_data(run, points=101)
    assert len(data.layers) == 23 and data.epochs == [0, 1, 2] and data.stats.shape == (23, 3)
    # RepAct-III: the recorded BatchNorm running statistics are folded in, as in the final model
    last_model = {c.label: c for c in layer_curves(build_model(run / "last"), points=101)}
    for name in data.layers:
        assert "bn.running_mean" in data.params[name][2]
        np.testing.assert_allclose(data.curves[name][-1], last_model[name].y.mean(axis=0), rtol=1e-5, atol=1e-6)
    assert not np.allclose(data.curves[data.layers[0]][0], data.curves[data.layers[0]][-1])


def test_runs_without_learnable_activations_have_no_evolution():
    with pytest.raises(ValueError, match="no activation parameters"):
        evolution_data(shared_run("hardswish"))


def test_load_recorded_refuses_summaries_and_mismatches():
    from repact import create_act

    m = create_act("repact")
    with pytest.raises(ValueError, match="summary statistics"):
        load_recorded(m, {"type": "RepAct", "branch_weight": {"numel": 1024, "mean": 0.2}})
    with pytest.raises(ValueError, match="does not have"):
        load_recorded(m, {"type": "RepAct", "gamma": 1.0})
    with pytest.raises(ValueError, match="has 4 values"):
        load_recorded(m, {"type": "RepAct", "branch_weight": [1.0, 2.0]})
    copy = load_recorded(m, {"type": "RepAct", "branch_weight": [1.0, 0.0, 0.0, 0.0], "prelu_weight": 0.5})
    assert copy.branch_weight.tolist() == [1.0, 0.0, 0.0, 0.0] and m.branch_weight.tolist() == [0.25] * 4
