"""ACON, "Activate or Not" (arXiv 2009.04759): smooth maxima of two linear functions.

* ACON-A (``acon_a``): x sigmoid(beta x), i.e. Swish with a learnable beta.
* ACON-B (``acon_b``): (1 - p) x sigmoid(beta (1 - p) x) + p x, the smooth PReLU.
* ACON-C (``acon_c``): (p1 - p2) x sigmoid(beta (p1 - p2) x) + p2 x.
* meta-ACON-C (``meta_acon``): ACON-C with beta generated from the input.

The training form of all of them is one custom autograd function that keeps only the input and
the small parameters for backward and recomputes the sigmoid there (the plain expression would
keep about four input-sized tensors). Without gradients, and under tracing, ONNX export or
torch.compile, the plain expression runs instead, so graphs hold only ordinary ops.

Inits: ACON-C follows the official code (p1, p2 ~ N(0, 1), beta = 1, per channel). ACON-A and
ACON-B have no official class; we use beta = 1 and, for ACON-B, p = 0.25 (PReLU's init).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..registry import register_act
from ._common import BatchNorm2dSafe, GranularActivation, check_choice, per_sample_mean, per_sample_view
from .base import Activation

__all__ = ["acon_forward", "AconA", "AconB", "AconC", "MetaAconC", "META_GENERATORS"]

META_GENERATORS = ("layer", "channel", "pixel")


def _diff(p1: torch.Tensor | None, p2: torch.Tensor | None) -> torch.Tensor | None:
    """p1 - p2 with p1 = 1 and p2 = 0 when absent; None means exactly 1."""
    if p1 is None and p2 is None:
        return None
    if p2 is None:
        return p1
    return (1 - p2) if p1 is None else (p1 - p2)


def _acon_eager(x, p1, p2, beta, inplace=True):
    """The plain expression; ``inplace`` reuses the sigmoid's buffer (only where autograd does not
    need it, i.e. without grad or inside ``_AconFn``)."""
    d = _diff(p1, p2)
    u = x if d is None else x * d
    z = u if beta is None else u * beta
    if not inplace:
        y = torch.sigmoid(z) * u
        return y if p2 is None else y + x * p2
    y = torch.sigmoid(z).mul_(u)  # a fresh tensor whose dtype already covers p2's (d holds p2)
    return y if p2 is None else y.addcmul_(x, p2)


def _sum_to(grad: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    if grad.shape != ref.shape:
        grad = grad.sum_to_size(ref.shape)
    return grad.to(ref.dtype)


class _AconFn(torch.autograd.Function):
    """y = d x sigmoid(beta d x) + p2 x with d = p1 - p2; saves x and the parameters only."""

    @staticmethod
    def forward(ctx, x, p1, p2, beta):
        ctx.save_for_backward(x, p1, p2, beta)
        return _acon_eager(x, p1, p2, beta)

    @staticmethod
    def backward(ctx, g):
        x, p1, p2, beta = ctx.saved_tensors
        need_x, need_p1, need_p2, need_beta = ctx.needs_input_grad
        d = _diff(p1, p2)
        u = x if d is None else x * d
        z = u if beta is None else u * beta
        s = torch.sigmoid(z)
        gx = gp1 = gp2 = gbeta = None
        if need_beta:
            # d/dbeta [u sigmoid(beta u)] = u^2 s (1 - s)
            gbeta = _sum_to(g * u * u * s * (1 - s), beta)
        if need_x or need_p1 or need_p2:
            # core = d/du [u sigmoid(beta u)] = s (1 + beta u (1 - s))
            core = s * (1 + z * (1 - s))
            if need_x:
                t = core if d is None else core * d
                gx = _sum_to(g * (t if p2 is None else t + p2), x)
            if need_p1 or need_p2:
                gd = g * x * core
                if need_p1:
                    gp1 = _sum_to(gd, p1)
                if need_p2:
                    gp2 = _sum_to(g * x - gd, p2)
        return gx, gp1, gp2, gbeta


def _as_operand(t: torch.Tensor | None, x: torch.Tensor, name: str) -> torch.Tensor | None:
    if t is None:
        return None
    if t.numel() == 1:
        return t.reshape([1] * x.dim())
    if t.dim() != x.dim() or torch.broadcast_shapes(t.shape, x.shape) != x.shape:
        raise ValueError(
            f"acon_forward: {name} of shape {tuple(t.shape)} must broadcast to the input shape {tuple(x.shape)} "
            "with the same number of dims"
        )
    return t


def acon_forward(
    x: torch.Tensor,
    p1: torch.Tensor | None = None,
    p2: torch.Tensor | None = None,
    beta: torch.Tensor | None = None,
) -> torch.Tensor:
    """(p1 - p2) x sigmoid(beta (p1 - p2) x) + p2 x, memory-lean under autograd.

    ``p1`` defaults to 1, ``p2`` to 0 and ``beta`` to 1 (so ``acon_forward(x, beta=b)`` is Swish). Each
    given tensor has one element or the input's number of dims and broadcasts to the input.
    """
    p1, p2, beta = (_as_operand(t, x, n) for t, n in ((p1, "p1"), (p2, "p2"), (beta, "beta")))
    operands = [t for t in (x, p1, p2, beta) if t is not None]
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in operands)
    tracing = _tracing()
    if needs_grad and not tracing:
        return _AconFn.apply(x, p1, p2, beta)
    # tracers see one graph whatever the grad mode: the out-of-place expression
    return _acon_eager(x, p1, p2, beta, inplace=not (needs_grad or tracing))


def _tracing() -> bool:
    # tracers and compilers see the plain expression (no Python op in the graph; the compiler
    # chooses what to recompute itself)
    return torch.jit.is_tracing() or torch.onnx.is_in_onnx_export() or torch.compiler.is_compiling()


class AconA(GranularActivation):
    """ACON-A: x sigmoid(beta x) with a learnable beta (Swish), per channel by default.

    Args:
        channels: channel count for ``granularity="channel"`` (inferred on first forward if None).
        granularity: ``"channel"`` (default) or ``"layer"`` (one beta).
        beta_init: initial beta (1.0).
        channels_last: channels on the last dim (token tensors).
        inplace: accepted and ignored; the input is never modified.
    """

    param_names = ("beta",)
    flops_train = 3.0

    def __init__(self, channels=None, *, granularity="channel", beta_init=1.0, channels_last=False, inplace=False):
        super().__init__(channels, granularity=granularity, channels_last=channels_last)
        self.beta_init = float(beta_init)
        self._finish_init()

    def _build(self, channels):
        self.beta = self._new_param(channels, self.beta_init)

    def forward(self, x):
        self.infer_channels(x)
        self.check_channels(x)
        return acon_forward(x, beta=self.pview("beta", x))


class AconB(GranularActivation):
    """ACON-B: (1 - p) x sigmoid(beta (1 - p) x) + p x, the smooth PReLU; per channel by default.

    ``p`` starts at 0.25 (PReLU's default) and ``beta`` at 1; other arguments as :class:`AconA`.
    """

    param_names = ("p", "beta")
    flops_train = 6.0

    def __init__(
        self, channels=None, *, granularity="channel", p_init=0.25, beta_init=1.0, channels_last=False, inplace=False
    ):
        super().__init__(channels, granularity=granularity, channels_last=channels_last)
        self.p_init = float(p_init)
        self.beta_init = float(beta_init)
        self._finish_init()

    def _build(self, channels):
        self.p = self._new_param(channels, self.p_init)
        self.beta = self._new_param(channels, self.beta_init)

    def forward(self, x):
        self.infer_channels(x)
        self.check_channels(x)
        return acon_forward(x, p2=self.pview("p", x), beta=self.pview("beta", x))


class AconC(GranularActivation):
    """ACON-C: (p1 - p2) x sigmoid(beta (p1 - p2) x) + p2 x.

    Args:
        channels: channel count for ``granularity="channel"`` (inferred on first forward if None).
        granularity: ``"channel"`` (default, the official code) or ``"layer"`` (the RepAct tables'
            AconC(width=1)).
        p1_init, p2_init: constants, or None for the official N(0, 1) draw.
        beta_init: initial beta (1.0, official).
        channels_last: channels on the last dim (token tensors).
        inplace: accepted and ignored; the input is never modified.
    """

    param_names = ("p1", "p2", "beta")
    flops_train = 6.0

    def __init__(
        self,
        channels=None,
        *,
        granularity="channel",
        p1_init: float | None = None,
        p2_init: float | None = None,
        beta_init: float = 1.0,
        channels_last=False,
        inplace=False,
    ):
        super().__init__(channels, granularity=granularity, channels_last=channels_last)
        self.p1_init = None if p1_init is None else float(p1_init)
        self.p2_init = None if p2_init is None else float(p2_init)
        self.beta_init = float(beta_init)
        self._finish_init()

    def _init_value(self, channels, value):
        if value is None:
            return torch.randn(channels if self.granularity == "channel" else 1)
        return value

    def _build(self, channels):
        self.p1 = self._new_param(channels, self._init_value(channels, self.p1_init))
        self.p2 = self._new_param(channels, self._init_value(channels, self.p2_init))
        self.beta = self._new_param(channels, self.beta_init)

    def forward(self, x):
        self.infer_channels(x)
        self.check_channels(x)
        return acon_forward(x, self.pview("p1", x), self.pview("p2", x), self.pview("beta", x))


class MetaAconC(Activation):
    """meta-ACON-C: ACON-C with per-channel p1, p2 and a beta generated from the input.

    Generators (``generator=``):

    * ``"layer"``: beta = sigmoid(sum of x over every non-batch dim), one per sample (the paper).
    * ``"channel"`` (default): beta = sigmoid(BN(conv1x1(BN(conv1x1(mean of x over space)))))
      per sample and channel, hidden width max(r, C // r), biases on (the official code; the
      BNs are dropped with ``bn=False``).
    * ``"pixel"``: beta = sigmoid(x).

    The BNs fall back to their running statistics when a training batch has one sample, where
    batch statistics over one value per channel do not exist. p1, p2 ~ N(0, 1) as the official code.

    Args:
        channels: channel count (inferred on first forward if None).
        generator: ``"layer"``, ``"channel"`` or ``"pixel"``.
        r: reduction of the channel generator (16).
        bn: BatchNorms in the channel generator (True, official).
        channels_last: channels on the last dim (token tensors (N, ..., C)).
        inplace: accepted and ignored; the input is never modified.
    """

    flops_train = 6.0

    def __init__(self, channels=None, *, generator="channel", r=16, bn=True, channels_last=False, inplace=False):
        check_choice("meta-ACON generator", generator, META_GENERATORS)
        r = int(r)
        if r < 1:
            raise ValueError(f"meta-ACON reduction r must be a positive integer, got {r}")
        super().__init__(channels, channels_last=channels_last)
        self.generator = generator
        self.r = r
        self.bn = bool(bn)
        self._register_load_state_dict_pre_hook(self._flat_layout_hook)
        self._finish_init()

    @property
    def needs_channels(self) -> bool:
        return True

    def hidden_width(self, channels: int) -> int:
        return max(self.r, channels // self.r)

    def _build(self, channels):
        self.p1 = nn.Parameter(torch.randn(channels))
        self.p2 = nn.Parameter(torch.randn(channels))
        if self.generator == "channel":
            hidden = self.hidden_width(channels)
            self.fc1 = nn.Conv2d(channels, hidden, 1, bias=True)
            self.bn1 = BatchNorm2dSafe(hidden) if self.bn else nn.Identity()
            self.fc2 = nn.Conv2d(hidden, channels, 1, bias=True)
            self.bn2 = BatchNorm2dSafe(channels) if self.bn else nn.Identity()
            self.train(self.training)  # submodules built lazily follow the module's mode

    def _channels_from_state(self, state_dict, prefix):
        t = state_dict.get(prefix + "p1")
        return int(t.numel()) if torch.is_tensor(t) else None

    def _flat_layout_hook(self, state_dict, prefix, *_args) -> None:
        for name in ("p1", "p2"):
            t = state_dict.get(prefix + name)
            if torch.is_tensor(t) and t.dim() > 1:
                state_dict[prefix + name] = t.reshape(-1)

    def beta(self, x: torch.Tensor) -> torch.Tensor:
        """The generated beta, shaped to broadcast against ``x``."""
        if self.generator == "pixel":
            return torch.sigmoid(x)
        if self.generator == "layer":
            s = x.sum(dim=tuple(range(1, x.dim())))
            return torch.sigmoid(s).reshape([-1] + [1] * (x.dim() - 1))
        m = per_sample_mean(x, self.channels_last)[:, :, None, None]
        b = torch.sigmoid(self.bn2(self.fc2(self.bn1(self.fc1(m)))))
        return per_sample_view(b.flatten(1), x, self.channels_last)

    def forward(self, x):
        if x.dim() < 2:
            raise ValueError(f"MetaAconC needs a batch dim, (N, C, ...) input; got shape {tuple(x.shape)}")
        self.infer_channels(x)
        self.check_channels(x)
        p1 = self._flat_view(self.p1, x)
        p2 = self._flat_view(self.p2, x)
        return acon_forward(x, p1, p2, self.beta(x))

    def _flat_view(self, t, x):
        shape = [1] * x.dim()
        shape[x.dim() - 1 if self.channels_last else 1] = t.numel()
        return t.reshape(shape)

    def extra_flops(self, input_shape: Sequence[int]) -> int:
        shape = [int(s) for s in input_shape]
        numel = math.prod(shape)
        if self.generator == "pixel":
            return numel  # one sigmoid per element
        n = shape[0]
        if self.generator == "layer":
            return numel + n  # the sum, one sigmoid per sample
        c = shape[-1] if self.channels_last else shape[1]
        h = self.hidden_width(c)
        per_sample = 2 * c * h + h + 2 * h * c + c + c  # two 1x1 convs with bias, sigmoid
        if self.bn:
            per_sample += 2 * h + 2 * c
        return numel + n * per_sample  # the spatial mean + the generator

    def extra_repr(self) -> str:
        parts = [f"generator={self.generator!r}", f"r={self.r}", f"bn={self.bn}"]
        base = super().extra_repr()
        return ", ".join(parts + ([base] if base else []))


register_act(
    "acon_a", AconA, family="acon", learnable=True, channelwise=True,
    description="ACON-A: x*sigmoid(beta*x), learnable beta per channel (Swish)",
)
register_act(
    "acon_b", AconB, family="acon", learnable=True, channelwise=True,
    description="ACON-B: (1-p)x*sigmoid(beta(1-p)x) + px, per channel",
)
register_act(
    "acon_c", AconC, aliases=("aconc",), family="acon", learnable=True, channelwise=True,
    description="ACON-C: (p1-p2)x*sigmoid(beta(p1-p2)x) + p2x, per channel (official)",
)
register_act(
    "acon_c_layer", AconC, family="acon", learnable=True,
    description="ACON-C with one p1, p2, beta per layer (the RepAct tables' AconC)", granularity="layer",
)
register_act(
    "meta_acon", MetaAconC, aliases=("meta_acon_c", "metaaconc"), family="acon", learnable=True, channelwise=True,
    description="meta-ACON-C: ACON-C with beta generated from the input (SE-like per channel by default)",
)
