"""Annealing an activation into the identity (VanillaNet's deep training strategy).

``anneal(act)`` wraps an activation as ``(1 - lam) * act(x) + lam * x``. ``lam`` is a buffer
(saved with the weights) that the training engine moves from 0 to 1 (``repact train
--anneal-acts START:END``); at ``lam == 0`` the wrapper computes ``act(x)`` itself, at ``lam == 1``
``x`` itself. Its deploy form (``reparameterize``):

* ``lam == 1``: nothing (``nn.Identity``), so the layers around it can merge (:func:`repact.merge_linear`);
* an activation with an exact piece table (RepAct, ReLU, LeakyReLU, HardSwish, ReLU6, Hardtanh,
  Hardsigmoid, a deploy form): one ``PiecewiseQuadratic`` of the blend, for any ``lam``;
* ``lam == 0``: the activation's own deploy form (or the activation itself).

Other activations with ``0 < lam < 1`` (GELU, SiLU ...) have no exact single-branch form and stay.
"""

from __future__ import annotations

import copy
import re
from typing import Any, Sequence

import torch
from torch import nn

from .. import fuse
from .base import Activation, NotDeployableError
from .piecewise import PiecewiseQuadratic

__all__ = ["Annealed", "anneal", "anneal_activations", "annealed_modules", "piece_table_of"]

#: torch activations that are exactly a piece table: module type -> branch name of ``fuse.PIECEWISE_BRANCHES``
_BUILTIN_PIECES = {nn.ReLU: "relu", nn.Hardswish: "hardswish", nn.ReLU6: "relu6", nn.Hardsigmoid: "hardsigmoid",
                   nn.Identity: "identity"}


