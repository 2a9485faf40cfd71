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

Bin boundaries lie on a fixed grid of *cells*, ``[k / 50, (k + 1) / 50)`` for ``|k| < 300`` plus
``(-inf, -5.98)`` and ``[6, inf)`` (:data:`CELLS` of them; every RepAct knot is a cell edge), so an
element's bin is a table lookup of its cell. Where the derivative and the features are polynomials
of x on each cell (RepAct), the forward reads the bin means off three sums per cell (count, sum of
x, sum of x^2), exactly; otherwise (ACON, SiLU, GELU, HardSwish) from the per-element values.

Memory kept for backward: ``numel * bits / 8`` bytes of codes plus ``tables * 2**bits * (1 + F)``
means (F features; float32, float64 for a float64 input), instead of ``numel`` elements of x.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch

from .dispatch import param_dtype

__all__ = ["BITS", "CELL_SCALE", "CELLS", "cell_edges", "check_bits", "pack_codes", "unpack_codes", "FewBitKernel",
           "few_bit"]

#: the code widths accepted (codes are packed ``8 // bits`` to a byte)
BITS = (1, 2, 4)
#: cells per unit of the bin variable, and the cells on each side of 0
CELL_SCALE, _HALF = 50, 300
CELLS = 2 * _HALF + 1


def cell_edges(dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """The left edge of every cell, (CELLS,): -6, -5.98, ..., 6 (the first cell reaches to -inf)."""
    return torch.arange(-_HALF, _HALF + 1, dtype=dtype) / CELL_SCALE


def _cells(z: torch.Tensor) -> torch.Tensor:
    """Each element's cell index (int64, flat): floor(50 z) + 300 clamped to [0, 600]; NaN in cell 300."""
    c = (z.reshape(-1) * CELL_SCALE).floor_().clamp_(-_HALF, _HALF).nan_to_num_(0.0)
    return c.to(torch.int64).add_(_HALF)


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
    pad = (-flat.numel()) % per
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    cols = flat.view(-1, per)
    out = cols[:, 0].clone()
    for i in range(1, per):
        out |= cols[:, i] << (bits * i)
    return out


def unpack_codes(packed: torch.Tensor, bits: int, n: int) -> torch.Tensor:
    """The first ``n`` codes of :func:`pack_codes`'s output, as int64."""
    per = 8 // bits
    shifts = torch.arange(0, 8, bits, device=packed.device, dtype=torch.uint8)
    codes = (packed.view(-1, 1) >> shifts) & ((1 << bits) - 1)
    return codes.reshape(-1)[:n].to(torch.int64)


class FewBitKernel:
    """What one activation computes for the few-bit op (subclasses in ``repact.activations.fewbit``).

    Attributes: ``bits``; ``lut`` (int64 (CELLS,): each cell's bin); ``tables`` (1, or the channel
    count) and ``channel_dim`` (where the tables are, when more than one); ``polynomial``: the
    derivative and the features are polynomials of degree <= 2 of x on every cell (then
    :meth:`cell_sums` is used, else :meth:`terms`).
    """

    bits: int
    lut: torch.Tensor
    tables: int = 1
    channel_dim: int = 1
    polynomial: bool = False

    def forward(self, x: torch.Tensor, *params: Optional[torch.Tensor]) -> torch.Tensor:
        """The activation's exact output (called without gradients)."""
        raise NotImplementedError

    def bin_variable(self, x: torch.Tensor, *params) -> torch.Tensor:
        """The variable the bins cut (x by default)."""
        return x

    def terms(self, x: torch.Tensor, z: torch.Tensor, *params) -> Tuple[torch.Tensor, Sequence[torch.Tensor]]:
        """``(f'(x), features)`` per element: the derivative and the features whose bin means
        :meth:`param_grads` turns into parameter gradients (non-polynomial kernels)."""
        raise NotImplementedError

    def cell_sums(self, moments: torch.Tensor, *params) -> torch.Tensor:
        """(tables, CELLS, 1 + F) sums of f' and of each feature per cell, from ``moments`` (tables,
        CELLS, 3): the count, the sum of x and the sum of x^2 per cell (polynomial kernels)."""
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


def _bin_means(kernel: FewBitKernel, x: torch.Tensor, params) -> Tuple[torch.Tensor, torch.Tensor]:
    """(codes (uint8, flat), means (tables * 2**bits, 1 + F) float64) of one forward."""
    z = kernel.bin_variable(x, *params)
    cell = _cells(z)
    lut = kernel.lut.to(z.device)
    codes = lut.to(torch.uint8)[cell]
    k, tables = 2 ** kernel.bits, kernel.tables
    idx = _table_index(x.shape, tables, kernel.channel_dim, x.device)
    if kernel.polynomial:
        key = cell if idx is None else idx * CELLS + cell
        xs = x.reshape(-1).to(torch.float64)
        moments = torch.stack([torch.bincount(key, minlength=tables * CELLS).to(torch.float64),
                               torch.bincount(key, weights=xs, minlength=tables * CELLS),
                               torch.bincount(key, weights=xs * xs, minlength=tables * CELLS)], -1)
        moments = moments.view(tables, CELLS, 3)
        per_cell = kernel.cell_sums(moments, *params)  # (tables, CELLS, 1 + F)
        sums = per_cell.new_zeros(tables, k, per_cell.shape[-1]).index_add_(1, lut, per_cell)
        count = moments[..., 0].new_zeros(tables, k).index_add_(1, lut, moments[..., 0])
        means = sums / count.clamp_min(1)[..., None]
        return codes, means.reshape(tables * k, -1)
    slope, feats = kernel.terms(x, z, *params)
    key = codes if idx is None else idx * k + codes
    count = torch.bincount(key, minlength=tables * k).clamp_min(1).to(torch.float64)
    cols = [torch.bincount(key, weights=c.reshape(-1).to(torch.float64), minlength=tables * k) / count
            for c in (slope, *feats)]
    return codes, torch.stack(cols, 1)


class _FewBitFn(torch.autograd.Function):
    """Saves the packed codes and the per-(table, bin) means; nothing of x."""

    @staticmethod
    def forward(ctx, x, kernel: FewBitKernel, *params):
        with torch.no_grad():
            y = kernel.forward(x, *params)
            codes, means = _bin_means(kernel, x, params)
            packed = pack_codes(codes, kernel.bits)
        ctx.save_for_backward(packed, means.to(param_dtype(x)))
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
