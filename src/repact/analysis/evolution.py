"""How the learned activations change over training, from the parameters a run records every epoch
(``act_params.jsonl``): per layer the curve of every epoch on a colour ramp, and a depth x epoch
heatmap of a shape statistic, the slope left of 0, f(0) - f(-1): about 1 for a near-identity
layer, about 0 for a ReLU-like one, negative for a V-shaped one (``repact plot evolution``)."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .curves import activation_curve
from .figures import pyplot
from .layers import activation_layers
from .runs import read_log

__all__ = ["EvolutionData", "ACT_PARAMS_FILE", "read_act_params", "load_recorded", "evolution_data",
           "plot_evolution"]

ACT_PARAMS_FILE = "act_params.jsonl"
STATISTIC = "slope left of 0: f(0) - f(-1)"


@dataclass
class EvolutionData:
    """The numbers behind ``plot evolution``."""

    layers: list[str]  # network order, layers with recorded parameters
    epochs: list[int]  # 0 = before training
    params: dict[str, dict[int, dict[str, Any]]]  # layer -> epoch -> the record as written by the run
    x: np.ndarray
    curves: dict[str, np.ndarray]  # layer -> (epochs, len(x)) channel-mean f
    statistic: str = STATISTIC
    stats: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (layers, epochs)
    skipped: dict[str, str] = field(default_factory=dict)  # layer -> why it is not drawn


def read_act_params(run_dir: str | Path) -> dict[int, dict[str, dict[str, Any]]]:
    """``{epoch: {layer: record}}`` from a run folder's ``act_params.jsonl`` (the last record of an epoch wins)."""
    path = Path(run_dir) / ACT_PARAMS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist: plot evolution needs a run folder written by repact train "
                                "(it records every activation layer's parameters per epoch there)")
    out: dict[int, dict[str, dict[str, Any]]] = {}
    for rec in read_log(path, "epoch"):
        layers = rec.get("layers", {})
        if not isinstance(layers, dict) or not all(isinstance(v, dict) for v in layers.values()):
            raise ValueError(f"{path}: the record of epoch {rec['epoch']} has no mapping of layer names to their "
                             f"parameters under 'layers' (as repact train writes), got {str(layers)[:60]!r}")
        out[int(rec["epoch"])] = dict(layers)
    return dict(sorted(out.items()))


@torch.no_grad()
def load_recorded(module: nn.Module, record: dict[str, Any]) -> nn.Module:
    """A copy of ``module`` holding the recorded values (``{"type": ..., tensor name: values}``).
    A tensor recorded as summary statistics (too large to log in full) is a ``ValueError``."""
    m = copy.deepcopy(module)
    if record.get("type") not in (None, type(m).__name__):
        raise ValueError(f"the record is of a {record['type']} layer, the model has a {type(m).__name__}")
    tensors = dict([*m.named_parameters(), *m.named_buffers()])
    for name, values in record.items():
        if name == "type":
            continue
        if name not in tensors:
            raise ValueError(f"the record names {name!r}, which a {type(m).__name__} does not have")
        if isinstance(values, dict):
            raise ValueError(f"{name} ({values.get('numel')} values) was recorded as summary statistics only")
        t = tensors[name]
        try:
            v = torch.as_tensor(values, dtype=t.dtype).reshape(-1)
        except (TypeError, ValueError, RuntimeError):
            raise ValueError(f"{name} was recorded as {str(values)[:40]!r}, not a list of numbers") from None
        if v.numel() != t.numel():
            raise ValueError(f"{name} has {t.numel()} values, the record {v.numel()}")
        t.copy_(v.reshape(t.shape))
    return m


def _left_slope(module: nn.Module) -> float:
    c = activation_curve(module, x=torch.tensor([-1.0, 0.0], dtype=torch.float64))
    y = c.y.mean(axis=0)
    return float(y[1] - y[0])


