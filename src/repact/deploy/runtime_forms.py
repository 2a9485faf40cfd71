"""Deploy-activation export forms per runtime: the graph each runtime runs in the fewest passes.

Every form computes, per layer or per channel, exactly

    f(x) = E + A x + B relu(x) + D hardswish(x)

(:func:`repact.fuse.basis_coefficients`). What each CPU runtime does with the graph (read off
their optimized graphs, see docs/deploy.md):

* **onnxruntime** turns convolutions into NCHWc convolutions that take *one* unary activation
  (Relu, LeakyRelu, HardSigmoid, HardSwish, ...) and *one* summed input with them, only when the
  convolution's output has a single consumer. Any op outside its NCHWc set (Abs, PRelu, a custom
  op) runs in NCHW between two layout reorders: three passes. :class:`ConvFusedBasis` writes f
  as three NCHWc passes, each a 1x1 depthwise convolution with what it fuses:

      h = conv1x1(x, s) -> HardSwish        (s = +-1)
      v = conv1x1(x, k) -> LeakyRelu(alpha)
      y = conv1x1(h, D) + E + v             (the Add rides on the convolution)

  using hardswish(-x) = hardswish(x) - x to move D x between the parts. ``alpha`` is one ONNX
  attribute, so the form needs a per-layer table (per-channel ones keep the generic form).
* **openvino** tokenizes a branching elementwise graph with per-channel constants into one JIT
  kernel ("snippets", static shapes), so any form is one pass; what is left to choose is the
  kernel's arithmetic. The ``clamp`` form (:class:`~repact.deploy.onnx_forms.ClampAbsBasis`,
  ``(R |x| + E) + x (Q clamp(x, -3, 3) + P)``) has the fewest operations of those measured (see
  docs/benchmarks.md, "Runtimes"). An extension op (a C++ custom op) would run as a reference node
  in planar layout with layout reorders around it.
* **tensorrt**: its pointwise fusion takes a whole elementwise graph into one kernel; the plain
  formula too (no GPU here to check it).
* **executorch**: XNNPACK takes the plain formula's ``mul``/``add``/``relu``/``hardswish`` whole
  (BatchNormalization outside a conv it does not); ``repact deploy --target executorch`` also
  writes an XNNPACK ``.pte`` file (:mod:`repact.deploy.executorch_export`).
* **generic**: the form this project exported before targets existed (``form="auto"``).
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .._export_forms import TARGET_FORMS, TARGETS
from ..fuse import BasisCoefficients

__all__ = ["TARGETS", "TARGET_FORMS", "form_for_target", "ConvFusedBasis", "conv_fused_parts"]


def form_for_target(target: str) -> str:
    """The export form of ``target``; ``ValueError`` naming the targets otherwise."""
    try:
        return TARGET_FORMS[target]
    except KeyError:
        raise ValueError(f"target must be one of {', '.join(TARGETS)}, got {target!r}") from None


def _leaky_parts(neg: float, pos: float) -> tuple[float, float] | None:
    """``(k, alpha)`` with ``leaky_relu(k x, alpha)`` = slope ``neg`` left of 0 and ``pos`` right of it."""
    if pos > 0:
        return pos, neg / pos
    if neg < 0:
        return neg, pos / neg
    if neg == 0 and pos == 0:
        return 0.0, 0.0
    return None  # a peak (rising, then falling or flat): no LeakyRelu of any scale gives it


def conv_fused_parts(A: float, B: float, D: float) -> tuple[float, float, float] | None:
    """``(s, k, alpha)`` of :class:`ConvFusedBasis` for one layer's ``(A, B, D)``, or None.

    ``f - E = D hardswish(s x) + leaky_relu(k x, alpha)``: with s = 1 the piecewise-linear part
    has slopes (A, A + B); with s = -1 (hardswish(x) = hardswish(-x) + x) it has (A + D, A + B + D).
    """
    for s, neg, pos in ((1.0, A, A + B), (-1.0, A + D, A + B + D)):
        parts = _leaky_parts(neg, pos)
        if parts is not None:
            return (s, *parts)
    return None


def _dw1x1(channels: int, weight: float, bias: float | None = None) -> nn.Conv2d:
    conv = nn.Conv2d(channels, channels, 1, groups=channels, bias=bias is not None)
    with torch.no_grad():
        conv.weight.fill_(float(weight))
        if bias is not None:
            conv.bias.fill_(float(bias))
    return conv.eval()


class ConvFusedBasis(nn.Module):
    """``E + A x + B relu(x) + D hardswish(x)`` (one layer-wise table, NCHW) as three 1x1 depthwise
    convolutions that onnxruntime fuses with their activation and the sum; meant for export only.
    Build it with :meth:`build`, which returns None where the table has no such form."""

    def __init__(self, channels: int, s: float, k: float, alpha: float, D: float, E: float) -> None:
        super().__init__()
        self.alpha = float(alpha)
        self.h = _dw1x1(channels, s)
        self.v = _dw1x1(channels, k)
        self.out = _dw1x1(channels, D, E)

    @classmethod
    def build(cls, coef: BasisCoefficients, channels: int) -> "ConvFusedBasis | None":
        if coef.A.numel() != 1:
            return None
        A, B, D, E = (float(t) for t in (coef.A, coef.B, coef.D, coef.E))
        parts = conv_fused_parts(A, B, D)
        return None if parts is None else cls(channels, *parts, D=D, E=E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(F.hardswish(self.h(x))) + F.leaky_relu(self.v(x), self.alpha)
