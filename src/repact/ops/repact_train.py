"""RepAct's training op: the fused function of the branch weights, with RepAct-III's BatchNorm.

    y = s(x)                                             RepAct-I/II (gamma None)
    y = gamma (s(x) - mean) / sqrt(var + eps) + beta     RepAct-III

where ``s`` is the piecewise quadratic whose coefficients are ``w @ base + (w * slope) @ part``
(``w = softmax(w_raw)`` for RepAct-II; ``base``/``part`` map the branch weights onto the table's
rows, or onto RepAct's own basis for the paper's branch sets, ``repact.fuse.hardswish_basis_map``)
and mean/var are the batch statistics of ``s`` (per table), those of every process of a group
(``--sync-bn``), or given running statistics (eval mode).

The parameters come in :func:`repact.ops.dispatch.param_dtype` of ``x`` (the dispatch's one dtype
rule; ``y`` has ``x``'s dtype). Only ``x`` and the parameters are kept for backward. Each backend
(``cpu``: one C call each way; ``triton``: a few kernels) computes the same thing as
:func:`repact.ops.reference.repact_train`; under ``torch.compile`` the kernels run as the
registered op ``torch.ops.repact.repact_train``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch.utils.checkpoint import checkpoint

from . import reference
from .batchnorm import backward_terms, gather_moments, moments_from_sums
from .cpu import BN_BATCH, BN_CONST, BN_GIVEN, BN_NONE, TrainArgs
from .dispatch import cast_params, choose
from .layout import flat_view
from .piecewise import backend_module

__all__ = ["repact_train", "TrainArgs"]


def _bn_mode(gamma, running_mean, group) -> int:
    if gamma is None:
        return BN_NONE
    if running_mean is not None:
        return BN_CONST
    return BN_GIVEN if group is not None else BN_BATCH


def _kernel_forward(mod, view, a: TrainArgs, bn: int, running_mean, running_var, group):
    """(y, mean, var, count) from a backend's kernels; with a group the statistics of every
    process's batch (count-weighted), reduced between the statistics pass and the forward pass."""
    count = view.data.numel() // a.rows
    if bn == BN_GIVEN:
        shift, sums = mod.train_sums(view, a)
        mean, var = moments_from_sums(count, shift, sums[0], sums[1])
        mean, var, count = gather_moments(count, mean, var, group)
        y, _, _ = mod.train_forward(view, a, BN_GIVEN, mean, var)
        return y, mean, var, count
    if bn == BN_CONST:
        y, _, _ = mod.train_forward(view, a, BN_CONST, running_mean, running_var)
        return y, None, None, 0
    y, mean, var = mod.train_forward(view, a, bn)
    return y, mean, var, count


def _kernel_backward(mod, view, g, a: TrainArgs, bn: int, mean, var, count, group, need_x, need_params):
    if bn != BN_GIVEN:
        return mod.train_backward(view, g, a, bn, mean, var, None, count, need_x, need_params)
    # synced statistics: the input's gradient takes every process's sums of g and g (s - mean);
    # gamma's and beta's stay this process's share (DDP reduces parameter gradients itself)
    import torch.distributed as dist

    _, local = mod.train_sums(view, a, g, mean)
    total = local.clone()
    dist.all_reduce(total, group=group)
    gx, gw, gsl, ggm, gbt = mod.train_backward(view, g, a, bn, mean, var, total, count, need_x, need_params)
    *_, ggm_local, gbt_local = backward_terms(a.gamma.detach().to(local.dtype), var.to(local.dtype), a.eps,
                                              local[0], local[1], count, False)
    return gx, gw, gsl, ggm_local.to(ggm.dtype), gbt_local.to(gbt.dtype)