def evolution_data(run_dir: str | Path, model: nn.Module | None = None, lo: float = -6.0, hi: float = 6.0,
                   points: int = 601) -> EvolutionData:
    """Curves and the left-slope statistic of every recorded layer at every recorded epoch.

    ``model`` gives the layers' types and shapes (default: the run's last checkpoint)."""
    run_dir = Path(run_dir)
    recorded = read_act_params(run_dir)
    if model is None:
        from ..checkpoint import build_model, checkpoint_paths

        last = run_dir / "last"
        if not checkpoint_paths(last)[0].exists():
            raise FileNotFoundError(f"{run_dir} has no last checkpoint (last.safetensors) to rebuild its layers from")
        model = build_model(last)
    epochs = list(recorded)
    if not epochs:
        raise ValueError(f"{run_dir / ACT_PARAMS_FILE} holds no records")
    modules = dict(activation_layers(model))
    names = [n for n in modules if any(n in recorded[e] for e in epochs)]
    if not names:
        raise ValueError(f"{run_dir} records no activation parameters: its activations have none to learn "
                         "(e.g. HardSwish or ReLU), so there is no evolution to draw")
    params = {n: {e: recorded[e][n] for e in epochs if n in recorded[e]} for n in names}
    curves, stats, layers, skipped = {}, [], [], {}
    x = None
    for n in names:
        rows, slopes = [], []
        try:
            for e in epochs:
                m = load_recorded(modules[n], recorded[e][n])
                c = activation_curve(m, n, lo, hi, points, x=None if x is None else torch.from_numpy(x))
                x = c.x if x is None else x
                rows.append(c.y.mean(axis=0))
                slopes.append(_left_slope(m))
        except (ValueError, KeyError) as exc:
            skipped[n] = str(exc)
            continue
        layers.append(n)
        curves[n] = np.stack(rows)
        stats.append(slopes)
    if not layers:
        raise ValueError("no layer could be rebuilt from the recorded parameters: "
                         + "; ".join(f"{k}: {v}" for k, v in skipped.items()))
    return EvolutionData(layers, epochs, params, x, curves, STATISTIC, np.array(stats), skipped)


def plot_evolution(run_dir: str | Path, model: nn.Module | None = None, lo: float = -6.0, hi: float = 6.0,
                   points: int = 601, max_cols: int = 6, max_epochs_drawn: int = 40):
    """(figure, :class:`EvolutionData`): per layer the curves over epochs, and the depth x epoch heatmap."""
    data = evolution_data(run_dir, model, lo, hi, points)
    plt = pyplot()
    n = len(data.layers)
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    heat = max(1.0, 0.09 * n)
    fig = plt.figure(figsize=(2.3 * cols + 1.2, 2.0 * (rows + heat) + 0.6), layout="constrained")
    gs = fig.add_gridspec(rows + 1, cols, height_ratios=[1.0] * rows + [heat])
    cmap = plt.get_cmap("viridis")
    e_idx = np.unique(np.linspace(0, len(data.epochs) - 1, min(len(data.epochs), max_epochs_drawn)).round()
                      .astype(int))
    last_e = max(1, data.epochs[-1])
    for i, name in enumerate(data.layers):
        ax = fig.add_subplot(gs[i // cols, i % cols])
        for j in e_idx:
            e = data.epochs[j]
            ax.plot(data.x, data.curves[name][j], color=cmap(e / last_e), lw=1.0)
        ax.axhline(0, color="0.85", lw=0.5, zorder=0)
        ax.axvline(0, color="0.85", lw=0.5, zorder=0)
        ax.set_xlim(lo, hi)
        kind = str(data.params[name][data.epochs[-1]].get("type", ""))
        ax.set_title(f"{i + 1}. {name if len(name) <= 22 else '…' + name[-21:]}\n{kind}", fontsize=7)
        ax.tick_params(labelsize=6)
    sm = plt.cm.ScalarMappable(cmap=cmap, norm=plt.Normalize(0, last_e))
    fig.colorbar(sm, ax=list(fig.axes), fraction=0.02, pad=0.01, label="epoch")
    ax = fig.add_subplot(gs[rows, :])
    lim = max(1e-6, float(np.nanmax(np.abs(data.stats))))
    im = ax.imshow(data.stats, aspect="auto", cmap="coolwarm", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_xticks(range(len(data.epochs)), [str(e) for e in data.epochs], fontsize=6)
    if len(data.epochs) > 25:
        for k, lab in enumerate(ax.get_xticklabels()):
            lab.set_visible(k % math.ceil(len(data.epochs) / 25) == 0)
    ax.set_yticks(range(n), [str(i + 1) for i in range(n)], fontsize=6)
    ax.set(xlabel="epoch (0 = before training)", ylabel="layer (depth)")
    ax.set_title(data.statistic, fontsize=8)
    if data.stats.size <= 120:
        for (r, c), v in np.ndenumerate(data.stats):
            ax.text(c, r, f"{v:.2f}", ha="center", va="center", fontsize=5,
                    color="white" if abs(v) > 0.6 * lim else "black")
    fig.colorbar(im, ax=ax, fraction=0.02, pad=0.01)
    fig.suptitle(f"activation evolution over epochs ({Path(run_dir).name})", fontsize=9)
    return fig, data
