"""ONNX export forms of the deploy activation that onnxruntime runs fast.

The deploy activation (:class:`~repact.PiecewiseQuadratic`) exports, as it is, as a chain of
``GreaterOrEqual``/``Where`` nodes that onnxruntime runs one node at a time, each node a pass
over memory, with layout conversions around them (its NCHWc convolution layout does not cover
them). On MobileNetV3-Small that chain costs several times the HardSwish model.

Every table on the knots (-3, 0, 3) that RepAct produces with its canonical branches
(identity, relu, prelu, hardswish; all three variants) is exactly

    f(x) = E + A x + B relu(x) + D hardswish(x)

per channel (A, B, D, E read off the table: E = c0, A = c1 left of -3, D = 6 c2 on [-3, 3],
B = slope jump at 0). :class:`HardSwishBasis` evaluates that with a prescale ``xs = D x``:

    f = (p xs + E + xs hardsigmoid(x)) + q relu(xs)

with per-channel ``p, q`` (signs handled exactly, see :class:`HardSwishBasis`). Every scale or
shift is a per-channel affine map written as an eval-mode ``BatchNorm2d`` (eps 0), so the
exported graph holds only BatchNormalization, HardSigmoid, Relu, Mul and Add: onnxruntime folds
the prescale into the preceding convolution, turns the other affine maps into NCHWc depthwise
convolutions that take the sums with them, and keeps the whole activation in its NCHWc layout
(no layout conversions). The PyTorch side is only used for export; eager and compiled
PyTorch keep the piecewise-quadratic op.

Tables that are not in this span, inputs that are not 4-D NCHW, or channels whose D is 0 while
others' is not, use :class:`PlainBasis` (the same formula with broadcast constants) when the
table is in the span, and the op's own ``where`` form otherwise. :class:`ClampAbsBasis` is the
same function with less arithmetic, for runtimes that compile the whole activation into one
elementwise kernel (OpenVINO).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
import torch.nn.functional as F


from .._export_forms import ONNX_FORMS
from .._hooks import run_hooked
from ..fuse import BasisCoefficients, basis_coefficients
from ..activations.piecewise import PiecewiseQuadratic
from .runtime_forms import ConvFusedBasis

__all__ = [
    "ONNX_FORMS",
    "BasisCoefficients",
    "basis_coefficients",
    "HardSwishBasis",
    "PlainBasis",
    "ClampAbsBasis",
    "ExportFormSummary",
    "prepare_for_export",
]


def _affine(channels: int, scale: torch.Tensor, shift: torch.Tensor | float = 0.0) -> nn.BatchNorm2d:
    """``scale * x + shift`` per channel as an eval-mode BatchNorm2d (eps 0): one BatchNormalization node."""
    bn = nn.BatchNorm2d(channels, eps=0.0)
    with torch.no_grad():
        bn.running_mean.zero_()
        bn.running_var.fill_(1.0)
        bn.weight.copy_(torch.as_tensor(scale, dtype=torch.float64).expand(channels).float())
        bn.bias.copy_(torch.as_tensor(shift, dtype=torch.float64).expand(channels).float())
    bn.eval()
    return bn


class _HardSigmoidAB(torch.autograd.Function):
    """``clamp(alpha x + beta, 0, 1)``; exports as one ONNX ``HardSigmoid(alpha, beta)`` node."""

    @staticmethod
    def forward(ctx, x, alpha: float, beta: float):  # noqa: D102
        return torch.clamp(x * alpha + beta, 0.0, 1.0)

    @staticmethod
    def symbolic(g, x, alpha: float, beta: float):  # noqa: D102
        return g.op("HardSigmoid", x, alpha_f=alpha, beta_f=beta)


class HardSwishBasis(nn.Module):
    """``E + A x + B relu(x) + D hardswish(x)`` on NCHW input, written for onnxruntime's fusions.

    With ``xs = D x`` (a per-channel scale that onnxruntime folds into the preceding conv):

        f = (p xs + E + xs * hardsigmoid(x)) + q relu(xs)

    where D > 0: p = A/D, q = B/D; D < 0: relu(x) = (xs - relu(xs))/D, so p = (A+B)/D, q = -B/D.
    ``hardsigmoid(x)`` is one ``HardSigmoid(alpha=1/(6D))`` node on ``xs`` for a layer-wise
    table, and a per-channel scale followed by ``hardsigmoid`` for a per-channel one. The two
    per-channel affine maps take the sums with them (onnxruntime's conv+add fusion), so the
    activation costs five passes in NCHWc layout: HardSigmoid, Mul, Relu and two depthwise 1x1
    convs. With every D = 0 there is no quadratic term (xs = x). Built from
    :class:`BasisCoefficients` with every D nonzero or every D zero; meant for export only.
    """

    def __init__(self, coef: BasisCoefficients, channels: int) -> None:
        super().__init__()
        self.layerwise = coef.A.numel() == 1
        A, B, D, E = (t.double().expand(channels) if t.numel() == 1 else t.double() for t in
                      (coef.A, coef.B, coef.D, coef.E))
        self.quadratic = bool((D != 0).any())
        if self.quadratic and not bool((D != 0).all()):
            raise ValueError("HardSwishBasis needs D != 0 in every channel or in none; use PlainBasis")
        k = D if self.quadratic else torch.ones_like(D)
        pos = k > 0
        p = torch.where(pos, A / k, (A + B) / k)
        q = torch.where(pos, B / k, -B / k)
        self.prescale = _affine(channels, k) if self.quadratic else nn.Identity()
        self.alpha = float(1.0 / (6.0 * D[0])) if self.quadratic and self.layerwise else None
        self.unscale = _affine(channels, 1.0 / k) if self.quadratic and not self.layerwise else None
        self.linear = _affine(channels, p, E)
        self.relu_scale = _affine(channels, q) if bool((q != 0).any()) else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xs = self.prescale(x)
        out = self.linear(xs)
        if self.alpha is not None:
            out = out + xs * _HardSigmoidAB.apply(xs, self.alpha, 0.5)
        elif self.unscale is not None:
            out = out + xs * F.hardsigmoid(self.unscale(xs))
        if self.relu_scale is not None:
            out = self.relu_scale(F.relu(xs)) + out
        return out


def _broadcast_shape(channels: int, channel_dim: int, ndim: int) -> list[int]:
    shape = [1] * ndim
    if channels > 1:
        shape[channel_dim] = channels
    return shape


class PlainBasis(nn.Module):
    """``E + A x + B relu(x) + D hardswish(x)`` with broadcast constants (any shape, channels on ``dim``)."""

    def __init__(self, coef: BasisCoefficients, channel_dim: int, ndim: int) -> None:
        super().__init__()
        shape = _broadcast_shape(coef.A.numel(), channel_dim, ndim)
        for name in ("A", "B", "D", "E"):
            self.register_buffer(name, getattr(coef, name).float().reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.E + self.A * x + self.B * F.relu(x) + self.D * F.hardswish(x)


class ClampAbsBasis(nn.Module):
    """``E + A x + B relu(x) + D hardswish(x)`` as ``(R |x| + E) + x (Q clamp(x, -3, 3) + P)``.

    With t = clamp(x, -3, 3), hardswish(x) = x (t + 3) / 6 for every x (t + 3 is hardswish's
    clamp(x + 3, 0, 6)) and relu(x) = (x + |x|) / 2, so P = A + B/2 + D/2, Q = D/6, R = B/2 (per
    layer or per channel, broadcast constants, channels on ``channel_dim``). Clip, Abs, three
    multiplies and three adds: fewer operations than :class:`PlainBasis` (whose HardSwish alone is
    an add, a clamp and two multiplies) where a runtime runs the activation as one elementwise kernel.
    """

    def __init__(self, coef: BasisCoefficients, channel_dim: int, ndim: int) -> None:
        super().__init__()
        shape = _broadcast_shape(coef.A.numel(), channel_dim, ndim)
        A, B, D, E = (getattr(coef, n).double() for n in ("A", "B", "D", "E"))
        for name, value in (("P", A + B / 2 + D / 2), ("Q", D / 6), ("R", B / 2), ("E", E)):
            self.register_buffer(name, value.float().reshape(shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (self.R * torch.abs(x) + self.E) + x * (self.Q * torch.clamp(x, -3.0, 3.0) + self.P)


@dataclass
class ExportFormSummary:
    """Which export form each deploy activation got."""

    # path -> "conv_fused" | "hardswish_basis" | "plain_basis" | "clamp_abs" | "where"
    forms: dict[str, str] = field(default_factory=dict)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.forms.values():
            out[f] = out.get(f, 0) + 1
        return out


def _input_shapes(model: nn.Module, example_input: Any, paths: list[str]) -> dict[str, tuple[int, ...]]:
    shapes: dict[str, tuple[int, ...]] = {}
    handles = []

    def record(path: str):
        def hook(module, inputs):
            if inputs and torch.is_tensor(inputs[0]):
                shapes.setdefault(path, tuple(inputs[0].shape))
        return hook

    for p in paths:
        handles.append(model.get_submodule(p).register_forward_pre_hook(record(p)))
    run_hooked(model, example_input, handles, torch.no_grad())
    return shapes


def prepare_for_export(model: nn.Module, example_input: Any, form: str = "auto") -> tuple[nn.Module, ExportFormSummary]:
    """An eval-mode copy of ``model`` whose deploy activations use the chosen export form.

    ``model`` itself is not changed. A deploy activation shared by several call sites keeps one
    (shared) export module, so it stays correct only when every call sees the same channel count.
    """
    if form not in ONNX_FORMS:
        raise ValueError(f"onnx form must be one of {', '.join(ONNX_FORMS)}, got {form!r}")
    model = copy.deepcopy(model).eval()
    summary = ExportFormSummary()
    paths = [n for n, m in model.named_modules(remove_duplicate=False) if isinstance(m, PiecewiseQuadratic) and n]
    if not paths:
        return model, summary
    if form == "where":
        summary.forms = {p: "where" for p in paths}
        return model, summary
    shapes = _input_shapes(model, example_input, paths)
    done: dict[int, tuple[nn.Module, str]] = {}
    for path in paths:
        pq = model.get_submodule(path)
        if id(pq) not in done:
            done[id(pq)] = _export_module(pq, shapes.get(path), form)
        new, kind = done[id(pq)]
        summary.forms[path] = kind
        if new is not pq:
            parent_path, name = path.rsplit(".", 1) if "." in path else ("", path)
            parent = model.get_submodule(parent_path) if parent_path else model
            setattr(parent, name, new)
    return model, summary


def _export_module(pq: PiecewiseQuadratic, shape: tuple[int, ...] | None, form: str) -> tuple[nn.Module, str]:
    coef = basis_coefficients(pq.knots, pq.coeffs)
    if coef is None or shape is None:
        return pq, "where"
    ndim = len(shape)
    cd = ndim - 1 if (pq.channels_last or ndim == 1) else 1
    nchw = ndim == 4 and not pq.channels_last
    all_or_none = bool((coef.D != 0).all()) or bool((coef.D == 0).all())
    tiny = bool(((coef.D != 0) & (coef.D.abs() < 1e-20)).any())
    if form == "conv" and nchw:
        fused = ConvFusedBasis.build(coef, int(shape[1]))
        if fused is not None:
            return fused, "conv_fused"
    if form in ("auto", "conv") and nchw and all_or_none and not tiny:
        return HardSwishBasis(coef, int(shape[1])).eval(), "hardswish_basis"
    if form == "clamp":
        return ClampAbsBasis(coef, cd, ndim).eval(), "clamp_abs"
    return PlainBasis(coef, cd, ndim).eval(), "plain_basis"