class _TrainFn(torch.autograd.Function):
    """Eager autograd wrapper of a backend's kernels; keeps the input and the tiny parameters only."""

    @staticmethod
    def forward(ctx, x, w_raw, slope, gamma, beta, running_mean, running_var, knots, base, part, softmax, eps, cd,
                name, group, view):
        a = TrainArgs(w_raw, slope, gamma, beta, knots, base, part, softmax, eps)
        bn = _bn_mode(gamma, running_mean, group)
        with torch.no_grad():
            y, mean, var, count = _kernel_forward(backend_module(name), view, a, bn, running_mean, running_var, group)
        batch = bn in (BN_BATCH, BN_GIVEN)
        kept = (mean, var) if batch else (running_mean, running_var)
        ctx.save_for_backward(x, w_raw, slope, gamma, beta, knots, base, part, *kept)
        ctx.conf = (softmax, eps, cd, name, group, bn, count)
        if batch:
            ctx.mark_non_differentiable(mean, var)
        return (y if y.shape == x.shape else y.reshape(x.shape)), mean, var, count

    @staticmethod
    def backward(ctx, g, _gmean, _gvar, _count):
        x, w_raw, slope, gamma, beta, knots, base, part, mean, var = ctx.saved_tensors
        softmax, eps, cd, name, group, bn, count = ctx.conf
        a = TrainArgs(w_raw, slope, gamma, beta, knots, base, part, softmax, eps)
        view = flat_view(x, cd, a.rows)
        need_params = any(ctx.needs_input_grad[1:3])
        with torch.no_grad():
            gx, gw, gsl, ggm, gbt = _kernel_backward(backend_module(name), view, g, a, bn, mean, var, count, group,
                                                    ctx.needs_input_grad[0], need_params)
        if gx is not None and gx.shape != x.shape:
            gx = gx.reshape(x.shape)
        return gx, gw, gsl, ggm, gbt, None, None, None, None, None, None, None, None, None, None, None


def repact_train(x: torch.Tensor, w_raw: torch.Tensor, slope: Optional[torch.Tensor], gamma: Optional[torch.Tensor],
                 beta: Optional[torch.Tensor], running_mean: Optional[torch.Tensor],
                 running_var: Optional[torch.Tensor], knots: torch.Tensor, base: torch.Tensor, part: torch.Tensor,
                 softmax: bool, eps: float, channel_dim: int, group=None):
    """RepAct's training op: ``(y, mean, var, count)``; see the module docstring.

    ``w_raw`` (nb,) or (Cc, nb); ``slope``, ``gamma``, ``beta``, ``running_mean``/``running_var``
    (Cc,) or None; ``base``/``part`` (nb, R). mean/var (Cc,) are the batch statistics (None unless
    RepAct-III uses batch statistics) over ``count`` values per table (every process's with a
    ``group``). The backend comes from :func:`repact.ops.dispatch.choose`; every tensor but ``x``
    is cast to :func:`repact.ops.dispatch.param_dtype` of ``x`` first, whichever backend runs.
    """
    w_raw, slope, gamma, beta, running_mean, running_var, knots, base, part = cast_params(
        x, w_raw, slope, gamma, beta, running_mean, running_var, knots, base, part)
    cc = w_raw.shape[0] if w_raw.dim() == 2 else 1
    bn = _bn_mode(gamma, running_mean, group)
    if torch.compiler.is_compiling() and group is None:
        if choose(x, compiled=True) != "reference":
            from . import registered

            y, mean, var = registered.train_op(x, w_raw, slope, gamma, beta, running_mean, running_var, knots, base,
                                               part, softmax, eps, channel_dim)
            batch = bn == BN_BATCH
            return y, mean if batch else None, var if batch else None, x.numel() // cc if batch else 0
        name = "reference"
    else:
        name = choose(x)
    view = None if name == "reference" else flat_view(x, channel_dim, cc)
    if view is None:
        name = "reference"
    needs_grad = torch.is_grad_enabled() and (
        x.requires_grad or w_raw.requires_grad or (slope is not None and slope.requires_grad)
        or (gamma is not None and gamma.requires_grad) or (beta is not None and beta.requires_grad))
    if name == "reference":
        args = (x, w_raw, slope, gamma, beta, running_mean, running_var, knots, base, part, softmax, eps,
                channel_dim, group)
        if needs_grad:
            # plain ops, recomputed from x in backward (left to itself, autograd or the compiler's
            # partitioner would keep the masks and intermediates instead)
            return checkpoint(reference.repact_train, *args, use_reentrant=False)
        return reference.repact_train(*args)
    if needs_grad:
        y, mean, var, count = _TrainFn.apply(x, w_raw, slope, gamma, beta, running_mean, running_var, knots, base,
                                             part, softmax, eps, channel_dim, name, group, view)
    else:
        a = TrainArgs(w_raw, slope, gamma, beta, knots, base, part, softmax, eps)
        y, mean, var, count = _kernel_forward(backend_module(name), view, a, bn, running_mean, running_var, group)
        if y.shape != x.shape:
            y = y.reshape(x.shape)
    if bn in (BN_BATCH, BN_GIVEN):
        return y, mean, var, count
    return y, None, None, 0
