"""`repact train`'s activation options in real processes: stochastic activations (the same seed trains
the same weights bitwise, the p schedule, the closing fine-tuning phase) and the few-bit backward."""

from __future__ import annotations

import json

import pytest
import torch

from repact.checkpoint import load_checkpoint
from train_fixtures import run_cli, run_main

TIMES = ("epoch_time_s", "train_images_per_s", "val_images_per_s")


def _train(out, *extra):
    proc = run_cli("train", "--epochs", "2", "--limit-batches", "3", "--batch-size", "32", "--quiet", "--out", str(out),
                   *extra)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return load_checkpoint(out / "last").model_state, [json.loads(line) for line in
                                                       (out / "metrics.jsonl").read_text().splitlines()]


def _same_run(a, b):
    (wa, ma), (wb, mb) = a, b
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    strip = [{k: v for k, v in r.items() if k not in TIMES} for r in ma], \
        [{k: v for k, v in r.items() if k not in TIMES} for r in mb]
    assert strip[0] == strip[1]


@pytest.mark.slow
def test_stochastic_runs_repeat_bitwise_under_a_seed_and_follow_the_schedule(tmp_path):
    args = ("--act", "stochastic", "--stochastic-p", "0.9:0.1", "--stochastic-finetune", "1", "--seed", "3")
    first = _train(tmp_path / "a", *args)
    _same_run(first, _train(tmp_path / "b", *args))
    other = _train(tmp_path / "c", *args[:-1], "4")
    assert any(not torch.equal(first[0][k], other[0][k]) for k in first[0])
    # p falls linearly over the stochastic epoch's 3 steps (0.9, 0.5, 0.1), then the last epoch trains ReLU only
    hist = first[1]
    assert hist[0]["stochastic_p"] == pytest.approx(0.1)
    assert [h["stochastic_fixed"] for h in hist] == [False, True]


def test_stochastic_options_refuse_bad_values_and_models_without_them(tmp_path, capsys):
    for argv, msg in [
        (("--act", "stochastic", "--stochastic-p", "1.2"), "stochastic_p must be P or START:END with numbers in [0, 1]"),
        (("--act", "stochastic", "--stochastic-p", "a:b"), "got 'a:b'"),
        (("--act", "stochastic", "--stochastic-finetune", "3"), "stochastic_finetune must be from 0 to epochs - 1 (2)"),
        (("--act", "relu", "--stochastic-p", "0.5"), "has no stochastic activation"),
        (("--backward-bits", "3"), "backward_bits must be one of 1, 2, 4"),
        (("--act", "relu", "--backward-bits", "1"), "has no activation with a few-bit backward"),
    ]:
        rc, _, err = run_main(capsys, "train", "--epochs", "3", "--limit-batches", "1", "--out", str(tmp_path / "x"),
                              *argv)
        lines = err.strip().splitlines()
        assert rc == 2 and len(lines) == 1 and msg in lines[0], (argv, err)


@pytest.mark.slow
def test_few_bit_backward_runs_repeat_bitwise(tmp_path):
    few = _train(tmp_path / "few", "--act", "repact", "--seed", "1", "--backward-bits", "4")
    _same_run(few, _train(tmp_path / "few2", "--act", "repact", "--seed", "1", "--backward-bits", "4"))
    assert few[1][-1]["train_loss"] < few[1][0]["train_loss"]
