"""RepAct's training op registered with the dispatcher, for ``torch.compile``.

The compiler cannot trace a ctypes call or a Triton launch from Python, but keeps a registered op
as one opaque node. Kernels: CPU (the C kernels) and CUDA (Triton), fake kernels for tracing and
an autograd registration. Defined through ``torch.library.Library`` rather than
``torch.library.custom_op``: the plain kernel costs ~70 us less per compiled forward + backward
on CPU (custom_op's wrapper runs at every call), with the same outputs.
"""

from __future__ import annotations

import torch

from .cpu import BN_BATCH, BN_CONST, BN_NONE

__all__ = ["train_op"]

_LIB = torch.library.Library("repact", "DEF")
_LIB.define(
    "repact_train(Tensor x, Tensor w_raw, Tensor? slope, Tensor? gamma, Tensor? beta, Tensor? running_mean, "
    "Tensor? running_var, Tensor knots, Tensor base, Tensor part, bool softmax, float eps, int cd) "
    "-> (Tensor, Tensor, Tensor)"
)
_LIB.define(
    "repact_train_backward(Tensor g, Tensor x, Tensor w_raw, Tensor? slope, Tensor? gamma, Tensor mean, "
    "Tensor var, Tensor knots, Tensor base, Tensor part, bool softmax, float eps, int cd, int bn) -> Tensor[]"
)


def _mode(gamma, running_mean) -> int:
    return BN_NONE if gamma is None else (BN_CONST if running_mean is not None else BN_BATCH)


def _stats_dtype(x: torch.Tensor) -> torch.dtype:
    # the C kernels hand out float64 statistics, Triton's float32 (float64 for float64 inputs)
    return torch.float64 if x.device.type == "cpu" or x.dtype == torch.float64 else torch.float32


def _call(x, w_raw, slope, knots, base, part, softmax, eps, cd, bn):
    from .repact_train import TrainCall, spec_of, train_plan

    plan = train_plan("cpu" if x.device.type == "cpu" else "triton", spec_of(w_raw, slope, knots, base, softmax, eps,
                                                                             cd, bn), x)
    return TrainCall(plan, knots, base, part, softmax, eps), (x.contiguous() if plan.copy else x)


def _forward_kernel(x, w_raw, slope, gamma, beta, running_mean, running_var, knots, base, part, softmax, eps, cd):
    bn = _mode(gamma, running_mean)
    call, xv = _call(x, w_raw, slope, knots, base, part, softmax, eps, cd, bn)
    y, mean, var = call.forward(xv, w_raw, slope, gamma, beta, running_mean, running_var)
    if bn != BN_BATCH:
        mean, var = x.new_empty(0, dtype=_stats_dtype(x)), x.new_empty(0, dtype=_stats_dtype(x))
    return y.reshape(x.shape), mean, var


def _backward_kernel(g, x, w_raw, slope, gamma, mean, var, knots, base, part, softmax, eps, cd, bn):
    call, xv = _call(x, w_raw, slope, knots, base, part, softmax, eps, cd, bn)
    grads = call.backward(xv, g, w_raw, slope, gamma, mean, var, True, True)
    gx = grads[0].reshape(x.shape)
    return [gx] + [t if t is not None else x.new_empty(0) for t in grads[1:]]


for _key in ("CPU", "CUDA"):
    _LIB.impl("repact_train", _forward_kernel, _key)
    _LIB.impl("repact_train_backward", _backward_kernel, _key)


@torch.library.register_fake("repact::repact_train", lib=_LIB)
def _(x, w_raw, slope, gamma, beta, running_mean, running_var, knots, base, part, softmax, eps, cd):
    n = gamma.numel() if gamma is not None and running_mean is None else 0
    dt = _stats_dtype(x)
    return torch.empty_like(x), x.new_empty(n, dtype=dt), x.new_empty(n, dtype=dt)


@torch.library.register_fake("repact::repact_train_backward", lib=_LIB)
def _(g, x, w_raw, slope, gamma, mean, var, knots, base, part, softmax, eps, cd, bn):
    # parameter gradients in the parameters' dtype (repact.ops.dispatch.param_dtype of x)
    empty = x.new_empty(0)
    return [torch.empty_like(x), torch.empty_like(w_raw),
            torch.empty_like(slope) if slope is not None else empty,
            torch.empty_like(gamma) if gamma is not None else empty,
            torch.empty_like(gamma) if gamma is not None else empty]


_train = torch.ops.repact.repact_train.default
_train_backward = torch.ops.repact.repact_train_backward.default


def _setup(ctx, inputs, output):
    x, w_raw, slope, gamma, beta, running_mean, running_var, knots, base, part, softmax, eps, cd = inputs
    _, mean, var = output
    bn = _mode(gamma, running_mean)
    if bn == BN_CONST:
        mean, var = running_mean, running_var
    ctx.save_for_backward(x, w_raw, slope, gamma, mean, var, knots, base, part)
    ctx.conf = (softmax, eps, cd, bn)


def _backward(ctx, g, _gmean, _gvar):
    x, w_raw, slope, gamma, mean, var, knots, base, part = ctx.saved_tensors
    softmax, eps, cd, bn = ctx.conf
    gx, gw, gslope, ggamma, gbeta = _train_backward(g, x, w_raw, slope, gamma, mean, var, knots, base, part,
                                                    softmax, eps, cd, bn)
    has_bn = gamma is not None
    return (gx, gw, gslope if slope is not None else None, ggamma if has_bn else None, gbeta if has_bn else None,
            None, None, None, None, None, None, None, None)


torch.library.register_autograd("repact::repact_train", _backward, setup_context=_setup, lib=_LIB)


def train_op(x, w_raw, slope, gamma, beta, running_mean, running_var, knots, base, part, softmax, eps, cd):
    """``(y, mean, var)`` through the registered op (mean/var empty unless batch statistics)."""
    return _train(x, w_raw, slope, gamma, beta, running_mean, running_var, knots, base, part, softmax, eps, cd)
