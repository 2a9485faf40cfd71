"""Every activation layer of a model in network order: its learned function and derivative as small
multiples (HardSwish dashed for reference), and RepAct's branch weights per layer as a heatmap
(``repact plot layers``, and ``activations.png`` in every run folder)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..activations.repact import RepAct
from ..surgery import DEFAULT_TARGETS
from ..train.optim import activation_modules
from .curves import Curve, activation_curve, draw_curve
from .figures import pyplot

__all__ = ["LayersData", "activation_layers", "layer_curves", "branch_weight_table", "plot_layers"]


@dataclass
class LayersData:
    """The numbers behind ``plot layers``."""

    curves: list[Curve] = field(default_factory=list)  # network order; label = module path
    reference: Curve | None = None  # HardSwish on the same grid
    branches: list[str] = field(default_factory=list)  # heatmap rows
    branch_layers: list[str] = field(default_factory=list)  # heatmap columns (RepAct layers)
    branch_weights: np.ndarray | None = None  # (len(branches), len(branch_layers)); softmaxed for RepAct-II,
    # the channel mean for per-channel layers, nan where a layer lacks a branch


def activation_layers(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The model's activation layers in definition order: its repact (and PReLU) layers when it has
    any, else torch's own activation modules (ReLU, HardSwish, SiLU, GELU, ...)."""
    found = activation_modules(model)
    if found:
        return found
    return [(n, m) for n, m in model.named_modules() if isinstance(m, DEFAULT_TARGETS)]


def layer_curves(model: nn.Module, lo: float = -6.0, hi: float = 6.0, points: int = 401) -> list[Curve]:
    """f and f' of every activation layer (deployed function: eval mode, BatchNorm folded)."""
    return [activation_curve(m, label=name or "<root>", lo=lo, hi=hi, points=points)
            for name, m in activation_layers(model)]


@torch.no_grad()
def branch_weight_table(model: nn.Module) -> tuple[list[str], list[str], np.ndarray | None]:
    """(branches, RepAct layer paths, weights (branches x layers)): effective branch weights."""
    layers = [(n, m) for n, m in activation_layers(model) if isinstance(m, RepAct) and m._built]
    if not layers:
        return [], [], None
    branches: list[str] = []
    for _, m in layers:
        branches += [b for b in m.branches if b not in branches]
    table = np.full((len(branches), len(layers)), np.nan)
    for j, (_, m) in enumerate(layers):
        w = m.branch_weights().detach().double().cpu().mean(dim=0).numpy()
        for k, b in enumerate(m.branches):
            table[branches.index(b), j] = w[k]
    return branches, [n for n, _ in layers], table


def _short(path: str, width: int = 22) -> str:
    return path if len(path) <= width else "…" + path[-(width - 1):]


def plot_layers(model: nn.Module, lo: float = -6.0, hi: float = 6.0, points: int = 401, title: str | None = None,
                max_cols: int = 6):
    """(figure, :class:`LayersData`) for every activation layer of ``model``."""
    curves = layer_curves(model, lo, hi, points)
    if not curves:
        raise ValueError("the model has no activation layers to draw (no repact activation, PReLU or torch "
                         "activation module)")
    reference = activation_curve(nn.Hardswish(), "hardswish", x=torch.from_numpy(curves[0].x))
    branches, branch_layers, table = branch_weight_table(model)
    data = LayersData(curves, reference, branches, branch_layers, table)

    plt = pyplot()
    n = len(curves)
    cols = min(max_cols, n)
    rows = math.ceil(n / cols)
    heat_rows = 1 if table is not None else 0
    # a fixed layout: constrained/tight layout costs seconds on dozens of panels
    width, height = 2.3 * cols + 1.3, 2.0 * rows + 2.2 * heat_rows + 1.0
    fig = plt.figure(figsize=(width, height))
    gs = fig.add_gridspec(rows + heat_rows, cols, height_ratios=[1.0] * rows + [1.2] * heat_rows,
                          left=0.75 / width, right=1 - 0.55 / width, bottom=0.5 / height, top=1 - 0.9 / height,
                          hspace=0.55, wspace=0.25)
    for i, c in enumerate(curves):
        ax = fig.add_subplot(gs[i // cols, i % cols])
        ax.plot(reference.x, reference.y[0], "--", color="0.55", lw=0.9, label="HardSwish")
        draw_curve(ax, c, color="C0", label="f")
        draw_curve(ax, c, derivative=True, color="C3", lw=0.9, label="f'", knots=False)
        ax.axhline(0, color="0.85", lw=0.5, zorder=0)
        ax.axvline(0, color="0.85", lw=0.5, zorder=0)
        ax.set_xlim(lo, hi)
        ax.set_title(f"{i + 1}. {_short(c.label)}\n{c.kind}" + (f" ({c.channels} ch)" if c.channels > 1 else ""),
                     fontsize=7)
        ax.tick_params(labelsize=6)
        if i == 0:
            ax.legend(fontsize=6, loc="upper left")
    if table is not None:
        ax = fig.add_subplot(gs[rows, :])
        finite = table[np.isfinite(table)]
        lim = max(1.0, float(np.abs(finite).max())) if finite.size else 1.0
        im = ax.imshow(table, aspect="auto", cmap="RdBu_r", vmin=-lim, vmax=lim, interpolation="nearest")
        ax.set_yticks(range(len(branches)), branches, fontsize=7)
        order = {c.label: i + 1 for i, c in enumerate(curves)}
        ax.set_xticks(range(len(branch_layers)), [str(order[p]) for p in branch_layers], fontsize=6)
        ax.set_xlabel("layer (network order)", fontsize=7)
        softmax = any(getattr(m, "variant", "") == "softmax" for _, m in activation_layers(model))
        ax.set_title("RepAct branch weights" + (" (softmaxed)" if softmax else "")
                     + (", channel mean" if any(c.channels > 1 for c in curves) else ""), fontsize=8)
        if len(branch_layers) <= 40:
            for (r, col), v in np.ndenumerate(table):
                if np.isfinite(v):
                    ax.text(col, r, f"{v:.2f}", ha="center", va="center", fontsize=5,
                            color="white" if abs(v) > 0.6 * lim else "black")
        fig.colorbar(im, ax=ax, fraction=0.02, pad=0.005).ax.tick_params(labelsize=6)
    fig.suptitle(title or f"activation layers: f (blue), f' (red), HardSwish (dashed), x in [{lo:g}, {hi:g}]",
                 fontsize=9)
    return fig, data

