"""Load checkpoints of the official RepAct classes (2771096196/RepAct) into repact modules.

The official classes keep the branch weights in ``ActorAtn`` and the PReLU slope in
``actor_PReLU.weight`` but disagree on the branch order:

* ``RepAct_Origin`` and ``RepAct_BN``: (identity, relu, hardswish, prelu)
* ``RepAct_Softmax`` and every ``*_Reconstruct`` class: (identity, relu, prelu, hardswish)

Both orders use the same key, so loading one into the other silently swaps two branches; here
every variant is mapped onto repact's canonical order (identity, relu, prelu, hardswish).
``RepAct_BN_Reconstruct`` never saved its weights (a plain tensor of 1.25s); they are filled in.
"""

from __future__ import annotations

import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Mapping

import torch
from torch import nn

from .activations.repact import RepAct
from .fuse import CANONICAL_BRANCHES

__all__ = ["OFFICIAL_VARIANTS", "load_official_state_dict", "convert_official_state_dict", "read_official_checkpoint"]

_ORDER_A = ("identity", "relu", "hardswish", "prelu")
_ORDER_B = ("identity", "relu", "prelu", "hardswish")

#: official class name -> (our variant, branch order of its ActorAtn)
OFFICIAL_VARIANTS: dict[str, tuple[str, tuple[str, ...]]] = {
    "RepAct_Origin": ("origin", _ORDER_A),
    "RepAct_Softmax": ("softmax", _ORDER_B),
    "RepAct_BN": ("bn", _ORDER_A),
    "RepAct_Origin_Reconstruct": ("origin", _ORDER_B),
    "RepAct_Softmax_Reconstruct": ("softmax", _ORDER_B),
    "RepAct_BN_Reconstruct": ("bn", _ORDER_B),
}
_BN_RECONSTRUCT_WEIGHT = 1.25  # (zeros(4) + 1/4) * 5 in the official class, never saved


def _resolve_variant(variant: str) -> str:
    for name in OFFICIAL_VARIANTS:
        if name.lower() == variant.strip().lower():
            return name
    raise ValueError(f"unknown official RepAct variant {variant!r}; choose one of {', '.join(OFFICIAL_VARIANTS)}")


def _unwrap(state_dict: Mapping) -> Mapping[str, torch.Tensor]:
    for key in ("state_dict", "model", "model_state_dict"):
        inner = state_dict.get(key) if isinstance(state_dict, Mapping) else None
        if isinstance(inner, Mapping) and inner and all(isinstance(k, str) for k in inner):
            return _unwrap(inner)
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"expected a state dict (a mapping of names to tensors), got {type(state_dict).__name__}")
    if all(k.startswith("module.") for k in state_dict):
        return OrderedDict((k[len("module."):], v) for k, v in state_dict.items())
    return state_dict


def _official_prefixes(sd: Mapping[str, torch.Tensor]) -> list[str]:
    prefixes = {k[: -len("ActorAtn")] for k in sd if k.endswith("ActorAtn")}
    prefixes |= {k[: -len("actor_PReLU.weight")] for k in sd if k.endswith("actor_PReLU.weight")}
    return sorted(prefixes)


def convert_official_state_dict(state_dict: Mapping, variant: str) -> "OrderedDict[str, torch.Tensor]":
    """Rename and reorder the keys of an official state dict into repact's layout (pure)."""
    name = _resolve_variant(variant)
    _, order = OFFICIAL_VARIANTS[name]
    sd = _unwrap(state_dict)
    perm = [order.index(b) for b in CANONICAL_BRANCHES]
    prefixes = _official_prefixes(sd)
    if not prefixes:
        raise ValueError("no official RepAct keys (ActorAtn, actor_PReLU.weight) found in the state dict")
    out: "OrderedDict[str, torch.Tensor]" = OrderedDict()
    replaced = {p + suffix for p in prefixes for suffix in ("ActorAtn", "actor_PReLU.weight")}
    for k, v in sd.items():
        if k not in replaced:
            out[k] = v
    for p in prefixes:
        w = sd.get(p + "ActorAtn")
        if w is None:
            if name != "RepAct_BN_Reconstruct":
                raise ValueError(f"missing {p}ActorAtn in the {name} state dict")
            warnings.warn(
                f"{p or 'the module'}: RepAct_BN_Reconstruct does not save its branch weights; using the "
                f"constant {_BN_RECONSTRUCT_WEIGHT} that class computes",
                stacklevel=2,
            )
            w = torch.full((4,), _BN_RECONSTRUCT_WEIGHT)
        w = torch.as_tensor(w).reshape(-1)
        if w.numel() != 4:
            raise ValueError(f"{p}ActorAtn has {w.numel()} entries, expected 4")
        out[p + "branch_weight"] = w[perm].clone()
        slope = sd.get(p + "actor_PReLU.weight")
        if slope is None:
            raise ValueError(f"missing {p}actor_PReLU.weight in the {name} state dict")
        out[p + "prelu_weight"] = torch.as_tensor(slope).reshape(-1).clone()
    return out


def load_official_state_dict(
    module: nn.Module, state_dict: Mapping, variant: str, *, strict: bool = True
) -> nn.Module:
    """Load an official RepAct state dict (one activation's, or a whole model's) into ``module``.

    Every official activation path must hold a ``RepAct`` of the same variant with the canonical
    branches and layer granularity. Other keys are loaded as they are.
    """
    name = _resolve_variant(variant)
    ours, _ = OFFICIAL_VARIANTS[name]
    converted = convert_official_state_dict(state_dict, name)
    for p in _official_prefixes(_unwrap(state_dict)):
        path = p.rstrip(".")
        try:
            target = module.get_submodule(path) if path else module
        except AttributeError:
            raise ValueError(f"the official checkpoint has an activation at {path!r} but the module has none there") from None
        if not isinstance(target, RepAct):
            raise ValueError(f"{path or 'module'} is a {type(target).__name__}, expected a RepAct to load {name} into")
        if target.variant != ours:
            raise ValueError(
                f"{path or 'module'} is RepAct variant {target.variant!r} but {name} is variant {ours!r}; build it "
                f"with variant={ours!r}"
            )
        if target.branches != CANONICAL_BRANCHES or target.granularity != "layer":
            raise ValueError(
                f"{path or 'module'} must use the canonical branches {CANONICAL_BRANCHES} with granularity='layer' "
                "to take an official checkpoint"
            )
    module.load_state_dict(converted, strict=strict)
    return module


def read_official_checkpoint(path: str | Path) -> Mapping[str, torch.Tensor]:
    """Read an official ``.pth`` checkpoint without running pickled code (``weights_only=True``)."""
    obj = torch.load(Path(path), map_location="cpu", weights_only=True)
    return _unwrap(obj)
