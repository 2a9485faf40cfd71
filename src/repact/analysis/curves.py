"""An activation's function and its derivative (autograd) on a 1-D grid, its knots, and the picture
of several activations overlaid (``repact plot act``).

An activation layer is evaluated as a function of one number x: the input is (N, C, 1, 1) (or
(N, C) for ``channels_last`` layers) with every channel equal to x, in eval mode and float64, on
a copy of the layer. For pointwise layers that is exactly f(x) and f'(x) per channel; spatial or
input-conditioned layers (FReLU, ABReLU, meta-ACON, DyReLU) are drawn for that constant 1x1 input.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import nn

from .. import fuse
from .._modes import eval_mode
from ..activations.base import Activation
from ..registry import create_act, resolve_name
from ..reparam import _knots_of
from .figures import pyplot

__all__ = ["Curve", "ActsData", "MAX_POINTS", "activation_knots", "activation_channels", "curve_grid",
           "activation_curve", "build_activation", "plot_acts", "draw_curve", "disable_inplace"]

#: the most grid points of a curve (a wide 1200-dpi figure is ~10,000 pixels across)
MAX_POINTS = 100_000
#: torch's own piecewise-linear activations and the repact branch whose knots they share
_TORCH_PIECEWISE = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Hardswish: "hardswish", nn.Hardsigmoid: "hardsigmoid",
                    nn.LeakyReLU: "leaky_relu", nn.PReLU: "prelu"}


@dataclass
class Curve:
    """f and f' of one activation layer on ``x``: ``y`` and ``dy`` have one row per channel."""

    label: str
    kind: str
    x: np.ndarray
    y: np.ndarray
    dy: np.ndarray
    knots: tuple[float, ...] = ()

    @property
    def channels(self) -> int:
        return int(self.y.shape[0])

    def value_at(self, v: float, channel: int | None = None) -> float:
        """f(v) by linear interpolation on the grid (mean over channels unless one is named)."""
        row = self.y.mean(axis=0) if channel is None else self.y[channel]
        return float(np.interp(v, self.x, row))


@dataclass
class ActsData:
    """The numbers behind ``plot act``: one curve per activation."""

    curves: list[Curve] = field(default_factory=list)


def activation_knots(module: nn.Module) -> tuple[float, ...]:
    """Where a piecewise activation changes formula: the knot buffers of repact's piecewise forms,
    the branch table's knots for torch's ReLU/ReLU6/HardSwish/HardSigmoid/LeakyReLU/PReLU and
    repact's PReLU, (min, max) for Hardtanh; () for smooth activations."""
    found = _knots_of(module)
    if found:
        return tuple(found)
    for cls, branch in _TORCH_PIECEWISE.items():
        if isinstance(module, cls):
            return fuse.PIECEWISE_BRANCHES[branch].knots
    if isinstance(module, nn.Hardtanh):
        return (float(module.min_val), float(module.max_val))
    if type(module).__name__ == "PReLU" and isinstance(module, Activation):
        return fuse.PIECEWISE_BRANCHES["prelu"].knots
    return ()


def activation_channels(module: nn.Module) -> int:
    """Channels with their own function: a per-channel layer's channel count, else 1."""
    c = getattr(module, "channels", None)
    if isinstance(module, Activation) and isinstance(c, int) and getattr(module, "needs_channels", False):
        return c
    if isinstance(module, nn.PReLU):
        return int(module.num_parameters)
    return 1


def curve_grid(lo: float = -6.0, hi: float = 6.0, points: int = 1201, knots: Sequence[float] = ()) -> torch.Tensor:
    """``points`` evenly spaced values on [lo, hi] plus every knot inside it, float64, sorted."""
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"the range must be two finite numbers LO < HI, got {lo} {hi}")
    if not 2 <= points <= MAX_POINTS:
        raise ValueError(f"points must be from 2 to {MAX_POINTS:,} (more than a picture shows), got {points}")
    x = torch.linspace(float(lo), float(hi), int(points), dtype=torch.float64)
    inside = [float(k) for k in knots if lo <= k <= hi]
    if inside:
        x = torch.unique(torch.cat([x, torch.tensor(inside, dtype=torch.float64)]))
    return x


def activation_curve(module: nn.Module, label: str | None = None, lo: float = -6.0, hi: float = 6.0,
                     points: int = 1201, x: torch.Tensor | None = None) -> Curve:
    """f(x) and f'(x) (autograd) of an activation layer, per channel, on a copy in eval mode."""
    knots = activation_knots(module)
    grid = curve_grid(lo, hi, points, knots) if x is None else torch.as_tensor(x, dtype=torch.float64).reshape(-1)
    m = disable_inplace(copy.deepcopy(module).cpu().double().eval())
    c = activation_channels(module)
    shape = (grid.numel(), c) if getattr(module, "channels_last", False) else (grid.numel(), c, 1, 1)
    inp = grid.reshape(-1, *[1] * (len(shape) - 1)).expand(shape).clone().requires_grad_(True)
    with torch.enable_grad():
        out = m(inp)
        if out.shape != inp.shape:
            raise ValueError(f"{label or type(module).__name__}: output shape {tuple(out.shape)} differs from the "
                             f"input's {tuple(inp.shape)}; only shape-preserving activations can be drawn")
        (grad,) = torch.autograd.grad(out.sum(), inp)
    y = out.detach().reshape(grid.numel(), c).T.numpy().copy()
    dy = grad.reshape(grid.numel(), c).T.numpy().copy()
    return Curve(label or type(module).__name__, type(module).__name__, grid.numpy().copy(), y, dy, tuple(knots))


