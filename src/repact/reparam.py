"""Model-wide re-parameterization and equivalence checks.

``reparameterize`` swaps every activation that has an exact single-branch form for that form.
``verify`` compares two modules in eval mode; ``verify_reparameterization`` does the whole check
the way RepVGG's verify does: randomize BatchNorm statistics (and activation parameters), convert
a copy, compare on dense inputs that include the knots, against the model itself or against the
literal branch sum of every RepAct (``reference="branches"``). Non-finite values never pass:
``check_finite`` names the first parameter or buffer holding NaN/inf, and a ``VerifyResult``
whose outputs hold any is not ``ok``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn
from torch.nn.parameter import is_lazy

from ._modes import eval_mode
from .activations.base import Activation, NotDeployableError

__all__ = [
    "NonFiniteError",
    "check_finite",
    "nonfinite_tensors",
    "branch_reference",
    "REFERENCES",
    "reparameterize",
    "deployable_modules",
    "verify",
    "compare_outputs",
    "verify_reparameterization",
    "VerifyResult",
    "dense_grid",
    "randomize_batchnorm_",
    "randomize_activations_",
]


class NonFiniteError(ValueError):
    """A parameter, buffer or output holds NaN or infinity."""


def nonfinite_tensors(source: nn.Module | Mapping[str, torch.Tensor]) -> list[tuple[str, str, int, int]]:
    """``(kind, name, non-finite count, numel)`` of every floating parameter or buffer of a module (kind
    ``parameter`` / ``buffer``), or tensor of a state dict (kind ``tensor``), that holds NaN/inf."""
    if isinstance(source, nn.Module):
        groups = (("parameter", source.named_parameters()), ("buffer", source.named_buffers()))
    else:
        groups = (("tensor", source.items()),)
    out = []
    for kind, items in groups:
        for name, t in items:
            if not torch.is_tensor(t) or is_lazy(t) or t.is_meta or not (t.is_floating_point() or t.is_complex()):
                continue
            bad = int((~torch.isfinite(t.detach())).sum())
            if bad:
                out.append((kind, name, bad, t.numel()))
    return out


def check_finite(module: nn.Module, what: str = "the model") -> None:
    """``NonFiniteError`` naming the first parameter or buffer of ``module`` that holds NaN or inf."""
    bad = nonfinite_tensors(module)
    if bad:
        kind, name, n, numel = bad[0]
        more = f" (and {len(bad) - 1} more tensor(s))" if len(bad) > 1 else ""
        raise NonFiniteError(f"{what} has non-finite weights: {kind} {name or '<root>'} holds {n} NaN/inf value(s) "
                             f"of {numel}{more}")


def deployable_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(path, module)`` of every module with a deploy form (the root included, path ``""``)."""
    return [(n, m) for n, m in model.named_modules() if getattr(m, "deployable", False) and hasattr(m, "to_deploy")]


def reparameterize(module: nn.Module, inplace: bool = True) -> nn.Module:
    """Replace every module that has a deploy form by that form and return the result.

    Accepts one activation (returns its deploy module) or a whole model (its submodules are
    replaced; the model is returned). RepAct-III folds its BatchNorm with the running statistics.
    A module reused at several places is converted once and stays shared. An activation whose
    branch set has no exact form raises ``NotDeployableError`` naming its path.
    With ``inplace=False`` a deep copy is converted and the input is left untouched.
    """
    if not inplace:
        module = copy.deepcopy(module)
    if getattr(module, "deployable", False) and hasattr(module, "to_deploy"):
        return _convert(module, "")
    done: dict[int, nn.Module] = {}
    _replace_children(module, "", done)
    return module


def _convert(m: nn.Module, path: str) -> nn.Module:
    try:
        new = m.to_deploy()
    except NotDeployableError as exc:
        where = path or type(m).__name__
        raise NotDeployableError(f"{where}: {exc}") from None
    new.train(m.training)
    return new


def _replace_children(parent: nn.Module, prefix: str, done: dict[int, nn.Module]) -> None:
    # _modules, not named_children(): the latter skips a module's second call site
    for name, child in list(parent._modules.items()):
        if child is None:
            continue
        path = f"{prefix}.{name}" if prefix else name
        if getattr(child, "deployable", False) and hasattr(child, "to_deploy"):
            if id(child) not in done:
                done[id(child)] = _convert(child, path)
            setattr(parent, name, done[id(child)])
        else:
            _replace_children(child, path, done)


# --------------------------------------------------------------------------------------------------
# verification
# --------------------------------------------------------------------------------------------------


