"""ACON, "Activate or Not" (arXiv 2009.04759): smooth maxima of two linear functions.

* ACON-A (``acon_a``): x sigmoid(beta x), i.e. Swish with a learnable beta.
* ACON-B (``acon_b``): (1 - p) x sigmoid(beta (1 - p) x) + p x, the smooth PReLU.
* ACON-C (``acon_c``): (p1 - p2) x sigmoid(beta (p1 - p2) x) + p2 x.
* meta-ACON-C (``meta_acon``): ACON-C with beta generated from the input.

Each module's forward is one call of ACON's op (:func:`repact.ops.acon`): the fused kernels of the
backend the dispatch chooses (C on the CPU, Triton on CUDA; one launch each way), which keep only
the input and the small parameters for backward and recompute the sigmoid there (the plain
expression would keep about four input-sized tensors). Tracing and ONNX export see the plain
expression, so their graphs hold only ordinary ops; torch.compile sees the registered op
``torch.ops.repact.acon`` or the plain expression, per device (``repact.ops.acon.COMPILED_OP``).

Inits: ACON-C follows the official code (p1, p2 ~ N(0, 1), beta = 1, per channel). ACON-A and
ACON-B have no official class; we use beta = 1 and, for ACON-B, p = 0.25 (PReLU's init).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from ..registry import register_act
from ..ops import acon
from ._common import BatchNorm2dSafe, GranularActivation, check_choice, per_sample_mean, per_sample_view
from .base import Activation

__all__ = ["acon_forward", "AconA", "AconB", "AconC", "MetaAconC", "META_GENERATORS"]

META_GENERATORS = ("layer", "channel", "pixel")


#: ACON's training op (:func:`repact.ops.acon`) under this module's historical name
acon_forward = acon


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
        bits: 1, 2 or 4 for a few-bit backward: the forward is unchanged, backward keeps a
            ``bits``-bit code per element instead of the input (:mod:`repact.activations.fewbit`);
            None (default): exact.
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
        bits: int | None = None,
    ):
        from ..ops.fewbit import check_bits

        super().__init__(channels, granularity=granularity, channels_last=channels_last)
        self.p1_init = None if p1_init is None else float(p1_init)
        self.p2_init = None if p2_init is None else float(p2_init)
        self.beta_init = float(beta_init)
        self.bits = check_bits(bits)
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
        p1, p2, beta = self.pview("p1", x), self.pview("p2", x), self.pview("beta", x)
        if self.bits is not None:
            from .fewbit import acon_few_bit, uses_few_bit

            if uses_few_bit(self.bits, x, (p1, p2, beta)):
                return acon_few_bit(x, p1, p2, beta, self.channel_dim(x), self.bits)
        return acon_forward(x, p1, p2, beta)

    def extra_repr(self) -> str:
        base = super().extra_repr()
        return base + (f", bits={self.bits}" if self.bits is not None else "")


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
