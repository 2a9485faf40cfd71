"""ACON's training op: ``d x sigmoid(beta d x) + p2 x`` with ``d = p1 - p2`` ("Activate or Not").

``p1`` defaults to 1, ``p2`` to 0 and ``beta`` to 1 (so ``acon(x, beta=b)`` is Swish). Under
autograd one function keeps only the input and the small parameters and recomputes the sigmoid in
backward (the plain expression keeps about four input-sized tensors). The backend comes from
:func:`repact.ops.dispatch.choose`: the reference (tensor ops), or Triton kernels where every
parameter is a scalar or per channel (CUDA); tracers and compilers see the plain expression.
The parameters come in :func:`repact.ops.dispatch.param_dtype` of the input (the dispatch's one
dtype rule) and the result has the input's dtype, whichever backend runs.
"""

from __future__ import annotations

from typing import Optional

import torch

from . import reference
from .dispatch import cast_params, choose

__all__ = ["acon"]


def _as_operand(t: Optional[torch.Tensor], x: torch.Tensor, name: str) -> Optional[torch.Tensor]:
    if t is None:
        return None
    if t.numel() == 1:
        return t.reshape([1] * x.dim())
    if t.dim() != x.dim() or torch.broadcast_shapes(t.shape, x.shape) != x.shape:
        raise ValueError(
            f"acon: {name} of shape {tuple(t.shape)} must broadcast to the input shape {tuple(x.shape)} "
            "with the same number of dims"
        )
    return t


def _channel_operands(x: torch.Tensor, operands) -> Optional[int]:
    """The channel dim when every given operand is a scalar or a per-channel view of ``x`` (channels
    on dim 1 or last), else None (then the reference runs)."""
    dims = set()
    for t in operands:
        if t is None or t.numel() == 1:
            continue
        big = [d for d in range(x.dim()) if t.shape[d] != 1]
        if len(big) != 1 or t.shape[big[0]] != x.shape[big[0]]:
            return None
        dims.add(big[0])
    if not dims:
        return 1 if x.dim() > 1 else 0
    if len(dims) == 1 and next(iter(dims)) in (1, x.dim() - 1):
        return dims.pop()
    return None


class _AconFn(torch.autograd.Function):
    """y = d x sigmoid(beta d x) + p2 x with d = p1 - p2; saves x and the parameters only."""

    @staticmethod
    def forward(ctx, x, p1, p2, beta, name, cd):
        ctx.save_for_backward(x, p1, p2, beta)
        ctx.conf = (name, cd)
        if name == "triton":
            from . import _triton

            return _triton.acon_forward(x, p1, p2, beta, cd)
        return reference.acon_forward(x, p1, p2, beta, inplace=True)

    @staticmethod
    def backward(ctx, g):
        x, p1, p2, beta = ctx.saved_tensors
        name, cd = ctx.conf
        need = ctx.needs_input_grad[:4]
        if name == "triton":
            from . import _triton

            grads = _triton.acon_backward(g, x, p1, p2, beta, cd, *need)
        else:
            grads = reference.acon_backward(g, x, p1, p2, beta, *need)
        return (*grads, None, None)


def _tracing() -> bool:
    # tracers and compilers see the plain expression (no Python op in the graph; the compiler
    # chooses what to recompute itself)
    # (ONNX export traces or compiles)
    return torch.jit.is_tracing() or torch.compiler.is_compiling()


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
    operands = [t for t in (x, p1, p2, beta) if t is not None]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in operands)
    tracing = _tracing()
    if tracing:  # tracers see one graph whatever the grad mode: the out-of-place expression
        return reference.acon_forward(x, p1, p2, beta, inplace=False)
    name = choose(x)
    cd = _channel_operands(x, (p1, p2, beta)) if name == "triton" else None
    if name == "triton" and cd is None:
        name = "reference"
    if needs_grad:
        return _AconFn.apply(x, p1, p2, beta, name, cd)
    if name == "triton":
        from . import _triton

        return _triton.acon_forward(x, p1, p2, beta, cd)
    return reference.acon_forward(x, p1, p2, beta, inplace=True)
