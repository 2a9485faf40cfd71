"""Kill a real training process after an epoch's checkpoint, resume it, and get the uninterrupted result."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from repact.checkpoint import load_checkpoint
from repact.train import ConfigError, TrainConfig, config_for_resume, train
from train_fixtures import tree_digest

ARGS = ["--dataset", "digits", "--model", "small_cnn", "--act", "repact", "--epochs", "4", "--batch-size", "16",
        "--limit-batches", "12",
        "--lr", "0.05", "--seed", "3", "--quiet"]
VOLATILE = {"epoch_time_s", "train_images_per_s"}  # wall-clock figures differ between processes


def _cmd(*extra: str) -> list[str]:
    return [sys.executable, "-m", "repact", "train", *ARGS, *extra]


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "2"  # the same thread count in every process: identical float reductions
    return env


def _epoch_of(run: Path) -> int:
    try:
        return int(json.loads((run / "last.json").read_text())["state"]["epoch"])
    except (OSError, ValueError, KeyError):
        return 0


def _history(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k not in VOLATILE} for r in rows]


@pytest.mark.slow
def test_kill_and_resume_matches_uninterrupted_run(tmp_path):
    full, broken = tmp_path / "full", tmp_path / "broken"
    subprocess.run(_cmd("--out", str(full)), check=True, env=_env(), capture_output=True, timeout=600)

    proc = subprocess.Popen(_cmd("--out", str(broken)), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while _epoch_of(broken) < 1 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    killed_at = _epoch_of(broken)
    assert 1 <= killed_at < 4, f"killed after epoch {killed_at}"

    out = subprocess.run([sys.executable, "-m", "repact", "train", "--resume", str(broken), "--quiet"],
                         env=_env(), capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert f"resuming {broken} at epoch {killed_at + 1}" in out.stdout

    a, b = load_checkpoint(full / "last"), load_checkpoint(broken / "last")
    assert a.model_state.keys() == b.model_state.keys()
    for k in a.model_state:
        assert torch.equal(a.model_state[k], b.model_state[k]), k
    for k in a.tensors:  # optimizer momentum buffers
        if k.startswith("state.optimizer"):
            assert torch.equal(a.tensors[k], b.tensors[k]), k
    assert _history(full) == _history(broken)
    sa, sb = (json.loads((p / "summary.json").read_text()) for p in (full, broken))
    assert (sa["best_epoch"], sa["best_acc1"], sa["last_acc1"]) == (sb["best_epoch"], sb["best_acc1"], sb["last_acc1"])
    acts_a = [json.loads(x) for x in (full / "act_params.jsonl").read_text().splitlines()]
    acts_b = [json.loads(x) for x in (broken / "act_params.jsonl").read_text().splitlines()]
    assert acts_a == acts_b and [r["epoch"] for r in acts_b] == [0, 1, 2, 3, 4]


def test_resume_rejects_changed_settings_and_keeps_the_run(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=32, limit_batches=3, quiet=True, out=str(tmp_path / "run"))
    train(cfg)
    before = tree_digest(tmp_path / "run")
    with pytest.raises(ConfigError, match="cannot change 'lr'"):
        config_for_resume(tmp_path / "run", {"lr": 0.5})
    with pytest.raises(ConfigError, match="lr=0.5"):
        train(TrainConfig(**{**cfg.as_dict(), "lr": 0.5}), resume=tmp_path / "run")
    assert tree_digest(tmp_path / "run") == before
    # epochs may grow: training continues from epoch 2
    res = train(config_for_resume(tmp_path / "run", {"epochs": 2}), resume=tmp_path / "run")
    assert [h["epoch"] for h in res.history] == [1, 2] and res.summary["complete"]


def test_resume_of_a_finished_run_changes_nothing(tmp_path):
    cfg = TrainConfig(epochs=1, batch_size=32, limit_batches=2, quiet=True, out=str(tmp_path / "run"))
    train(cfg)
    before = tree_digest(tmp_path / "run")
    res = train(cfg, resume=tmp_path / "run")
    assert res.summary["complete"] and res.summary["epochs_done"] == 1
    after = tree_digest(tmp_path / "run")
    assert {k: v for k, v in after.items() if k != "summary.json"} == {k: v for k, v in before.items()
                                                                          if k != "summary.json"}


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    from repact.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="no last checkpoint"):
        config_for_resume(tmp_path / "empty")


def test_a_run_resumed_with_other_workers_trains_as_the_uninterrupted_one(tmp_path, capsys):
    """Augmentation is drawn per sample from (seed, epoch, index), so --workers may change on --resume.
    (A constant learning rate: a run trained for 1 of 2 epochs, not killed, has the 1-epoch schedule.)"""
    from train_fixtures import run_main, write_image_folder

    root = write_image_folder(tmp_path / "imgs", per_class=8, val_per_class=2, size=16, ext=".jpg")
    args = ["train", "--dataset", "imagefolder", "--data-dir", str(root), "--augment", "crop-flip", "--schedule",
            "constant", "--batch-size", "8", "--seed", "2", "--quiet"]
    assert run_main(capsys, *args, "--epochs", "2", "--workers", "0", "--out", str(tmp_path / "full"))[0] == 0
    assert run_main(capsys, *args, "--epochs", "1", "--workers", "0", "--out", str(tmp_path / "part"))[0] == 0
    rc, _, err = run_main(capsys, "train", "--resume", str(tmp_path / "part"), "--epochs", "2", "--workers", "2",
                          "--quiet")
    assert rc == 0, err
    a, b = load_checkpoint(tmp_path / "full" / "last"), load_checkpoint(tmp_path / "part" / "last")
    assert b.state["epoch"] == 2 and b.state["config"]["workers"] == 2
    assert all(torch.equal(a.model_state[k], b.model_state[k]) for k in a.model_state)
    assert _history(tmp_path / "full") == _history(tmp_path / "part")
