"""Few-bit backward: an activation keeps a ``bits``-bit code per element for backward instead of x.

The forward is the activation's own, exactly. For backward, each element's *bin* (which of the
``2**bits`` intervals between fixed boundaries its bin variable ``z`` falls in; ``z = x``, or ACON's
``beta (p1 - p2) x``) is packed ``8 // bits`` to a byte, together with, per table (one per layer,
or per channel) and bin, the mean over this batch's elements of the derivative ``f'(x)`` and of the
features the parameter gradients need. Backward then uses

    dL/dx_i     ~ g_i * mean_{bin(i)} f'
    dL/dtheta_m ~ sum over bins b of (sum of g_i in b) * mean_b(df/dtheta_m)

that is ``f'`` and ``df/dtheta`` replaced by their best (least-squares) constant on each bin: exact
where they are constant on a bin (a ReLU-like RepAct at 1 bit, every piece outside [-3, 3]),
approximate elsewhere. What an activation computes is a :class:`FewBitKernel`
(``repact.activations.fewbit`` has those of RepAct, ACON and the fixed functions, and fits the
boundaries).

Memory kept for backward: ``numel * bits / 8`` bytes of codes plus ``tables * 2**bits * (1 + F)``
means (F features; float32, float64 for a float64 input), instead of ``numel`` elements of x.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .dispatch import param_dtype

__all__ = ["BITS", "check_bits", "pack_codes", "unpack_codes", "FewBitKernel", "few_bit"]

#: the code widths accepted (codes are packed ``8 // bits`` to a byte)
BITS = (1, 2, 4)


def check_bits(bits) -> Optional[int]:
    """``bits`` as an int of :data:`BITS` (None: the full backward), else a one-line ``ValueError``."""
    if bits is None:
        return None
    if isinstance(bits, bool) or not isinstance(bits, int) or bits not in BITS:
        raise ValueError(f"bits must be one of {', '.join(map(str, BITS))} (or None for the full backward), "
                         f"got {bits!r}")
    return bits


def pack_codes(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """Codes (uint8, each < 2**bits) packed ``8 // bits`` per byte into a flat uint8 tensor."""
    flat = codes.reshape(-1)
    per = 8 // bits
    if per == 1:
        return flat.clone()
    pad = (-flat.numel()) % per
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    shifts = torch.arange(per, device=flat.device, dtype=torch.int32) * bits
    return (flat.view(-1, per).to(torch.int32) << shifts).sum(1).to(torch.uint8)


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first ``n`` codes of :func:`pack_codes`'s output, as int64."""
    per = 8 // bits
    if per == 1:
        return packed[:n].long()
    shifts = torch.arange(per, device=packed.device, dtype=torch.int32) * bits
    codes = (packed.view(-1, 1).to(torch.int32) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n].long()


class FewBitKernel:
    """What one activation computes for the few-bit op (subclasses in ``repact.activations.fewbit``).

    Attributes: ``bits``; ``boundaries`` (float64, ``2**bits - 1`` sorted values: bin ``b`` holds
    ``boundaries[b-1] <= z < boundaries[b]``); ``tables`` (1, or the channel count) and
    ``channel_dim`` (where the tables are, when more than one).
    """

    bits: int
    boundaries: torch.Tensor
    tables: int = 1
    channel_dim: int = 1

    def forward(self, x: torch.Tensor, *params: Optional[torch.Tensor]) -> torch.Tensor:
        """The activation's exact output (called without gradients)."""
        raise NotImplementedError

    def terms(self, x: torch.Tensor, *params) -> Tuple[torch.Tensor, torch.Tensor, Sequence[torch.Tensor]]:
        """``(z, f'(x), features)`` per element (called without gradients): the bin variable, the
        derivative and the features whose bin means :meth:`param_grads` turns into parameter gradients."""
        raise NotImplementedError

    def param_grads(self, sums: torch.Tensor, meta) -> Tuple[Optional[torch.Tensor], ...]:
        """Parameter gradients from ``sums`` (tables, F): for each feature, the sum over bins of
        (sum of g over the bin) x (the feature's bin mean). ``meta`` holds each parameter's
        ``(shape, dtype)`` (None for a None parameter)."""
        return tuple(None for _ in meta)


def _table_index(shape: torch.Size, tables: int, channel_dim: int, device) -> Optional[torch.Tensor]:
    if tables == 1:
        return None
    view = [1] * len(shape)
    view[channel_dim] = tables
    return torch.arange(tables, device=device).view(view).expand(shape).reshape(-1)


class _FewBitFn(torch.autograd.Function):
    """Saves the packed codes and the per-(table, bin) means; nothing of x."""

    @staticmethod
    def forward(ctx, x, kernel: FewBitKernel, *params):
        with torch.no_grad():
            y = kernel.forward(x, *params)
            z, slope, feats = kernel.terms(x, *params)
            bounds = kernel.boundaries.to(device=z.device, dtype=z.dtype)
            codes = torch.bucketize(z, bounds, right=True).reshape(-1)
            k = bounds.numel() + 1
            tables = kernel.tables
            idx = _table_index(x.shape, tables, kernel.channel_dim, x.device)
            key = codes if idx is None else idx * k + codes
            size = tables * k
            count = torch.bincount(key, minlength=size).clamp_min(1).to(torch.float64)
            cols = [torch.bincount(key, weights=c.reshape(-1).to(torch.float64), minlength=size) / count
                    for c in (slope, *feats)]
            means = torch.stack(cols, 1).to(param_dtype(x))
            packed = pack_codes(codes.to(torch.uint8), kernel.bits)
        ctx.save_for_backward(packed, means)
        ctx.conf = (kernel, x.shape, x.numel(), [None if p is None else (p.shape, p.dtype) for p in params])
        return y

    @staticmethod
    def backward(ctx, g):
        packed, means = ctx.saved_tensors
        kernel, shape, n, meta = ctx.conf
        k = 2 ** kernel.bits
        codes = unpack_codes(packed, kernel.bits, n)
        idx = _table_index(shape, kernel.tables, kernel.channel_dim, g.device)
        key = codes if idx is None else idx * k + codes
        gx = None
        if ctx.needs_input_grad[0]:
            gx = g * means[:, 0].to(g.dtype)[key].view(shape)
        grads: Tuple[Optional[torch.Tensor], ...] = tuple(None for _ in meta)
        if any(ctx.needs_input_grad[2:]) and means.shape[1] > 1:
            gsum = torch.bincount(key, weights=g.reshape(-1).to(torch.float64), minlength=means.shape[0])
            sums = (gsum[:, None] * means[:, 1:].to(torch.float64)).view(kernel.tables, k, -1).sum(1)
            grads = kernel.param_grads(sums, meta)
            grads = tuple(gr if need else None for gr, need in zip(grads, ctx.needs_input_grad[2:]))
        return (gx, None, *grads)


def few_bit(x: torch.Tensor, kernel: FewBitKernel, *params: Optional[torch.Tensor]) -> torch.Tensor:
    """``kernel``'s activation of ``x`` with the few-bit backward (see the module docstring).

    ``params`` are the tensors the parameter gradients go to (None passes through)."""
    return _FewBitFn.apply(x, kernel, *params)
