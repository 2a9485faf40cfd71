"""repact: learnable, re-parameterizable activation functions for PyTorch."""

from __future__ import annotations

from . import activations, fuse, ops
from .activations import Activation, Annealed, NotDeployableError, PiecewiseQuadratic, RepAct, anneal
from .official import load_official_state_dict
from .merge import merge_linear, verify_merge
from .registry import create_act, get_act_spec, list_acts, register_act
from .surgery import SwapReport, swap_activations
from .reparam import (
    VerifyResult,
    randomize_activations_,
    randomize_batchnorm_,
    reparameterize,
    verify,
    verify_reparameterization,
)

__version__ = "0.1.0"

__all__ = [
    "Activation",
    "Annealed",
    "NotDeployableError",
    "PiecewiseQuadratic",
    "RepAct",
    "SwapReport",
    "VerifyResult",
    "activations",
    "anneal",
    "create_act",
    "fuse",
    "get_act_spec",
    "list_acts",
    "load_official_state_dict",
    "merge_linear",
    "ops",
    "randomize_activations_",
    "randomize_batchnorm_",
    "register_act",
    "reparameterize",
    "swap_activations",
    "verify",
    "verify_merge",
    "verify_reparameterization",
]
