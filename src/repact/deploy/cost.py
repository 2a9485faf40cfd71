"""Parameter and FLOP counts that include the pointwise work of activations.

``count_flops`` runs one forward with ``torch.utils.flop_counter.FlopCounterMode`` (convolutions,
linear layers, matrix products: 2 FLOPs per multiply-add) and forward hooks on every activation
module, which reports its own pointwise count through
``repact.activations.flops.activation_flops(module, shape, deploy)`` (1 per multiply, add,
compare, select or transcendental per element; generator networks included). What
FlopCounterMode sees inside an activation module (e.g. FReLU's depthwise conv) is replaced by the
activation's own count, so nothing is counted twice. The deploy form's count comes from the same
forward (``deploy=True``), without building the deploy model. BatchNorm, residual adds and
pooling are not counted (BatchNorm folds into the convolution at deploy).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .._hooks import run_hooked
from .._modes import eval_mode
from ..activations.flops import activation_flops

__all__ = ["FlopsReport", "count_params", "count_flops", "activation_modules"]


@dataclass
class FlopsReport:
    """FLOPs of one forward pass (for the whole batch of the example input)."""

    compute: int  # conv / linear / matmul outside activation modules (2 per multiply-add)
    activation: int  # activations, as the model computes them
    activation_deploy: int  # activations counted in their deploy form
    sites: int  # activation calls counted
    by_type: dict[str, int] = field(default_factory=dict)  # activation type -> FLOPs (as computed)

    @property
    def total(self) -> int:
        return self.compute + self.activation

    @property
    def total_deploy(self) -> int:
        return self.compute + self.activation_deploy

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["total"] = self.total
        d["total_deploy"] = self.total_deploy
        return d


def count_params(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (each shared tensor once)."""
    seen: set[int] = set()
    n = 0
    for p in model.parameters():
        if id(p) in seen or (trainable_only and not p.requires_grad):
            continue
        seen.add(id(p))
        n += p.numel()
    return n


def activation_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``path -> module`` of every outermost module with an activation FLOP count (Identity excluded)."""
    found: dict[str, nn.Module] = {}
    prefixes: list[str] = []
    for path, m in model.named_modules():
        if any(path.startswith(p + ".") for p in prefixes):
            continue
        if isinstance(m, nn.Identity) or not path:
            continue
        if activation_flops(m, (1, 1), False) is not None:
            found[path] = m
            prefixes.append(path)
    return found


def _module_flops(counts: dict[str, dict[Any, int]], root: str, path: str) -> int:
    key = f"{root}.{path}"
    if key not in counts:
        key = next((k for k in counts if k.endswith("." + path)), "")
    return int(sum(counts.get(key, {}).values()))


@torch.no_grad()
def count_flops(model: nn.Module, example_input: Any) -> FlopsReport:
    """FLOPs of ``model`` (eval mode) on ``example_input``; see the module docstring for what counts."""
    acts = activation_modules(model)
    totals = {"train": 0, "deploy": 0, "sites": 0}
    by_type: dict[str, int] = {}
    handles = []

    def hook(module, inputs, output):
        if not inputs or not torch.is_tensor(inputs[0]):
            return
        shape = tuple(inputs[0].shape)
        f = activation_flops(module, shape, False) or 0
        totals["train"] += f
        totals["deploy"] += activation_flops(module, shape, True) or 0
        totals["sites"] += 1
        name = type(module).__name__
        by_type[name] = by_type.get(name, 0) + f

    for m in {id(m): m for m in acts.values()}.values():
        handles.append(m.register_forward_hook(hook))
    counter = FlopCounterMode(display=False, depth=None)
    run_hooked(model, example_input, handles, eval_mode(model), counter)
    counts = counter.get_flop_counts()
    everything = int(sum(counts.get("Global", {}).values()))
    root = type(model).__name__
    inside = sum(_module_flops(counts, root, p) for p in acts)
    return FlopsReport(everything - inside, totals["train"], totals["deploy"], totals["sites"], by_type)
