"""Experiment grids: act x model x dataset x seed, resumable, summarized honestly.

Each run lives in ``OUT/runs/<dataset>/<model>/<act>/seed<k>/`` as an ordinary training run: a
finished run is skipped, an interrupted one resumes from its last checkpoint. The runs still to do
go in sequence in this process, in ``jobs`` parallel processes on this machine (the cores split
between them), or to a cluster through ``submitit`` (SLURM, or its local executor); each cell has
its own folder, and the summary is read back from the run folders, so it is the same whichever way
(and in however many attempts) the grid ran.

The summary gives per cell the mean, sample std, 95% CI of the mean (t distribution, clipped to
[0, 100]) and the difference to the baseline activation with Welch's 95% interval, the other
epoch's accuracy, the mean best epoch and the training time per epoch, as Markdown and CSV, plus a
bar plot with error bars and the learning curves of every cell (mean and band over seeds).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import math
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..checkpoint import atomic_write_text, checkpoint_paths
from .config import ConfigError, TrainConfig, read_yaml_mapping, resolve_config
from .logs import csv_text
from .run_dir import refuse_foreign, refuse_if_busy
from .stats import summarize, welch_delta

__all__ = ["Grid", "load_grid_file", "run_grid", "run_cell", "summarize_grid", "write_reports", "METRICS",
           "EXECUTORS"]

#: the epoch whose val metric (the task's primary one: Grid.metric_key) a grid reports
METRICS = ("last", "best")
EXECUTORS = ("local", "submitit")
_GRID_KEYS = ("acts", "models", "datasets", "seeds", "baseline", "metric", "train")
#: config keys that may differ between a finished run and the grid that finds it
_FREE = {"out", "quiet", "workers", "device", "data_dir", "download", "eval_batch_size", "cache", "tensorboard"}
#: everything a grid writes under its --out (a folder holding anything else is refused)
GRID_FILES = frozenset({"grid.yaml", "compare.md", "compare.csv", "runs.csv", "compare.png", "compare_curves.png",
                        "runs", "logs", "submitit"})


@dataclass
class Grid:
    acts: list[str]
    models: list[str] = field(default_factory=lambda: ["small_cnn"])
    datasets: list[str] = field(default_factory=lambda: ["digits"])
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    baseline: str | None = None
    metric: str = "last"
    train: dict[str, Any] = field(default_factory=dict)
    task: str = "classification"

    def __post_init__(self) -> None:
        if not self.acts:
            raise ConfigError("the grid needs at least one activation (--acts a,b,...)")
        for name in ("acts", "models", "datasets", "seeds"):
            vals = getattr(self, name)
            if not vals:  # an empty list would write an empty table and report success
                raise ConfigError(f"the grid's {name} list is empty; give at least one (--{name} or the grid file's "
                                  f"{name})")
            if len(set(map(str, vals))) != len(vals):
                raise ConfigError(f"{name} lists a value twice: {vals}")
        if self.baseline is not None and self.baseline not in self.acts:
            raise ConfigError(f"baseline {self.baseline!r} is not one of the grid's acts ({', '.join(self.acts)})")
        if self.metric not in METRICS:
            raise ConfigError(f"unknown metric {self.metric!r}; accepted: {', '.join(METRICS)} (the epoch whose val metric is reported)")

    @property
    def primary(self) -> str:
        """The summary metric runs are ranked by: ``acc1`` (top-1), ``map50`` or ``miou``."""
        from .objective import primary_metric

        return primary_metric(self.task)

    def metric_key(self, which: str | None = None) -> str:
        """The summary key of the ``last`` or ``best`` epoch's primary metric (``last_acc1``, ``best_map50``...)."""
        return f"{which or self.metric}_{self.primary}"

    @property
    def metric_name(self) -> str:
        """The primary metric for people: ``top-1``, ``mAP@0.5`` or ``mIoU``."""
        from .objective import METRIC_LABELS

        return METRIC_LABELS[self.primary]

    def cells(self) -> list[tuple[str, str, str, int]]:
        return [(d, m, a, s) for d in self.datasets for m in self.models for a in self.acts for s in self.seeds]

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in _GRID_KEYS}


