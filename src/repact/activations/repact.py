"""RepAct (arXiv 2407.00131): a learnable multi-branch activation that fuses into one piecewise quadratic.

* RepAct-I  (``repact``):         y = sum_k w_k b_k(x)
* RepAct-II (``repact_softmax``): y = sum_k softmax(theta)_k b_k(x)
* RepAct-III (``repact_bn``):     y = BN(sum_k w_k b_k(x))

Branches default to the paper's (identity, relu, prelu, hardswish), weights start at 1/N and the
PReLU slope at 0.25. ``granularity="layer"`` keeps one scalar per branch per layer (the paper);
``"channel"`` keeps one per channel (an extension). RepAct-III's BatchNorm is layer-global for
``layer`` (one mean and variance over every element, as the official code) and per-channel for
``channel``.

Training never builds the branch tensors: the branch sum equals the fused piecewise quadratic
for any parameter values, so the forward evaluates that (with coefficients computed from the
parameters under autograd) and the backward recomputes from the input alone. ``forward_branches``
computes the literal branch sum, for checks and as the reference.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .. import fuse
from ..ops import dispatch, repact_train
from ..ops.batchnorm import batch_stats, sync_group, update_running
from ..ops.cpu import BN_BATCH, BN_CONST, BN_NONE
from ..ops.layout import channel_shape
from ..ops.repact_train import Running, module_call, spec_of, train_autograd
from .base import Activation, NotDeployableError, broadcast_channel
from .piecewise import PiecewiseQuadratic

__all__ = ["RepAct", "repact_branch_fn", "VARIANTS", "GRANULARITIES"]


def _bn_state(bn) -> tuple:
    """What a cached call of RepAct-III assumed of its BatchNorm: mode, momentum, eps, whether it
    tracks running statistics, and which running buffers it updates (by id: a cast or an
    assignment may replace them)."""
    b = bn._buffers
    return (bn.training, bn.momentum, bn.eps, bn.track_running_stats, id(b["running_mean"]),
            id(b["running_var"]), id(b["num_batches_tracked"]))


class _Call:
    """A RepAct's forward on one input layout: the op's :class:`repact.ops.repact_train.TrainCall`
    and where its arguments live in the module. Goes back to the checked path when the BatchNorm
    was replaced or its mode, momentum, eps or running-statistics tracking changed, or the weights
    changed dtype."""

    __slots__ = ("op", "bn", "bn_state", "batch", "dtype")

    def __init__(self, op, bn, batch: bool, dtype):
        self.op, self.bn, self.batch, self.dtype = op, bn, batch, dtype
        self.bn_state = None if bn is None else _bn_state(bn)

    def __call__(self, m, x):
        p = m._parameters
        w = p["branch_weight"]
        if w.dtype is not self.dtype:
            return m._forward_checked(x)
        if self.bn is None:
            args = (x, w, p["prelu_weight"])
        else:
            bn = m._modules["bn"]
            if bn is not self.bn or _bn_state(bn) != self.bn_state:
                return m._forward_checked(x)
            bp = bn._parameters
            if self.batch:
                args = (x, w, p["prelu_weight"], bp["weight"], bp["bias"])
            else:
                bb = bn._buffers
                args = (x, w, p["prelu_weight"], bp["weight"], bp["bias"], bb["running_mean"], bb["running_var"])
        # (what TrainCall.__call__ does, one Python frame less per call)
        if torch.is_grad_enabled():
            return train_autograd(self.op, False, *args)
        return self.op.run(*args)[0]


VARIANTS = ("origin", "softmax", "bn")
GRANULARITIES = ("layer", "channel")

_BRANCH_FNS = {
    "identity": lambda x, a: x,
    "relu": lambda x, a: F.relu(x),
    "prelu": lambda x, a: torch.where(x >= 0, x, a * x),
    "leaky_relu": lambda x, a: F.leaky_relu(x, 0.01),
    "hardswish": lambda x, a: F.hardswish(x),
    "relu6": lambda x, a: F.relu6(x),
    "hardtanh": lambda x, a: F.hardtanh(x),
    "hardsigmoid": lambda x, a: F.hardsigmoid(x),
    "abs": lambda x, a: x.abs(),
    "square": lambda x, a: x * x,
    # branches without an exact piecewise-polynomial form: trainable, not deployable
    "silu": lambda x, a: F.silu(x),
    "gelu": lambda x, a: F.gelu(x),
    "tanh": lambda x, a: torch.tanh(x),
    "sigmoid": lambda x, a: torch.sigmoid(x),
    "elu": lambda x, a: F.elu(x),
    "mish": lambda x, a: F.mish(x),
    "softplus": lambda x, a: F.softplus(x),
}


def repact_branch_fn(name: str):
    """The branch function ``f(x, slope)`` for a branch name."""
    try:
        return _BRANCH_FNS[name]
    except KeyError:
        raise ValueError(f"unknown RepAct branch {name!r}; choose from {', '.join(sorted(_BRANCH_FNS))}") from None


class RepAct(Activation):
    """RepAct-I/II/III; see the module docstring.

    Args:
        channels: channel count, needed (or inferred on first forward) for ``granularity="channel"``.
        variant: ``"origin"`` (I), ``"softmax"`` (II) or ``"bn"`` (III).
        granularity: ``"layer"`` (paper) or ``"channel"``.
        branches: branch names, in the order of the weights; default (identity, relu, prelu, hardswish).
        weight_init: initial branch weight (RepAct-II: logit); default 1 / len(branches).
        prelu_init: initial PReLU slope (0.25, PyTorch's default as in the paper).
        bn_eps, bn_momentum: RepAct-III BatchNorm settings (PyTorch defaults).
        channels_last: channels on the last dim (token tensors (N, ..., C)).
        inplace: accepted for ``act_layer(inplace=True)`` compatibility; the input is never modified.
        bits: 1, 2 or 4 for a few-bit backward (RepAct-I/II with piecewise branches): the forward
            is unchanged, backward keeps a ``bits``-bit code per element instead of the input and
            approximates the gradients (:mod:`repact.activations.fewbit`); None (default): exact.
    """

    deployable = True

    def __init__(
        self,
        channels: int | None = None,
        *,
        variant: str = "origin",
        granularity: str = "layer",
        branches: Sequence[str] = fuse.CANONICAL_BRANCHES,
        weight_init: float | None = None,
        prelu_init: float = 0.25,
        bn_eps: float = 1e-5,
        bn_momentum: float | None = 0.1,
        channels_last: bool = False,
        inplace: bool = False,
        bits: int | None = None,
    ) -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown RepAct variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        if granularity not in GRANULARITIES:
            raise ValueError(f"unknown granularity {granularity!r}; choose one of {', '.join(GRANULARITIES)}")
        branches = tuple(str(b).lower() for b in branches)
        if not branches:
            raise ValueError("RepAct needs at least one branch")
        for b in branches:
            repact_branch_fn(b)
        if len(set(branches)) != len(branches):
            raise ValueError(f"branches must be distinct, got {branches}")
        super().__init__(channels if granularity == "channel" else None, channels_last=channels_last)
        self.variant = variant
        self.granularity = granularity
        self.branches = branches
        self.weight_init = 1.0 / len(branches) if weight_init is None else float(weight_init)
        self.prelu_init = float(prelu_init)
        self.bn_eps = float(bn_eps)
        self.bn_momentum = bn_momentum
        self._calls = dispatch.CallCache()
        self.piecewise = all(fuse.is_piecewise_branch(b) for b in branches)
        self.has_slope = "prelu" in branches
        if self.piecewise:
            for name, value in self._fuse_constants(torch.float32, None).items():
                self.register_buffer(name, value, persistent=False)
            self.flops_train = 4.0 + self._knots.numel() + (2.0 if variant == "bn" else 0.0)
            self.flops_deploy = 4.0 + self._knots.numel()
        else:
            self.flops_train = 3.0 * len(branches) + (2.0 if variant == "bn" else 0.0)
        self._bits = None
        self.bits = bits
        self._finish_init()

    # --- few-bit backward ----------------------------------------------------------------------------
    def few_bit_problem(self) -> str | None:
        """Why this RepAct cannot take a few-bit backward, or None when it can."""
        if self.variant == "bn":
            return ("RepAct-III (variant 'bn') cannot keep a few-bit backward: its BatchNorm's backward needs every "
                    "output value; use variant 'origin' or 'softmax'")
        if not self.piecewise:
            bad = [b for b in self.branches if not fuse.is_piecewise_branch(b)]
            return (f"a few-bit backward needs piecewise branches, and {bad} are not; piecewise branches are: "
                    f"{', '.join(sorted(fuse.PIECEWISE_BRANCHES))}")
        from .fewbit import knots_on_cells

        if not knots_on_cells(self._knots.tolist()):
            return (f"a few-bit backward needs knots on multiples of 1/50 in [-5.98, 6]; branches {self.branches} "
                    f"have knots {self._knots.tolist()}")
        return None

    @property
    def bits(self) -> int | None:
        """Code width of the few-bit backward (1, 2, 4), or None for the exact backward."""
        return self._bits

    @bits.setter
    def bits(self, value: int | None) -> None:
        from ..ops.fewbit import check_bits

        value = check_bits(value)
        if value is not None and self.few_bit_problem() is not None:
            raise ValueError(f"bits={value}: {self.few_bit_problem()}")
        self._bits = value
        self._calls.clear()  # a call cached for the exact backward must not outlive it

    # --- construction ----------------------------------------------------------------------------
    def _fuse_constants(self, dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
        """The fuse buffers, computed in float64 and rounded once to ``dtype``: the knots, the table's
        linear map (``_basis``, ``_slope_basis``) and what the training op reads (``_op_base/_part``:
        the maps onto RepAct's own basis where the branch set has one, as the paper's does, with
        half the arithmetic of the table; else the table's)."""
        knots, base, part = fuse.linear_basis(self.branches, dtype=torch.float64)
        maps = fuse.hardswish_basis_map(self.branches, dtype=torch.float64)
        if maps is None:
            maps = base.reshape(base.shape[0], -1), part.reshape(part.shape[0], -1)
        consts = {"_knots": torch.tensor(knots, dtype=torch.float64), "_basis": base, "_slope_basis": part,
                  "_op_base": maps[0], "_op_part": maps[1]}
        return {k: v.to(device=device, dtype=dtype).contiguous() for k, v in consts.items()}

    def _apply(self, fn, recurse=True):
        # a cast (.double(), .to(dtype), .half()) re-rounds the fuse constants from float64 rather
        # than from their float32 values, so a float64 RepAct holds 1/6 to float64 precision
        out = super()._apply(fn, recurse)
        self._calls.clear()
        if self.piecewise and self._basis.dtype.is_floating_point:
            for name, value in self._fuse_constants(self._basis.dtype, self._basis.device).items():
                setattr(self, name, value)
        return out

    @property
    def needs_channels(self) -> bool:
        return self.granularity == "channel"

    def _build(self, channels: int | None) -> None:
        rows = channels if self.granularity == "channel" else None
        nb = len(self.branches)
        shape = (rows, nb) if rows else (nb,)
        self.branch_weight = nn.Parameter(torch.full(shape, self.weight_init))
        if self.has_slope:
            self.prelu_weight = nn.Parameter(torch.full((rows or 1,), self.prelu_init))
        else:
            self.register_parameter("prelu_weight", None)
        if self.variant == "bn":
            self.bn = nn.BatchNorm1d(rows or 1, eps=self.bn_eps, momentum=self.bn_momentum)

    def _channels_from_state(self, state_dict, prefix):
        w = state_dict.get(prefix + "branch_weight")
        if torch.is_tensor(w) and w.dim() == 2:
            return w.shape[0]
        return None

    # --- fused coefficients -------------------------------------------------------------------------
    def branch_weights(self) -> torch.Tensor:
        """Effective branch weights (after softmax for RepAct-II), shape (Cc, nb)."""
        w = self.branch_weight
        w = w.reshape(1, -1) if w.dim() == 1 else w
        return fuse.softmax_weights(w) if self.variant == "softmax" else w

    def piece_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Knots and (Cc, S, 3) coefficients of the branch sum, before any BatchNorm; differentiable."""
        if not self.piecewise:
            bad = [b for b in self.branches if not fuse.is_piecewise_branch(b)]
            raise NotDeployableError(
                f"RepAct branches {bad} have no exact piecewise-polynomial form, so this activation cannot be "
                f"re-parameterized exactly; piecewise branches are: {', '.join(sorted(fuse.PIECEWISE_BRANCHES))}"
            )
        coeffs = fuse.apply_basis(self.branch_weights(), self.prelu_weight, self._basis, self._slope_basis)
        return self._knots, coeffs

    def _reduce_dims(self, x: torch.Tensor) -> list[int]:
        if self.granularity == "layer":
            return list(range(x.dim()))
        cd = self.channel_dim(x)
        return [d for d in range(x.dim()) if d != cd]

    def _bn_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        return fuse.batchnorm_affine(self.bn.running_mean, self.bn.running_var, self.bn.weight, self.bn.bias, self.bn.eps)

    def _use_batch_stats(self, x: torch.Tensor) -> bool:
        if not (self.training or self.bn.running_mean is None):
            return False
        per_group = x.numel() // (self.bn.num_features if self.granularity == "channel" else 1)
        # one value per group has no variance: fall back to the running statistics (batch size 1)
        return per_group > 1

    # --- forward -----------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # a layout seen before runs the call decided for it then (routing, the kernels' view and
        # launches), with none of the checks that decision already made
        if not (torch.compiler.is_compiling() or torch._C._get_tracing_state()):
            call = self._calls.get((x.shape, x.stride(), x.dtype, x.device, self.training, dispatch.get_backend()))
            if call is not None:
                return call(self, x)
        return self._forward_checked(x)

    def _forward_checked(self, x: torch.Tensor) -> torch.Tensor:
        self.infer_channels(x)
        self.check_channels(x)
        if not self.piecewise:
            return self._forward_generic(x)
        if self._bits is not None:
            from .fewbit import repact_few_bit, uses_few_bit

            if uses_few_bit(self._bits, x, (self.branch_weight, self.prelu_weight)):
                return repact_few_bit(self, x)
        return self._train_op(x)

    def _train_op(self, x: torch.Tensor) -> torch.Tensor:
        """RepAct's training op (:func:`repact.ops.repact_train`) on ``x``: y, with RepAct-III's running
        statistics updated where it trains on batch statistics."""
        bn = self.bn if self.variant == "bn" else None
        batch = bn is not None and self._use_batch_stats(x)
        constant = bn is not None and not batch
        group = sync_group(bn) if batch else None
        running = None
        if batch and bn.training and bn.track_running_stats:
            running = Running(bn.running_mean, bn.running_var, bn.num_batches_tracked, bn.momentum)
        call = self._decide(x, bn, batch, group, running)
        if call is not None:
            return call(self, x)
        return repact_train(
            x, self.branch_weight, self.prelu_weight, bn.weight if bn is not None else None,
            bn.bias if bn is not None else None, bn.running_mean if constant else None,
            bn.running_var if constant else None, self._knots, self._op_base, self._op_part,
            self.variant == "softmax", bn.eps if bn is not None else 0.0, self.channel_dim(x),
            group=group, running=running,
        )[0]

    def _decide(self, x, bn, batch: bool, group, running):
        """The call for ``x``'s layout (kept in ``_calls``), or None where the op must decide per call:
        under a compiler or tracer, with synced statistics, on the reference backend, or with
        parameters in another dtype than the kernels compute in."""
        if torch.compiler.is_compiling() or torch._C._get_tracing_state() or group is not None:
            return None
        if self._bits is not None:  # a few-bit backward decides per call (repact.activations.fewbit)
            return None
        if bn is not None and type(bn) is not nn.BatchNorm1d:
            return None
        mode = BN_NONE if bn is None else (BN_BATCH if batch else BN_CONST)
        spec = spec_of(self.branch_weight, self.prelu_weight, self._knots, self._op_base, self.variant == "softmax",
                       bn.eps if bn is not None else 0.0, self.channel_dim(x), mode, running)
        op = module_call(dispatch.choose(x), spec, x, self._knots, self._op_base, self._op_part,
                         self.variant == "softmax", bn.eps if bn is not None else 0.0, running)
        if op is None or any(p.dtype != self._op_base.dtype for p in self.parameters()):
            return None
        call = _Call(op, bn, batch, self.branch_weight.dtype)
        if len(self._calls) >= 16:
            self._calls.clear()
        self._calls[(x.shape, x.stride(), x.dtype, x.device, self.training, dispatch.get_backend())] = call
        return call

    def _branch_sum(self, x: torch.Tensor) -> torch.Tensor:
        w = self.branch_weights()
        slope = self.prelu_weight
        if slope is not None:
            slope = broadcast_channel(slope, x, self.channel_dim(x) != 1)
        out = None
        for k, name in enumerate(self.branches):
            term = broadcast_channel(w[:, k], x, self.channel_dim(x) != 1) * repact_branch_fn(name)(x, slope)
            out = term if out is None else out + term
        return out

    @staticmethod
    def _per_channel(t: torch.Tensor, x: torch.Tensor, cd: int) -> torch.Tensor:
        """A (C,) tensor viewed to broadcast against ``x`` with channels on ``cd``."""
        return t.reshape(channel_shape(x.dim(), cd, t.numel()))

    def _batchnorm(self, s: torch.Tensor, update: bool) -> torch.Tensor:
        last = self.channel_dim(s) != 1
        bn = self.bn
        if self._use_batch_stats(s):
            group = sync_group(bn)
            mean, var, count = batch_stats(s, self._reduce_dims(s), group)
            if update:
                update_running(bn, mean, var, count)
            scale = torch.rsqrt(var + bn.eps) * bn.weight
            y = (s - broadcast_channel(mean, s, last)) * broadcast_channel(scale, s, last)
            return (y + broadcast_channel(bn.bias, s, last)).to(s.dtype)
        scale, shift = self._bn_affine()
        return s * broadcast_channel(scale, s, last) + broadcast_channel(shift, s, last)

    def _forward_generic(self, x: torch.Tensor) -> torch.Tensor:
        # non-piecewise branch sets: recompute the branches in backward instead of storing them
        if torch.is_grad_enabled() and (x.requires_grad or self.branch_weight.requires_grad):
            s = checkpoint(self._branch_sum, x, use_reentrant=False)
        else:
            s = self._branch_sum(x)
        return self._batchnorm(s, update=True) if self.variant == "bn" else s

    def forward_branches(self, x: torch.Tensor) -> torch.Tensor:
        """The literal branch sum (each branch evaluated on its own), as in the paper's training form.

        In training mode RepAct-III normalizes with batch statistics but does not update the
        running ones, so calling this has no side effects.
        """
        self.infer_channels(x)
        self.check_channels(x)
        s = self._branch_sum(x)
        return self._batchnorm(s, update=False) if self.variant == "bn" else s

    # --- deploy --------------------------------------------------------------------------------
    @torch.no_grad()
    def deploy_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Knots and coefficients of the eval-mode function (BN folded with running statistics)."""
        knots, coeffs = self.piece_table()
        if self.variant == "bn":
            scale, shift = self._bn_affine()
            coeffs = fuse.fold_affine(coeffs, scale, shift)
        return knots.detach().clone(), coeffs.detach().clone()

    def to_deploy(self) -> PiecewiseQuadratic:
        if not self._built:
            raise NotDeployableError(
                "this channel-wise RepAct has not seen an input yet (channels=None); run one forward pass "
                "or pass channels= before re-parameterizing"
            )
        knots, coeffs = self.deploy_table()
        return PiecewiseQuadratic(knots, coeffs, channels_last=self.channels_last)

    def extra_repr(self) -> str:
        parts = [f"variant={self.variant!r}", f"granularity={self.granularity!r}"]
        if self.branches != fuse.CANONICAL_BRANCHES:
            parts.append(f"branches={self.branches}")
        if self._bits is not None:
            parts.append(f"bits={self._bits}")
        base = super().extra_repr()
        return ", ".join(parts + ([base] if base else []))
