"""Fitting an activation's parameters to a function it replaces (``swap_activations(init="approximate")``).

RepAct-I and III are linear in their branch weights and are solved exactly by least squares,
preferring the fewest branches (RepAct replacing HardSwish starts at weights (0, 0, 0, 1));
any other activation is fitted by L-BFGS on the mean squared error.
"""

from __future__ import annotations

import copy
import itertools
import math
from typing import Callable

import torch
from torch import nn

from ._modes import eval_mode
from .activations.base import Activation

__all__ = ["fit_activation", "model_device_dtype"]


def model_device_dtype(model: nn.Module) -> tuple[torch.device | None, torch.dtype | None]:
    """Device and dtype of the first floating parameter or buffer (None, None without any)."""
    for t in (*model.parameters(), *model.buffers()):
        if t.is_floating_point():
            return t.device, t.dtype
    return None, None




def _grid_input(grid: torch.Tensor, channels: int | None, ndim: int) -> torch.Tensor:
    c = channels or 1
    x = grid.reshape(-1, 1).expand(-1, c)
    if ndim >= 3:
        x = x.reshape(x.shape[0], c, *([1] * (ndim - 2)))
    return x.contiguous()


def fit_activation(
    new: nn.Module,
    target: Callable[[torch.Tensor], torch.Tensor],
    *,
    channels: int | None = None,
    ndim: int = 4,
    lo: float = -6.0,
    hi: float = 6.0,
    steps: int = 1201,
    max_iter: int = 100,
) -> float:
    """Fit ``new``'s parameters so that ``new(x) ~ target(x)`` on a grid over [lo, hi]; returns max abs error.

    RepAct-I and III (canonical or any piecewise branch set) are linear in their branch weights,
    which are solved exactly by least squares (PReLU slope kept); every other activation is fitted by
    L-BFGS on the mean squared error. The module is fitted in eval mode.
    """
    from .activations.repact import RepAct

    grid = torch.linspace(lo, hi, steps, dtype=torch.float64)
    x64 = _grid_input(grid, channels, ndim)
    dev, dt = model_device_dtype(new)
    dt = dt or torch.float32
    x = x64.to(device=dev, dtype=dt)
    with eval_mode(new):
        with torch.no_grad():
            y64 = _target_float64(target, x64.to(device=dev))
            y = y64.to(dt) if y64 is not None else target(x.clone())
            if isinstance(new, Activation):
                new.infer_channels(x)
        if isinstance(new, RepAct) and new.variant in ("origin", "bn"):
            _fit_repact_linear(new, x64.to(device=dev), y64 if y64 is not None else y.double())
        else:
            _fit_lbfgs(new, x, y, max_iter)
        with torch.no_grad():
            err = float((new(x) - y).abs().max())
    return err


def _target_float64(target: Callable, x64: torch.Tensor) -> torch.Tensor | None:
    """The target function in float64 (exact fits stay exact), or None when it only runs in float32."""
    fn = copy.deepcopy(target).double() if isinstance(target, nn.Module) else target
    try:
        y = fn(x64.clone())
    except (RuntimeError, TypeError):
        return None
    return y.double() if torch.is_tensor(y) and y.shape == x64.shape else None


@torch.no_grad()
def _fit_repact_linear(new, x: torch.Tensor, y: torch.Tensor) -> None:
    from .activations.repact import repact_branch_fn

    xs = x.double()
    ys = y.double()
    slope = new.prelu_weight.double() if new.prelu_weight is not None else None
    cd = new.channel_dim(xs)
    if slope is not None and slope.numel() > 1:
        slope = new._per_channel(slope, xs, cd)
    elif slope is not None:
        slope = slope.reshape([1] * xs.dim())
    if new.variant == "bn":  # eval-mode BN: y = scale * s + shift, so fit s to (y - shift) / scale
        scale, shift = (t.double() for t in new._bn_affine())
        if scale.numel() > 1:
            scale, shift = new._per_channel(scale, xs, cd), new._per_channel(shift, xs, cd)
        ys = (ys - shift) / scale
    feats = torch.stack([repact_branch_fn(b)(xs, slope) for b in new.branches], dim=-1)  # (..., nb)
    if new.branch_weight.dim() == 1:  # one weight vector for the layer
        sol = _sparsest_lstsq(feats.reshape(1, -1, feats.shape[-1]), ys.reshape(1, -1, 1)).reshape(-1)
    else:  # one per channel
        f = feats.movedim(cd, 0).reshape(feats.shape[cd], -1, feats.shape[-1])
        t = ys.movedim(cd, 0).reshape(ys.shape[cd], -1, 1)
        sol = _sparsest_lstsq(f, t)
    new.branch_weight.copy_(sol.to(new.branch_weight.dtype))


def _sparsest_lstsq(f: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Least-squares weights (C, nb) of ``f`` (C, N, nb) for ``t`` (C, N, 1), preferring the fewest branches.

    The canonical branches are linearly dependent (prelu = a x + (1 - a) relu), so a target that
    some subset fits exactly (HardSwish, ReLU, identity, a PReLU slope) gets that subset, e.g.
    (0, 0, 0, 1) for HardSwish; anything else gets the minimum-norm least-squares solution.
    """
    c, _, nb = f.shape
    sol = torch.linalg.lstsq(f, t).solution.squeeze(-1)  # (C, nb)
    scale = t.abs().amax(dim=(1, 2)).clamp_min(1.0)
    done = torch.zeros(c, dtype=torch.bool)
    for k in range(1, nb):
        for cols in itertools.combinations(range(nb), k):
            idx = list(cols)
            sub = f[..., idx]
            w = torch.linalg.lstsq(sub, t).solution  # (C, k, 1)
            exact = ((sub @ w - t).abs().amax(dim=(1, 2)) <= 1e-9 * scale) & ~done
            if bool(exact.any()):
                full = torch.zeros(c, nb, dtype=sol.dtype)
                full[:, idx] = w.squeeze(-1)
                sol = torch.where(exact.unsqueeze(1), full, sol)
                done |= exact
        if bool(done.all()):
            break
    return sol


def _fit_lbfgs(new: nn.Module, x: torch.Tensor, y: torch.Tensor, max_iter: int) -> None:
    params = [p for p in new.parameters() if p.requires_grad and p.is_floating_point()]
    if not params:
        return
    opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, tolerance_grad=1e-12, tolerance_change=1e-15,
                            history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.mean((new(x) - y) ** 2)
        loss.backward()
        return loss

    best = [p.detach().clone() for p in params]
    with torch.no_grad():
        best_loss = float(torch.mean((new(x) - y) ** 2))
    try:
        opt.step(closure)
    except RuntimeError:
        pass
    with torch.no_grad():
        loss = float(torch.mean((new(x) - y) ** 2))
        if not math.isfinite(loss) or loss > best_loss:  # never end worse than the default init
            for p, b in zip(params, best):
                p.copy_(b)
    for p in params:
        p.grad = None
