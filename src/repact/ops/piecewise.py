"""The piecewise quadratic op: ``y = a0 + x * (a1 + a2 * x)`` with per-segment coefficients.

Knots ``t`` (K of them, sorted) split the real line into S = K + 1 segments; segment ``s`` holds
``t[s-1] <= x < t[s]``. ``coeffs`` has shape (Cc, S, 3) with Cc = 1 (one function for the whole
tensor) or Cc = C (one per channel), and ``coeffs[c, s, j]`` multiplies ``x ** j``.

The op is differentiable in ``x`` and ``coeffs`` and keeps only ``x`` for backward; ``y`` has
``x``'s dtype and the table's gradient the table's, the kernels read the table in
:func:`repact.ops.dispatch.param_dtype` of ``x`` (their ``prepare``). The backend
comes from :func:`repact.ops.dispatch.choose`; the reference (:mod:`repact.ops.reference`) is
what TorchScript, tracing, ONNX export and ``torch.compile`` see.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import reference
from .dispatch import choose
from .layout import FlatView, flat_view

__all__ = ["piecewise_quadratic", "piecewise_quadratic_torch", "backend_module", "table_call", "TableCall"]

#: the reference form under its historical name (scriptable)
piecewise_quadratic_torch = reference.pq_forward


_BACKEND_MODULES: dict = {}


def backend_module(name: str):
    """The module of a kernel backend (``cpu`` or ``triton``; imported on first use)."""
    mod = _BACKEND_MODULES.get(name)
    if mod is None:
        import importlib

        mod = _BACKEND_MODULES[name] = importlib.import_module(f".{'cpu' if name == 'cpu' else '_triton'}",
                                                               __package__)
    return mod


def _version(t: torch.Tensor) -> int:
    """In-place modification counter; inference tensors have none (and cannot be modified in place
    outside inference mode), so -1 stands for them and the cache is keyed on their storage only."""
    return -1 if t.is_inference() else t._version


def _prepared(name: str, x: torch.Tensor, knots, coeffs, basis_ok: bool, holder: Optional[dict]):
    """The backend's form of the table, cached in ``holder["_table_cache"]`` (rebuilt when the
    buffers change in place or move)."""
    mod = backend_module(name)
    if holder is None:
        return mod.prepare(knots, coeffs, x.dtype, basis_ok)
    # keyed on the table's storage and in-place counters; the cache also holds the table tensors
    # themselves, so no other table can take over their storage while the entry lives
    key = (name, x.dtype, coeffs.data_ptr(), _version(coeffs), knots.data_ptr(), _version(knots), basis_ok)
    cache = holder.get("_table_cache")
    if cache is None or cache[0] != key or cache[2] is not coeffs or cache[3] is not knots:
        cache = (key, mod.prepare(knots, coeffs, x.dtype, basis_ok), coeffs, knots)
        holder["_table_cache"] = cache
    return cache[1]


class ViewTablePlan:
    """A backend's table entry points (``pq_forward``/``pq_backward``, as :mod:`repact.ops.cpu`
    has them) on one input layout."""

    def __init__(self, mod, outer: int, C: int, inner: int, cc: int):
        self.mod, self.dims, self.cc = mod, (outer, C, inner), cc

    def forward(self, x, prepared):
        return self.mod.pq_forward(FlatView(x, *self.dims), prepared, self.cc)

    def backward(self, x, g, knots, coeffs, need_x, need_c, prepared):
        return self.mod.pq_backward(FlatView(x, *self.dims), g, knots, coeffs, need_x, need_c, prepared)


_PLANS: dict = {}
_MAX_PLANS = 512


def _form(prepared) -> tuple:
    """What a plan depends on in a prepared table: its kind and shape."""
    return tuple(prepared.shape) if torch.is_tensor(prepared) else (prepared[0].shape[0], tuple(prepared[1].shape))


def table_plan(name: str, x: torch.Tensor, cd: int, cc: int, prepared):
    """(plan, copy) of backend ``name`` for the table op on ``x``'s layout (copy: the kernels need
    ``x.contiguous()``), cached; (None, False) where the kernels cannot view ``x``."""
    key = (name, x.shape, x.stride(), x.dtype, x.device, cd, cc, _form(prepared))
    hit = _PLANS.get(key)
    if hit is None:
        view = flat_view(x, cd, cc)
        if view is None:
            return None, False
        mod = backend_module(name)
        make = getattr(mod, "TablePlan", None)
        plan = (make(view.outer, view.C, view.inner, prepared, x.dtype) if make is not None
                else ViewTablePlan(mod, view.outer, view.C, view.inner, cc))
        if len(_PLANS) >= _MAX_PLANS:
            _PLANS.clear()
        hit = _PLANS[key] = (plan, view.data is not x)
    return hit


class TableCall:
    """A deploy module's forward on one input layout and table, decided once:
    ``call(x, knots, coeffs)`` returns y, or None when the table tensors are not the ones it was
    made for or were modified in place since (the module then takes the checked path)."""

    __slots__ = ("plan", "copy", "prepared", "knots", "coeffs", "versions")

    def __init__(self, plan, copy: bool, prepared, knots, coeffs):
        self.plan, self.copy, self.prepared, self.knots, self.coeffs = plan, copy, prepared, knots, coeffs
        self.versions = (knots._version, coeffs._version)

    def __call__(self, x, knots, coeffs):
        if knots is not self.knots or coeffs is not self.coeffs or (knots._version, coeffs._version) != self.versions:
            return None
        return self.plan.forward(x.contiguous() if self.copy else x, self.prepared)


def table_call(x: torch.Tensor, knots, coeffs, cd: int, basis_ok: bool, holder: Optional[dict]):
    """A :class:`TableCall` for ``x``'s layout, or None where the reference runs, the table
    is an inference tensor (no version counter) or ``holder`` keeps no table cache."""
    name = choose(x)
    if name == "reference" or holder is None or knots.is_inference() or coeffs.is_inference():
        return None
    prepared = _prepared(name, x, knots, coeffs, basis_ok, holder)
    plan, copy = table_plan(name, x, cd, coeffs.shape[0], prepared)
    return None if plan is None else TableCall(plan, copy, prepared, knots, coeffs)


def _forward(name, x, knots, coeffs, cd, basis_ok, holder):
    prepared = None if name == "reference" else _prepared(name, x, knots, coeffs, basis_ok, holder)
    plan, copy = (None, False) if prepared is None else table_plan(name, x, cd, coeffs.shape[0], prepared)
    if plan is None:
        return reference.pq_forward(x, knots, coeffs, cd)
    return plan.forward(x.contiguous() if copy else x, prepared)


def _backward(name, g, x, knots, coeffs, cd, need_x, need_c, basis_ok, holder):
    prepared = None if name == "reference" else _prepared(name, x, knots, coeffs, basis_ok and not need_c, holder)
    plan, copy = (None, False) if prepared is None else table_plan(name, x, cd, coeffs.shape[0], prepared)
    if plan is None:
        return reference.pq_backward(g, x, knots, coeffs, cd, need_x, need_c)
    return plan.backward(x.contiguous() if copy else x, g, knots, coeffs, need_x, need_c, prepared)


class _PiecewiseQuadraticFn(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, knots, coeffs, channel_dim, name, basis_ok, holder):
        ctx.conf = (channel_dim, name, basis_ok, holder)
        ctx.save_for_backward(x, knots, coeffs)
        return _forward(name, x, knots, coeffs, channel_dim, basis_ok, holder)

    @staticmethod
    def backward(ctx, g):
        x, knots, coeffs = ctx.saved_tensors
        need_x, _, need_c = ctx.needs_input_grad[:3]
        cd, name, basis_ok, holder = ctx.conf
        gx, gc = _backward(name, g, x, knots, coeffs, cd, need_x, need_c, basis_ok, holder)
        if gx is not None and gx.shape != x.shape:
            gx = gx.reshape(x.shape)
        return gx, None, gc, None, None, None, None


def _basis_rows_in_graph(coeffs: torch.Tensor) -> torch.Tensor:
    # E, A, B, Q of a table on (-3, 0, 3) known to be in RepAct's basis, read in the graph
    return torch.stack([coeffs[:, 0, 0], coeffs[:, 0, 1], coeffs[:, 2, 1] - coeffs[:, 1, 1], coeffs[:, 1, 2]])


def piecewise_quadratic(
    x: torch.Tensor, knots: torch.Tensor, coeffs: torch.Tensor, channel_dim: int = 1, *,
    basis_ok: bool = False, cache: Optional[dict] = None,
) -> torch.Tensor:
    """Evaluate the piecewise quadratic; see the module docstring for the shapes.

    ``channel_dim`` (1 or -1) says where the channels are when ``coeffs`` is per-channel.
    ``basis_ok`` says the table is on the knots (-3, 0, 3) in RepAct's basis (the kernels then
    check that and use the basis form); ``cache`` (a dict) keeps the kernels' form of the table
    between calls.
    """
    if coeffs.dim() != 3 or coeffs.shape[2] != 3:
        raise ValueError(f"coeffs must have shape (Cc, S, 3), got {tuple(coeffs.shape)}")
    if knots.dim() != 1 or knots.shape[0] + 1 != coeffs.shape[1]:
        raise ValueError(
            f"{knots.numel()} knots need {knots.numel() + 1} segments, coeffs has {coeffs.shape[1]}"
        )
    nd = x.dim()
    if nd == 0:
        return piecewise_quadratic(x.reshape(1), knots, coeffs, 0).reshape(())
    cd = channel_dim + nd if channel_dim < 0 else channel_dim
    if coeffs.shape[0] > 1 and (cd >= nd or x.shape[cd] != coeffs.shape[0]):
        raise ValueError(
            f"per-channel coefficients for {coeffs.shape[0]} channels do not match input shape "
            f"{tuple(x.shape)} with channels on dim {channel_dim}"
        )
    needs_grad = torch.is_grad_enabled() and (x.requires_grad or coeffs.requires_grad)
    if torch.jit.is_scripting() or torch.jit.is_tracing():  # (ONNX export traces, or compiles)
        return reference.pq_forward(x, knots, coeffs, cd)
    if torch.compiler.is_compiling():
        if torch.onnx.is_in_onnx_export():
            return reference.pq_forward(x, knots, coeffs, cd)
        if basis_ok:  # fewer ops for the compiler to fuse than the where-chain (same function)
            return reference.basis_forward(x, _basis_rows_in_graph(coeffs), cd)
        # under autograd the compiler would keep one mask per knot for backward (and store them
        # slowly); the Function keeps only x and recomputes, in tensor ops the compiler fuses
        if needs_grad:
            return _PiecewiseQuadraticFn.apply(x, knots, coeffs, cd, "reference", False, None)
        return reference.pq_forward(x, knots, coeffs, cd)
    name = choose(x)
    if needs_grad:
        return _PiecewiseQuadraticFn.apply(x, knots, coeffs, cd, name, basis_ok, cache)
    return _forward(name, x, knots, coeffs, cd, basis_ok, cache)
