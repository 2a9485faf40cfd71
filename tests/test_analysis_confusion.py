"""Confusion matrix and top-k through torchmetrics (repact eval --confusion): they agree with repact's
own evaluation of the same checkpoint."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from analysis_fixtures import assert_picture, shared_run
from repact.analysis.confusion import confusion_data, plot_confusion
from repact.analysis.figures import save_figure
from repact.checkpoint import build_model
from repact.cli import main
from repact.data import build_datasets
from repact.train.evaluate import evaluate

pytest.importorskip("torchmetrics")


def test_confusion_matrix_agrees_with_evaluate(tmp_path):
    model = build_model(shared_run("small") / "last")
    _, val, info = build_datasets("digits")
    loader = DataLoader(val, batch_size=100)
    data = confusion_data(model, loader, info.num_classes, classes=info.classes)
    ref = evaluate(model, loader)
    assert data.n == ref["n"] == int(data.matrix.sum()) == 359
    assert data.matrix.sum(axis=1).tolist() == torch.bincount(val.targets, minlength=10).tolist()
    assert 100.0 * np.trace(data.matrix) / data.n == pytest.approx(ref["acc1"], abs=1e-9)
    assert data.acc1 == pytest.approx(ref["acc1"], abs=1e-4) and data.acc5 == pytest.approx(ref["acc5"], abs=1e-4)
    with torch.no_grad():
        pred = torch.cat([model.eval()(x).argmax(1) for x, _ in loader])
    assert data.matrix[3].tolist() == [int(((val.targets == 3) & (pred == c)).sum()) for c in range(10)]
    save_figure(plot_confusion(data), tmp_path / "cm.png")
    assert_picture(tmp_path / "cm.png")


def test_eval_confusion_flag(tmp_path, capsys):
    run = shared_run("small")
    out = tmp_path / "cm.svg"
    assert main(["eval", str(run), "--confusion", str(out), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["confusion"]["path"] == str(out) and res["confusion"]["n"] == 359
    assert res["confusion"]["acc1"] == pytest.approx(res["results"][0]["acc1"], abs=1e-4)
    assert_picture(out)
    assert main(["eval", str(run), "--confusion", str(tmp_path / "cm.jpg")]) == 2
    assert "--confusion " in (err := " ".join(capsys.readouterr().err.split())) and "unknown picture format .jpg" in err
    assert not (tmp_path / "cm.jpg").exists()