@dataclass
class VerifyResult:
    """Errors of ``candidate`` against ``reference``.

    ``max_rel`` is ``max |c - r| / max |r|``: the largest error relative to the output's scale (an
    elementwise ratio would blow up where the reference crosses zero).
    """

    max_abs: float
    max_rel: float
    ref_scale: float
    numel: int
    outputs: int
    nonfinite: str = ""  # which output holds NaN/inf, and how many ("" when all are finite)

    def ok(self, rtol: float = 1e-5, atol: float = 0.0) -> bool:
        """Within tolerance, and every output value finite (NaN/inf never pass, even where both agree)."""
        return not self.nonfinite and (self.max_abs <= atol or self.max_rel <= rtol)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def __str__(self) -> str:
        text = f"max abs error {self.max_abs:.3e}, max rel error {self.max_rel:.3e} (output scale {self.ref_scale:.3e})"
        return text + (f"; NOT FINITE: {self.nonfinite}" if self.nonfinite else "")


def _knots_of(module: nn.Module) -> list[float]:
    knots: set[float] = set()
    for m in module.modules():
        t = getattr(m, "_knots", None)
        if t is None:
            t = getattr(m, "knots", None)
        if torch.is_tensor(t):
            knots.update(float(v) for v in t.reshape(-1).tolist())
    return sorted(knots)


def dense_grid(
    knots: Iterable[float] = (-3.0, 0.0, 3.0), lo: float = -10.0, hi: float = 10.0, steps: int = 20001,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A dense 1-D grid on [lo, hi] holding every knot exactly, with its float neighbours."""
    pts = torch.linspace(lo, hi, steps, dtype=torch.float64)
    extra = []
    for k in knots:
        kt = torch.tensor(float(k), dtype=dtype)
        up = torch.nextafter(kt, torch.tensor(float("inf"), dtype=dtype))
        down = torch.nextafter(kt, torch.tensor(-float("inf"), dtype=dtype))
        extra += [kt, up, down]
    grid = torch.cat([pts.to(dtype), torch.stack(extra)]) if extra else pts.to(dtype)
    return torch.unique(grid)


def _default_inputs(module: nn.Module) -> tuple[torch.Tensor, ...]:
    if not isinstance(module, Activation):
        raise ValueError(
            "verify needs inputs= for a model (e.g. torch.randn(2, 3, 224, 224)); only activations get a "
            "default dense grid"
        )
    knots = sorted({-3.0, 0.0, 3.0, *_knots_of(module)})
    grid = dense_grid(knots)
    channels = getattr(module, "channels", None) or 1
    return (grid.unsqueeze(1).expand(-1, channels).contiguous(),)


def _as_tuple(inputs: Any) -> tuple:
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs)
    return (inputs,)


def _flatten_outputs(out: Any) -> list[torch.Tensor]:
    if torch.is_tensor(out):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _flatten_outputs(v)]
    if isinstance(out, (list, tuple)):
        return [t for v in out for t in _flatten_outputs(v)]
    return []


@torch.no_grad()
def verify(
    reference: nn.Module,
    candidate: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> VerifyResult:
    """Compare ``candidate`` with ``reference`` in eval mode on ``inputs``.

    ``inputs`` defaults, for an activation, to a dense grid on [-10, 10] holding -3, 0, 3 and every
    knot of the module exactly (with their float neighbours), repeated over its channels.
    Both modules are put in eval mode for the comparison and restored afterwards.
    """
    args = _default_inputs(reference) if inputs is None else _as_tuple(inputs)
    with eval_mode(reference, candidate):
        ref = _flatten_outputs(reference(*args))
        cand = _flatten_outputs(candidate(*args))
    return compare_outputs(ref, cand)


def compare_outputs(ref: Sequence[torch.Tensor], cand: Sequence[torch.Tensor]) -> VerifyResult:
    """The :class:`VerifyResult` of output tensors ``cand`` against ``ref`` (same count and shapes)."""
    if len(ref) != len(cand) or not ref:
        raise ValueError(f"reference gave {len(ref)} output tensors and candidate {len(cand)}")
    max_abs = 0.0
    scale = 0.0
    numel = 0
    nonfinite: list[str] = []
    for i, (r, c) in enumerate(zip(ref, cand)):
        if r.shape != c.shape:
            raise ValueError(f"output shapes differ: reference {tuple(r.shape)}, candidate {tuple(c.shape)}")
        r64, c64 = r.detach().double(), c.detach().double()
        fin_r, fin_c = torch.isfinite(r64), torch.isfinite(c64)
        for who, fin in (("reference", fin_r), ("candidate", fin_c)):
            bad = int((~fin).sum())
            if bad:
                nonfinite.append(f"{who} output {i} holds {bad} NaN/inf value(s) of {r.numel()}")
        keep = fin_r & fin_c
        if not bool(keep.all()):
            if not torch.equal(fin_r, fin_c):  # non-finite in one output only: no finite bound on the error
                max_abs = math.inf
            r64, c64 = r64[keep], c64[keep]
        if r64.numel():
            max_abs = max(max_abs, float((r64 - c64).abs().max()))
            scale = max(scale, float(r64.abs().max()))
        numel += r.numel()
    rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    return VerifyResult(max_abs, rel, scale, numel, len(ref), "; ".join(nonfinite))


@torch.no_grad()
def randomize_batchnorm_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every BatchNorm random running statistics and affine parameters (in place).

    With the default statistics (mean 0, var 1) a fold check is nearly trivial, so checks call
    this first, as RepVGG's verify does.
    """
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._NormBase):
            if m.running_mean is not None:
                m.running_mean.copy_(torch.randn(m.running_mean.shape, generator=g) * 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) * 1.5 + 0.25)
            if m.weight is not None:
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 1.5 + 0.25)
                m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.5)
    return model


