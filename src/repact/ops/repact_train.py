"""RepAct's training op: the fused function of the branch weights, with RepAct-III's BatchNorm.

    y = s(x)                                             RepAct-I/II (gamma None)
    y = gamma (s(x) - mean) / sqrt(var + eps) + beta     RepAct-III

where ``s`` is the piecewise quadratic whose coefficients are ``w @ base + (w * slope) @ part``
(``w = softmax(w_raw)`` for RepAct-II; ``base``/``part`` map the branch weights onto the table's
rows, or onto RepAct's own basis for the paper's branch sets, ``repact.fuse.hardswish_basis_map``)
and mean/var are the batch statistics of ``s`` (per table), those of every process of a group
(``--sync-bn``), or given running statistics (eval mode). With batch statistics and a
:class:`Running` the op also updates the running statistics in place (as ``nn.BatchNorm``).

The parameters come in :func:`repact.ops.dispatch.param_dtype` of ``x`` (the dispatch's one dtype
rule; ``y`` has ``x``'s dtype). Only ``x`` and the parameters are kept for backward. Each backend
(``cpu``: one C call each way; ``triton``: one to three kernels each way) computes the same thing
as :func:`repact.ops.reference.repact_train`; under ``torch.compile`` the kernels run as the
registered op ``torch.ops.repact.repact_train``.

What a call decides once per input layout is kept in a :class:`TrainPlan` per (backend,
:class:`TrainSpec`, shape, strides, dtype, device): the kernels' view and grids (``triton``: the
launches with their compile-time arguments). :class:`TrainCall` is the per-call path for a
module that already holds a plan: the plan's passes bound to the call's fixed arguments
(``plan.bind``), no checks, no re-derivation, straight to the kernels.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch.utils.checkpoint import checkpoint

from . import dispatch, reference
from .batchnorm import backward_terms, gather_moments, update_buffers
from .cpu import BN_BATCH, BN_CONST, BN_GIVEN, BN_NONE, TrainArgs
from .dispatch import cast_params, choose
from .layout import FlatView, flat_view
from .piecewise import backend_module

__all__ = ["repact_train", "TrainArgs", "TrainSpec", "Running", "TrainCall", "train_plan", "spec_of", "module_call",
           "train_autograd"]


class Running(NamedTuple):
    """Running statistics to update in place with a batch's (``nn.BatchNorm``'s buffers and momentum;
    momentum None: the cumulative average)."""

    mean: torch.Tensor
    var: torch.Tensor
    num_batches_tracked: torch.Tensor
    momentum: Optional[float]


class TrainSpec(NamedTuple):
    """The training op's static configuration (what its kernels are specialized on)."""

    rows: int  # tables: 1, or one per channel
    nb: int  # branch weights per table
    width: int  # coefficient rows: 4 (RepAct's basis) or 3 (K + 1) (a table on K knots)
    knots: int
    slope: bool
    softmax: bool
    bn: int  # BN_NONE, BN_BATCH, BN_GIVEN, BN_CONST
    eps: float
    update: bool  # batch statistics update running ones in place
    momentum: Optional[float]
    cd: int  # the channels' dim


def _bn_mode(gamma, running_mean, group) -> int:
    if gamma is None:
        return BN_NONE
    if running_mean is not None:
        return BN_CONST
    return BN_GIVEN if group is not None else BN_BATCH


def spec_of(w_raw, slope, knots, base, softmax: bool, eps: float, cd: int, bn: int,
            running: Optional[Running] = None) -> TrainSpec:
    """The :class:`TrainSpec` of the op's arguments, with BatchNorm mode ``bn``."""
    return TrainSpec(w_raw.shape[0] if w_raw.dim() == 2 else 1, w_raw.shape[-1], base.shape[-1], knots.shape[0],
                     slope is not None, bool(softmax), bn, float(eps) if bn else 0.0,
                     running is not None and bn in (BN_BATCH, BN_GIVEN),
                     running.momentum if running is not None else None, cd)


