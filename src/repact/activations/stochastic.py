"""Stochastic activations: train with two activations at random, infer with one.

``Stochastic(first="silu", second="relu", p=0.5)`` computes, in training mode, ``first(x)`` with
probability ``p`` and ``second(x)`` otherwise, either once per forward call (``mode="forward"``, the
whole tensor) or for every element on its own (``mode="element"``); in eval mode, and in training
while ``fixed`` is set (a closing fine-tuning phase), it computes the ``inference`` one only
(``"second"`` by default: ReLU's sparsity at inference, SiLU's smooth gradients in training).

Randomness comes from torch's default generators (the CPU one for the per-forward coin, the input
device's for the per-element masks), so ``torch.manual_seed`` makes a run reproducible. ``repact
train`` seeds every process with ``seed + rank``: under DDP each process draws its own stream, and
checkpoints hold every rank's generator states, so a resumed run draws what the uninterrupted one
would. A coin is drawn at every training forward, whatever ``p`` is, so changing ``p`` (the engine's
``--stochastic-p`` schedule) never shifts the stream. Registered as ``stochastic`` (per forward) and
``stochastic_element`` (per element), both SiLU / ReLU with p = 0.5. :func:`repact.reparameterize`
(``repact deploy``) replaces it with its inference activation.
"""

from __future__ import annotations

import copy
import math
from typing import Sequence

import torch
from torch import nn

from ..registry import create_act, register_act
from ._common import check_choice
from .base import Activation
from .flops import activation_flops

__all__ = ["Stochastic", "MODES", "set_stochastic"]

MODES = ("forward", "element")
INFERENCE = ("first", "second")


def _check_p(p) -> float:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= float(p) <= 1:
        raise ValueError(f"p (the probability of the first activation) must be a number in [0, 1], got {p!r}")
    return float(p)


class Stochastic(Activation):
    """``first`` with probability ``p`` (per forward or per element) in training, ``inference`` at eval.

    Args:
        channels: passed to both activations (channel-wise ones infer it on the first forward if None).
        first, second: registered activation names (or classes / factories, as ``create_act`` takes).
        p: probability of ``first`` in training, in [0, 1].
        mode: ``"forward"`` (one coin per call) or ``"element"`` (one per element).
        inference: ``"first"`` or ``"second"`` (default): the activation of eval mode and of ``fixed``.
        channels_last: channels on the last dim (token tensors).
        inplace: accepted and ignored; the input is never modified.
    """

    def __init__(self, channels=None, *, first="silu", second="relu", p: float = 0.5, mode: str = "forward",
                 inference: str = "second", channels_last: bool = False, inplace: bool = False) -> None:
        check_choice("stochastic mode", mode, MODES)
        check_choice("inference activation", inference, INFERENCE)
        super().__init__(None, channels_last=channels_last)
        kw = {"channels_last": True} if channels_last else {}
        self.first = create_act(first, channels=channels, **kw)
        self.second = create_act(second, channels=channels, **kw)
        self.p = _check_p(p)
        self.mode = mode
        self.inference = inference
        #: training forwards use the inference activation (the closing fine-tuning phase)
        self.fixed = False
        #: training forwards that took the first / the second activation (per-forward mode), this process
        self.counts = [0, 0]
        self._finish_init()

    @property
    def inference_module(self) -> nn.Module:
        return self.first if self.inference == "first" else self.second

    #: re-parameterizes to its inference activation (what eval mode computes)
    deployable = True

    def to_deploy(self) -> nn.Module:
        """The inference activation, in its own deploy form where it has one (a RepAct member's table)."""
        m = self.inference_module
        if getattr(m, "deployable", False) and hasattr(m, "to_deploy"):
            return m.to_deploy()
        return copy.deepcopy(m)

    def _subs_built(self, x: torch.Tensor) -> None:
        # a lazy channel-wise activation builds on its first call; build both now, so that the one not
        # drawn yet has its parameters before the optimizer is made
        for m in (self.first, self.second):
            if isinstance(m, Activation) and not m._built:
                m.infer_channels(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.infer_channels(x)
        self._subs_built(x)
        if not self.training or self.fixed:
            return self.inference_module(x)
        if self.mode == "element":
            mask = torch.rand(x.shape, device=x.device) < self.p
            return torch.where(mask, self.first(x), self.second(x))
        take_first = bool(torch.rand(()) < self.p)
        self.counts[0 if take_first else 1] += 1
        chosen, other = (self.first, self.second) if take_first else (self.second, self.first)
        y = chosen(x)
        unused = [p for p in other.parameters() if p.requires_grad]
        if unused and torch.is_grad_enabled():
            # zero gradients for the activation not drawn, so DDP sees every parameter used
            y = y + 0.0 * sum(p.sum() for p in unused).to(y.dtype)
        return y

    def flops(self, input_shape: Sequence[int], deploy: bool = False) -> int:
        """``deploy``: the inference activation's; else the training form's: both weighted by ``p``
        per forward, both in full (and the select) per element."""
        f1, f2 = (activation_flops(m, input_shape) or 0 for m in (self.first, self.second))
        if deploy:
            return f1 if self.inference == "first" else f2
        if self.mode == "element":
            return f1 + f2 + math.prod(int(s) for s in input_shape)  # + the select
        return int(round(self.p * f1 + (1 - self.p) * f2))

    def extra_repr(self) -> str:
        parts = [f"p={self.p:g}", f"mode={self.mode!r}", f"inference={self.inference!r}"]
        if self.fixed:
            parts.append("fixed=True")
        base = super().extra_repr()
        return ", ".join(parts + ([base] if base else []))


def set_stochastic(model: nn.Module, p: float | None = None, fixed: bool | None = None) -> int:
    """Set ``p`` and/or ``fixed`` on every :class:`Stochastic` of ``model``; returns how many there are."""
    if p is not None:
        p = _check_p(p)
    found = [m for m in model.modules() if isinstance(m, Stochastic)]
    for m in found:
        if p is not None:
            m.p = p
        if fixed is not None:
            m.fixed = bool(fixed)
    return len(found)


register_act(
    "stochastic", Stochastic, family="stochastic", deployable=True,
    description="SiLU with probability p = 0.5 per forward, else ReLU, in training; ReLU at inference",
)
register_act(
    "stochastic_element", Stochastic, family="stochastic", deployable=True, mode="element",
    description="SiLU with probability p = 0.5 per element, else ReLU, in training; ReLU at inference",
)
