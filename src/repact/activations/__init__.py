"""repact's activation library, one file per family; importing it registers every name."""

from __future__ import annotations

import importlib

from ..registry import register_act
from .anneal import Annealed, anneal, anneal_activations, annealed_modules
from .base import Activation, NotDeployableError
from .piecewise import PiecewiseQuadratic
from .repact import RepAct

__all__ = ["Activation", "Annealed", "NotDeployableError", "PiecewiseQuadratic", "RepAct", "anneal",
           "anneal_activations", "annealed_modules"]

register_act(
    "repact", RepAct, aliases=("repact1", "repact_i", "repact_origin"), family="repact", learnable=True,
    deployable=True, description="RepAct-I: learned weighted sum of identity, ReLU, PReLU and HardSwish",
    variant="origin",
)
register_act(
    "repact_softmax", RepAct, aliases=("repact2", "repact_ii"), family="repact", learnable=True,
    deployable=True, description="RepAct-II: softmax-weighted branches", variant="softmax",
)
register_act(
    "repact_bn", RepAct, aliases=("repact3", "repact_iii"), family="repact", learnable=True,
    deployable=True, description="RepAct-III: weighted branches followed by a BatchNorm", variant="bn",
)

# the other families register themselves on import
for _family in ("classic", "acon", "frelu", "adaptive", "rational"):
    try:
        _mod = importlib.import_module(f"{__name__}.{_family}")
    except ModuleNotFoundError as _exc:  # a family not written yet
        if _exc.name != f"{__name__}.{_family}":
            raise
        continue
    __all__ += list(getattr(_mod, "__all__", []))
    globals().update({n: getattr(_mod, n) for n in getattr(_mod, "__all__", [])})