def disable_inplace(model: nn.Module) -> nn.Module:
    """Switch off ``inplace`` on every submodule that has it (an in-place activation overwrites the
    tensor a gradient or a hook needs); returns the model."""
    for m in model.modules():
        if isinstance(getattr(m, "inplace", None), bool):
            m.inplace = False
    return model


def build_activation(name: str, params: Mapping[str, Any] | None = None) -> nn.Module:
    """A registered activation with ``params``: constructor options (``variant``, ``beta_init``...)
    and, by name, values for its parameters or buffers (``branch_weight=[0.1, 0.2, 0.3, 0.4]``)."""
    params = dict(params or {})
    canonical = resolve_name(name)
    probe = create_act(canonical)
    tensors = _tensors_of(probe)
    ctor = {k: v for k, v in params.items() if k not in tensors}
    try:
        module = create_act(canonical, **ctor) if ctor else probe
    except TypeError as exc:
        raise ValueError(f"{name}: {exc}; its tensors are {', '.join(sorted(tensors)) or '(none)'}") from None
    if module is None:
        raise ValueError(f"{name} builds no layer")
    own = _tensors_of(module)
    with torch.no_grad():
        for k, v in params.items():
            if k not in tensors:
                continue
            t = own[k]
            try:
                value = torch.as_tensor(v, dtype=t.dtype)
            except (TypeError, ValueError, RuntimeError):
                raise ValueError(f"{name}: {k}={v!r} is not a number or a list of numbers (e.g. {k}=0.5 or "
                                 f"{k}=[{', '.join(['0.5'] * min(t.numel(), 4))}])") from None
            if value.numel() not in (1, t.numel()):
                raise ValueError(f"{name}: {k} holds {t.numel()} value(s) (shape {tuple(t.shape)}), got {value.numel()}")
            t.copy_(value.expand(t.numel()).reshape(t.shape) if value.numel() == 1 else value.reshape(t.shape))
    return module


def _tensors_of(module: nn.Module) -> dict[str, torch.Tensor]:
    if isinstance(module, Activation) and not module._built:
        with eval_mode(module), torch.no_grad():
            module(torch.zeros(2, 1, 1, 1))
    return {n: t for n, t in [*module.named_parameters(), *module.named_buffers()]
            if t.is_floating_point() and not n.rsplit(".", 1)[-1].startswith("_")}


def draw_curve(ax, curve: Curve, *, derivative: bool = False, color=None, label: str | None = None, lw: float = 1.5,
               max_channels: int = 8, knots: bool = True):
    """Draw f (or f') of one curve: the channel mean, up to ``max_channels`` channels thin, its knots as dots."""
    rows = curve.dy if derivative else curve.y
    mean = rows.mean(axis=0)
    line = ax.plot(curve.x, mean, color=color, lw=lw, label=label)[0]
    if rows.shape[0] > 1:
        for r in rows[:max_channels]:
            ax.plot(curve.x, r, color=line.get_color(), lw=0.5, alpha=0.35)
    if knots and curve.knots:
        inside = [k for k in curve.knots if curve.x[0] <= k <= curve.x[-1]]
        for k in inside if derivative else ():
            ax.axvline(k, color=line.get_color(), lw=0.6, ls=":", alpha=0.8)
        if inside and not derivative:
            ax.plot(inside, np.interp(inside, curve.x, mean), "o", ms=3.5, color=line.get_color(), mfc="white")
    return line


def plot_acts(names: Sequence[str], params: Mapping[str, Any] | None = None, lo: float = -6.0, hi: float = 6.0,
              points: int = 1201):
    """(figure, :class:`ActsData`): f and f' of each named activation, overlaid, knots marked."""
    if not names:
        raise ValueError("give at least one activation name (repact acts lists them)")
    curves = [activation_curve(build_activation(n, params), label=n, lo=lo, hi=hi, points=points) for n in names]
    plt = pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4))
    for c in curves:
        line = draw_curve(a1, c, label=c.label)
        draw_curve(a2, c, derivative=True, color=line.get_color(), label=c.label)
    for ax, what in ((a1, "f(x)"), (a2, "f'(x) (autograd)")):
        ax.axhline(0, color="0.85", lw=0.6, zorder=0)
        ax.axvline(0, color="0.85", lw=0.6, zorder=0)
        ax.set(xlabel="x", ylabel=what, xlim=(lo, hi))
    a1.set_title("activation (o = knot)")
    a2.set_title("derivative (: = knot)")
    a1.legend(fontsize=8)
    fig.tight_layout()
    return fig, ActsData(curves)
