"""`repact compare` beyond one process (--jobs, --executor submitit), its summary columns and its help."""

from __future__ import annotations

import csv
import json
import re
import shutil
import sys
from pathlib import Path

import pytest

from repact.cli import main
from repact.train.compare import Grid, summarize_grid, write_reports

GRID = ["compare", "--acts", "relu,repact", "--seeds", "0,1", "--epochs", "1", "--batch-size", "32",
        "--limit-batches", "3"]
_TIMING = {"epoch_time_s", "train_images_per_s"}


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        rc = main(list(argv))
    except SystemExit as exc:
        rc = exc.code
    out, err = capsys.readouterr()
    return rc, out, err


def _stats(out) -> list[dict[str, str]]:
    """compare.csv without the timing columns (those differ from run to run)."""
    rows = list(csv.DictReader((out / "compare.csv").open()))
    return [{k: v for k, v in r.items() if k not in _TIMING} for r in rows]


def _cell(out, act: str, seed: int):
    return out / "runs" / "digits" / "small_cnn" / act / f"seed{seed}"


def test_help_shows_95_percent(capsys):
    rc, text, _ = _run(capsys, "compare", "--help")
    assert rc == 0 and "95% CI" in text and "95%%" not in text
    assert "--jobs" in text and "--executor" in text


def test_confidence_intervals_are_clipped_to_0_100(tmp_path):
    grid = Grid(acts=["a", "b"], seeds=[0, 1, 2], baseline="a")
    recs = [{"dataset": "digits", "model": "small_cnn", "act": a, "seed": s, "status": "done", "last_acc1": v,
             "best_acc1": v, "best_epoch": 3, "epoch_time_s": 2.0, "train_images_per_s": 100.0}
            for a, vals in (("a", [100.0, 100.0, 97.0]), ("b", [0.0, 0.5, 4.0])) for s, v in zip(range(3), vals)]
    for r in recs:  # each record's run folder, with the per-epoch log the learning curves read
        r["run_dir"] = str(tmp_path / "runs" / f"{r['act']}{r['seed']}")
        Path(r["run_dir"]).mkdir(parents=True)
        (Path(r["run_dir"]) / "metrics.jsonl").write_text(
            json.dumps({"epoch": 1, "val_acc1": r["last_acc1"], "train_loss": 1.0}) + "\n")
    rows = {r["act"]: r for r in summarize_grid(grid, recs)}
    assert rows["a"]["mean"] + rows["a"]["ci95"] > 100 and rows["a"]["ci_high"] == 100.0
    assert rows["b"]["mean"] - rows["b"]["ci95"] < 0 and rows["b"]["ci_low"] == 0.0
    paths = write_reports(grid, recs, tmp_path)
    md = paths["markdown"].read_text()
    assert "100.00]" in md and "[0.00," in md
    assert "| 3.0 | 2.0 | 100 |" in md  # best epoch, s / epoch, train img/s
    assert paths["curves"].stat().st_size > 0


def _reference_grid(capsys, out) -> list[dict[str, str]]:
    """The grid run in sequence in this process; its summary without the timing columns."""
    rc, text, _ = _run(capsys, *GRID, "--out", str(out))
    assert rc == 0 and text.count("training (1 epochs)") == 4
    md = (out / "compare.md").read_text()
    assert "best-epoch top-1 % (mean ± std)" in md and "s / epoch" in md
    return _stats(out)


@pytest.mark.slow
def test_grid_runs_the_same_in_parallel_processes(tmp_path, capsys):
    out = tmp_path / "grid"
    reference = _reference_grid(capsys, out)
    # two runs lost and one interrupted after its checkpoint: --jobs 2 finishes them, the summary is unchanged
    shutil.rmtree(_cell(out, "relu", 1))
    shutil.rmtree(_cell(out, "repact", 0))
    (_cell(out, "repact", 1) / "summary.json").unlink()
    rc, text, err = _run(capsys, *GRID, "--out", str(out), "--jobs", "2")
    assert rc == 0, err
    assert text.count("finished earlier, skipped") == 1 and "in 2 processes" in text
    assert _stats(out) == reference
    log = (out / "logs" / "digits-small_cnn-repact-seed1.log").read_text()
    # continued from its checkpoint (which had finished its one epoch), not trained again
    assert "training into" not in log and "has finished its 1 epochs" in log
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert len(runs) == 4 and all(r["status"] == "done" for r in runs)
    # the finished grid again, sequentially: nothing to do, same summary
    rc, text, _ = _run(capsys, *GRID, "--out", str(out))
    assert rc == 0 and text.count("finished earlier, skipped") == 4 and _stats(out) == reference


