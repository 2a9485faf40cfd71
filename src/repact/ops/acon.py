"""ACON's training op: ``d x sigmoid(beta d x) + p2 x`` with ``d = p1 - p2`` ("Activate or Not").

``p1`` defaults to 1, ``p2`` to 0 and ``beta`` to 1 (so ``acon(x, beta=b)`` is Swish). One op
for every ACON: A, B, C per channel or per layer, and meta-ACON-C's elementwise part (beta per
sample and channel, per sample, or per element). Under autograd one function keeps only the input
and the small parameters and recomputes the sigmoid in backward (the plain expression keeps about
four input-sized tensors).

The backend comes from :func:`repact.ops.dispatch.choose`: the reference (tensor ops), the C
kernels (``cpu``: ``_acon_cpu``) or the Triton kernels (``triton``: ``_triton_acon``), one launch
each way (the backward's per-channel sums: per-thread partials in C, per-tile partials and one
reduction kernel in Triton). A kernel runs where every parameter is one value, per channel (dim 1
or last), per sample and channel, or per sample (beta also per element: meta-ACON's pixel
generator); other shapes run the reference. The parameters come in
:func:`repact.ops.dispatch.param_dtype` of the input (the dispatch's one dtype rule) and the
result has the input's dtype, whichever backend runs.

Tracers see the plain expression. Under ``torch.compile`` the op is either the registered
``torch.ops.repact.acon`` around the kernels or the plain expression for the compiler to fuse,
per device (:data:`COMPILED_OP`, from ``benchmarks/bench_compile_forms.py``).
"""

from __future__ import annotations

from typing import NamedTuple, Optional, Tuple

import torch

from . import reference
from .dispatch import cast_params, choose
from .layout import FlatView, flat_view, like_view

__all__ = ["acon", "AconPlan", "plan", "COMPILED_OP"]

#: under torch.compile, per device type: True runs the registered op around repact's kernels,
#: False the plain expression, fused by the compiler. CPU: the op (bench_compile_forms.py, ACON-C
#: training forward + backward, see docs/benchmarks.md); CUDA: not measured yet, the compiler's
#: fusion (which also fuses ACON with its neighbours).
COMPILED_OP = {"cpu": True, "cuda": False}


def _as_operand(t: Optional[torch.Tensor], x: torch.Tensor, name: str) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if t.numel() == 1:
        return t.reshape([1] * x.dim())
    # (torch.broadcast_shapes costs ~0.1 ms a call here: a plain comparison of the sizes)
    if t.dim() != x.dim() or any(a != 1 and a != b for a, b in zip(t.shape, x.shape)):
        raise ValueError(
            f"acon: {name} of shape {tuple(t.shape)} must broadcast to the input shape {tuple(x.shape)} "
            "with the same number of dims"
        )
    return t


# --- how the kernels read the parameters -------------------------------------------------------------
#: a parameter read at [(o / od) so + c sc] for element (o, c, i) of the kernels' (outer, C, inner) view
Map = Tuple[int, int]
FULL = "full"  # beta laid out like x (meta-ACON's pixel generator)


def _channel_dim(x: torch.Tensor, operands) -> Optional[int]:
    """Dim 1 or the last dim when one of them is the only non-batch dim any operand spans (dim 1
    when none spans one); None otherwise."""
    nd = x.dim()
    dims = {d for t in operands if t is not None and t.numel() > 1 and t.shape != x.shape
            for d in range(nd) if t.shape[d] != 1 and (d != 0 or nd == 1)}
    if not dims:
        return 1 if nd > 1 else 0
    if len(dims) == 1 and next(iter(dims)) in (1, nd - 1):
        return dims.pop()
    return None


def _map(t: Optional[torch.Tensor], x: torch.Tensor, cd: int, full_ok: bool):
    """(so, sc) of operand ``t`` for channels on ``cd``, :data:`FULL`, or None (no kernel)."""
    if t is None or t.numel() == 1:
        return (0, 0)
    big = {d for d in range(x.dim()) if t.shape[d] != 1}
    if big <= {0, cd}:
        sc = 1 if cd in big else 0
        return ((x.shape[cd] if sc else 1) if (0 in big and cd != 0) else 0, sc)
    return FULL if full_ok and t.shape == x.shape else None


class AconPlan(NamedTuple):
    """The kernels' view of one call: ``view`` of x, the parameters as they read them (contiguous,
    each a flat tensor of its slots; a per-element beta laid out like ``view.data``), their maps,
    ``od`` (rows of the view's outer dim per sample)."""

    view: FlatView
    params: Tuple[Optional[torch.Tensor], Optional[torch.Tensor], Optional[torch.Tensor]]
    maps: Tuple[Map, Map, Map]
    beta_full: bool
    od: int


