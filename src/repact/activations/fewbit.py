"""Few-bit backward for RepAct-I/II, ACON-C and the fixed SiLU, GELU and HardSwish (arXiv 2202.00441's idea).

``RepAct(bits=4)``, ``AconC(bits=4)`` and ``FewBit("silu", bits=4)`` compute their forward exactly
and keep, for backward, a ``bits``-bit code per element instead of the input: the bin it falls in
among ``2**bits`` intervals (:mod:`repact.ops.fewbit` has the op and the error model). The bin
boundaries are fitted here, once per function and width, by dynamic programming: the partition of
the input axis into ``2**bits`` intervals that minimizes the expected squared error of the best
constant per interval, for an input distributed as N(0, 1) (activations follow a normalization):

* SiLU, GELU, HardSwish: the error of f'(x) itself;
* RepAct: of every derivative the layer can learn at once (those of its pieces: the indicator of
  each piece and x on each piece, each scaled to unit variance), so the boundaries do not depend on
  the learned weights (the canonical branches put the 1-bit boundary at 0, where ReLU's jumps);
* ACON-C: of SiLU's derivative in the variable ``beta (p1 - p2) x``, where f' = (p1 - p2)
  SiLU'(beta (p1 - p2) x) + p2.

The constants themselves are the means over the current batch of each bin (the least-squares
constants for the batch at hand). :func:`set_backward_bits` turns a whole model's activations to
few-bit (``repact train --backward-bits``); :func:`saved_bytes` measures what autograd keeps.
"""

from __future__ import annotations

import functools
import math
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import acon as acon_op
from ..ops import reference
from ..ops.dispatch import cast_params
from ..ops.fewbit import BITS, CELLS, FewBitKernel, cell_edges, check_bits, few_bit
from .base import Activation

__all__ = ["FewBit", "FIXED_FUNCTIONS", "optimal_boundaries", "fixed_boundaries", "set_backward_bits",
           "saved_bytes", "backward_error", "uses_few_bit"]

#: the grid the boundaries are fitted on: the op's cells (repact.ops.fewbit), whose edges hold every
#: RepAct knot
_GRID = cell_edges()


def _normal_cell_weights(grid: torch.Tensor) -> torch.Tensor:
    cdf = 0.5 * (1 + torch.erf(grid / math.sqrt(2)))
    upper = torch.cat([cdf[1:], cdf.new_ones(1)])
    lower = torch.cat([cdf.new_zeros(1), cdf[1:]])
    return upper - lower


