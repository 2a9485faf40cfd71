"""RepAct (arXiv 2407.00131): a learnable multi-branch activation that fuses into one piecewise quadratic.

* RepAct-I  (``repact``):         y = sum_k w_k b_k(x)
* RepAct-II (``repact_softmax``): y = sum_k softmax(theta)_k b_k(x)
* RepAct-III (``repact_bn``):     y = BN(sum_k w_k b_k(x))

Branches default to the paper's (identity, relu, prelu, hardswish), weights start at 1/N and the
PReLU slope at 0.25. ``granularity="layer"`` keeps one scalar per branch per layer (the paper);
``"channel"`` keeps one per channel (an extension). RepAct-III's BatchNorm is layer-global for
``layer`` (one mean and variance over every element, as the official code) and per-channel for
``channel``.

Training never builds the branch tensors: the branch sum equals the fused piecewise quadratic
for any parameter values, so the forward evaluates that (with coefficients computed from the
parameters under autograd) and the backward recomputes from the input alone. ``forward_branches``
computes the literal branch sum, for checks and as the reference.
"""

from __future__ import annotations

from typing import Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import fuse
from ..ops.piecewise import (
    _NATIVE_DTYPES,
    _use_native,
    get_backend,
    native_available,
    native_train_backward,
    native_train_forward,
    piecewise_quadratic,
    piecewise_quadratic_backward,
)
from .base import Activation, NotDeployableError
from .piecewise import PiecewiseQuadratic

__all__ = ["RepAct", "repact_branch_fn", "VARIANTS", "GRANULARITIES"]

VARIANTS = ("origin", "softmax", "bn")
GRANULARITIES = ("layer", "channel")

_BRANCH_FNS = {
    "identity": lambda x, a: x,
    "relu": lambda x, a: F.relu(x),
    "prelu": lambda x, a: torch.where(x >= 0, x, a * x),
    "leaky_relu": lambda x, a: F.leaky_relu(x, 0.01),
    "hardswish": lambda x, a: F.hardswish(x),
    "relu6": lambda x, a: F.relu6(x),
    "hardtanh": lambda x, a: F.hardtanh(x),
    "hardsigmoid": lambda x, a: F.hardsigmoid(x),
    "abs": lambda x, a: x.abs(),
    "square": lambda x, a: x * x,
    # branches without an exact piecewise-polynomial form: trainable, not deployable
    "silu": lambda x, a: F.silu(x),
    "gelu": lambda x, a: F.gelu(x),
    "tanh": lambda x, a: torch.tanh(x),
    "sigmoid": lambda x, a: torch.sigmoid(x),
    "elu": lambda x, a: F.elu(x),
    "mish": lambda x, a: F.mish(x),
    "softplus": lambda x, a: F.softplus(x),
}


def repact_branch_fn(name: str):
    """The branch function ``f(x, slope)`` for a branch name."""
    try:
        return _BRANCH_FNS[name]
    except KeyError:
        raise ValueError(f"unknown RepAct branch {name!r}; choose from {', '.join(sorted(_BRANCH_FNS))}") from None


class _BatchNormFoldFn(torch.autograd.Function):
    """Training-mode BN over the piecewise quadratic, keeping only the input for backward.

    Forward: s = PQ(x; coeffs), batch mean/var of s over ``dims``, y = gamma (s - mean) / std + beta.
    Backward recomputes s from x.
    """

    @staticmethod
    def forward(ctx, x, knots, coeffs, gamma, beta, eps, channel_dim, dims):
        with torch.no_grad():  # (a compiler tracing this may not have switched grad off itself)
            s = piecewise_quadratic(x, knots, coeffs, channel_dim)
        var, mean = torch.var_mean(s, dim=dims, unbiased=False, keepdim=True)
        invstd = torch.rsqrt(var + eps)
        g = gamma.reshape(mean.shape) if gamma.numel() > 1 else gamma.reshape([1] * x.dim())
        b = beta.reshape(mean.shape) if beta.numel() > 1 else beta.reshape([1] * x.dim())
        y = s.sub_(mean).mul_(invstd * g).add_(b)
        ctx.save_for_backward(x, knots, coeffs, gamma, mean, invstd)
        ctx.channel_dim = channel_dim
        ctx.dims = dims
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, gy, _gmean, _gvar):
        x, knots, coeffs, gamma, mean, invstd = ctx.saved_tensors
        dims = ctx.dims
        with torch.no_grad():
            s = piecewise_quadratic(x, knots, coeffs, ctx.channel_dim)
            shat = s.sub_(mean).mul_(invstd)
            n = x.numel() // max(mean.numel(), 1)
            gbeta = gy.sum(dim=dims, keepdim=True)
            ggamma = (gy * shat).sum(dim=dims, keepdim=True)
            g = gamma.reshape(mean.shape) if gamma.numel() > 1 else gamma.reshape([1] * x.dim())
            gs = shat.mul_(ggamma / n).neg_().add_(gy).sub_(gbeta / n).mul_(invstd * g)
            gx, gc = piecewise_quadratic_backward(gs, x, knots, coeffs, ctx.channel_dim, ctx.needs_input_grad[0],
                                                  ctx.needs_input_grad[2])
        return gx, None, gc, ggamma.reshape(gamma.shape), gbeta.reshape(gamma.shape), None, None, None


