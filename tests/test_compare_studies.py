"""The study grids under configs/studies/: every cell resolves, the CIFAR-10 tables follow the study's
rules, the recipe's BatchNorm momentum reaches every BatchNorm, and a grid file runs through the CLI."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import yaml
from torch import nn

from repact.cli import main
from repact.data import DataInfo
from repact.train import TrainConfig
from repact.train.compare import Grid, _config_for, load_grid_file, markdown_table, summarize_grid
from repact.train.config import RESUME_MAY_CHANGE, ConfigError, resolve_config
from repact.train.setup import build_model_for
from train_fixtures import write_image_folder

STUDIES = Path(__file__).resolve().parents[1] / "configs" / "studies"
GRIDS = sorted(STUDIES.glob("*.yaml"))
CIFAR10 = {"cifar10-mnv3s": ["hardswish", "relu", "repact", "repact_bn"],
           "cifar10-mnv3s-extra": ["hardswish", "repact_softmax", "acon_c"],
           "cifar10-shufflenet": ["hardswish", "relu", "repact", "repact_bn"]}
PAPER = ("cifar100-paper", "imagenet100-paper")
FEWBIT = "cifar10-mnv3s-fewbit"  # study (a)'s RepAct-I cell, scaled down, run per --backward-bits


def _grid(path: Path) -> Grid:
    return Grid(**load_grid_file(path))


def test_the_study_grids_are_there():
    assert {p.stem for p in GRIDS} == {*CIFAR10, *PAPER, FEWBIT}


@pytest.mark.parametrize("path", GRIDS, ids=lambda p: p.stem)
def test_every_cell_of_every_study_grid_resolves(path, tmp_path):
    grid = _grid(path)
    configs = [_config_for(grid, tmp_path, cell, {}) for cell in grid.cells()]
    assert len(configs) == len(grid.acts) * len(grid.models) * len(grid.datasets) * len(grid.seeds)
    assert len(grid.seeds) >= 3 and grid.baseline in grid.acts
    text = path.read_text()
    assert "wall time" in text.lower()  # each file states its cost (measured or estimated)
    if path.stem in PAPER:
        for cfg in configs:
            assert (cfg.recipe, cfg.img_size, cfg.epochs, cfg.batch_size, cfg.augment) == \
                ("repact-paper", 224, 150, 32, "repact-paper")
        assert "estimate" in text.lower()


@pytest.mark.parametrize("name", sorted(CIFAR10))
def test_cifar10_study_rules(name, tmp_path):
    grid = _grid(STUDIES / f"{name}.yaml")
    assert grid.acts == CIFAR10[name] and grid.datasets == ["imagefolder"] and grid.seeds == [0, 1, 2]
    cfgs = [_config_for(grid, tmp_path, cell, {}) for cell in grid.cells()]
    recipe = {k: v for k, v in cfgs[0].as_dict().items() if k not in ("act", "seed", "out")}
    for cfg in cfgs:  # one recipe for every activation and seed
        assert {k: v for k, v in cfg.as_dict().items() if k not in ("act", "seed", "out")} == recipe
    c = cfgs[0]
    assert c.epochs >= 15 and c.img_size == 32 and c.augment == "crop-flip" and c.train_subset is not None
    assert c.train_subset % 10 == 0 and c.bn_momentum == 0.1 and c.data_dir.endswith("cifar10-jpeg")
    # the extra grid shares the main grid's recipe, so in grid (a)'s --out it reuses (a)'s HardSwish runs
    if name == "cifar10-mnv3s-extra":
        main_grid = _grid(STUDIES / "cifar10-mnv3s.yaml")
        assert grid.train == main_grid.train and grid.models == main_grid.models


def test_the_few_bit_grid_is_study_a_scaled_down(tmp_path):
    small, full = _grid(STUDIES / f"{FEWBIT}.yaml"), _grid(STUDIES / "cifar10-mnv3s.yaml")
    assert small.acts == ["repact"] and small.models == full.models and small.seeds == [0, 1, 2]
    scaled = {"train_subset", "epochs", "limit_val_batches"}
    assert {k: v for k, v in small.train.items() if k not in scaled} == \
        {k: v for k, v in full.train.items() if k not in scaled}
    assert small.train["train_subset"] < full.train["train_subset"] and small.train["epochs"] < full.train["epochs"]


def test_study_recipe_sets_the_momentum_of_every_batchnorm():
    info = DataInfo("imagefolder", 10, 3, 32)
    grid = _grid(STUDIES / "cifar10-mnv3s.yaml")
    cfg = resolve_config({}, {**grid.train, "model": "mobilenet_v3_small", "act": "repact_bn",
                              "dataset": "imagefolder"})
    model, _ = build_model_for(cfg, info)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    inner = [m for m in norms if isinstance(m, nn.BatchNorm1d)]  # RepAct-III's own statistics
    assert len(inner) == 23 and all(m.momentum == 0.1 for m in norms)
    plain, _ = build_model_for(TrainConfig(model="mobilenet_v3_small", act="repact_bn", dataset="imagefolder"), info)
    conv_norms = [m for m in plain.modules() if isinstance(m, nn.BatchNorm2d)]
    assert conv_norms and all(m.momentum == 0.01 for m in conv_norms)  # torchvision's MobileNetV3 default
    assert "bn_momentum" not in RESUME_MAY_CHANGE
    for bad in (0, 1.5, -0.1):
        with pytest.raises(ConfigError, match=r"bn_momentum must lie in \(0, 1\]"):
            resolve_config({}, {"bn_momentum": bad})


def test_a_study_grid_file_runs_through_the_cli(tmp_path, capsys):
    """The CIFAR-10 grid file as given, on a small image folder, with the budget cut for a test."""
    root = write_image_folder(tmp_path / "imgs", classes=tuple(f"c{i}" for i in range(10)), per_class=3,
                              val_per_class=2, size=32)
    out = tmp_path / "study"
    rc = main(["compare", "--grid", str(STUDIES / "cifar10-mnv3s.yaml"), "--data-dir", str(root),
               "--acts", "hardswish,repact_bn", "--seeds", "0", "--epochs", "1", "--train-subset", "20",
               "--batch-size", "10", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc == 0 and "| imagefolder | mobilenet_v3_small | repact_bn |" in text
    saved = yaml.safe_load((out / "runs" / "imagefolder" / "mobilenet_v3_small" / "repact_bn" / "seed0"
                            / "config.yaml").read_text())
    assert (saved["bn_momentum"], saved["img_size"], saved["augment"], saved["train_subset"]) == \
        (0.1, 32, "crop-flip", 20)
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert [r["act"] for r in runs] == ["hardswish", "repact_bn"] and all(r["status"] == "done" for r in runs)


DOCS = Path(__file__).resolve().parents[1] / "docs"
PUBLISHED = sorted(p.parent.name for p in (DOCS / "results").glob("*/runs.csv"))


def _published_records(folder: Path) -> list[dict]:
    """runs.csv of a published study, typed as compare's records are."""
    ints, texts = {"seed", "best_epoch", "params", "epochs_done"}, {"dataset", "model", "act", "status", "run_dir"}
    with open(folder / "runs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: (v if k in texts else None if v == "" else int(v) if k in ints else float(v)) for k, v in r.items()}
            for r in rows]


