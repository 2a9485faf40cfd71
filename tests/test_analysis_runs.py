"""Learning curves of a grid (compare_curves.png): the mean and band are the seeds' recorded curves'."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from analysis_fixtures import assert_picture, train_run
from repact.analysis.runs import compare_curves, plot_compare_curves


@pytest.fixture(scope="module")
def grid_records(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    recs = []
    for act in ("hardswish", "repact"):
        for seed in (0, 1):
            run = train_run(root / f"{act}{seed}", act, epochs=2, limit=2, seed=seed)
            summary = json.loads((run / "summary.json").read_text())
            recs.append({"dataset": "digits", "model": "small_cnn", "act": act, "seed": seed, "status": "done",
                         "run_dir": str(run), "last_acc1": summary["last_acc1"], "best_acc1": summary["best_acc1"]})
    recs.append({"dataset": "digits", "model": "small_cnn", "act": "repact", "seed": 9, "status": "diverged",
                 "run_dir": str(root / "missing"), "last_acc1": None, "best_acc1": None})
    return recs


def test_compare_curves_are_mean_and_std_over_seeds(grid_records):
    data = compare_curves(grid_records)
    assert sorted(data.cells) == [("digits", "small_cnn", "hardswish"), ("digits", "small_cnn", "repact")]
    for (d, m, act), cell in data.cells.items():
        assert cell["seeds"] == [0, 1] and cell["epochs"] == [1, 2]
        runs = [r for r in grid_records if r["act"] == act and r["status"] == "done"]
        for key in ("val_acc1", "train_loss"):
            per_seed = np.array([[json.loads(line)[key] for line in (Path(r["run_dir"]) / "metrics.jsonl")
                                  .read_text().splitlines()] for r in runs])
            np.testing.assert_allclose(cell[key]["runs"], per_seed)
            np.testing.assert_allclose(cell[key]["mean"], per_seed.mean(axis=0))
            np.testing.assert_allclose(cell[key]["std"], per_seed.std(axis=0, ddof=1))


def test_compare_reports_write_the_curves_next_to_the_bar_plot(grid_records, tmp_path):
    from repact.train.compare import Grid, write_reports

    grid = Grid(acts=["hardswish", "repact"], seeds=[0, 1, 9], baseline="hardswish")
    paths = write_reports(grid, grid_records, tmp_path)
    assert paths["curves"] == tmp_path / "compare_curves.png"
    assert_picture(paths["curves"])
    assert_picture(paths["plot"])
    fig, data = plot_compare_curves(grid_records)
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    assert set(lines) == {"hardswish (n=2)", "repact (n=2)"}
    np.testing.assert_allclose(lines["repact (n=2)"].get_ydata(),
                               data.cells[("digits", "small_cnn", "repact")]["val_acc1"]["mean"])
    assert len(ax.collections) == 2  # one band per activation