class ViewPlan:
    """A backend's training entry points (``train_forward``/``train_sums``/``train_backward``, as
    :mod:`repact.ops.cpu` has them) on one input layout, with the interface of the Triton backend's
    ``TrainPlan`` (``moments``, ``bind``; the running update after the forward)."""

    def __init__(self, mod, spec: TrainSpec, outer: int, C: int, inner: int, copy: bool):
        self.mod, self.spec, self.copy = mod, spec, copy
        self.dims = (outer, C, inner)
        self.count = outer * C * inner // spec.rows

    def moments(self, x, w_raw, slope, call):
        from .batchnorm import moments_from_sums

        shift, sums = self.mod.train_sums(FlatView(x, *self.dims), call.args(w_raw, slope, None, None))
        return moments_from_sums(self.count, shift, sums[0], sums[1])

    def bind(self, knots, base, part, softmax, eps, running):
        """``(forward, backward)`` for one call's fixed arguments, as the Triton backend's ``TrainPlan.bind``."""
        mod, dims, bn, count = self.mod, self.dims, self.spec.bn, self.count

        def args(w_raw, slope, gamma, beta):
            return TrainArgs(w_raw, slope, gamma, beta, knots, base, part, softmax, eps)

        def forward(x, w_raw, slope, gamma, beta, mean, var):
            y, mean, var = mod.train_forward(FlatView(x, *dims), args(w_raw, slope, gamma, beta),
                                             BN_CONST if bn == BN_GIVEN else bn, mean, var)
            if bn == BN_BATCH and running is not None:
                update_buffers(running, mean, var, count)
            return y, mean, var

        def backward(x, g, w_raw, slope, gamma, mean, var, need_x, need_params, share=None, count=count):
            view = FlatView(x, *dims)
            a = args(w_raw, slope, gamma, None)
            if share is None:
                return mod.train_backward(view, g, a, bn, mean, var, None, count, need_x, need_params)
            # synced statistics: the input's gradient takes every process's sums of g and g (s - mean);
            # gamma's and beta's stay this process's share (DDP reduces parameter gradients itself)
            _, local = mod.train_sums(view, a, g, mean)
            gx, gw, gsl, ggm, gbt = mod.train_backward(view, g, a, bn, mean, var, share(local.clone()), count,
                                                       need_x, need_params)
            *_, ggm_local, gbt_local = backward_terms(gamma.detach().to(local.dtype), var.to(local.dtype), eps,
                                                      local[0], local[1], count, False)
            return gx, gw, gsl, ggm_local.to(ggm.dtype), gbt_local.to(gbt.dtype)

        return forward, backward


_PLANS: dict = {}
_MAX_PLANS = 512


def train_plan(name: str, spec: TrainSpec, x: torch.Tensor):
    """The cached plan of backend ``name`` for ``spec`` on ``x``'s layout; None where the kernels
    cannot view ``x`` (the reference runs instead)."""
    key = (name, spec, x.shape, x.stride(), x.dtype, x.device)
    plan = _PLANS.get(key)
    if plan is None:
        view = flat_view(x, spec.cd, spec.rows)
        if view is None:
            return None
        mod = backend_module(name)
        make = getattr(mod, "TrainPlan", None)
        args = (spec, view.outer, view.C, view.inner, view.data is not x)
        plan = make(*args, x.dtype, x.device) if make is not None else ViewPlan(mod, *args)
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        _PLANS[key] = plan
    return plan