def _fused_forward(x, w_raw, slope, gamma, beta, knots, base, part, softmax: bool, eps: float, cd: int):
    """RepAct's training forward in one native call: ``(y, mean, var)``, mean/var empty for I/II.

    The C entry point builds the table from the branch weights, and for RepAct-III with batch
    statistics makes a statistics pass and folds the BatchNorm into the table before its one pass
    over the input (mean/var (Cc,) float64 are then the batch statistics).
    """
    out = native_train_forward(x, w_raw, slope, gamma, beta, knots, base, part, softmax, eps, cd)
    if out is None:
        raise RuntimeError(f"the native RepAct kernel does not apply to this input ({x.dtype}, shape "
                           f"{tuple(x.shape)}, channels on dim {cd})")
    return out


def _fused_backward(g, x, w_raw, slope, gamma, mean, var, knots, base, part, softmax, eps, cd, need_x, need_table):
    """Gradients ``(gx, g_w_raw, g_slope, g_gamma, g_beta)`` (None where not needed or not present)."""
    out = native_train_backward(g, x, w_raw, slope, gamma, mean, var, knots, base, part, softmax, eps, cd,
                                need_x, need_table)
    if out is None:
        raise RuntimeError(f"the native RepAct kernel does not apply to this gradient ({g.dtype}, shape "
                           f"{tuple(g.shape)})")
    return out


class _FusedRepActFn(torch.autograd.Function):
    """Eager autograd wrapper of the fused op (no dispatcher overhead); keeps the input and the
    tiny parameters only."""

    @staticmethod
    def forward(ctx, x, w_raw, slope, gamma, beta, knots, base, part, softmax, eps, cd):
        with torch.no_grad():
            y, mean, var = _fused_forward(x, w_raw, slope, gamma, beta, knots, base, part, softmax, eps, cd)
        ctx.save_for_backward(x, w_raw, slope, gamma, mean, var, knots, base, part)
        ctx.conf = (softmax, eps, cd)
        ctx.mark_non_differentiable(mean, var)
        return y, mean, var

    @staticmethod
    def backward(ctx, g, _gmean, _gvar):
        x, w_raw, slope, gamma, mean, var, knots, base, part = ctx.saved_tensors
        softmax, eps, cd = ctx.conf
        with torch.no_grad():
            grads = _fused_backward(g, x, w_raw, slope, gamma, mean, var, knots, base, part, softmax, eps, cd,
                                    ctx.needs_input_grad[0], any(ctx.needs_input_grad[1:3]))
        return (*grads, None, None, None, None, None, None)


# The same op registered with the dispatcher, for torch.compile (which cannot trace a ctypes call
# but keeps a registered op as one opaque node). Defined through torch.library.Library rather than
# torch.library.custom_op: the plain CPU kernel costs ~70 us less per compiled forward + backward
# (custom_op's wrapper runs at every call), the same outputs.
_LIB = torch.library.Library("repact", "DEF")
_LIB.define(
    "repact_train(Tensor x, Tensor w_raw, Tensor? slope, Tensor? gamma, Tensor? beta, Tensor knots, Tensor base, "
    "Tensor part, bool softmax, float eps, int cd) -> (Tensor, Tensor, Tensor)"
)
_LIB.define(
    "repact_train_backward(Tensor g, Tensor x, Tensor w_raw, Tensor? slope, Tensor? gamma, Tensor mean, "
    "Tensor var, Tensor knots, Tensor base, Tensor part, bool softmax, float eps, int cd) -> Tensor[]"
)


