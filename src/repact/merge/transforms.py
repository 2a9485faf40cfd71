"""Pure merge transforms: layer parameters in, merged parameters out (no modules).

Every function computes in float64 and returns float64 tensors (the caller rounds once to the
model's dtype), so each step is exact up to one rounding and testable alone. Convolution
weights are (O, I / groups, kh, kw); a *dense* weight is the block-diagonal (O, I, kh, kw) form of
a grouped one.

* :func:`fold_affine` folds a per-output-channel ``scale * y + shift`` (an eval BatchNorm, an
  affine activation) into the layer before it.
* :func:`compose_after_pointwise` merges ``conv2(conv1(x))`` where conv2 is pointwise (a 1x1
  convolution or a Linear layer): exact everywhere, borders included.
* :func:`compose_pointwise_first` merges a pointwise conv1 followed by a kxk conv2. Inside, the
  bias of conv1 passes through conv2's kernel; on conv2's padded border conv2 sees zeros (or its
  own pad value) where the merged layer would see ``conv1(0) = b1``. :func:`border_value` finds
  the input value ``u`` per channel with ``conv1(u)`` equal to what conv2 pads with, so that the
  merged layer padded with ``u`` is exact at the borders too; None when there is none.
"""

from __future__ import annotations

import math

import torch

__all__ = ["dense_weight", "group_weight", "fold_affine", "compose_after_pointwise", "compose_pointwise_first",
           "border_value", "weight_count"]


def dense_weight(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """The block-diagonal (O, I, *k) weight of a grouped convolution weight (O, I / groups, *k), float64."""
    w = weight.detach().double()
    if groups == 1:
        return w.clone()
    out_ch, in_g = w.shape[0], w.shape[1]
    if out_ch % groups:
        raise ValueError(f"{out_ch} output channels do not split into {groups} groups")
    og, k = out_ch // groups, w.shape[2:]
    dense = w.new_zeros((groups, og, groups, in_g, *k))
    idx = torch.arange(groups)
    dense[idx, :, idx] = w.reshape(groups, og, in_g, *k)
    return dense.reshape(out_ch, groups * in_g, *k)


def group_weight(dense: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(grouped weight, groups) for the largest group count whose off-diagonal blocks of ``dense`` are all
    exactly zero (1 when none is)."""
    out_ch, in_ch = dense.shape[0], dense.shape[1]
    g0 = math.gcd(out_ch, in_ch)
    used = dense.reshape(out_ch, in_ch, -1).ne(0).any(dim=2)  # which (out, in) pairs have a nonzero tap
    for g in sorted((d for d in range(2, g0 + 1) if g0 % d == 0), reverse=True):
        blocks = used.reshape(g, out_ch // g, g, in_ch // g).any(dim=(1, 3))
        if not bool(blocks.fill_diagonal_(False).any()):
            idx = torch.arange(g)
            diag = dense.reshape(g, out_ch // g, g, in_ch // g, -1)[idx, :, idx]
            return diag.reshape(out_ch, in_ch // g, *dense.shape[2:]).clone(), g
    return dense, 1


def weight_count(out_ch: int, in_ch: int, groups: int, kernel: tuple[int, ...] = ()) -> int:
    """Multiply-adds per output position of a convolution (or a Linear layer: no kernel)."""
    return out_ch * (in_ch // groups) * math.prod(kernel)


def fold_affine(weight: torch.Tensor, bias: torch.Tensor | None, scale: torch.Tensor,
                shift: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``scale * layer(x) + shift`` (scale, shift per output channel, or one value)."""
    w = weight.detach().double()
    out_ch = w.shape[0]
    s = scale.detach().double().reshape(-1).expand(out_ch)
    t = shift.detach().double().reshape(-1).expand(out_ch)
    b = bias.detach().double() if bias is not None else w.new_zeros(out_ch)
    return w * s.reshape(-1, *([1] * (w.dim() - 1))), b * s + t


def _bias(b: torch.Tensor | None, n: int) -> torch.Tensor:
    return b.detach().double() if b is not None else torch.zeros(n, dtype=torch.float64)


def compose_after_pointwise(w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                            b2: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``layer2(layer1(x))`` with layer2 pointwise: dense w1 (M, I, *k) or (M, I), w2 (O, M) -> (O, I, *k), (O,)."""
    a = w1.detach().double()
    m = a.shape[0]
    p = w2.detach().double().reshape(w2.shape[0], m)
    w = torch.tensordot(p, a, dims=([1], [0]))
    return w, p @ _bias(b1, m) + _bias(b2, p.shape[0])


def compose_pointwise_first(w1: torch.Tensor, b1: torch.Tensor | None, w2: torch.Tensor,
                            b2: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``conv2(conv1(x))`` inside the border with conv1 pointwise: w1 (M, I), dense w2 (O, M, *k) -> (O, I, *k), (O,).

    The bias is the interior one (conv1's bias through the whole kernel); see :func:`border_value`."""
    p = w1.detach().double().reshape(w1.shape[0], -1)
    k = w2.detach().double()
    w = (k.movedim(1, -1) @ p).movedim(-1, 1)  # (O, *k, M) @ (M, I)
    through = k.sum(dim=tuple(range(2, k.dim()))) if k.dim() > 2 else k
    return w, through @ _bias(b1, p.shape[0]) + _bias(b2, k.shape[0])


def border_value(w1: torch.Tensor, b1: torch.Tensor | None, target: torch.Tensor | None = None,
                 rtol: float = 1e-9) -> torch.Tensor | None:
    """The input value ``u`` (I,) with ``w1 @ u + b1 == target`` (default zeros), or None when the system
    has no solution (the residual of the least-squares ``u`` exceeds ``rtol`` times the scale of ``b1``
    and ``target``). Zeros when ``b1 == target`` already."""
    p = w1.detach().double().reshape(w1.shape[0], -1)
    m = p.shape[0]
    want = (target.detach().double() if target is not None else torch.zeros(m, dtype=torch.float64)) - _bias(b1, m)
    if not bool(want.any()):
        return torch.zeros(p.shape[1], dtype=torch.float64)
    u = torch.linalg.lstsq(p, want.unsqueeze(1)).solution.squeeze(1)
    scale = max(float(want.abs().max()), 1e-30)
    if not bool(torch.isfinite(u).all()) or float((p @ u - want).abs().max()) > rtol * scale:
        return None
    return u