class TrainCall:
    """The op bound to a plan and to the arguments that stay fixed between calls (the fuse
    constants, the process group, the running statistics to update): ``call(x, w_raw, slope, gamma,
    beta, mean, var)`` returns y (through autograd when grad mode is on); ``mean``/``var`` are the
    constant statistics (BN_CONST). A module keeps one per input layout; :func:`repact_train` makes
    one per call."""

    __slots__ = ("plan", "knots", "base", "part", "softmax", "eps", "group", "running", "direct", "forward",
                 "backward")

    def __init__(self, plan, knots, base, part, softmax: bool, eps: float, group=None,
                 running: Optional[Running] = None):
        self.plan, self.knots, self.base, self.part, self.softmax, self.eps = plan, knots, base, part, softmax, eps
        self.group, self.running = group, running
        # the plan's forward alone does the whole call (no copy of x, no statistics to gather)
        self.direct = not plan.copy and plan.spec.bn != BN_GIVEN
        # the plan's passes with these arguments bound: forward(x, w_raw, slope, gamma, beta, mean, var)
        # -> (y, mean, var); backward(x, g, w_raw, slope, gamma, mean, var, need_x, need_params,
        # share=None, count=...) -> (gx, g_w_raw, g_slope, g_gamma, g_beta)
        self.forward, self.backward = plan.bind(knots, base, part, softmax, eps, running)

    def args(self, w_raw, slope, gamma, beta) -> TrainArgs:
        return TrainArgs(w_raw, slope, gamma, beta, self.knots, self.base, self.part, self.softmax, self.eps)

    def run(self, x, w_raw, slope, gamma=None, beta=None, mean=None, var=None):
        """(y, mean, var, count) without autograd; with a group the statistics of every process's
        batch (count-weighted), gathered between the statistics pass and the forward pass."""
        plan = self.plan
        if plan.copy:
            x = x.contiguous()
        if plan.spec.bn == BN_GIVEN:
            mean, var = plan.moments(x, w_raw, slope, self)
            mean, var, count = gather_moments(plan.count, mean, var, self.group)
            y = self.forward(x, w_raw, slope, gamma, beta, mean, var)[0]
            if self.running is not None:
                update_buffers(self.running, mean, var, count)
            return y, mean, var, count
        y, mean, var = self.forward(x, w_raw, slope, gamma, beta, mean, var)
        return y, mean, var, plan.count

    def __call__(self, x, w_raw, slope, *bn):
        """y; ``bn``: nothing (RepAct-I/II), (gamma, beta) (batch statistics) or (gamma, beta, mean,
        var) (constant statistics)."""
        if torch.is_grad_enabled():
            return _TrainFn.apply(self, False, x, w_raw, slope, *bn)
        return self.run(x, w_raw, slope, *bn)[0]


class _TrainFn(torch.autograd.Function):
    """Eager autograd of a :class:`TrainCall`: ``apply(call, stats, x, w_raw, slope, *bn)`` (``bn`` as
    :meth:`TrainCall.__call__` takes it, no trailing Nones: every argument costs autograd time per
    call); keeps the input and the tiny parameters only. Returns y, or with ``stats`` (y, mean, var,
    count) (mean and var not differentiable)."""

    @staticmethod
    def forward(ctx, call, stats, x, w_raw, slope, gamma=None, beta=None, mean=None, var=None):
        if call.direct:
            y, mean, var = call.forward(x, w_raw, slope, gamma, beta, mean, var)
            count = call.plan.count
        else:
            y, mean, var, count = call.run(x, w_raw, slope, gamma, beta, mean, var)
        ctx.save_for_backward(x, w_raw, slope, gamma)
        ctx.call = (call, mean, var, count)
        if not stats:
            return y
        ctx.mark_non_differentiable(mean, var)
        ctx.set_materialize_grads(False)  # (no zero gradients made for mean and var)
        return y, mean, var, count

    @staticmethod
    def backward(ctx, g, *_):
        # (gradients past the inputs given are None: autograd drops them)
        call, mean, var, count = ctx.call
        x, w_raw, slope, gamma = ctx.saved_tensors
        share = None
        if call.group is not None:
            share = _all_reduced(call.group)
            if g is None:  # y unused: every gradient is zero, and the processes of the group still meet
                g = torch.zeros_like(x)
        elif g is None:  # y unused: every gradient is zero
            return None, None, None, None, None, None, None, None, None
        if call.plan.copy:
            x = x.contiguous()
        need = ctx.needs_input_grad
        # (autograd runs a Function's backward with grad mode off, unless asked for a graph of it,
        # which the kernels cannot give; each plan's gx has the shape of the x it was given)
        gx, gw, gsl, ggm, gbt = call.backward(x, g, w_raw, slope, gamma, mean, var, need[2], need[3] or need[4],
                                              share, count)
        return None, None, gx, gw, gsl, ggm, gbt, None, None


def _all_reduced(group):
    """``share`` of a synced backward: this process's sums, summed over ``group`` in place."""
    import torch.distributed as dist

    def share(local):
        dist.all_reduce(local, group=group)
        return local

    return share