def _train_backward_kernel(g, x, w_raw, slope, gamma, mean, var, knots, base, part, softmax, eps, cd):
    grads = _fused_backward(g, x, w_raw, slope, gamma, mean, var, knots, base, part, softmax, eps, cd, True, True)
    return [t if t is not None else x.new_empty(0) for t in grads]


_LIB.impl("repact_train", _fused_forward, "CPU")
_LIB.impl("repact_train_backward", _train_backward_kernel, "CPU")


@torch.library.register_fake("repact::repact_train", lib=_LIB)
def _(x, w_raw, slope, gamma, beta, knots, base, part, softmax, eps, cd):
    n = 0 if gamma is None else gamma.numel()
    return torch.empty_like(x), x.new_empty(n, dtype=torch.float64), x.new_empty(n, dtype=torch.float64)


@torch.library.register_fake("repact::repact_train_backward", lib=_LIB)
def _(g, x, w_raw, slope, gamma, mean, var, knots, base, part, softmax, eps, cd):
    empty = x.new_empty(0)
    return [torch.empty_like(x), torch.empty_like(w_raw), torch.empty_like(slope) if slope is not None else empty,
            torch.empty_like(gamma) if gamma is not None else empty,
            torch.empty_like(gamma) if gamma is not None else empty]


_repact_train_op = torch.ops.repact.repact_train.default
_repact_train_backward_op = torch.ops.repact.repact_train_backward.default


def _setup(ctx, inputs, output):
    x, w_raw, slope, gamma, beta, knots, base, part, softmax, eps, cd = inputs
    _, mean, var = output
    ctx.save_for_backward(x, w_raw, slope, gamma, mean, var, knots, base, part)
    ctx.conf = (softmax, eps, cd, slope is not None, gamma is not None)


def _backward(ctx, g, _gmean, _gvar):
    x, w_raw, slope, gamma, mean, var, knots, base, part = ctx.saved_tensors
    softmax, eps, cd, has_slope, has_bn = ctx.conf
    gx, gw, gslope, ggamma, gbeta = _repact_train_backward_op(g, x, w_raw, slope, gamma, mean, var, knots, base,
                                                              part, softmax, eps, cd)
    return (gx, gw, gslope if has_slope else None, ggamma if has_bn else None, gbeta if has_bn else None,
            None, None, None, None, None, None)


torch.library.register_autograd("repact::repact_train", _backward, setup_context=_setup, lib=_LIB)


@torch._dynamo.assume_constant_result
def _native_ok() -> bool:
    return get_backend() != "torch" and native_available()