def load_grid_file(path: str | Path) -> dict[str, Any]:
    """A YAML grid: acts, models, datasets, seeds, baseline, metric, and ``train:`` options for every run."""
    p = Path(path)
    data = read_yaml_mapping(p, "grid file", "a YAML mapping with acts, models, datasets, seeds, baseline, metric, "
                                            "train")
    unknown = [k for k in data if k not in _GRID_KEYS]
    if unknown:
        raise ConfigError(f"grid file {p}: unknown key(s) {', '.join(map(str, unknown))}; accepted: "
                          f"{', '.join(_GRID_KEYS)}")
    for k in ("acts", "models", "datasets", "seeds"):
        if k in data and not isinstance(data[k], list):
            data[k] = [data[k]]
    for k in ("acts", "models", "datasets"):
        if not all(isinstance(v, str) and v.strip() for v in data.get(k, [])):
            raise ConfigError(f"grid file {p}: {k} must list names, e.g. {k}: [{_EXAMPLE[k]}]; got {data[k]!r}")
    for k in ("baseline", "metric"):
        if data.get(k) is not None and not isinstance(data[k], str):
            raise ConfigError(f"grid file {p}: {k} must be a name, e.g. {k}: {_EXAMPLE[k]}; got {data[k]!r}")
    if not isinstance(data.get("train") or {}, dict):
        raise ConfigError(f"grid file {p}: train must be a mapping of training options, e.g. train: {{epochs: 15}}; "
                          f"got {data['train']!r}")
    return data


_EXAMPLE = {"acts": "hardswish, repact", "models": "small_cnn", "datasets": "digits", "baseline": "hardswish",
            "metric": "last"}


def run_dir_for(out: Path, dataset: str, model: str, act: str, seed: int) -> Path:
    return out / "runs" / dataset / model / act.replace("/", "_") / f"seed{seed}"


def _config_for(grid: Grid, out: Path, cell, overrides: dict[str, Any]) -> TrainConfig:
    d, m, a, s = cell
    values = {**grid.train, **overrides, "dataset": d, "model": m, "act": a, "seed": s,
              "out": str(run_dir_for(out, d, m, a, s))}
    return resolve_config({}, values)


def _check_same(saved: dict[str, Any], cfg: TrainConfig, where: Path) -> None:
    for k, v in cfg.as_dict().items():
        if k in _FREE or k not in saved:
            continue
        if saved[k] != v:
            raise ConfigError(f"{where} was trained with {k}={saved[k]!r} but this grid asks for {k}={v!r}; "
                              "use another --out for a grid with other settings")


def _cell_tag(cell) -> str:
    d, m, a, s = cell
    return f"{d} {m} {a} seed {s}"


def _log_path(out: Path, cell) -> Path:
    d, m, a, s = cell
    return out / "logs" / f"{d}-{m}-{a.replace('/', '_')}-seed{s}.log"


def _finished(run_dir: Path) -> bool:
    path = run_dir / "summary.json"
    return path.exists() and bool(json.loads(path.read_text()).get("complete"))


def run_cell(cfg: TrainConfig, resume: bool, threads: int | None = None, log: str | None = None) -> dict[str, Any]:
    """Train (or resume) one cell; ``{"status": "done"}`` or ``{"status": "diverged", "message": ...}``.

    Runs in this process or in a worker (process pool, submitit job): ``threads`` sets torch's
    intra-op threads there, ``log`` sends the run's output to a file. Other errors propagate.
    """
    from .engine import TrainingDiverged, train

    if threads:
        import torch

        torch.set_num_threads(threads)
    with contextlib.ExitStack() as stack:
        if log is not None:
            Path(log).parent.mkdir(parents=True, exist_ok=True)
            fh = stack.enter_context(open(log, "a", encoding="utf-8", buffering=1))
            stack.enter_context(contextlib.redirect_stdout(fh))
            stack.enter_context(contextlib.redirect_stderr(fh))
        try:
            if resume:
                train(cfg, resume=cfg.out, keep_model=False)
            else:
                train(cfg, overwrite=True, keep_model=False)
        except TrainingDiverged as exc:
            return {"status": "diverged", "message": str(exc)}
    return {"status": "done"}


def _pool_cell(parent: int, cfg: TrainConfig, resume: bool, threads: int, log: str) -> dict[str, Any]:
    """:func:`run_cell` in a pool worker, never started once ``parent`` (the compare process) is gone."""
    if os.getppid() != parent:
        os._exit(1)
    return run_cell(cfg, resume, threads, log)


def _end_with_parent(parent: int) -> None:
    """Pool initializer: the worker ends as soon as ``parent``, the compare process, does.

    A killed ``repact compare`` (SIGKILL, SIGTERM, a closed terminal) would otherwise leave its
    workers training on, holding their run folders' locks and taking the cells queued for them,
    so that the rerun that should resume the grid finds its cells in use. On Linux the kernel
    sends the worker SIGKILL when its parent dies (``PR_SET_PDEATHSIG``); elsewhere a thread
    checks the parent ten times a second. What a run's last checkpoint holds stays (checkpoints
    are written atomically), as after a SIGKILL of ``repact train``.
    """
    if not _kill_with_parent():
        threading.Thread(target=_exit_when_orphaned, args=(parent,), daemon=True, name="repact-orphan-watch").start()
    if os.getppid() != parent:  # the parent died before the request above took effect
        os._exit(1)


