"""Learning curves: one run's loss and top-1 per epoch (``curves.png`` in every run folder), and a
grid's curves per activation, mean and band (± one std) over seeds (``compare_curves.png``)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from .figures import pyplot, save_figure

__all__ = ["RunCurves", "CompareCurves", "read_log", "read_metrics", "run_curves", "plot_run_curves",
           "compare_curves", "plot_compare_curves", "write_compare_curves", "CURVE_KEYS"]

#: the per-epoch metrics a learning curve shows
CURVE_KEYS = ("train_loss", "val_loss", "train_acc1", "val_acc1")


#: the metric a run's curves show beside the loss, by task: top-1, else mAP@0.5, else mIoU
CURVE_METRICS = {"acc1": "top-1 %", "map50": "mAP@0.5 %", "miou": "mIoU %"}


@dataclass
class RunCurves:
    """The numbers behind ``curves.png``: per-epoch values as recorded in ``metrics.jsonl``."""

    epochs: list[int]
    values: dict[str, list[float]]  # CURVE_KEYS (with the run's metric for acc1) -> one value per epoch
    metric: str = "acc1"  # the key of the metric curves (train_<metric>, val_<metric>)


@dataclass
class CompareCurves:
    """The numbers behind ``compare_curves.png``: per (dataset, model, act) the seeds' curves and their statistics."""

    cells: dict[tuple[str, str, str], dict[str, Any]] = field(default_factory=dict)
    # cell -> {"seeds": [...], "epochs": [...], key: {"runs": (seeds, epochs), "mean": (epochs,), "std": (epochs,)}}