def piece_table_of(act: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(knots, (Cc, S, 3) coefficients) of an activation that is exactly piecewise polynomial, else None.

    Covers a deployable RepAct (its eval-mode table), a ``PiecewiseQuadratic``, an annealed one of
    these, and torch's ReLU, LeakyReLU, HardSwish, ReLU6, Hardsigmoid, Hardtanh and Identity.
    """
    if isinstance(act, PiecewiseQuadratic):
        return act.knots.detach().clone(), act.coeffs.detach().clone()
    if isinstance(act, Annealed):
        inner = piece_table_of(act.act) if act.lam_value < 1.0 else piece_table_of(nn.Identity())
        return None if inner is None else (inner[0], fuse.blend_identity(inner[1], act.lam_value))
    if getattr(act, "deployable", False) and hasattr(act, "deploy_table") and getattr(act, "piecewise", True):
        if getattr(act, "_built", True):
            return act.deploy_table()
        return None
    if isinstance(act, nn.LeakyReLU):
        slope = float(act.negative_slope)
        return torch.tensor([0.0]), torch.tensor([[[0.0, slope, 0.0], [0.0, 1.0, 0.0]]])
    if isinstance(act, nn.Hardtanh) and type(act) in (nn.Hardtanh,):
        lo, hi = float(act.min_val), float(act.max_val)
        return torch.tensor([lo, hi]), torch.tensor([[[lo, 0.0, 0.0], [0.0, 1.0, 0.0], [hi, 0.0, 0.0]]])
    name = _BUILTIN_PIECES.get(type(act))
    if name is None:
        return None
    knots, coeffs = fuse.branch_pieces(name, dtype=torch.float32)
    return torch.tensor(knots, dtype=torch.float32), coeffs


class Annealed(Activation):
    """``(1 - lam) * act(x) + lam * x``; ``lam`` in [0, 1] is a buffer set by :meth:`set_lam`.

    Args:
        act: the activation module to anneal (or a name for :func:`repact.create_act`).
        lam: the starting blend (0: the activation itself).
    """

    flops_train = 3.0  # the blend: two multiplies and an add per element (besides the activation's own)

    def __init__(self, act: nn.Module | str, lam: float = 0.0, **act_kwargs: Any) -> None:
        super().__init__(None)
        if isinstance(act, str):
            from ..registry import create_act

            act = create_act(act, **act_kwargs)
        elif act_kwargs:
            raise ValueError(f"anneal takes keyword arguments only with an activation name, got {sorted(act_kwargs)}")
        if not isinstance(act, nn.Module):
            raise TypeError(f"anneal needs an activation module or name, got {type(act).__name__}")
        if isinstance(act, Annealed):
            raise ValueError("this activation is annealed already; anneal it once")
        self.act = act
        self.register_buffer("lam", torch.zeros(()))
        self.set_lam(lam)
        self._built = True

    # the wrapped activation's channel count (for verify's default grid); assignments are ignored
    @property
    def channels(self) -> int | None:  # type: ignore[override]
        act = self._modules.get("act")
        return getattr(act, "channels", None)

    @channels.setter
    def channels(self, value) -> None:
        pass

    @property
    def channels_last(self) -> bool:  # type: ignore[override]
        return bool(getattr(self._modules.get("act"), "channels_last", False))

    @channels_last.setter
    def channels_last(self, value) -> None:
        pass

    @torch.no_grad()
    def set_lam(self, lam: float) -> None:
        """Set the blend; ``ValueError`` outside [0, 1]."""
        lam = float(lam)
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam must lie in [0, 1], got {lam}")
        self.lam.fill_(lam)

    @property
    def lam_value(self) -> float:
        return float(self.lam)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lam = self.lam_value
        if lam == 0.0:
            return self.act(x)
        if lam == 1.0:
            return x
        return torch.lerp(self.act(x), x, self.lam.to(x.dtype))

    # --- cost and deploy -------------------------------------------------------------------------
    def flops(self, input_shape: Sequence[int], deploy: bool = False) -> int:
        from .flops import activation_flops

        lam = self.lam_value
        if lam == 1.0:
            return 0
        inner = activation_flops(self.act, input_shape, deploy) or 0
        if lam == 0.0:
            return inner
        if deploy and self.deployable:
            return activation_flops(self.to_deploy(), input_shape, True) or 0
        return inner + super().flops(input_shape, False)

    @property
    def deployable(self) -> bool:  # type: ignore[override]
        lam = self.lam_value
        return lam in (0.0, 1.0) or piece_table_of(self.act) is not None

    def to_deploy(self) -> nn.Module:
        lam = self.lam_value
        if lam == 1.0:
            return nn.Identity()
        inner_deploy = getattr(self.act, "deployable", False) and hasattr(self.act, "to_deploy")
        if lam == 0.0:
            return self.act.to_deploy() if inner_deploy else copy.deepcopy(self.act)
        table = piece_table_of(self)
        if table is None:
            raise NotDeployableError(f"{type(self.act).__name__} annealed at lam={lam:g} has no exact single-branch "
                                     "form (only piecewise activations, lam 0 or lam 1 have one)")
        return PiecewiseQuadratic(*table, channels_last=self.channels_last)

    def extra_repr(self) -> str:
        return f"lam={self.lam_value:g}"


def anneal(act: nn.Module | str, lam: float = 0.0, **act_kwargs: Any) -> Annealed:
    """``(1 - lam) * act(x) + lam * x`` as a module (see :class:`Annealed`); ``act`` a module or a name."""
    return Annealed(act, lam, **act_kwargs)


def annealed_modules(model: nn.Module) -> list[tuple[str, Annealed]]:
    """``(path, module)`` of every :class:`Annealed` in ``model``, in registration order (each once)."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Annealed)]


def _is_activation(m: nn.Module) -> bool:
    from .flops import activation_flops

    if isinstance(m, (nn.Identity, PiecewiseQuadratic, Annealed)):
        return False
    return activation_flops(m, (1, 1), False) is not None


def anneal_activations(model: nn.Module, include: str | None = None) -> list[str]:
    """Wrap, in place, every activation module of ``model`` whose path matches the regex ``include``
    (``re.search``; None: every one) with :func:`anneal` at ``lam = 0`` (the model computes what it
    did); returns the wrapped paths. Activations inside an activation (FReLU's BatchNorm ...) and
    ones already annealed are left alone. A module registered at several paths gets one wrapper,
    shared. ``ValueError`` for a bad regex or when nothing matches."""
    try:
        pattern = re.compile(include) if include else None
    except re.error as exc:
        raise ValueError(f"--anneal-include {include!r} is not a valid regular expression: {exc}") from None
    found: list[tuple[str, nn.Module]] = []
    for path, m in model.named_modules(remove_duplicate=False):  # every path of a shared module
        if not path or any(path.startswith(p + ".") for p, _ in found):
            continue
        if _is_activation(m) or isinstance(m, Annealed):
            found.append((path, m))
    chosen = [(p, m) for p, m in found if not isinstance(m, Annealed) and (pattern is None or pattern.search(p))]
    if not chosen:
        what = f"matching {include!r}" if include else "to anneal"
        raise ValueError(f"the model has no activation module {what}; activation paths: "
                         f"{', '.join(p for p, _ in found[:8]) or 'none'}{' ...' if len(found) > 8 else ''}")
    wrappers: dict[int, Annealed] = {}
    for path, m in chosen:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        wrappers.setdefault(id(m), Annealed(m))
        parent._modules[name] = wrappers[id(m)]
    return [p for p, _ in chosen]