def _table_lines(markdown: str) -> str:
    return "\n".join(line for line in markdown.splitlines() if line.startswith("|"))


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_tables_are_what_their_runs_give(name):
    """docs/results/<grid>/compare*.md and the tables of docs/results.md are recomputed from the
    published runs.csv: every cell of the grid ran, and no figure was typed by hand."""
    folder = DOCS / "results" / name
    grid = _grid(STUDIES / f"{name}.yaml")
    records = _published_records(folder)
    cells = {(r["dataset"], r["model"], r["act"], r["seed"]) for r in records if r["status"] == "done"}
    assert cells == set(grid.cells()), "the published grid is not complete"
    results_md = (DOCS / "results.md").read_text(encoding="utf-8")
    tables = sorted(folder.glob("compare*.md"))
    assert folder / "compare.md" in tables
    for path in tables:
        baseline = path.stem.removeprefix("compare_vs_") if path.stem != "compare" else grid.baseline
        g = Grid(**{**load_grid_file(STUDIES / f"{name}.yaml"), "baseline": baseline})
        table = _table_lines(markdown_table(g, summarize_grid(g, records)))
        assert table == _table_lines(path.read_text(encoding="utf-8")), path.name
        if path.stem == "compare":
            assert table in results_md, f"docs/results.md does not hold {name}'s table as compare gives it"