def read_log(path: str | Path, key: str, numbers: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The records of a run's JSON-lines log (``metrics.jsonl``, ``act_params.jsonl``, ``grads.jsonl``),
    for drawing: each a JSON object with a finite number under ``key`` and, where present, a number
    under each of ``numbers`` (NaN or infinity allowed: a diverged run logs them); a torn last line
    (a write cut off by a kill) is left out. Anything else is a ``ValueError`` naming the file and
    the line: text that is not UTF-8, a line that is not a JSON object, a value of the wrong type."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path} is not a log written by repact train: byte {exc.start} is not UTF-8 text") from None
    lines = text.splitlines()
    records = []
    for i, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(lines) and not text.endswith("\n"):
                break  # torn last line
            raise ValueError(f"{path} line {i} is not JSON (expected one JSON object per line, as repact train "
                             f"writes): {line[:60]!r}") from None
        for k in (key, *numbers):
            v = rec.get(k) if isinstance(rec, dict) else None
            if not (isinstance(rec, dict) and (_is_number(v) and (k != key or math.isfinite(v)) or
                                               k != key and v is None)):
                raise ValueError(f"{path} line {i}: expected a JSON object with a number under {k!r} (a record "
                                 f"written by repact train), got {line[:60]!r}")
        records.append(rec)
    return records


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def read_metrics(run_dir: str | Path) -> list[dict[str, Any]]:
    """A run's ``metrics.jsonl`` records (one per epoch; a resumed epoch's last record wins)."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: not a run folder written by repact train")
    by_epoch = {int(r["epoch"]): r for r in read_log(path, "epoch")}
    return [by_epoch[e] for e in sorted(by_epoch)]


def _num(v: Any) -> float:
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def run_curves(run_dir: str | Path) -> RunCurves:
    recs = read_metrics(run_dir)
    metric = next((m for m in CURVE_METRICS if any(f"val_{m}" in r for r in recs)), "acc1")
    keys = ("train_loss", "val_loss", f"train_{metric}", f"val_{metric}")
    return RunCurves([int(r["epoch"]) for r in recs], {k: [_num(r.get(k)) for r in recs] for k in keys}, metric)


def plot_run_curves(run_dir: str | Path, title: str | None = None):
    """(figure, :class:`RunCurves`): loss and the run's metric per epoch (top-1, or a detection
    run's mAP@0.5, or a segmentation run's mIoU), train and val; a split without values is left out."""
    data = run_curves(run_dir)
    if not data.epochs:
        raise ValueError(f"{Path(run_dir) / 'metrics.jsonl'} holds no epoch yet")
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.5))
    style = {"train": dict(ls="-", marker="o", color="C0"), "val": dict(ls="--", marker="s", color="C1")}
    for ax, kind in ((a1, "loss"), (a2, data.metric)):
        for split in ("train", "val"):
            ys = data.values[f"{split}_{kind}"]
            if any(math.isfinite(v) for v in ys):
                ax.plot(data.epochs, ys, ms=3, label=split, **style[split])
    label = CURVE_METRICS[data.metric]
    a1.set(xlabel="epoch", ylabel="loss", title="loss")
    a2.set(xlabel="epoch", ylabel=label, title="top-1 accuracy" if data.metric == "acc1" else "val " + label[:-2])
    losses = [v for k in ("train_loss", "val_loss") for v in data.values[k] if v > 0]
    if losses and max(losses) / min(losses) > 20:
        a1.set_yscale("log")
    for ax in (a1, a2):
        if ax.lines:
            ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(title or Path(run_dir).name, fontsize=9)
    fig.tight_layout()
    return fig, data


def compare_curves(records: Iterable[dict[str, Any]], keys: tuple[str, ...] = ("val_acc1", "train_loss")
                   ) -> CompareCurves:
    """Per (dataset, model, act) cell: each finished seed's curve, and their mean and sample std per
    epoch over the epochs every seed reached (std is nan for one seed)."""
    groups: dict[tuple[str, str, str], list[tuple[int, list[dict[str, Any]]]]] = {}
    for r in records:
        if r.get("status", "done") != "done":
            continue
        recs = read_metrics(r["run_dir"])
        if recs:
            groups.setdefault((r["dataset"], r["model"], r["act"]), []).append((int(r["seed"]), recs))
    out = CompareCurves()
    for cell, runs in groups.items():
        n_ep = min(len(recs) for _, recs in runs)
        entry: dict[str, Any] = {"seeds": [s for s, _ in runs], "epochs": [int(x["epoch"]) for x in runs[0][1][:n_ep]]}
        for k in keys:
            arr = np.array([[_num(x.get(k)) for x in recs[:n_ep]] for _, recs in runs])
            std = arr.std(axis=0, ddof=1) if len(runs) > 1 else np.full(n_ep, np.nan)
            entry[k] = {"runs": arr, "mean": arr.mean(axis=0), "std": std}
        out.cells[cell] = entry
    return out


_LABELS = {"val_acc1": "val top-1 %", "train_loss": "train loss", "val_loss": "val loss", "train_acc1": "train top-1 %",
           **{f"val_{k}": f"val {v}" for k, v in CURVE_METRICS.items() if k != "acc1"}}


def plot_compare_curves(records: Iterable[dict[str, Any]], keys: tuple[str, ...] = ("val_acc1", "train_loss")):
    """(figure, :class:`CompareCurves`): one column per (dataset, model), one row per metric, one line per
    activation (mean over seeds) with a band of ± one std."""
    data = compare_curves(records, keys)
    if not data.cells:
        raise ValueError("no finished run to draw learning curves of")
    panels = list(dict.fromkeys((d, m) for d, m, _ in data.cells))
    acts = list(dict.fromkeys(a for _, _, a in data.cells))
    plt = pyplot()
    fig, axes = plt.subplots(len(keys), len(panels), figsize=(4.5 * len(panels), 3.0 * len(keys)), squeeze=False)
    for j, (d, m) in enumerate(panels):
        for i, k in enumerate(keys):
            ax = axes[i][j]
            for a_i, a in enumerate(acts):
                cell = data.cells.get((d, m, a))
                if cell is None:
                    continue
                mean, std = cell[k]["mean"], cell[k]["std"]
                color = f"C{a_i % 10}"
                ax.plot(cell["epochs"], mean, color=color, lw=1.5, label=f"{a} (n={len(cell['seeds'])})")
                if np.isfinite(std).any():
                    ax.fill_between(cell["epochs"], mean - std, mean + std, color=color, alpha=0.2, lw=0)
            ax.set(xlabel="epoch", ylabel=_LABELS.get(k, k))
            ax.grid(alpha=0.3)
            if i == 0:
                ax.set_title(f"{d} / {m}", fontsize=9)
                ax.legend(fontsize=7)
    fig.suptitle("learning curves: mean over seeds, band ± 1 std", fontsize=9)
    fig.tight_layout()
    return fig, data


def write_compare_curves(records: Iterable[dict[str, Any]], path: str | Path, metric: str = "acc1") -> Path | None:
    """``plot_compare_curves`` of ``val_<metric>`` and the train loss written to ``path`` (a grid's
    ``compare_curves.png``); None when no run finished."""
    records = [r for r in records if r.get("status", "done") == "done"]
    if not records:
        return None
    fig, _ = plot_compare_curves(records, (f"val_{metric}", "train_loss"))
    return save_figure(fig, path)
