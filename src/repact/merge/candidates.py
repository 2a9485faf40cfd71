"""Merge candidates: deploy activations that are linear on the range their input actually takes.

A RepAct's table is not linear everywhere (it would fold exactly then), but its input may stay
inside pieces where it is: e.g. every input above 3, where the canonical table is a line. Hooks
record each activation's input range per channel over calibration batches; an activation whose
touched pieces are one and the same line (per channel) is a candidate for replacing by that line
and merging the layers around it. It is only reported: outside the measured range the line and
the activation differ, so merging it is not exact.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable

import torch
from torch import nn

from .._modes import eval_mode
from ..activations.anneal import piece_table_of

__all__ = ["LinearCandidate", "linear_candidates"]


@dataclass
class LinearCandidate:
    """One activation's measured input range and whether its function is a line on it."""

    path: str
    type: str
    low: float  # smallest input seen (over all channels)
    high: float
    linear: bool  # the function is one line per channel on the range each channel took
    pieces: int  # most pieces of the table any channel's range touched
    slope: list[float] | None = None  # per table row (one for a layer-wise table), when linear
    intercept: list[float] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _channel_view(x: torch.Tensor, channels_last: bool, tables: int) -> torch.Tensor:
    """(C, rest) view of an activation input, C = 1 for a layer-wise table."""
    if tables == 1:
        return x.detach().reshape(1, -1)
    cd = x.dim() - 1 if (channels_last or x.dim() == 1) else 1
    return x.detach().movedim(cd, 0).reshape(x.shape[cd], -1)


@torch.no_grad()
def linear_candidates(model: nn.Module, batches: Iterable[Any], rtol: float = 1e-6) -> list[LinearCandidate]:
    """Measure the input range of every piecewise activation of ``model`` (RepAct, deploy forms, annealed
    or torch piecewise ones such as ReLU) on ``batches`` (inputs, or (inputs, targets) pairs) and report
    for each whether its function is one line on that range (coefficients equal within ``rtol``)."""
    tables: dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor]] = {}
    for path, m in model.named_modules():
        if not path or any(path.startswith(p + ".") for p in tables):
            continue
        t = piece_table_of(m)
        if t is not None and not isinstance(m, nn.Identity):
            tables[path] = (m, t[0].double().cpu(), t[1].double().cpu())
    lo: dict[str, torch.Tensor] = {}
    hi: dict[str, torch.Tensor] = {}

    def hook_for(path: str, m: nn.Module, ncoef: int):
        def hook(_mod, inputs):
            if not inputs or not torch.is_tensor(inputs[0]):
                return
            v = _channel_view(inputs[0].double(), bool(getattr(m, "channels_last", False)), ncoef)
            a, b = v.amin(dim=1).cpu(), v.amax(dim=1).cpu()
            lo[path] = torch.minimum(lo[path], a) if path in lo else a
            hi[path] = torch.maximum(hi[path], b) if path in hi else b
        return hook

    handles = [m.register_forward_pre_hook(hook_for(p, m, c.shape[0])) for p, (m, _, c) in tables.items()]
    try:
        with eval_mode(model):
            for batch in batches:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x)
    finally:
        for h in handles:
            h.remove()
    out = []
    for path, (m, knots, coeffs) in tables.items():
        if path not in lo:
            continue
        out.append(_judge(path, type(m).__name__, knots, coeffs, lo[path], hi[path], rtol))
    return out


def _judge(path: str, kind: str, knots: torch.Tensor, coeffs: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor,
           rtol: float) -> LinearCandidate:
    rows = coeffs.shape[0]
    if lo.numel() != rows:  # layer-wise table: one range
        lo, hi = lo.min().reshape(1), hi.max().reshape(1)
    scale = max(float(coeffs.abs().max()), 1e-30)
    linear, most, slopes, icpts = True, 0, [], []
    for r in range(rows):
        first = int((knots <= lo[r]).sum())  # segment s covers knots[s-1] <= x < knots[s]
        last = int((knots <= hi[r]).sum())
        segs = coeffs[r, first:last + 1]
        most = max(most, segs.shape[0])
        same = bool(((segs[:, :2] - segs[:1, :2]).abs() <= rtol * scale).all()) and \
            bool((segs[:, 2].abs() <= rtol * scale).all())
        linear = linear and same
        slopes.append(float(segs[0, 1]))
        icpts.append(float(segs[0, 0]))
    return LinearCandidate(path, kind, float(lo.min()), float(hi.max()), linear, most,
                           slopes if linear else None, icpts if linear else None)