@torch.no_grad()
def randomize_activations_(model: nn.Module, seed: int = 0, scale: float = 0.5) -> nn.Module:
    """Randomize the learnable parameters of every repact activation (in place)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if not isinstance(m, Activation):
            continue
        for _, p in m.named_parameters(recurse=False):
            p.add_(torch.randn(p.shape, generator=g, dtype=p.dtype) * scale)
    return model


#: what ``verify_reparameterization`` compares the deploy form with
REFERENCES = ("module", "branches")


class _LiteralBranchSum(nn.Module):
    """Runs a RepAct's ``forward_branches`` (each branch on its own, then the weighted sum)."""

    def __init__(self, act: nn.Module) -> None:
        super().__init__()
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act.forward_branches(x)


def branch_reference(model: nn.Module) -> nn.Module:
    """A copy of ``model`` in which every module with ``forward_branches`` (RepAct) computes its
    literal branch sum instead of its fused forward: a reference that shares no table with the
    deploy form. ``ValueError`` when the model has no such module."""
    ref = copy.deepcopy(model)
    if hasattr(ref, "forward_branches"):
        return _LiteralBranchSum(ref)
    found: dict[int, nn.Module] = {}

    def swap(parent: nn.Module) -> None:
        for name, child in list(parent._modules.items()):
            if child is None:
                continue
            if hasattr(child, "forward_branches"):
                found.setdefault(id(child), _LiteralBranchSum(child))
                setattr(parent, name, found[id(child)])
            else:
                swap(child)

    swap(ref)
    if not found:
        raise ValueError("reference='branches' compares with the literal branch sum of every RepAct, but the model "
                         "has no RepAct (no module with forward_branches); use reference='module'")
    return ref


def verify_reparameterization(
    model: nn.Module,
    inputs: torch.Tensor | Sequence[torch.Tensor] | None = None,
    *,
    randomize_bn: bool = True,
    randomize_acts: bool = False,
    seed: int = 0,
    reference: str = "module",
) -> tuple[VerifyResult, nn.Module]:
    """Randomize BN statistics (optional), re-parameterize a copy, compare; returns (result, deployed).

    ``reference="module"`` compares with the model's own eval forward; ``"branches"`` with the
    literal branch sum of every RepAct (``forward_branches``, see :func:`branch_reference`), which
    does not go through the fused table the deploy form is built from.
    The model itself is changed only by the randomization (use a copy if that matters).
    """
    if reference not in REFERENCES:
        raise ValueError(f"reference must be one of {', '.join(REFERENCES)}, got {reference!r}")
    if randomize_bn:
        randomize_batchnorm_(model, seed)
    if randomize_acts:
        randomize_activations_(model, seed)
    if inputs is None and isinstance(model, Activation) and not model._built:
        raise ValueError("a lazy channel-wise activation needs inputs= (or channels=) before verification")
    deployed = reparameterize(model, inplace=False)
    if reference == "module":
        return verify(model, deployed, inputs), deployed
    if inputs is None:
        inputs = _default_inputs(model)  # the activation's own dense grid (the wrapper has none)
    return verify(branch_reference(model), deployed, inputs), deployed