def _maps(x: torch.Tensor, p1, p2, beta):
    """(channel dim, maps of p1, p2, beta) for the kernels, or None where a parameter's shape is not
    one they read (reads shapes only)."""
    if x.dim() == 0:
        return None
    cd = _channel_dim(x, (p1, p2, beta))
    if cd is None:
        return None
    maps = [_map(t, x, cd, full_ok=i == 2) for i, t in enumerate((p1, p2, beta))]
    return None if any(m is None for m in maps) else (cd, maps)


def _laid_out_like(t: torch.Tensor, view: FlatView) -> torch.Tensor:
    """``t`` (x's shape) in ``view.data``'s memory layout, in its own dtype."""
    d = view.data
    if t.stride() == d.stride() and t.device == d.device and type(t) is torch.Tensor:
        return t
    return torch.empty_like(d, dtype=t.dtype).copy_(t)


def _channel_view(x: torch.Tensor, cd: int) -> FlatView:
    """x as (outer, C, inner) with the channels on ``cd`` and the samples on ``outer``, also for one
    channel, where a per-sample operand needs the outer dim to follow the samples (``flat_view``
    with one table sees the whole tensor as one row)."""
    c = x.shape[cd]
    view = flat_view(x, cd, c) if c > 1 else None
    if view is not None:
        return view
    x = x.contiguous()
    n = x.numel()
    if cd == x.dim() - 1:
        return FlatView(x, n // max(c, 1), c, 1)
    rows = x.shape[0] if x.dim() > 1 else 1
    return FlatView(x, rows, c, n // max(rows * c, 1))


def plan(x: torch.Tensor, p1, p2, beta) -> Optional[AconPlan]:
    """The kernels' plan for ``x`` and the operands (as :func:`acon` passes them), or None where a
    parameter's shape is not one the kernels read."""
    found = _maps(x, p1, p2, beta)
    if found is None:
        return None
    cd, maps = found
    beta_full = maps[2] == FULL
    if beta_full:
        maps[2] = (0, 0)
    per_channel = beta_full or any(m != (0, 0) for m in maps)
    view = _channel_view(x, cd) if per_channel else flat_view(x, cd, 1)
    od = max(view.outer // max(x.shape[0], 1), 1)
    params = [None if t is None else t.detach().contiguous().reshape(-1) for t in (p1, p2, beta)]
    if beta_full:
        params[2] = _laid_out_like(beta.detach(), view)
    return AconPlan(view, tuple(params), tuple(maps), beta_full, od)


def _backend_module(name: str):
    if name == "cpu":
        from . import _acon_cpu as mod
    else:
        from . import _triton_acon as mod
    return mod


def _kernel_plan(name: str, x, p1, p2, beta):
    """(the plan, the backend's module) where a kernel backend runs this call, else None."""
    pl = plan(x, p1, p2, beta)
    if pl is None:
        return None
    mod = _backend_module(name)
    return (pl, mod) if mod.supports(pl) else None


def _kernel_backward(name: str, g, x, p1, p2, beta, need, found=None):
    """(gx, gp1, gp2, gbeta) shaped like x and the operands (None where not needed), or None.
    ``found``: the forward's :func:`_kernel_plan` of the same call (else made here)."""
    found = found or _kernel_plan(name, x, p1, p2, beta)
    if found is None:
        return None
    pl, mod = found
    gx, sums = mod.backward(pl, like_view(g, pl.view), need[0], need[1:])
    out = [gx.reshape(x.shape) if gx is not None else None]
    for t, s in zip((p1, p2, beta), sums):
        out.append(None if s is None else s.reshape(t.shape).to(t.dtype))
    return tuple(out)


def _no_copies(pl: AconPlan, x: torch.Tensor, beta) -> bool:
    """Whether the plan holds x's and a per-element beta's own memory (no input-sized copies)."""
    return pl.view.data.data_ptr() == x.data_ptr() and (
        not pl.beta_full or pl.params[2].data_ptr() == beta.data_ptr())


class _AconFn(torch.autograd.Function):
    """y = d x sigmoid(beta d x) + p2 x with d = p1 - p2; saves x and the parameters only, and
    the forward's kernel plan where it holds no input-sized copy (backward then reads the same
    views instead of planning again)."""

    @staticmethod
    def forward(ctx, x, p1, p2, beta, name):
        ctx.save_for_backward(x, p1, p2, beta)
        ctx.name = name
        y, found = _forward(name, x, p1, p2, beta)
        ctx.kernel = found is not None
        ctx.found = found if found is not None and _no_copies(found[0], x, beta) else None
        return y

    @staticmethod
    def backward(ctx, g):
        x, p1, p2, beta = ctx.saved_tensors
        need = ctx.needs_input_grad[:4]
        found, ctx.found = ctx.found, None
        grads = _kernel_backward(ctx.name, g, x, p1, p2, beta, need, found) if ctx.kernel else None
        if grads is None:
            grads = reference.acon_backward(g, x, p1, p2, beta, *need)
        return (*grads, None)


def _forward(name: str, x, p1, p2, beta):
    """(y, the kernel plan that made it or None: the reference ran)."""
    found = _kernel_plan(name, x, p1, p2, beta) if name != "reference" else None
    if found is None:
        return reference.acon_forward(x, p1, p2, beta, inplace=True), None
    pl, mod = found
    return mod.forward(pl).reshape(x.shape), found


# --- the registered op (torch.compile) --------------------------------------------------------------------
_LIB = torch.library.Library("repact", "FRAGMENT")
_LIB.define("acon(Tensor x, Tensor? p1, Tensor? p2, Tensor? beta) -> Tensor")
_LIB.define("acon_backward(Tensor g, Tensor x, Tensor? p1, Tensor? p2, Tensor? beta, bool[] need) -> Tensor[]")


def _device_backend(x: torch.Tensor) -> str:
    return "cpu" if x.device.type == "cpu" else "triton"


def _op_forward(x, p1, p2, beta):
    return _forward(_device_backend(x), x, p1, p2, beta)[0]


def _op_backward(g, x, p1, p2, beta, need):
    grads = _kernel_backward(_device_backend(x), g, x, p1, p2, beta, need)
    if grads is None:
        grads = reference.acon_backward(g, x, p1, p2, beta, *need)
    return [t if t is not None else x.new_empty(0) for t in grads]


for _key in ("CPU", "CUDA"):
    _LIB.impl("acon", _op_forward, _key)
    _LIB.impl("acon_backward", _op_backward, _key)


@torch.library.register_fake("repact::acon", lib=_LIB)
def _(x, p1, p2, beta):
    return torch.empty_like(x)


@torch.library.register_fake("repact::acon_backward", lib=_LIB)
def _(g, x, p1, p2, beta, need):
    return [torch.empty_like(t) if t is not None and n else x.new_empty(0) for t, n in zip((x, p1, p2, beta), need)]


def _setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _op_grad(ctx, g):
    x, p1, p2, beta = ctx.saved_tensors
    need = [bool(n) for n in ctx.needs_input_grad[:4]]
    grads = torch.ops.repact.acon_backward(g, x, p1, p2, beta, need)
    return tuple(t if n else None for t, n in zip(grads, need))


torch.library.register_autograd("repact::acon", _op_grad, setup_context=_setup, lib=_LIB)


def _compiled(x, p1, p2, beta) -> torch.Tensor:
    """Under torch.compile: the registered op where :data:`COMPILED_OP` says so for x's device, a
    kernel backend applies and the kernels read these parameter shapes; else the plain expression."""
    if COMPILED_OP.get(x.device.type, False) and choose(x, compiled=True) != "reference":
        if _maps(x, p1, p2, beta) is not None:
            return torch.ops.repact.acon(x, p1, p2, beta)
    return reference.acon_forward(x, p1, p2, beta, inplace=False)


def acon(
    x: torch.Tensor,
    p1: Optional[torch.Tensor] = None,
    p2: Optional[torch.Tensor] = None,
    beta: Optional[torch.Tensor] = None,
) -> torch.Tensor:
    """(p1 - p2) x sigmoid(beta (p1 - p2) x) + p2 x, memory-lean under autograd.

    Each given tensor has one element or the input's number of dims and broadcasts to the input.
    """
    p1, p2, beta = cast_params(x, *(_as_operand(t, x, n) for t, n in ((p1, "p1"), (p2, "p2"), (beta, "beta"))))
    if torch.jit.is_tracing():  # tracers see one graph whatever the grad mode: the out-of-place expression
        return reference.acon_forward(x, p1, p2, beta, inplace=False)
    if torch.compiler.is_compiling():
        return _compiled(x, p1, p2, beta)
    operands = [t for t in (x, p1, p2, beta) if t is not None]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in operands)
    name = choose(x)
    if needs_grad:
        return _AconFn.apply(x, p1, p2, beta, name)
    return _forward(name, x, p1, p2, beta)[0]