def _kill_with_parent() -> bool:
    """Ask Linux to SIGKILL this process when its parent ends; False where that is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError):
        return False
    pr_set_pdeathsig = 1
    return prctl(pr_set_pdeathsig, int(signal.SIGKILL), 0, 0, 0) == 0


def _exit_when_orphaned(parent: int, every_s: float = 0.1) -> None:
    while os.getppid() == parent:
        time.sleep(every_s)
    os._exit(1)


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def _run_pool(todo: list, jobs: int, out: Path, say, total: int) -> dict[int, dict]:
    """The cells in ``jobs`` spawned processes, each with cores // jobs torch threads."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    threads = max(1, usable_cores() // jobs)
    say(f"running {len(todo)} run(s) in {jobs} processes, {threads} thread(s) each; logs in {out / 'logs'}")
    results: dict[int, dict] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=multiprocessing.get_context("spawn"),
                             initializer=_end_with_parent, initargs=(os.getpid(),)) as pool:
        futures = {pool.submit(_pool_cell, os.getpid(), cfg, resume, threads, str(_log_path(out, cell))): (i, cell)
                   for i, cell, cfg, resume in todo}
        for fut in as_completed(futures):
            i, cell = futures[fut]
            results[i] = fut.result()
            say(f"[{i + 1}/{total}] {_cell_tag(cell)}: {results[i]['status']}")
    return results


def _run_submitit(todo: list, out: Path, say, options: dict[str, Any], total: int) -> dict[int, dict]:
    """One submitit job per cell (SLURM when ``sbatch`` is there, else submitit's local executor)."""
    try:
        import submitit
    except ImportError:
        raise ConfigError("--executor submitit needs the submitit package: pip install 'repact[cluster]'") from None
    opts = dict(options)
    cluster = opts.pop("cluster", None)
    executor = submitit.AutoExecutor(folder=out / "submitit", cluster=cluster)
    try:
        executor.update_parameters(**opts)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"submitit refused the executor options {opts}: {exc}") from None
    threads = opts.get("cpus_per_task")
    with executor.batch():
        jobs = [(i, cell, executor.submit(run_cell, cfg, resume, threads, str(_log_path(out, cell))))
                for i, cell, cfg, resume in todo]
    say(f"submitted {len(jobs)} run(s) through submitit ({executor.cluster}); job files in {out / 'submitit'}, "
        f"logs in {out / 'logs'}")
    results: dict[int, dict] = {}
    for i, cell, job in jobs:
        try:
            results[i] = job.result()
        except Exception as exc:  # submitit wraps the job's exception with its traceback text
            text = str(exc).strip().splitlines()
            raise RuntimeError(f"{_cell_tag(cell)} failed in submitit job {job.job_id}: "
                               f"{text[-1] if text else type(exc).__name__} (log: {_log_path(out, cell)})") from None
        say(f"[{i + 1}/{total}] {_cell_tag(cell)}: {results[i]['status']}")
    return results