class RepAct(Activation):
    """RepAct-I/II/III; see the module docstring.

    Args:
        channels: channel count, needed (or inferred on first forward) for ``granularity="channel"``.
        variant: ``"origin"`` (I), ``"softmax"`` (II) or ``"bn"`` (III).
        granularity: ``"layer"`` (paper) or ``"channel"``.
        branches: branch names, in the order of the weights; default (identity, relu, prelu, hardswish).
        weight_init: initial branch weight (RepAct-II: logit); default 1 / len(branches).
        prelu_init: initial PReLU slope (0.25, PyTorch's default as in the paper).
        bn_eps, bn_momentum: RepAct-III BatchNorm settings (PyTorch defaults).
        channels_last: channels on the last dim (token tensors (N, ..., C)).
        inplace: accepted for ``act_layer(inplace=True)`` compatibility; the input is never modified.
    """

    deployable = True

    def __init__(
        self,
        channels: int | None = None,
        *,
        variant: str = "origin",
        granularity: str = "layer",
        branches: Sequence[str] = fuse.CANONICAL_BRANCHES,
        weight_init: float | None = None,
        prelu_init: float = 0.25,
        bn_eps: float = 1e-5,
        bn_momentum: float | None = 0.1,
        channels_last: bool = False,
        inplace: bool = False,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown RepAct variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")
        branches = tuple(str(b).lower() for b in branches)
        if not branches:
            raise ValueError("RepAct needs at least one branch")
        for b in branches:
            repact_branch_fn(b)
        if len(set(branches)) != len(branches):
            raise ValueError(f"branches must be distinct, got {branches}")
        super().__init__(channels if granularity == "channel" else None, channels_last=channels_last)
        self.variant = variant
        self.granularity = granularity
        self.branches = branches
        self.weight_init = 1.0 / len(branches) if weight_init is None else float(weight_init)
        self.prelu_init = float(prelu_init)
        self.bn_eps = float(bn_eps)
        self.bn_momentum = bn_momentum
        self.piecewise = all(fuse.is_piecewise_branch(b) for b in branches)
        self.has_slope = "prelu" in branches
        if self.piecewise:
            for name, value in self._fuse_constants(torch.float32, None).items():
                self.register_buffer(name, value, persistent=False)
            self.flops_train = 4.0 + self._knots.numel() + (2.0 if variant == "bn" else 0.0)
            self.flops_deploy = 4.0 + self._knots.numel()
        else:
            self.flops_train = 3.0 * len(branches) + (2.0 if variant == "bn" else 0.0)
        self._finish_init()

    # --- construction ----------------------------------------------------------------------------
    def _fuse_constants(self, dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
        """The fuse buffers, computed in float64 and rounded once to ``dtype``: the knots, the table's
        linear map (``_basis``, ``_slope_basis``) and what the native training op reads
        (``_native_base/_part``: the maps onto RepAct's own basis where the branch set has one, as
        the paper's does, with half the arithmetic of the table; else the table's)."""
        knots, base, part = fuse.linear_basis(self.branches, dtype=torch.float64)
        maps = fuse.hardswish_basis_map(self.branches, dtype=torch.float64)
        if maps is None:
            maps = base.reshape(base.shape[0], -1), part.reshape(part.shape[0], -1)
        consts = {"_knots": torch.tensor(knots, dtype=torch.float64), "_basis": base, "_slope_basis": part,
                  "_native_base": maps[0], "_native_part": maps[1]}
        return {k: v.to(device=device, dtype=dtype).contiguous() for k, v in consts.items()}

    def _apply(self, fn, recurse=True):
        # a cast (.double(), .to(dtype), .half()) re-rounds the fuse constants from float64 rather
        # than from their float32 values, so a float64 RepAct holds 1/6 to float64 precision
        out = super()._apply(fn, recurse)
        if self.piecewise and self._basis.dtype.is_floating_point:
            for name, value in self._fuse_constants(self._basis.dtype, self._basis.device).items():
                setattr(self, name, value)
        return out

    @property
    def needs_channels(self) -> bool:
        return self.granularity == "channel"

    def _build(self, channels: int | None) -> None:
        rows = channels if self.granularity == "channel" else None
        nb = len(self.branches)
        shape = (rows, nb) if rows else (nb,)
        self.branch_weight = nn.Parameter(torch.full(shape, self.weight_init))
        if self.has_slope:
            self.prelu_weight = nn.Parameter(torch.full((rows or 1,), self.prelu_init))
        else:
            self.register_parameter("prelu_weight", None)
        if self.variant == "bn":
            self.bn = nn.BatchNorm1d(rows or 1, eps=self.bn_eps, momentum=self.bn_momentum)

    def _channels_from_state(self, state_dict, prefix):
        w = state_dict.get(prefix + "branch_weight")
        if torch.is_tensor(w) and w.dim() == 2:
            return w.shape[0]
        return None

    # --- fused coefficients -------------------------------------------------------------------------
    def branch_weights(self) -> torch.Tensor:
        """Effective branch weights (after softmax for RepAct-II), shape (Cc, nb)."""
        w = self.branch_weight
        w = w.reshape(1, -1) if w.dim() == 1 else w
        return fuse.softmax_weights(w) if self.variant == "softmax" else w

    def piece_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Knots and (Cc, S, 3) coefficients of the branch sum, before any BatchNorm; differentiable."""
        if not self.piecewise:
            bad = [b for b in self.branches if not fuse.is_piecewise_branch(b)]
            raise NotDeployableError(
                f"RepAct branches {bad} have no exact piecewise-polynomial form, so this activation cannot be "
                f"re-parameterized exactly; piecewise branches are: {', '.join(sorted(fuse.PIECEWISE_BRANCHES))}"
            )
        coeffs = fuse.apply_basis(self.branch_weights(), self.prelu_weight, self._basis, self._slope_basis)
        return self._knots, coeffs

    def _reduce_dims(self, x: torch.Tensor) -> list[int]:
        if self.granularity == "layer":
            return list(range(x.dim()))
        cd = self.channel_dim(x)
        return [d for d in range(x.dim()) if d != cd]

    def _bn_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        return fuse.batchnorm_affine(self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias, self.bn.eps)

    def _use_batch_stats(self, x: torch.Tensor) -> bool:
        if not (self.training or self.bn.running_mean is None):
            return False
        per_group = x.numel() // (self.bn.num_features if self.granularity == "channel" else 1)
        # one value per group has no variance: fall back to the running statistics (batch size 1)
        return per_group > 1

    def _update_running(self, mean: torch.Tensor, var: torch.Tensor, n: int) -> None:
        bn = self.bn
        if not (self.training and bn.track_running_stats):
            return
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            factor = bn.momentum if bn.momentum is not None else 1.0 / float(bn.num_batches_tracked)
            unbiased = var.reshape(-1) * (n / max(n - 1, 1))
            bn.running_mean.mul_(1 - factor).add_(mean.reshape(-1).to(bn.running_mean.dtype), alpha=factor)
            bn.running_var.mul_(1 - factor).add_(unbiased.to(bn.running_var.dtype), alpha=factor)

    def _fused_applies(self, x: torch.Tensor) -> bool:
        """Whether the native training op runs this call (eagerly, or as custom ops when compiled)."""
        if not x.is_cpu or x.dtype not in _NATIVE_DTYPES or self.branch_weight.dtype != x.dtype:
            return False
        if torch.compiler.is_compiling():
            if not _native_ok():
                return False
        elif type(x) is not torch.Tensor or x.numel() == 0 or not _use_native(x):
            return False
        if self.variant != "bn":
            return True
        return self._use_batch_stats(x) and self.bn.weight is not None and self.bn.weight.dtype == x.dtype

    # --- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.infer_channels(x)
        self.check_channels(x)
        if not self.piecewise:
            return self._forward_generic(x)
        cd = self.channel_dim(x)
        if self._fused_applies(x):
            bn = self.variant == "bn"
            fn = _repact_train_op if torch.compiler.is_compiling() else _FusedRepActFn.apply
            y, mean, var = fn(
                x, self.branch_weight, self.prelu_weight, self.bn.weight if bn else None,
                self.bn.bias if bn else None, self._knots, self._native_base, self._native_part,
                self.variant == "softmax", self.bn.eps if bn else 0.0, cd,
            )
            if bn:
                self._update_running(mean, var, x.numel() // mean.numel())
            return y
        knots, coeffs = self.piece_table()
        if self.variant != "bn":
            return piecewise_quadratic(x, knots, coeffs, cd)
        if not self._use_batch_stats(x):
            scale, shift = self._bn_affine()
            return piecewise_quadratic(x, knots, fuse.fold_affine(coeffs, scale, shift), cd)
        if torch.compiler.is_compiling():
            # plain ops, recomputed from x in backward (left to itself, the compiler's partitioner
            # keeps one boolean mask per knot instead, which costs memory and is slow to store)
            y, mean, var = checkpoint(self._pq_batchnorm, x, knots, coeffs, cd, use_reentrant=False)
            self._update_running(mean, var, x.numel() // mean.numel())
            return y
        dims = self._reduce_dims(x)
        y, mean, var = _BatchNormFoldFn.apply(x, knots, coeffs, self.bn.weight, self.bn.bias, self.bn.eps, cd, dims)
        self._update_running(mean, var, x.numel() // mean.numel())
        return y

    def _pq_batchnorm(self, x, knots, coeffs, cd):
        """Training-mode BatchNorm over the piecewise quadratic in plain ops; returns (y, mean, var)."""
        s = piecewise_quadratic(x, knots, coeffs, cd)
        dims = self._reduce_dims(x)
        # two plain reductions: the compiler vectorizes sums far better than a Welford var_mean
        mean = s.mean(dim=dims, keepdim=True)
        var = (s - mean).square().mean(dim=dims, keepdim=True)
        gamma, beta = self.bn.weight, self.bn.bias
        if gamma.numel() > 1:
            gamma, beta = self._per_channel(gamma, x, cd), self._per_channel(beta, x, cd)
        y = (s - mean) * torch.rsqrt(var + self.bn.eps) * gamma + beta
        return y, mean.detach(), var.detach()

    def _branch_sum(self, x: torch.Tensor) -> torch.Tensor:
        w = self.branch_weights()
        cd = self.channel_dim(x)
        slope = self.prelu_weight
        if slope is not None and slope.numel() > 1:
            slope = self._per_channel(slope, x, cd)
        out = None
        for k, name in enumerate(self.branches):
            wk = w[:, k]
            wk = self._per_channel(wk, x, cd) if wk.numel() > 1 else wk.reshape([1] * x.dim())
            term = wk * repact_branch_fn(name)(x, slope)
            out = term if out is None else out + term
        return out

    @staticmethod
    def _per_channel(t: torch.Tensor, x: torch.Tensor, cd: int) -> torch.Tensor:
        shape = [1] * x.dim()
        shape[cd] = t.numel()
        return t.reshape(shape)

    def _batchnorm(self, s: torch.Tensor, update: bool) -> torch.Tensor:
        dims = self._reduce_dims(s)
        cd = self.channel_dim(s)
        if self._use_batch_stats(s):
            var, mean = torch.var_mean(s, dim=dims, unbiased=False, keepdim=True)
            if update:
                self._update_running(mean, var, s.numel() // mean.numel())
            invstd = torch.rsqrt(var + self.bn.eps)
            gamma, beta = self.bn.weight, self.bn.bias
            if gamma.numel() > 1:
                gamma, beta = self._per_channel(gamma, s, cd), self._per_channel(beta, s, cd)
            return (s - mean) * invstd * gamma + beta
        scale, shift = self._bn_affine()
        if scale.numel() > 1:
            scale, shift = self._per_channel(scale, s, cd), self._per_channel(shift, s, cd)
        return s * scale + shift

    def _forward_generic(self, x: torch.Tensor) -> torch.Tensor:
        # non-piecewise branch sets: recompute the branches in backward instead of storing them
        if torch.is_grad_enabled() and (x.requires_grad or self.branch_weight.requires_grad):
            s = checkpoint(self._branch_sum, x, use_reentrant=False)
        else:
            s = self._branch_sum(x)
        return self._batchnorm(s, update=True) if self.variant == "bn" else s

    def forward_branches(self, x: torch.Tensor) -> torch.Tensor:
        """The literal branch sum (each branch evaluated on its own), as in the paper's training form.

        In training mode RepAct-III normalizes with batch statistics but does not update the
        running ones, so calling this has no side effects.
        """
        self.infer_channels(x)
        self.check_channels(x)
        s = self._branch_sum(x)
        return self._batchnorm(s, update=False) if self.variant == "bn" else s

    # --- deploy --------------------------------------------------------------------------------
    @torch.no_grad()
    def deploy_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Knots and coefficients of the eval-mode function (BN folded with running statistics)."""
        knots, coeffs = self.piece_table()
        if self.variant == "bn":
            scale, shift = self._bn_affine()
            coeffs = fuse.fold_affine(coeffs, scale, shift)
        return knots.detach().clone(), coeffs.detach().clone()

    def to_deploy(self) -> PiecewiseQuadratic:
        if not self._built:
            raise NotDeployableError(
                "this channel-wise RepAct has not seen an input yet (channels=None); run one forward pass "
                "or pass channels= before re-parameterizing"
            )
        knots, coeffs = self.deploy_table()
        return PiecewiseQuadratic(knots, coeffs, channels_last=self.channels_last)

    def extra_repr(self) -> str:
        parts = [f"variant={self.variant!r}", f"granularity={self.granularity!r}"]
        if self.branches != fuse.CANONICAL_BRANCHES:
            parts.append(f"branches={self.branches}")
        base = super().extra_repr()
        return ", ".join(parts + ([base] if base else []))