#: ``train_autograd(call, stats, x, w_raw, slope, *bn)``: a :class:`TrainCall` under autograd, as
#: :meth:`TrainCall.__call__` runs it with grad mode on (for a caller that checked grad mode itself)
train_autograd = _TrainFn.apply


def repact_train(x: torch.Tensor, w_raw: torch.Tensor, slope: Optional[torch.Tensor], gamma: Optional[torch.Tensor],
                 beta: Optional[torch.Tensor], running_mean: Optional[torch.Tensor],
                 running_var: Optional[torch.Tensor], knots: torch.Tensor, base: torch.Tensor, part: torch.Tensor,
                 softmax: bool, eps: float, channel_dim: int, group=None, running: Optional[Running] = None):
    """RepAct's training op: ``(y, mean, var, count)``; see the module docstring.

    ``w_raw`` (nb,) or (Cc, nb); ``slope``, ``gamma``, ``beta``, ``running_mean``/``running_var``
    (Cc,) or None; ``base``/``part`` (nb, R). mean/var (Cc,) are the batch statistics (None unless
    RepAct-III uses batch statistics) over ``count`` values per table (every process's with a
    ``group``); with ``running`` they also update those running statistics in place. Given
    ``running_mean``/``running_var`` are used as constant statistics instead. The backend comes
    from :func:`repact.ops.dispatch.choose`; every tensor but ``x`` (and ``running``'s buffers) is
    cast to :func:`repact.ops.dispatch.param_dtype` of ``x`` first, whichever backend runs.
    """
    # (dense too: the kernels index the parameters as dense arrays)
    w_raw, slope, gamma, beta, running_mean, running_var, knots, base, part = (
        t if t is None else t.contiguous() for t in cast_params(
            x, w_raw, slope, gamma, beta, running_mean, running_var, knots, base, part))
    spec = spec_of(w_raw, slope, knots, base, softmax, eps, channel_dim, _bn_mode(gamma, running_mean, group), running)
    if not spec.update:
        running = None
    batch = spec.bn in (BN_BATCH, BN_GIVEN)
    if torch.compiler.is_compiling() and group is None:
        if choose(x, compiled=True) != "reference":
            from . import registered

            y, mean, var = registered.train_op(x, w_raw, slope, gamma, beta, running_mean, running_var, knots, base,
                                               part, softmax, eps, channel_dim)
            count = x.numel() // spec.rows if batch else 0
            if running is not None:
                update_buffers(running, mean, var, count)
            return y, mean if batch else None, var if batch else None, count
        name = "reference"
    else:
        name = choose(x)
    plan = None if name == "reference" else train_plan(name, spec, x)
    if plan is None:
        args = (x, w_raw, slope, gamma, beta, running_mean, running_var, knots, base, part, softmax, eps,
                channel_dim, group)
        if torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in (x, w_raw, slope, gamma, beta)):
            # plain ops, recomputed from x in backward (left to itself, autograd or the compiler's
            # partitioner would keep the masks and intermediates instead)
            out = checkpoint(reference.repact_train, *args, use_reentrant=False)
        else:
            out = reference.repact_train(*args)
        if running is not None:
            update_buffers(running, out[1], out[2], out[3])
        return out
    call = TrainCall(plan, knots, base, part, softmax, eps, group, running)
    if torch.is_grad_enabled():
        if not batch:
            return _TrainFn.apply(call, False, x, w_raw, slope, gamma, beta, running_mean, running_var), None, None, 0
        return _TrainFn.apply(call, True, x, w_raw, slope, gamma, beta)
    y, mean, var, count = call.run(x, w_raw, slope, gamma, beta, running_mean, running_var)
    return (y, mean, var, count) if batch else (y, None, None, 0)


def module_call(name: str, spec: TrainSpec, x: torch.Tensor, knots, base, part, softmax: bool, eps: float,
                running: Optional[Running] = None):
    """A :class:`TrainCall` for a module whose parameters already have :func:`repact.ops.dispatch.param_dtype`
    of ``x``, or None where the reference would run (no plan: ``repact_train`` then decides per call)."""
    if name == "reference" or dispatch.param_dtype(x) != base.dtype:
        return None
    plan = train_plan(name, spec, x)
    return None if plan is None else TrainCall(plan, knots, base, part, softmax, eps, None, running)
