"""Mean |gradient| of the first and last conv and BatchNorm weights over training, several runs
overlaid (``repact plot grads``). Read from the run's ``grads.jsonl`` (every few steps), or from
the per-epoch means in ``metrics.jsonl`` for runs recorded without it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from ..train.pictures import GRADS_FILE
from .figures import pyplot
from .runs import _num, read_log, read_metrics

__all__ = ["GRAD_KEYS", "GradSeries", "GradsData", "grad_series", "plot_grads"]

GRAD_KEYS = ("first_conv", "last_conv", "first_bn", "last_bn")


@dataclass
class GradSeries:
    """One run's gradient magnitudes: ``x`` in epochs (fractional for per-step records)."""

    label: str
    source: str  # the file read
    x: np.ndarray
    values: dict[str, np.ndarray]  # GRAD_KEYS present in the run -> one value per x
    layers: dict[str, str] = field(default_factory=dict)  # key -> module path, when the checkpoint records it


@dataclass
class GradsData:
    runs: list[GradSeries] = field(default_factory=list)


def _layer_names(run_dir: Path) -> dict[str, str]:
    path = run_dir / "last.json"
    if not path.exists():
        return {}
    import json

    try:
        return dict(json.loads(path.read_text(encoding="utf-8")).get("state", {}).get("grad_probe", {}))
    except (ValueError, AttributeError):
        return {}


def grad_series(run_dir: str | Path, label: str | None = None) -> GradSeries:
    run_dir = Path(run_dir)
    label = label or run_dir.name
    trace = run_dir / GRADS_FILE
    if trace.exists() and (recs := read_log(trace, "epochs", GRAD_KEYS)):
        x = np.array([float(r["epochs"]) for r in recs])
        vals = {k: np.array([float(r.get(k) if r.get(k) is not None else np.nan) for r in recs]) for k in GRAD_KEYS
                if any(k in r for r in recs)}
        return GradSeries(label, str(trace), x, vals, _layer_names(run_dir))
    recs = read_metrics(run_dir)
    x = np.array([float(r["epoch"]) for r in recs])
    vals = {k: np.array([_num(r.get(f"grad_{k}")) for r in recs]) for k in GRAD_KEYS
            if any(f"grad_{k}" in r for r in recs)}
    if not vals:
        raise ValueError(f"{run_dir} records no gradient magnitudes ({GRADS_FILE} or grad_* in metrics.jsonl)")
    return GradSeries(label, str(run_dir / "metrics.jsonl"), x, vals, _layer_names(run_dir))


def plot_grads(run_dirs: Sequence[str | Path], labels: Sequence[str] | None = None):
    """(figure, :class:`GradsData`): one panel per probed weight, every run overlaid, log scale."""
    if not run_dirs:
        raise ValueError("give at least one run folder")
    if labels is not None and len(labels) != len(run_dirs):
        raise ValueError(f"{len(labels)} labels for {len(run_dirs)} runs; give one label per run")
    data = GradsData([grad_series(r, None if labels is None else labels[i]) for i, r in enumerate(run_dirs)])
    keys = [k for k in GRAD_KEYS if any(k in s.values for s in data.runs)]
    plt = pyplot()
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3.3), squeeze=False)
    for ax, k in zip(axes[0], keys):
        for i, s in enumerate(data.runs):
            if k in s.values:
                ax.plot(s.x, s.values[k], color=f"C{i % 10}", lw=1.0, marker="o" if len(s.x) <= 30 else None, ms=3,
                        label=s.label)
        where = {s.layers.get(k) for s in data.runs} - {None}
        ax.set_title(k.replace("_", " ") + (f"\n{where.pop()}" if len(where) == 1 else ""), fontsize=8)
        ax.set(xlabel="epoch", ylabel="mean |grad| of the weight")
        if all((s.values.get(k, np.array([1.0])) > 0).all() for s in data.runs):
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig, data
