"""Gradient magnitudes every few steps (grads.jsonl): they average to the per-epoch means, survive a
resume without duplicates, and plot_grads draws exactly them."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from analysis_fixtures import assert_picture, shared_run, train_run
from repact.analysis.figures import save_figure
from repact.analysis.grads import GRAD_KEYS, grad_series, plot_grads
from repact.train.pictures import POINTS_PER_EPOCH


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_step_records_average_to_the_epoch_means():
    run = shared_run("small")  # 3 epochs of 3 steps: one record per step
    recs, metrics = _jsonl(run / "grads.jsonl"), _jsonl(run / "metrics.jsonl")
    assert [(r["epoch"], r["step"]) for r in recs] == [(e, s) for e in (1, 2, 3) for s in (1, 2, 3)]
    assert [r["global_step"] for r in recs] == list(range(1, 10))
    by_epoch = defaultdict(list)
    for r in recs:
        by_epoch[r["epoch"]].append(r)
    for m in metrics:
        for k in GRAD_KEYS:
            assert np.mean([r[k] for r in by_epoch[m["epoch"]]]) == pytest.approx(m[f"grad_{k}"], rel=1e-5)


def test_long_epochs_are_recorded_every_n_steps(tmp_path):
    run = train_run(tmp_path / "r", "hardswish", epochs=1, limit=2 * POINTS_PER_EPOCH + 3)
    recs = _jsonl(run / "grads.jsonl")
    steps = 2 * POINTS_PER_EPOCH + 3
    assert [r["step"] for r in recs] == [*range(2, steps, 2), steps]  # every 2 steps, and the last
    mean = sum(r["first_conv"] * (r["step"] - p) for r, p in zip(recs, [0] + [r["step"] for r in recs[:-1]])) / steps
    assert mean == pytest.approx(_jsonl(run / "metrics.jsonl")[0]["grad_first_conv"], rel=1e-5)


def test_a_resumed_run_continues_the_trace(tmp_path):
    from repact.train import TrainConfig, train

    run = train_run(tmp_path / "r", "repact", epochs=2, limit=2)
    first = _jsonl(run / "grads.jsonl")
    with open(run / "grads.jsonl", "a") as fh:  # a killed run's records of an unfinished epoch 3
        fh.write(json.dumps({**first[-1], "epoch": 3, "step": 1, "global_step": 5}) + "\n")
    cfg = TrainConfig(model="small_cnn", act="repact", dataset="digits", epochs=3, batch_size=32, limit_batches=2,
                      quiet=True, out=str(run), model_kwargs={"width": 8})
    train(cfg, resume=run, keep_model=False)
    recs = _jsonl(run / "grads.jsonl")
    assert [(r["epoch"], r["step"]) for r in recs] == [(e, s) for e in (1, 2, 3) for s in (1, 2)]
    assert recs[:4] == first


def test_plot_grads_overlays_runs_with_their_recorded_values(tmp_path):
    runs = [shared_run("small"), shared_run("hardswish")]
    fig, data = plot_grads(runs, ["repact", "hardswish"])
    for s, run in zip(data.runs, runs):
        recs = _jsonl(run / "grads.jsonl")
        assert s.x.tolist() == [r["epochs"] for r in recs]
        for k in GRAD_KEYS:
            assert s.values[k].tolist() == [r[k] for r in recs]
        assert s.layers == {"first_conv": "features.0", "last_conv": "features.6", "first_bn": "features.1",
                            "last_bn": "features.7"}
    assert len(fig.axes) == 4 and len(fig.axes[0].get_lines()) == 2
    save_figure(fig, tmp_path / "grads.png")
    assert_picture(tmp_path / "grads.png")
    with pytest.raises(ValueError, match="one label per run"):
        plot_grads(runs, ["only one"])


def test_runs_without_a_trace_use_the_epoch_means(tmp_path):
    import shutil

    run = shutil.copytree(shared_run("mnv3"), tmp_path / "old")
    (run / "grads.jsonl").unlink()
    s = grad_series(run)
    metrics = _jsonl(run / "metrics.jsonl")
    assert s.source.endswith("metrics.jsonl") and s.x.tolist() == [1.0, 2.0]
    assert s.values["last_bn"].tolist() == [m["grad_last_bn"] for m in metrics]
    assert s.layers["first_conv"] == "features.0.0"
