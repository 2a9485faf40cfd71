"""Feature maps around one activation layer (``repact plot features``): the top-k channels by energy
of its input, before and after it, and the histogram of its inputs with the knots marked and the
share of values in each segment between knots."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from .._modes import eval_mode
from .curves import activation_knots, disable_inplace
from .figures import pyplot
from .layers import activation_layers

__all__ = ["FeaturesData", "capture_activation", "segment_counts", "feature_data", "plot_features"]


@dataclass
class FeaturesData:
    """The numbers behind ``plot features``."""

    layer: str
    kind: str
    input_shape: tuple[int, ...]
    n_inputs: int  # values fed to the layer (the histogram's total)
    hist_counts: np.ndarray
    hist_edges: np.ndarray
    knots: tuple[float, ...]
    segments: list[str]  # "(-inf, -3)", "[-3, 0)", ...
    segment_counts: np.ndarray
    segment_shares: np.ndarray
    channels: list[int] = field(default_factory=list)  # top-k by energy (mean square of the input map)
    energies: list[float] = field(default_factory=list)
    before: np.ndarray | None = None  # (k, H, W) input maps of those channels (first image)
    after: np.ndarray | None = None  # (k, H, W) output maps


def _resolve(model: nn.Module, layer: str | None) -> tuple[str, nn.Module]:
    acts = activation_layers(model)
    if layer is None:
        if not acts:
            raise ValueError("the model has no activation layer; name a module with --layer")
        return acts[0]
    try:
        return layer, model.get_submodule(layer)
    except AttributeError:
        names = [n for n, _ in acts]
        shown = ", ".join(names[:12]) + (" ..." if len(names) > 12 else "")
        raise ValueError(f"--layer {layer!r} is not a module of the model; its activation layers are: {shown}") from None


@torch.no_grad()
def capture_activation(model: nn.Module, x: torch.Tensor, layer: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(input, output) of the module at ``layer`` for one eval-mode forward of ``x`` (first call)."""
    module = model.get_submodule(layer)
    got: dict[str, torch.Tensor] = {}

    def hook(mod, inputs, output):
        if "in" not in got:
            got["in"], got["out"] = inputs[0].detach().clone(), output.detach().clone()

    h = module.register_forward_hook(hook)
    try:
        with eval_mode(model):
            model(x)
    finally:
        h.remove()
    if "in" not in got:
        raise ValueError(f"the module at {layer!r} was not called in the forward pass")
    return got["in"], got["out"]


def segment_counts(values: torch.Tensor, knots: tuple[float, ...]) -> np.ndarray:
    """How many values fall in each segment between knots (segment s: knots[s-1] <= x < knots[s])."""
    flat = values.detach().reshape(-1).double()
    idx = torch.bucketize(flat, torch.tensor(knots, dtype=torch.float64), right=True)
    return torch.bincount(idx, minlength=len(knots) + 1).numpy()


def _segment_names(knots: tuple[float, ...]) -> list[str]:
    edges = [-np.inf, *knots, np.inf]
    fmt = lambda v: "-inf" if v == -np.inf else "inf" if v == np.inf else f"{v:g}"  # noqa: E731
    return [f"{'(' if i == 0 else '['}{fmt(edges[i])}, {fmt(edges[i + 1])})" for i in range(len(edges) - 1)]


def feature_data(model: nn.Module, x: torch.Tensor, layer: str | None = None, top_k: int = 8, bins: int = 60
                 ) -> FeaturesData:
    """Capture the layer's input and output for ``x`` (first image's maps) and summarize them."""
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    net = disable_inplace(copy.deepcopy(model).cpu().float().eval())
    layer, module = _resolve(net, layer)
    inp, out = capture_activation(net, x.float().cpu(), layer)
    vals = inp.reshape(-1).double().numpy()
    lo, hi = float(vals.min()), float(vals.max())
    counts, edges = np.histogram(vals, bins=bins, range=(lo, hi if hi > lo else lo + 1.0))
    knots = tuple(activation_knots(module))
    seg = segment_counts(inp, knots)
    data = FeaturesData(layer, type(module).__name__, tuple(inp.shape), int(vals.size), counts, edges, knots,
                        _segment_names(knots), seg, seg / max(1, vals.size))
    if inp.dim() == 4 and out.shape == inp.shape:
        energy = inp[0].double().pow(2).mean(dim=(1, 2))
        order = torch.argsort(energy, descending=True)[:top_k]
        data.channels = [int(c) for c in order]
        data.energies = [float(energy[c]) for c in order]
        data.before = inp[0, order].numpy()
        data.after = out[0, order].numpy()
    return data


def plot_features(model: nn.Module, x: torch.Tensor, layer: str | None = None, top_k: int = 8,
                  display: np.ndarray | None = None, title: str | None = None):
    """(figure, :class:`FeaturesData`): maps before/after the layer for the top-k channels, and the
    histogram of its inputs with knots and per-segment shares."""
    data = feature_data(model, x, layer, top_k)
    plt = pyplot()
    k = len(data.channels)
    cols = max(k, 1) + (1 if display is not None else 0)
    fig = plt.figure(figsize=(max(7.0, 1.5 * cols + 0.8), 2.9 + (3.0 if k else 0.0)), layout="constrained")
    gs = fig.add_gridspec(3 if k else 1, cols, height_ratios=[1.0, 1.0, 1.6] if k else [1.0])
    if k:
        off = 0
        if display is not None:
            ax = fig.add_subplot(gs[0:2, 0])
            ax.imshow(display, interpolation="nearest")
            ax.set_title("input", fontsize=7)
            ax.set_axis_off()
            off = 1
        for j, c in enumerate(data.channels):
            for r, (maps, what, cmap) in enumerate(((data.before, "before", "coolwarm"), (data.after, "after", "viridis"))):
                ax = fig.add_subplot(gs[r, off + j])
                m = maps[j]
                if what == "before":
                    lim = max(1e-12, float(np.abs(m).max()))
                    im = ax.imshow(m, cmap=cmap, vmin=-lim, vmax=lim, interpolation="nearest")
                else:
                    im = ax.imshow(m, cmap=cmap, interpolation="nearest")
                ax.set_title(f"ch {c} {what}" + (f"\nE={data.energies[j]:.3g}" if r == 0 else ""), fontsize=6)
                ax.set_axis_off()
                fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02).ax.tick_params(labelsize=5)
    ax = fig.add_subplot(gs[-1, :])
    ax.stairs(data.hist_counts, data.hist_edges, fill=True, color="C0", alpha=0.7)
    for kn in data.knots:
        ax.axvline(kn, color="C3", ls="--", lw=1.0)
    shares = ", ".join(f"{s}: {100 * p:.1f}%" for s, p in zip(data.segments, data.segment_shares))
    ax.set_title(f"inputs of {data.layer} ({data.kind}), {data.n_inputs:,} values"
                 + (f"; share per segment (knots dashed): {shares}" if data.knots else ""), fontsize=7)
    ax.set(xlabel="input value", ylabel="count")
    lo, hi = data.hist_edges[0], data.hist_edges[-1]
    if data.knots:
        ax.set_xlim(min(lo, min(data.knots) - 0.5), max(hi, max(data.knots) + 0.5))
    if title:
        fig.suptitle(title, fontsize=8)
    return fig, data