@pytest.mark.slow
def test_grid_runs_the_same_through_submitit(tmp_path, capsys):
    pytest.importorskip("submitit")
    out = tmp_path / "grid"
    reference = _reference_grid(capsys, out)
    # two runs lost: submitit's jobs (its local executor here, SLURM where sbatch exists) redo them
    shutil.rmtree(_cell(out, "relu", 0))
    shutil.rmtree(_cell(out, "repact", 1))
    rc, text, err = _run(capsys, *GRID, "--out", str(out), "--executor", "submitit", "--executor-kw",
                         "cpus_per_task=1", "--executor-kw", "timeout_min=20")
    assert rc == 0, err
    assert "through submitit (local)" in text and text.count("finished earlier, skipped") == 2
    assert _stats(out) == reference
    assert any((out / "submitit").glob("*_submitted.pkl"))
    runs = list(csv.DictReader((out / "runs.csv").open()))
    assert len(runs) == 4 and all(r["status"] == "done" for r in runs)


def test_bad_executor_options(tmp_path, capsys, monkeypatch):
    rc, _, err = _run(capsys, *GRID, "--out", str(tmp_path / "a"), "--jobs", "0")
    assert rc == 2 and "--jobs must be at least 1, got 0" in err
    rc, _, err = _run(capsys, *GRID, "--out", str(tmp_path / "b"), "--executor-kw", "timeout_min=5")
    assert rc == 2 and "add --executor submitit" in err
    monkeypatch.setitem(sys.modules, "submitit", None)  # as on a machine without the package
    rc, _, err = _run(capsys, *GRID, "--out", str(tmp_path / "c"), "--executor", "submitit")
    assert rc == 2 and "pip install 'repact[cluster]'" in err
    assert not (tmp_path / "c" / "runs").exists()
    rc, _, err = _run(capsys, *GRID, "--out", str(tmp_path / "d"), "--executor", "slurm")
    assert rc == 2 and "invalid choice: 'slurm'" in err


def test_out_and_grid_files_that_are_not_a_grid(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    rc, _, err = _run(capsys, *GRID, "--out", str(tmp_path / "file"))
    assert rc == 2 and "--out" in err and "is a file, not a folder" in err
    data = tmp_path / "data"
    (data / "train").mkdir(parents=True)
    (data / "labels.csv").write_text("a,b\n")
    rc, _, err = _run(capsys, *GRID, "--out", str(data))
    assert rc == 2 and "holds files repact compare did not write (labels.csv, train)" in err
    assert sorted(p.name for p in data.iterdir()) == ["labels.csv", "train"]
    for text, words in (("acts: 5\n", ["acts must list names", "[5]"]), ("acts: [relu]\nbaseline: 5\n",
                                                                        ["baseline must be a name", "5"]),
                        ("acts: [relu]\ntrain: [1]\n", ["train must be a mapping"]),
                        ("- relu\n", ["must hold a mapping, not a list"])):
        (tmp_path / "grid.yaml").write_text(text)
        rc, _, err = _run(capsys, "compare", "--grid", str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "g"))
        assert rc == 2 and err.count("\n") == 1 and str(tmp_path / "grid.yaml") in err, err
        for w in words:
            assert w in err, (w, err)
    (tmp_path / "grid.yaml").write_bytes(b"acts: [relu]  # \xff\n")
    rc, _, err = _run(capsys, "compare", "--grid", str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "g"))
    assert rc == 2 and "is not UTF-8 text" in err
    assert not (tmp_path / "g").exists()


