"""Experiment grids: act x model x dataset x seed, run in sequence (resumable), summarized honestly.

Each run lives in ``OUT/runs/<dataset>/<model>/<act>/seed<k>/`` as an ordinary training run: a
finished run is skipped, an interrupted one resumes from its last checkpoint. The summary gives per
cell the mean, sample std, 95% CI of the mean (t distribution) and the difference to the baseline
activation with Welch's 95% interval, as Markdown and CSV, plus a bar plot with error bars and the
learning curves of every cell (mean and band over seeds).
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..checkpoint import atomic_write_text, checkpoint_paths
from .config import ConfigError, TrainConfig, resolve_config
from .stats import summarize, welch_delta

__all__ = ["Grid", "load_grid_file", "run_grid", "summarize_grid", "write_reports", "METRICS"]

METRICS = {"last": "last_acc1", "best": "best_acc1"}  # classification; a task grid uses its primary metric
_GRID_KEYS = ("acts", "models", "datasets", "seeds", "baseline", "metric", "train")
#: config keys that may differ between a finished run and the grid that finds it
_FREE = {"out", "quiet", "workers", "device", "data_dir", "download", "eval_batch_size", "tensorboard"}


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
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"grid file {p} does not exist (a YAML mapping with acts, models, datasets, seeds, "
                          "baseline, metric, train)")
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"grid file {p} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"grid file {p} must hold a mapping, not a {type(data).__name__}")
    unknown = [k for k in data if k not in _GRID_KEYS]
    if unknown:
        raise ConfigError(f"grid file {p}: unknown key(s) {', '.join(map(str, unknown))}; accepted: "
                          f"{', '.join(_GRID_KEYS)}")
    for k in ("acts", "models", "datasets", "seeds"):
        if k in data and not isinstance(data[k], list):
            data[k] = [data[k]]
    return data


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


def run_grid(grid: Grid, out: str | Path, overrides: dict[str, Any] | None = None,
             say: Callable[[str], None] = print) -> list[dict[str, Any]]:
    """Run (or resume, or skip when finished) every cell; returns one record per run."""
    import yaml

    from .engine import TrainingDiverged, train

    out = Path(out)
    overrides = dict(overrides or {})
    cells = grid.cells()
    configs = [_config_for(grid, out, c, overrides) for c in cells]  # validates every cell before any run
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "grid.yaml", yaml.safe_dump(grid.as_dict(), sort_keys=False))
    records = []
    for i, (cell, cfg) in enumerate(zip(cells, configs), 1):
        d, m, a, s = cell
        run_dir = Path(cfg.out)
        tag = f"[{i}/{len(cells)}] {d} {m} {a} seed {s}"
        summary_path = run_dir / "summary.json"
        status = "done"
        summary: dict[str, Any] = {}
        if summary_path.exists() and json.loads(summary_path.read_text()).get("complete"):
            saved = yaml.safe_load((run_dir / "config.yaml").read_text())
            _check_same(saved, cfg, run_dir)
            summary = json.loads(summary_path.read_text())
            say(f"{tag}: finished earlier, skipped")
        else:
            has_last = checkpoint_paths(run_dir / "last")[0].exists()
            if has_last and (run_dir / "config.yaml").exists():
                _check_same(yaml.safe_load((run_dir / "config.yaml").read_text()), cfg, run_dir)
            say(f"{tag}: {'resuming' if has_last else 'training'} ({cfg.epochs} epochs)")
            try:
                if has_last:
                    res = train(cfg, resume=run_dir, keep_model=False)
                else:
                    res = train(cfg, overwrite=True, keep_model=False)
                summary = res.summary
            except TrainingDiverged as exc:
                status = "diverged"
                say(f"{tag}: diverged: {exc}")
        rec = {"dataset": d, "model": m, "act": a, "seed": s, "status": status, "run_dir": str(run_dir)}
        last, best = grid.metric_key("last"), grid.metric_key("best")
        extra = ("last_acc5",) if grid.task == "classification" else ()
        for k in (last, best, "best_epoch", *extra, "params", "train_images_per_s", "train_time_s"):
            rec[k] = summary.get(k)
        if status == "done":
            say(f"{tag}: last-epoch val {grid.metric_name} {rec[last]:.2f}%, best {rec[best]:.2f}% "
                f"(epoch {rec['best_epoch']})")
        records.append(rec)
    return records


def summarize_grid(grid: Grid, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (dataset, model, act) with statistics of the chosen metric over seeds."""
    key = grid.metric_key()
    other = grid.metric_key("best" if grid.metric == "last" else "last")
    rows = []
    for d in grid.datasets:
        for m in grid.models:
            def vals(act: str, k: str = key) -> list[float]:
                return [r[k] for r in records if (r["dataset"], r["model"], r["act"]) == (d, m, act)
                        and r["status"] == "done" and r[k] is not None]

            for a in grid.acts:
                s = summarize(vals(a))
                row = {"dataset": d, "model": m, "act": a, "metric": key, "n": s.n, "mean": s.mean, "std": s.std,
                       "ci95": s.ci95, "ci_low": s.mean - s.ci95, "ci_high": s.mean + s.ci95,
                       f"mean_{other}": summarize(vals(a, other)).mean,
                       "failed": sum(1 for r in records if (r["dataset"], r["model"], r["act"]) == (d, m, a)
                                     and r["status"] != "done")}
                if grid.baseline is not None:
                    delta, half = welch_delta(vals(a), vals(grid.baseline))
                    row.update({"baseline": grid.baseline, "delta": delta, "delta_ci95": half})
                rows.append(row)
    return rows


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
    head.append(f"{other}-epoch mean")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [r["dataset"], r["model"], r["act"] + (" (baseline)" if r["act"] == grid.baseline else ""),
                 str(r["n"]) + (f" ({r['failed']} failed)" if r["failed"] else ""),
                 f"{_fmt(r['mean'])} ± {_fmt(r['std'])}", f"[{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}]"]
        if grid.baseline:
            cells.append("—" if r["act"] == grid.baseline else
                         f"{_fmt(r['delta'], sign=True)} (± {_fmt(r['delta_ci95'])})")
        cells.append(_fmt(r[f"mean_{grid.metric_key(other)}"]))
        lines.append("| " + " | ".join(cells) + " |")
    note = (f"\nMetric: val {grid.metric_name} at the {grid.metric} epoch ({key}), over seeds {grid.seeds}. "
            "CI: mean ± t(0.975, n-1)·std/√n. Δ: difference of means with Welch's 95% interval.\n")
    return "\n".join(lines) + "\n" + note


def _csv(rows: list[dict[str, Any]]) -> str:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=keys)
    w.writeheader()
    w.writerows(rows)
    return buf.getvalue()


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
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=120)
    plt.close(fig)
    tmp.replace(path)
    return path


def write_reports(grid: Grid, records: list[dict[str, Any]], out: str | Path) -> dict[str, Path]:
    """compare.md, compare.csv (per cell), runs.csv (per run) and compare.png under ``out``."""
    out = Path(out)
    rows = summarize_grid(grid, records)
    paths = {"markdown": out / "compare.md", "csv": out / "compare.csv", "runs": out / "runs.csv"}
    atomic_write_text(paths["markdown"], "# repact compare\n\n" + markdown_table(grid, rows))
    atomic_write_text(paths["csv"], _csv(rows))
    atomic_write_text(paths["runs"], _csv(records))
    plot = bar_plot(grid, rows, out / "compare.png")
    if plot is not None:
        paths["plot"] = plot
        from ..analysis.runs import write_compare_curves

        curves = write_compare_curves(records, out / "compare_curves.png", grid.primary)
        if curves is not None:
            paths["curves"] = curves
    return paths
