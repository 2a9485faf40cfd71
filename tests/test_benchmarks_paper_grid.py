"""benchmarks/bench_paper_grid.py's parts: the synthetic CIFAR-100 folder reads as the real one,
and the per-run estimate follows from a run's metrics."""

import importlib.util
from pathlib import Path

import pytest

from repact.data.arrays import load_cifar_arrays

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_paper_grid.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_paper_grid", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_synthetic_cifar100_loads_through_repacts_reader(bench, tmp_path):
    root = bench.write_synthetic_cifar100(tmp_path, train=250, val=120, seed=3)
    xt, yt, xv, yv, classes = load_cifar_arrays("cifar100", root, download=False)
    assert tuple(xt.shape) == (250, 3, 32, 32) and tuple(xv.shape) == (120, 3, 32, 32)
    assert len(classes) == 100 and int(yt.max()) == 99 and int(yv.min()) == 0
    assert int(xt.float().std()) > 50  # random pixels, not a constant image


def test_rates_and_estimate_from_a_metrics_file(bench, tmp_path):
    csv = tmp_path / "metrics.csv"
    # the second epoch: 3200 training images at 800 img/s (4 s), 1280 val images in the 2 s left
    csv.write_text("epoch,train_images,train_images_per_s,val_images,epoch_time_s\n"
                   "1,3200,100.0,1280,60.0\n"
                   "2,3200,800.0,1280,6.0\n")
    rates = bench.run_rates(csv)
    assert rates["train_images_per_s"] == 800.0
    assert rates["val_images_per_s"] == pytest.approx(640.0)
    # 150 epochs x (50,000 / 800 + 10,000 / 640) s
    assert bench.estimate_run_h(rates, 150) == pytest.approx(150 * (62.5 + 15.625) / 3600)