def optimal_boundaries(grid: torch.Tensor, weight: torch.Tensor, feats: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k - 1`` boundaries (grid values, sorted) that cut the cells ``[grid[i], grid[i+1])`` into
    ``k`` runs minimizing the weighted squared error of each run's mean of ``feats`` (G, F); exact
    dynamic programming over the cells' edges."""
    g = grid.numel()
    f = feats.reshape(g, -1).to(torch.float64)
    w = weight.to(torch.float64)
    zero = torch.zeros(1, dtype=torch.float64)
    cw = torch.cat([zero, w.cumsum(0)])
    cm = torch.cat([torch.zeros(1, f.shape[1], dtype=torch.float64), (w[:, None] * f).cumsum(0)])
    cq = torch.cat([zero, (w * (f * f).sum(1)).cumsum(0)])
    dw = cw[None, :] - cw[:, None]
    dm = cm[None, :, :] - cm[:, None, :]
    cost = (cq[None, :] - cq[:, None]) - (dm * dm).sum(-1) / dw.clamp_min(1e-300)
    upper = torch.ones(g + 1, g + 1, dtype=torch.bool).triu(1)
    cost = torch.where(upper, cost.clamp_min(0), torch.full_like(cost, math.inf))
    best = cost[0]  # best[j]: cells 0..j-1 in one run
    choices = []
    for _ in range(1, min(k, g)):
        total = best[:, None] + cost
        best, arg = total.min(0)
        choices.append(arg)
    cuts, j = [], g
    for arg in reversed(choices):
        j = int(arg[j])
        cuts.append(j)
    return grid[sorted(cuts)]


def _weighted_unit(feats: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Each column scaled to unit weighted standard deviation (constant columns dropped)."""
    mean = (w[:, None] * feats).sum(0)
    std = ((w[:, None] * (feats - mean) ** 2).sum(0)).sqrt()
    keep = std > 1e-12
    return feats[:, keep] / std[keep]


def _fit(feature_fn: Callable[[torch.Tensor], torch.Tensor], bits: int) -> torch.Tensor:
    centers = _GRID + 0.5 * (_GRID[1] - _GRID[0])
    w = _normal_cell_weights(_GRID)
    return optimal_boundaries(_GRID, w, _weighted_unit(feature_fn(centers).reshape(centers.numel(), -1), w), 2 ** bits)


def cell_bins(boundaries: torch.Tensor) -> torch.Tensor:
    """Each cell's bin (int64 (CELLS,)) for boundaries on the cells' edges."""
    return torch.bucketize(_GRID, boundaries, right=True)


# --- the fixed functions ------------------------------------------------------------------------------
_SQRT_2_PI = math.sqrt(2 / math.pi)


def _silu_grad(x: torch.Tensor) -> torch.Tensor:
    s = torch.sigmoid(x)
    return s * (1 + x * (1 - s))


def _gelu_grad(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2))) + x * torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _gelu_tanh_grad(x: torch.Tensor) -> torch.Tensor:
    t = torch.tanh(_SQRT_2_PI * (x + 0.044715 * x ** 3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * _SQRT_2_PI * (1 + 3 * 0.044715 * x * x)


def _hardswish_grad(x: torch.Tensor) -> torch.Tensor:
    # torch's convention at the knots: 0 below -3, x / 3 + 1/2 up to 3 included, 1 above
    return torch.where(x < -3, torch.zeros_like(x), torch.where(x <= 3, x / 3 + 0.5, torch.ones_like(x)))


#: name -> (function, derivative) of the fixed activations with a few-bit backward
FIXED_FUNCTIONS: dict[str, tuple[Callable, Callable]] = {
    "silu": (F.silu, _silu_grad),
    "gelu": (F.gelu, _gelu_grad),
    "gelu_tanh": (functools.partial(F.gelu, approximate="tanh"), _gelu_tanh_grad),
    "hardswish": (F.hardswish, _hardswish_grad),
}


@functools.lru_cache(maxsize=None)
def fixed_boundaries(name: str, bits: int) -> torch.Tensor:
    """The fitted bin boundaries of a fixed function (:data:`FIXED_FUNCTIONS`) at ``bits`` bits."""
    return _fit(FIXED_FUNCTIONS[name][1], bits)


@functools.lru_cache(maxsize=None)
def _fixed_bins(name: str, bits: int) -> torch.Tensor:
    return cell_bins(fixed_boundaries(name, bits))


class _FixedKernel(FewBitKernel):
    def __init__(self, name: str, bits: int) -> None:
        self.fn, self.grad = FIXED_FUNCTIONS[name]
        self.bits = bits
        self.lut = _fixed_bins(name, bits)

    def forward(self, x):
        return self.fn(x)

    def terms(self, x, z):
        return self.grad(x), ()


# --- RepAct ---------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _repact_boundaries(knots: tuple[float, ...], basis: bool, bits: int) -> torch.Tensor:
    def feats(x):
        if basis:  # f' = A + B [x >= 0] + Q r(x)
            r = torch.where(x < -3, torch.zeros_like(x), torch.where(x < 3, 2 * x + 3, torch.full_like(x, 6.0)))
            return torch.stack([(x >= 0).to(x.dtype), r], 1)
        inside = torch.nn.functional.one_hot(torch.bucketize(x, torch.tensor(knots, dtype=x.dtype), right=True),
                                             len(knots) + 1).to(x.dtype)
        return torch.cat([inside, x[:, None] * inside], 1)  # f' = a1 + 2 a2 x on each piece

    return _fit(feats, bits)


@functools.lru_cache(maxsize=None)
def _repact_bins(knots: tuple[float, ...], basis: bool, bits: int) -> torch.Tensor:
    return cell_bins(_repact_boundaries(knots, basis, bits))


def knots_on_cells(knots: Sequence[float]) -> bool:
    """Whether every knot is a cell edge inside the grid (the few-bit RepAct's condition)."""
    edges = set(_GRID[1:].tolist())
    return all(float(k) in edges for k in knots)


class _RepActKernel(FewBitKernel):
    """RepAct-I/II: gradients go to the fused coefficients (Cc, R), R = 4 (the basis E, A, B, Q) or 3 S
    (a piece table); autograd takes them on to the branch weights and the PReLU slope. On every cell
    the derivative and the features are polynomials of x (the knots are cell edges)."""

    polynomial = True

    def __init__(self, act, x: torch.Tensor, bits: int) -> None:
        self.act, self.bits = act, bits
        self.basis = act._op_base.shape[1] == 4
        self.channel_dim = act.channel_dim(x)
        self.tables = act.branch_weight.shape[0] if act.branch_weight.dim() == 2 else 1
        self.knots = tuple(float(k) for k in act._knots.tolist())
        self.lut = _repact_bins(self.knots, self.basis, bits)

    def forward(self, x, coef):
        return self.act._train_op(x)

    def cell_sums(self, moments, coef):
        n, s1, s2 = moments.unbind(-1)  # (T, CELLS) each
        c = coef.detach().to(torch.float64)
        e = _GRID.to(moments.device)
        if self.basis:
            a, b, q = (c[:, j, None] for j in (1, 2, 3))
            pos = (e >= 0).to(e.dtype)
            mid = ((e >= -3) & (e < 3)).to(e.dtype)
            hi = (e >= 3).to(e.dtype)
            slope = a * n + b * n * pos + q * (mid * (2 * s1 + 3 * n) + hi * 6 * n)
            feats = [n, s1, s1 * pos, mid * (s2 + 3 * s1) + hi * 6 * s1]
            return torch.stack([slope, *feats], -1)
        table = c.reshape(c.shape[0], -1, 3)
        seg = torch.bucketize(e, torch.tensor(self.knots, dtype=e.dtype, device=e.device), right=True)
        a1, a2 = table[:, seg, 1], table[:, seg, 2]  # (T, CELLS)
        slope = a1 * n + 2 * a2 * s1
        onehot = torch.nn.functional.one_hot(seg, table.shape[1]).to(e.dtype)  # (CELLS, S)
        feats = onehot[None, :, :, None] * moments[:, :, None, :]  # (T, CELLS, S, 3)
        return torch.cat([slope[..., None], feats.flatten(2)], -1)

    def param_grads(self, sums, meta):
        shape, dtype = meta[0]
        return (sums.reshape(shape).to(dtype),)


def repact_few_bit(act, x: torch.Tensor) -> torch.Tensor:
    """A RepAct-I/II forward whose backward keeps ``act.bits``-bit codes (``RepAct(bits=...)``)."""
    w, slope, base, part = cast_params(x, act.branch_weight, act.prelu_weight, act._op_base, act._op_part)
    coef = reference.coefficients(w, slope, base, part, act.variant == "softmax")
    return few_bit(x, _RepActKernel(act, x, act.bits), coef)


# --- ACON -----------------------------------------------------------------------------------------------
class _AconKernel(FewBitKernel):
    """ACON (d = p1 - p2, z = beta d x): f' = d SiLU'(z) + p2; df/dp1 = x SiLU'(z), df/dp2 = x - x SiLU'(z),
    df/dbeta = (d x)^2 sigmoid'(z)."""

    def __init__(self, x: torch.Tensor, channel_dim: int, params: Sequence[Optional[torch.Tensor]], bits: int) -> None:
        self.bits = bits
        self.channel_dim = channel_dim
        self.tables = max((p.numel() for p in params if p is not None), default=1)
        if self.tables > 1 and x.shape[channel_dim] != self.tables:
            raise ValueError(f"few-bit ACON: per-channel parameters of {self.tables} values do not match the input's "
                             f"{x.shape[channel_dim]} channels on dim {channel_dim}")
        self.lut = _fixed_bins("silu", bits)

    def forward(self, x, p1, p2, beta):
        return acon_op(x, p1, p2, beta)

    @staticmethod
    def _d(p1, p2):
        return (1 if p1 is None else p1) - (0 if p2 is None else p2)

    def bin_variable(self, x, p1, p2, beta):
        z = x * self._d(p1, p2)
        return z if beta is None else z * beta

    def terms(self, x, z, p1, p2, beta):
        d = self._d(p1, p2)
        u = x * d
        s = torch.sigmoid(z)
        ds = s * (1 - s)
        h = s + z * ds
        slope = d * h if p2 is None else d * h + p2
        return slope, (x * h, x, u * u * ds)

    def param_grads(self, sums, meta):
        gp1, gx, gbeta = sums[:, 0], sums[:, 1], sums[:, 2]
        out = []
        for g, m in zip((gp1, gx - gp1, gbeta), meta):
            if m is None:
                out.append(None)
                continue
            shape, dtype = m
            out.append((g.sum() if math.prod(shape) == 1 else g).reshape(shape).to(dtype))
        return tuple(out)


def acon_few_bit(x: torch.Tensor, p1, p2, beta, channel_dim: int, bits: int) -> torch.Tensor:
    """ACON's op (:func:`repact.ops.acon`) with the few-bit backward."""
    p1, p2, beta = cast_params(x, p1, p2, beta)
    return few_bit(x, _AconKernel(x, channel_dim, (p1, p2, beta), bits), p1, p2, beta)


# --- the module for fixed functions ---------------------------------------------------------------------
def _tracing() -> bool:
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.compiler.is_compiling()


def uses_few_bit(bits: Optional[int], x: torch.Tensor, params=()) -> bool:
    """Whether a forward with ``bits`` takes the few-bit path: bits set, gradients wanted, no tracer."""
    if bits is None or not torch.is_grad_enabled() or _tracing():
        return False
    return x.requires_grad or any(p is not None and p.requires_grad for p in params)


class FewBit(Activation):
    """A fixed activation (``silu``, ``gelu``, ``gelu_tanh``, ``hardswish``) with a few-bit backward.

    The forward is torch's function exactly; with ``bits`` (1, 2 or 4) and gradients wanted,
    backward keeps a ``bits``-bit code per element instead of the input (``bits=None``: torch's
    backward). No parameters, so state dicts are those of the torch module it replaces.
    """

    def __init__(self, fn: str = "silu", bits: Optional[int] = 4, *, channels=None, channels_last=False,
                 inplace=False) -> None:
        if fn not in FIXED_FUNCTIONS:
            raise ValueError(f"unknown few-bit function {fn!r}; choose one of {', '.join(FIXED_FUNCTIONS)}")
        super().__init__(None, channels_last=channels_last)
        self.fn = fn
        self.bits = check_bits(bits)
        self._finish_init()

    def forward(self, x):
        self.infer_channels(x)
        if uses_few_bit(self.bits, x):
            return few_bit(x, _FixedKernel(self.fn, self.bits))
        return FIXED_FUNCTIONS[self.fn][0](x)

    def extra_repr(self) -> str:
        return f"fn={self.fn!r}, bits={self.bits}"


def _fixed_name(m: nn.Module) -> Optional[str]:
    if isinstance(m, nn.SiLU):
        return "silu"
    if isinstance(m, nn.Hardswish):
        return "hardswish"
    if isinstance(m, nn.GELU):
        return "gelu_tanh" if m.approximate == "tanh" else "gelu"
    return None


def set_backward_bits(model: nn.Module, bits: Optional[int]) -> list[str]:
    """Give every activation of ``model`` that has one a ``bits``-bit backward, in place; returns their paths.

    RepAct-I/II and ACON-C take ``bits`` as they are; torch's SiLU, GELU and HardSwish modules are
    replaced by :class:`FewBit` (no parameters, so the state dict is unchanged). ``bits=None``
    turns every few-bit backward back to the full one. Forwards are unchanged either way.
    """
    from .acon import AconC
    from .repact import RepAct

    bits = check_bits(bits)
    done = []
    for path, m in list(model.named_modules()):
        if isinstance(m, (RepAct, AconC, FewBit)):
            if bits is not None and isinstance(m, RepAct) and m.few_bit_problem() is not None:
                continue
            m.bits = bits
            done.append(path)
        elif bits is not None and _fixed_name(m) is not None and path:
            parent_path, _, name = path.rpartition(".")
            parent = model.get_submodule(parent_path) if parent_path else model
            new = FewBit(_fixed_name(m), bits)
            new.train(m.training)
            setattr(parent, name, new)
            done.append(path)
    return done


def saved_bytes(fn: Callable, *args, **kwargs) -> tuple[int, object]:
    """``(bytes, output)``: the distinct storages autograd saves for backward while ``fn(*args)`` runs,
    measured with ``torch.autograd.graph.saved_tensors_hooks``."""
    seen: dict[int, int] = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(*args, **kwargs)
    return sum(seen.values()), out


def backward_error(act: nn.Module, x: torch.Tensor, bits: int, seed: int = 0, draws: int = 8) -> dict[str, float]:
    """Relative L2 errors of the few-bit input gradient (``"input"``) and parameter gradients
    (``"params"``) against the full backward on ``x``, for ``draws`` independent N(0, 1) upstream
    gradients: sqrt(sum of squared errors / sum of squared full gradients) over the draws, so the
    parameter error estimates its expectation over upstream gradients (one draw's sum over the
    elements is as noisy as its error). ``act`` must accept ``bits``."""
    gen = torch.Generator().manual_seed(seed)
    gs = [torch.randn(x.shape, generator=gen, dtype=x.dtype) for _ in range(draws)]
    old = act.bits
    grads = []
    try:
        for b in (None, bits):
            act.bits = b
            xi = x.detach().clone().requires_grad_(True)
            params = [p for p in act.parameters() if p.requires_grad]
            y = act(xi)
            grads.append([torch.autograd.grad(y, [xi, *params], g, retain_graph=True) for g in gs])
    finally:
        act.bits = old
    err = {"input": [0.0, 0.0], "params": [0.0, 0.0]}
    for full, few in zip(*grads):
        err["input"][0] += float((few[0] - full[0]).square().sum())
        err["input"][1] += float(full[0].square().sum())
        for a, b in zip(full[1:], few[1:]):
            err["params"][0] += float((b - a).square().sum())
            err["params"][1] += float(a.square().sum())
    return {k: math.sqrt(e / max(t, 1e-300)) for k, (e, t) in err.items() if t > 0}