def run_grid(grid: Grid, out: str | Path, overrides: dict[str, Any] | None = None,
             say: Callable[[str], None] = print, *, jobs: int = 1, executor: str = "local",
             executor_options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Run (or resume, or skip when finished) every cell; returns one record per run.

    ``executor="local"`` runs the cells in this process (``jobs=1``) or in ``jobs`` processes;
    ``"submitit"`` submits one job per cell with ``executor_options`` (submitit's parameters, e.g.
    ``timeout_min``, ``slurm_partition``, ``gpus_per_node``, ``cpus_per_task``; ``cluster`` picks
    ``slurm``/``local``/``debug``).
    """
    import yaml

    if executor not in EXECUTORS:
        raise ConfigError(f"unknown executor {executor!r}; accepted: {', '.join(EXECUTORS)}")
    if int(jobs) < 1:
        raise ConfigError(f"jobs must be at least 1, got {jobs}")
    out = Path(out)
    overrides = dict(overrides or {})
    cells = grid.cells()
    configs = [_config_for(grid, out, c, overrides) for c in cells]  # validates every cell before any run
    refuse_foreign(out, GRID_FILES, "repact compare", "a grid folder holds one grid")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "grid.yaml", yaml.safe_dump(grid.as_dict(), sort_keys=False))
    todo = []
    for i, (cell, cfg) in enumerate(zip(cells, configs)):
        run_dir = Path(cfg.out)
        tag = f"[{i + 1}/{len(cells)}] {_cell_tag(cell)}"
        refuse_if_busy(run_dir)  # before its files are read: a run in progress is still writing them
        if _finished(run_dir):
            _check_same(yaml.safe_load((run_dir / "config.yaml").read_text()), cfg, run_dir)
            say(f"{tag}: finished earlier, skipped")
            continue
        has_last = checkpoint_paths(run_dir / "last")[0].exists()
        if has_last and (run_dir / "config.yaml").exists():
            _check_same(yaml.safe_load((run_dir / "config.yaml").read_text()), cfg, run_dir)
        todo.append((i, cell, cfg, has_last))
    results: dict[int, dict] = {}
    if todo and executor == "submitit":
        results = _run_submitit(todo, out, say, dict(executor_options or {}), len(cells))
    elif todo and min(int(jobs), len(todo)) > 1:
        results = _run_pool(todo, min(int(jobs), len(todo)), out, say, len(cells))
    else:
        for i, cell, cfg, resume in todo:
            say(f"[{i + 1}/{len(cells)}] {_cell_tag(cell)}: {'resuming' if resume else 'training'} "
                f"({cfg.epochs} epochs)")
            results[i] = run_cell(cfg, resume)
    records = []
    for i, (cell, cfg) in enumerate(zip(cells, configs)):
        rec = _record(grid, cell, Path(cfg.out), results.get(i, {"status": "done"}))
        if rec["status"] == "diverged":
            say(f"[{i + 1}/{len(cells)}] {_cell_tag(cell)}: diverged: {results[i].get('message')}")
        elif i in results:
            say(f"[{i + 1}/{len(cells)}] {_cell_tag(cell)}: last-epoch val {grid.metric_name} "
                f"{rec[grid.metric_key('last')]:.2f}%, best {rec[grid.metric_key('best')]:.2f}% "
                f"(epoch {rec['best_epoch']})")
        records.append(rec)
    return records


_RECORD_KEYS = ("best_epoch", "params", "train_images_per_s", "train_time_s", "epochs_done")


def _record(grid: Grid, cell, run_dir: Path, result: dict[str, Any]) -> dict[str, Any]:
    """One row of runs.csv, read back from the run folder's summary.json."""
    d, m, a, s = cell
    status = result["status"]
    summary = json.loads((run_dir / "summary.json").read_text()) if status == "done" else {}
    if status == "done" and not summary.get("complete"):
        raise RuntimeError(f"{run_dir} reports no finished run after training it; see its logs")
    rec = {"dataset": d, "model": m, "act": a, "seed": s, "status": status, "run_dir": str(run_dir)}
    extra = ("last_acc5",) if grid.task == "classification" else ()
    for k in (grid.metric_key("last"), grid.metric_key("best"), *extra, *_RECORD_KEYS):
        rec[k] = summary.get(k)
    done = rec["epochs_done"]
    rec["epoch_time_s"] = rec["train_time_s"] / done if done and rec["train_time_s"] is not None else None
    return rec


def summarize_grid(grid: Grid, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, model, act) with statistics of the chosen metric over seeds."""
    key = grid.metric_key()
    other = grid.metric_key("best" if grid.metric == "last" else "last")
    rows = []
    for d in grid.datasets:
        for m in grid.models:
            def vals(act: str, k: str = key) -> list[float]:
                return [r[k] for r in records if (r["dataset"], r["model"], r["act"]) == (d, m, act)
                        and r["status"] == "done" and r.get(k) is not None]

            for a in grid.acts:
                s = summarize(vals(a))
                o = summarize(vals(a, other))
                row = {"dataset": d, "model": m, "act": a, "metric": key, "n": s.n, "mean": s.mean, "std": s.std,
                       "ci95": s.ci95, "ci_low": _percent(s.mean - s.ci95), "ci_high": _percent(s.mean + s.ci95),
                       f"mean_{other}": o.mean, f"std_{other}": o.std,
                       "best_epoch_mean": summarize(vals(a, "best_epoch")).mean,
                       "epoch_time_s": summarize(vals(a, "epoch_time_s")).mean,
                       "train_images_per_s": summarize(vals(a, "train_images_per_s")).mean,
                       "failed": sum(1 for r in records if (r["dataset"], r["model"], r["act"]) == (d, m, a)
                                     and r["status"] != "done")}
                if grid.baseline is not None:
                    delta, half = welch_delta(vals(a), vals(grid.baseline))
                    row.update({"baseline": grid.baseline, "delta": delta, "delta_ci95": half})
                rows.append(row)
    return rows


def _percent(v: float) -> float:
    """An accuracy bound clipped to [0, 100] (nan stays nan)."""
    return v if math.isnan(v) else min(100.0, max(0.0, v))


def _fmt(v: float, digits: int = 2, sign: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:+.{digits}f}" if sign else f"{v:.{digits}f}"


def markdown_table(grid: Grid, rows: list[dict[str, Any]]) -> str:
    key = grid.metric_key()
    other = "best" if grid.metric == "last" else "last"
    head = ["dataset", "model", "act", "n", f"{grid.metric}-epoch {grid.metric_name} % (mean ± std)", "95% CI"]
    if grid.baseline:
        head.append(f"Δ vs {grid.baseline} (95% CI)")
    head += [f"{other}-epoch {grid.metric_name} % (mean ± std)", "best epoch (mean)", "s / epoch", "train img/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["dataset"], r["model"], r["act"] + (" (baseline)" if r["act"] == grid.baseline else ""),
                 str(r["n"]) + (f" ({r['failed']} failed)" if r["failed"] else ""),
                 f"{_fmt(r['mean'])} ± {_fmt(r['std'])}", f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"]
        if grid.baseline:
            cells.append("—" if r["act"] == grid.baseline else
                         f"{_fmt(r['delta'], sign=True)} (± {_fmt(r['delta_ci95'])})")
        cells += [f"{_fmt(r[f'mean_{grid.metric_key(other)}'])} ± {_fmt(r[f'std_{grid.metric_key(other)}'])}",
                  _fmt(r["best_epoch_mean"], 1), _fmt(r["epoch_time_s"], 1), _fmt(r["train_images_per_s"], 0)]
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nMetric: val {grid.metric_name} at the {grid.metric} epoch ({key}), over seeds {grid.seeds}. "
            "CI: mean ± t(0.975, n-1)·std/√n, clipped to [0, 100]. Δ: difference of means with Welch's 95% "
            "interval. s / epoch: wall time of an epoch (training and validation, data included), mean over the "
            "runs; train img/s: training images per second of the training phase.\n")
    return "\n".join(lines) + "\n" + note


def bar_plot(grid: Grid, rows: list[dict[str, Any]], path: Path) -> Path | None:
    """Bars of the mean per act, error bars the 95% CI, one panel per (dataset, model)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    panels = [(d, m) for d in grid.datasets for m in grid.models]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(4.0, 1.1 * len(grid.acts) + 1.5) * len(panels), 3.8),
                             squeeze=False)
    for ax, (d, m) in zip(axes[0], panels):
        sub = [r for r in rows if r["dataset"] == d and r["model"] == m]
        means = [r["mean"] for r in sub]
        errs = [0.0 if math.isnan(r["ci95"]) else r["ci95"] for r in sub]
        colors = ["#999999" if r["act"] == grid.baseline else "#3b75af" for r in sub]
        ax.bar(range(len(sub)), means, yerr=errs, capsize=4, color=colors)
        ax.set_xticks(range(len(sub)), [r["act"] for r in sub], rotation=30, ha="right")
        finite = [v for v in means if not math.isnan(v)]
        if finite:
            lo = min(v - e for v, e in zip(means, errs) if not math.isnan(v))
            hi = max(v + e for v, e in zip(means, errs) if not math.isnan(v))
            pad = max(0.5, 0.15 * (hi - lo))
            ax.set_ylim(max(0.0, lo - pad), min(100.0, hi + pad))
        ax.set_title(f"{d} / {m}")
        ax.set_ylabel(f"{grid.metric}-epoch val {grid.metric_name} % (95% CI)")
    fig.tight_layout()
    from ..analysis.figures import save_figure

    return save_figure(fig, path, "png", dpi=120)


def write_reports(grid: Grid, records: list[dict[str, Any]], out: str | Path) -> dict[str, Path]:
    """compare.md, compare.csv (per cell), runs.csv (per run), compare.png and compare_curves.png under ``out``."""
    out = Path(out)
    rows = summarize_grid(grid, records)
    paths = {"markdown": out / "compare.md", "csv": out / "compare.csv", "runs": out / "runs.csv"}
    atomic_write_text(paths["markdown"], "# repact compare\n\n" + markdown_table(grid, rows))
    atomic_write_text(paths["csv"], csv_text(rows))
    atomic_write_text(paths["runs"], csv_text(records))
    plot = bar_plot(grid, rows, out / "compare.png")
    if plot is not None:
        paths["plot"] = plot
        from ..analysis.runs import write_compare_curves

        curves = write_compare_curves(records, out / "compare_curves.png", grid.primary)
        if curves is not None:
            paths["curves"] = curves
    return paths
