"""Runs are never lost or mixed: resume where the user points, one process per folder, replacing
runs atomically, only finite checkpoints, and a full disk that keeps the last good checkpoint.

Every test drives the real command line (``repact.cli.main`` in-process, or ``python -m repact``
in a subprocess where a process must be killed, hold a lock, or run under an OS limit).
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from repact.checkpoint import load_checkpoint
from train_fixtures import FAST, cli_env as _env, run_main, tree_digest

#: a run that trains until it is killed (about a second per epoch here)
LONG = ["--epochs", "1000", "--batch-size", "8", "--limit-batches", "150", "--quiet"]


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    rc, out, err = run_main(capsys, *argv)
    return rc, out, " ".join(err.split())


def _start(*argv: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "repact", *argv], env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def _wait_for(pred, proc: subprocess.Popen, what: str, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while not pred():
        if proc.poll() is not None:
            pytest.fail(f"the training process ended before {what}: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            proc.kill()
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.005)


def _kill(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)


def _asides(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(f".{folder.name}.repact-"))


def _last_epoch(run: Path) -> int:
    return int(json.loads((run / "last.json").read_text())["state"]["epoch"])


def assert_one_run(run: Path, act: str | None = None) -> dict:
    """Every file of ``run`` belongs to the same run: config, checkpoints, summary and logs agree."""
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    assert Path(cfg["out"]).resolve() == run.resolve()
    ident = {k: cfg[k] for k in ("act", "seed", "model", "dataset", "lr")}
    if act is not None:
        assert cfg["act"] == act
    last = json.loads((run / "last.json").read_text())["state"]
    assert {k: last["config"][k] for k in ident} == ident
    if (run / "best.json").exists():
        best = json.loads((run / "best.json").read_text())["state"]
        assert {k: best["config"][k] for k in ident} == ident and best["epoch"] <= last["epoch"]
    summary = json.loads((run / "summary.json").read_text())
    assert (summary["act"], summary["seed"]) == (ident["act"], ident["seed"])
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    # a process killed between its log line and its checkpoint leaves one line more (a resume drops it)
    assert epochs in (list(range(1, last["epoch"] + 1)), list(range(1, last["epoch"] + 2)))
    acts = [json.loads(x)["epoch"] for x in (run / "act_params.jsonl").read_text().splitlines()]
    assert acts[: last["epoch"] + 1] == list(range(last["epoch"] + 1))
    history = load_checkpoint(run / "last").state["history"]
    assert [h["epoch"] for h in history] == list(range(1, last["epoch"] + 1))
    return cfg


# ------------------------------------------------------------------------------------------------
# 1. --resume DIR continues in DIR, wherever the run was moved, copied or reached from
# ------------------------------------------------------------------------------------------------


def test_resume_continues_in_the_folder_named_wherever_it_moved(tmp_path, capsys, monkeypatch):
    old = tmp_path / "a"
    assert _run(capsys, "train", *FAST, "--out", str(old))[0] == 0
    moved = tmp_path / "moved" / "b"
    moved.parent.mkdir()
    os.rename(old, moved)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    rc, out, err = _run(capsys, "train", "--resume", os.path.join("..", "moved", "b"), "--epochs", "2")
    assert rc == 0, err
    assert not old.exists() and not (elsewhere / "runs").exists() and list(elsewhere.iterdir()) == []
    assert _last_epoch(moved) == 2
    assert_one_run(moved)
    # a copy reached by an absolute path continues in the copy; the original is not touched
    copy = tmp_path / "copy"
    shutil.copytree(moved, copy)
    before = tree_digest(moved)
    assert _run(capsys, "train", "--resume", str(copy), "--epochs", "3")[0] == 0
    assert tree_digest(moved) == before and _last_epoch(copy) == 3
    assert_one_run(copy)
    assert json.loads((copy / "summary.json").read_text())["run_dir"] == str(copy)


# ------------------------------------------------------------------------------------------------
# 2. --resume A --out B: a copy of A continues in B; B's own run or files are never mixed in
# ------------------------------------------------------------------------------------------------


def test_resume_into_another_folder_copies_the_run_or_refuses(tmp_path, capsys):
    a, b, new, foreign = (tmp_path / n for n in ("a", "b", "new", "foreign"))
    assert _run(capsys, "train", *FAST, "--act", "repact", "--out", str(a))[0] == 0
    assert _run(capsys, "train", *FAST, "--act", "relu", "--out", str(b))[0] == 0
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    digests = {p: tree_digest(p) for p in (a, b, foreign)}

    rc, _, err = _run(capsys, "train", "--resume", str(a), "--out", str(b), "--epochs", "2")
    assert rc == 2 and str(b) in err and "--overwrite" in err and "Traceback" not in err
    for flags in ([], ["--overwrite"]):
        rc, _, err = _run(capsys, "train", "--resume", str(a), "--out", str(foreign), "--epochs", "2", *flags)
        assert rc == 2 and "notes.txt" in err and "did not write" in err
    assert {p: tree_digest(p) for p in digests} == digests

    assert _run(capsys, "train", "--resume", str(a), "--out", str(new), "--epochs", "2")[0] == 0
    assert _run(capsys, "train", "--resume", str(a), "--out", str(b), "--epochs", "2", "--overwrite")[0] == 0
    assert tree_digest(a) == digests[a]
    first = json.loads((a / "metrics.jsonl").read_text().splitlines()[0])
    for run in (new, b):
        assert_one_run(run, act="repact")
        rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["epoch"] for r in rows] == [1, 2] and rows[0] == first  # A's epoch, then its continuation
    # both copies continued A exactly the same way
    ka, kb = load_checkpoint(new / "last"), load_checkpoint(b / "last")
    assert all(torch.equal(ka.model_state[k], kb.model_state[k]) for k in ka.model_state)
    # resuming in place together with --overwrite is a contradiction
    rc, _, err = _run(capsys, "train", "--resume", str(a), "--overwrite")
    assert rc == 2 and "--overwrite" in err and tree_digest(a) == digests[a]


# ------------------------------------------------------------------------------------------------
# 3. one process per run folder: an OS lock that dies with its process
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_folder_in_use_is_refused_at_once_and_freed_when_its_process_dies(tmp_path, capsys):
    grid = tmp_path / "grid"
    cell = grid / "runs" / "digits" / "small_cnn" / "repact" / "seed0"
    proc = _start("train", *LONG, "--act", "repact", "--seed", "0", "--out", str(cell))
    try:
        _wait_for(lambda: (cell / "config.yaml").exists(), proc, "the run started")
        for argv in (["train", *FAST, "--out", str(cell)], ["train", *FAST, "--out", str(cell), "--overwrite"],
                     ["compare", "--acts", "repact", "--seeds", "0", *FAST[:-1], "--out", str(grid)]):
            t0 = time.perf_counter()
            rc, _, err = _run(capsys, *argv)
            assert rc == 1 and "is in use by another process" in err and str(cell) in err, err
            assert "Traceback" not in err and time.perf_counter() - t0 < 60
            assert proc.poll() is None  # the running process was not disturbed
        _wait_for(lambda: (cell / "last.safetensors").exists(), proc, "the first checkpoint")
        rc, _, err = _run(capsys, "train", "--resume", str(cell))
        assert rc == 1 and "in use" in err
        # with a checkpoint there, compare still names the lock, not the other settings of the run in progress
        rc, _, err = _run(capsys, "compare", "--acts", "repact", "--seeds", "0", *FAST[:-1], "--out", str(grid))
        assert rc == 1 and "is in use by another process" in err and str(cell) in err, err
    finally:
        _kill(proc)
    # the lock died with the process: the run resumes at once, no stale marker to clear
    assert not [p for p in cell.iterdir() if "lock" in p.name]
    rc, out, err = _run(capsys, "train", "--resume", str(cell), "--epochs", str(_last_epoch(cell) + 1))
    assert rc == 0, err
    assert_one_run(cell, act="repact")


# ------------------------------------------------------------------------------------------------
# 4. --overwrite killed at any moment: the old run or the new one, never a mix
# ------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_overwrite_killed_before_its_first_checkpoint_leaves_the_old_run(tmp_path, capsys):
    run = tmp_path / "run"
    assert _run(capsys, "train", *FAST, "--act", "repact", "--out", str(run))[0] == 0
    before = tree_digest(run)
    proc = _start("train", *LONG, "--act", "relu", "--out", str(run), "--overwrite")
    try:
        _wait_for(lambda: any((tmp_path / n / "config.yaml").exists() for n in _asides(run)), proc,
                  "the new run was being built aside")
    finally:
        _kill(proc)
    assert tree_digest(run) == before  # the old run, byte for byte
    assert_one_run(run, act="repact")
    # killed right after its first checkpoint: the new run, whole
    proc = _start("train", *LONG, "--act", "relu", "--out", str(run), "--overwrite")
    try:
        _wait_for(lambda: yaml.safe_load((run / "config.yaml").read_text())["act"] == "relu", proc, "the swap")
    finally:
        _kill(proc)
    assert_one_run(run, act="relu")
    assert _last_epoch(run) >= 1
    # the next process to lock the folder removes what the killed ones left aside
    assert _run(capsys, "train", "--resume", str(run), "--epochs", str(_last_epoch(run)))[0] == 0
    assert not _asides(run)


# ------------------------------------------------------------------------------------------------
# 5 and 7. a checkpoint is good only if every weight is finite; a run that never finished an
# epoch leaves nothing to keep, and the next train into its folder starts afresh
# ------------------------------------------------------------------------------------------------


# --lr 2 diverges slowly (on an AVX2 machine a weight turns NaN at an epoch's end first, on an AVX-512 one
# the loss in a step); --lr 1e20 makes the second step's loss non-finite on any machine
@pytest.mark.parametrize("lr, warmup", [("2", "3"), ("1e20", "0")])
def test_divergence_checks_the_weights_and_keeps_no_nan_checkpoint(tmp_path, capsys, lr, warmup):
    run = tmp_path / "run"
    rc, _, err = _run(capsys, "train", "--lr", lr, "--warmup-epochs", warmup, "--epochs", "3", "--quiet",
                      "--out", str(run))
    # which turns non-finite first, the loss in a step or a weight at the epoch's end, depends on the CPU's
    # floating-point path (it differs between AVX2 and AVX-512 machines): either message is the property
    assert rc == 1 and "non-finite" in err and "NaN or Inf" in err and "there is no checkpoint" in err, err
    assert "Traceback" not in err and "\n" not in err.strip(), err
    assert not list(run.glob("*.safetensors"))  # no checkpoint holding NaN was kept
    # point 7: that folder holds nothing to lose: --resume says how to go on, and a new train just starts
    rc, _, err = _run(capsys, "train", "--resume", str(run))
    assert rc == 2 and "never finished an epoch" in err and f"--out {run}" in err
    rc, out, err = _run(capsys, "train", *FAST, "--out", str(run))
    assert rc == 0 and "starting afresh" in out, err
    ck = load_checkpoint(run / "last")
    assert all(torch.isfinite(t).all() for t in ck.model_state.values())
    assert_one_run(run)


def test_a_run_killed_in_its_first_epoch_or_failing_on_its_data_is_restarted(tmp_path, capsys):
    run = tmp_path / "run"
    proc = _start("train", *LONG, "--out", str(run))
    try:
        _wait_for(lambda: (run / "config.yaml").exists(), proc, "the run started")
    finally:
        _kill(proc)
    assert not (run / "last.safetensors").exists()
    rc, out, err = _run(capsys, "train", *FAST, "--out", str(run))
    assert rc == 0 and "starting afresh" in out, err
    assert_one_run(run)
    # bad data: nothing is created at all
    rc, _, err = _run(capsys, "train", *FAST, "--dataset", "cifar10", "--data-dir", str(tmp_path / "none"),
                      "--out", str(tmp_path / "r2"))
    assert rc == 2 and not (tmp_path / "r2").exists()


# ------------------------------------------------------------------------------------------------
# 11. a full disk, or a file the OS refuses to grow: the path is named, the last good checkpoint kept
# ------------------------------------------------------------------------------------------------


def _check_write_failure(proc_rc: int, err: str, run: Path, before: dict, epoch: int) -> None:
    assert proc_rc == 1, err
    assert "Traceback" not in err and err.count("\n") == 1 and err.startswith("repact train: error: cannot write")
    assert str(run) in err and "The last good checkpoint stays at" in err
    ck = load_checkpoint(run / "last")
    assert ck.state["epoch"] == epoch
    assert all(torch.isfinite(t).all() for t in ck.model_state.values())
    for name in ("last.safetensors", "last.json", "best.safetensors", "best.json"):
        assert tree_digest(run)[name] == before[name], name
    assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp")]


def _unshare_works() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    return probe.returncode == 0


def test_a_full_disk_names_the_path_and_keeps_the_last_checkpoint(tmp_path, capsys):
    """A real ENOSPC: the run lives on a 4 MiB tmpfs (mounted in a private mount namespace)."""
    if not _unshare_works():
        pytest.skip("no unprivileged mount namespace here (unshare -rm); the RLIMIT_FSIZE test covers the write path")
    src = tmp_path / "src"
    assert _run(capsys, "train", *FAST, "--out", str(src))[0] == 0
    mnt, after = tmp_path / "mnt", tmp_path / "after"
    mnt.mkdir()
    fill = ("import os,sys; s=os.statvfs(sys.argv[1]); "
            "open(os.path.join(sys.argv[1], 'filler'), 'wb').write(bytes(s.f_bavail * s.f_frsize - 300_000))")
    script = (f"set -e; mount -t tmpfs -o size=4m none {mnt}; cp -a {src} {mnt}/run; "
              f"{sys.executable} -c \"{fill}\" {mnt}; "
              f"{sys.executable} -m repact train --resume {mnt}/run --epochs 2 > {tmp_path}/out 2> {tmp_path}/err "
              f"|| echo $? > {tmp_path}/rc; rm {mnt}/filler; cp -a {mnt}/run {after}")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=_env(), capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    err = (tmp_path / "err").read_text()
    assert "No space left on device" in err, err
    rc = int((tmp_path / "rc").read_text()) if (tmp_path / "rc").exists() else 0
    _check_write_failure(rc, err.replace(f"{mnt}/run", str(after)), after, tree_digest(src), epoch=1)


def test_a_write_the_os_refuses_names_the_path_and_keeps_the_last_checkpoint(tmp_path, capsys):
    """RLIMIT_FSIZE makes the kernel refuse to grow any file past 200 kB (EFBIG), as a full disk would."""
    run = tmp_path / "run"
    assert _run(capsys, "train", *FAST, "--out", str(run))[0] == 0
    before = tree_digest(run)

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    proc = subprocess.run([sys.executable, "-m", "repact", "train", "--resume", str(run), "--epochs", "2", "--quiet"],
                          env=_env(), capture_output=True, text=True, timeout=600, preexec_fn=limit)
    assert "File too large" in proc.stderr, proc.stderr
    _check_write_failure(proc.returncode, proc.stderr, run, before, epoch=1)
    # the run continues once files can be written again
    assert _run(capsys, "train", "--resume", str(run), "--epochs", "2")[0] == 0
    assert _last_epoch(run) == 2
    assert_one_run(run)