def _children(pid: int) -> list[int]:
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


#: what a cell may print before it blocks: its first line (< 400 bytes) and first epoch fit, twelve epochs do not
_LOG_ROOM = 1024
#: epochs of the killed grid: more than a cell gets through before blocking (its first line is >= 180 bytes, an
#: epoch's >= 80, so at most 10 epoch lines fit and an 11th epoch blocks writing its line)
_KILL_EPOCHS = 16


def _gated_log(path: Path) -> int:
    """A FIFO at a cell's log path, filled up to _LOG_ROOM free bytes and never read: the cell
    writing into it blocks once its output passes _LOG_ROOM bytes, so it cannot finish its run
    however fast the machine is. Returns the descriptor holding the FIFO open (it must stay open)."""
    import fcntl
    import os

    os.mkfifo(path)
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK)  # both ends: the cell's open() does not wait
    f_setpipe_sz, f_getpipe_sz = 1031, 1032
    fcntl.fcntl(fd, f_setpipe_sz, 4096)  # one page, the smallest pipe
    filler = fcntl.fcntl(fd, f_getpipe_sz) - _LOG_ROOM
    while filler > 0:
        filler -= os.write(fd, b"#" * min(filler, 4096))
    return fd


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc (Linux)")
def test_killing_compare_stops_its_workers_and_the_rerun_resumes(tmp_path):
    """SIGKILL to `compare --jobs 2` while its two cells run (each past its first checkpoint, held
    there by its log, whatever the machine's speed) and a third waits: both workers end at once,
    the third cell never starts, and the rerun resumes the two from their checkpoints."""
    import os
    import signal
    import subprocess
    import time

    out = tmp_path / "grid"
    argv = [sys.executable, "-m", "repact", "compare", "--acts", "relu,repact,hardswish", "--seeds", "0", "--epochs",
            str(_KILL_EPOCHS), "--batch-size", "32", "--limit-batches", "1", "--out", str(out), "--jobs", "2"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1] / "src"))
    running, queued = ("relu", "repact"), "hardswish"
    log = {a: out / "logs" / f"digits-small_cnn-{a}-seed0.log" for a in (*running, queued)}
    log[queued].parent.mkdir(parents=True)
    gates = [_gated_log(log[a]) for a in running]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not all((_cell(out, a, 0) / "last.safetensors").exists()
                                                      for a in running):
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.2)
        assert all((_cell(out, a, 0) / "last.safetensors").exists() for a in running), "no epoch in 300 s"
        workers = [k for k in _children(proc.pid) if "spawn_main" in Path(f"/proc/{k}/cmdline").read_text()]
        assert len(workers) == 2, workers
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        killed = time.monotonic()
        while time.monotonic() < killed + 30 and any(_alive(w) for w in workers):
            time.sleep(0.05)
        took = time.monotonic() - killed
        # the kernel kills them with their parent (before: a 1 s poll, then up to 20 s of grace)
        assert took < 3, f"the workers outlived their compare process by {took:.1f} s"
    finally:
        if proc.poll() is None:
            proc.kill()
        for fd in gates:
            os.close(fd)
    assert not log[queued].exists() and not _cell(out, queued, 0).exists()  # the waiting cell never started
    done = {a: len((_cell(out, a, 0) / "metrics.jsonl").read_text().splitlines()) for a in running}
    assert all(0 < n < _KILL_EPOCHS for n in done.values()), done
    for a in running:
        log[a].unlink()  # the rerun logs into plain files
    again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=900)
    assert again.returncode == 0, again.stderr
    for a in running:
        text = log[a].read_text()
        at = re.search(rf"resuming {re.escape(str(_cell(out, a, 0)))} at epoch (\d+)", text)
        assert at and 2 <= int(at.group(1)) <= done[a] + 1, text  # from its last checkpoint, not from scratch
    assert "training into" in log[queued].read_text()
    for a in (*running, queued):
        assert len((_cell(out, a, 0) / "metrics.jsonl").read_text().splitlines()) == _KILL_EPOCHS
