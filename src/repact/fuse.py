"""Pure re-parameterization transforms: branch parameters in, knots and coefficients out.

Each function is independent of any module and differentiable in its tensor inputs, so the
training forward and ``reparameterize`` use the very same math, and each step is testable alone.

A *piece table* is ``(knots, coeffs)``: ``knots`` a sorted tuple of K floats, ``coeffs`` a tensor of
shape (..., K + 1, 3) where ``coeffs[..., s, j]`` multiplies ``x ** j`` on segment ``s``
(``knots[s-1] <= x < knots[s]``). Every branch below is continuous, so the value at a knot does
not depend on which side claims it.

RepAct's canonical branch order is (identity, relu, prelu, hardswish); the fused table for that
set is the paper's 4-segment quadratic with knots (-3, 0, 3).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

__all__ = [
    "CANONICAL_BRANCHES",
    "PIECEWISE_BRANCHES",
    "BranchPieces",
    "branch_pieces",
    "is_piecewise_branch",
    "merge_knots",
    "restrict_to_knots",
    "linear_basis",
    "apply_basis",
    "combine_branches",
    "softmax_weights",
    "repact_coefficients",
    "batchnorm_affine",
    "fold_affine",
    "blend_identity",
    "evaluate_pieces",
    "HARDSWISH_KNOTS",
    "BasisCoefficients",
    "basis_coefficients",
    "hardswish_basis_map",
]

CANONICAL_BRANCHES: tuple[str, ...] = ("identity", "relu", "prelu", "hardswish")


@dataclass(frozen=True)
class BranchPieces:
    """A branch that is exactly piecewise polynomial (degree <= 2) with fixed knots.

    Its table is ``base + slope * slope_part`` (rows per segment, columns x^0, x^1, x^2); only the
    parametric ``prelu`` branch has a slope part.
    """

    knots: tuple[float, ...]
    base: tuple[tuple[float, float, float], ...]
    slope_part: tuple[tuple[float, float, float], ...] | None = None


def _rows(*rows: tuple[float, float, float]) -> tuple[tuple[float, float, float], ...]:
    return tuple(tuple(float(v) for v in r) for r in rows)  # type: ignore[misc]


PIECEWISE_BRANCHES: dict[str, BranchPieces] = {
    "identity": BranchPieces((), _rows((0, 1, 0))),
    "relu": BranchPieces((0.0,), _rows((0, 0, 0), (0, 1, 0))),
    "prelu": BranchPieces((0.0,), _rows((0, 0, 0), (0, 1, 0)), _rows((0, 1, 0), (0, 0, 0))),
    "leaky_relu": BranchPieces((0.0,), _rows((0, 0.01, 0), (0, 1, 0))),
    "hardswish": BranchPieces((-3.0, 3.0), _rows((0, 0, 0), (0, 0.5, 1.0 / 6.0), (0, 1, 0))),
    "relu6": BranchPieces((0.0, 6.0), _rows((0, 0, 0), (0, 1, 0), (6, 0, 0))),
    "hardtanh": BranchPieces((-1.0, 1.0), _rows((-1, 0, 0), (0, 1, 0), (1, 0, 0))),
    "hardsigmoid": BranchPieces((-3.0, 3.0), _rows((0, 0, 0), (0.5, 1.0 / 6.0, 0), (1, 0, 0))),
    "abs": BranchPieces((0.0,), _rows((0, -1, 0), (0, 1, 0))),
    "square": BranchPieces((), _rows((0, 0, 1))),
}


def is_piecewise_branch(name: str) -> bool:
    return name in PIECEWISE_BRANCHES


def _spec(name: str) -> BranchPieces:
    try:
        return PIECEWISE_BRANCHES[name]
    except KeyError:
        raise ValueError(
            f"branch {name!r} has no exact piecewise-polynomial form; piecewise branches are: "
            f"{', '.join(sorted(PIECEWISE_BRANCHES))}"
        ) from None


def branch_pieces(
    name: str, slope: torch.Tensor | None = None, *, dtype: torch.dtype = torch.float64
) -> tuple[tuple[float, ...], torch.Tensor]:
    """Piece table of one branch: knots and coefficients of shape (Cc, S, 3).

    ``slope`` (shape (Cc,)) is required by ``prelu`` and ignored by the others (Cc = 1 then).
    """
    spec = _spec(name)
    dev = slope.device if slope is not None else None
    dt = slope.dtype if slope is not None and slope.is_floating_point() else dtype
    base = torch.tensor(spec.base, dtype=dt, device=dev).unsqueeze(0)
    if spec.slope_part is None:
        return spec.knots, base
    if slope is None:
        raise ValueError(f"the {name} branch needs a slope tensor")
    part = torch.tensor(spec.slope_part, dtype=dt, device=dev).unsqueeze(0)
    return spec.knots, base + slope.reshape(-1, 1, 1) * part


def merge_knots(knot_sets: Sequence[Sequence[float]]) -> tuple[float, ...]:
    """Sorted union of several knot sets."""
    return tuple(sorted({float(k) for ks in knot_sets for k in ks}))


def restrict_to_knots(knots: Sequence[float], coeffs: torch.Tensor, target: Sequence[float]) -> torch.Tensor:
    """Re-express a piece table on a finer knot set ``target`` (a superset of ``knots``)."""
    missing = set(map(float, knots)) - set(map(float, target))
    if missing:
        raise ValueError(f"target knots {tuple(target)} do not contain {sorted(missing)}")
    index = []
    for s in range(len(target) + 1):
        left = -float("inf") if s == 0 else float(target[s - 1])
        index.append(sum(1 for k in knots if float(k) <= left))
    return coeffs[..., index, :]


def linear_basis(
    branches: Sequence[str], *, dtype: torch.dtype = torch.float64
) -> tuple[tuple[float, ...], torch.Tensor, torch.Tensor]:
    """The fused table of a branch set as a linear map of the weights.

    Returns ``(knots, base, slope_part)``, both of shape (nb, S, 3) on the merged knots, such that
    ``coeffs[c] = sum_k w[c, k] * (base[k] + slope[c] * slope_part[k])``.
    """
    specs = [_spec(b) for b in branches]
    knots = merge_knots([s.knots for s in specs])
    base, part = [], []
    for s in specs:
        b = torch.tensor(s.base, dtype=dtype)
        p = torch.tensor(s.slope_part, dtype=dtype) if s.slope_part is not None else torch.zeros_like(b)
        base.append(restrict_to_knots(s.knots, b, knots))
        part.append(restrict_to_knots(s.knots, p, knots))
    return knots, torch.stack(base), torch.stack(part)


def apply_basis(
    weights: torch.Tensor, slope: torch.Tensor | None, base: torch.Tensor, slope_part: torch.Tensor
) -> torch.Tensor:
    """``sum_k w[c, k] * (base[k] + slope[c] * slope_part[k])`` -> (Cc, S, 3); differentiable."""
    w = weights.reshape(1, -1) if weights.dim() == 1 else weights
    nb, segs = base.shape[0], base.shape[1]
    if w.shape[-1] != nb:
        raise ValueError(f"{nb} branches need {nb} weights, got shape {tuple(weights.shape)}")
    b = base.reshape(nb, segs * 3).to(dtype=w.dtype, device=w.device)
    if slope is None:
        out = w @ b
    else:
        p = slope_part.reshape(nb, segs * 3).to(dtype=w.dtype, device=w.device)
        out = torch.addmm(w @ b, w * slope.reshape(-1, 1).to(w.dtype), p)
    return out.reshape(w.shape[0], segs, 3)


def combine_branches(
    branches: Sequence[str], weights: torch.Tensor, slope: torch.Tensor | None = None
) -> tuple[tuple[float, ...], torch.Tensor]:
    """Fuse ``sum_k weights[..., k] * branch_k(x)`` into one piece table.

    ``weights`` has shape (Cc, nb) (or (nb,), treated as Cc = 1); ``slope`` has shape (Cc,) or (1,).
    Returns knots and coefficients of shape (Cc, S, 3).
    """
    knots, base, part = linear_basis(branches, dtype=weights.dtype)
    if slope is None and bool((part != 0).any()):
        raise ValueError("this branch set has a prelu branch and needs its slope")
    return knots, apply_basis(weights, slope, base, part)


def softmax_weights(logits: torch.Tensor) -> torch.Tensor:
    """RepAct-II's convex branch weights."""
    return torch.softmax(logits, dim=-1)


def repact_coefficients(
    weights: torch.Tensor, slope: torch.Tensor, branches: Sequence[str] = CANONICAL_BRANCHES
) -> tuple[tuple[float, ...], torch.Tensor]:
    """RepAct-I table: branch weights (Cc, nb) and PReLU slope (Cc,) to knots and (Cc, S, 3)."""
    return combine_branches(branches, weights, slope)


def batchnorm_affine(
    running_mean: torch.Tensor,
    running_var: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as ``scale * s + shift``."""
    scale = torch.rsqrt(running_var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -running_mean * scale
    if bias is not None:
        shift = shift + bias
    return scale, shift


def fold_affine(coeffs: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Coefficients of ``scale * f(x) + shift`` (scale and shift of shape (Cc,) or (1,))."""
    sc = scale.reshape(-1, 1, 1).to(coeffs.dtype)
    sh = shift.reshape(-1, 1).to(coeffs.dtype)
    out = coeffs * sc
    return torch.cat([out[..., :1] + sh.unsqueeze(-1), out[..., 1:]], dim=-1)


def blend_identity(coeffs: torch.Tensor, lam: float) -> torch.Tensor:
    """Coefficients of ``(1 - lam) * f(x) + lam * x`` (an annealed activation's table), computed in
    float64 and rounded once to ``coeffs``' dtype."""
    c = coeffs.detach().double() * (1.0 - float(lam))
    c[..., 1] += float(lam)
    return c.to(coeffs.dtype)


def evaluate_pieces(x: torch.Tensor, knots: Sequence[float], coeffs: torch.Tensor) -> torch.Tensor:
    """Reference evaluation of a (1, S, 3) or (S, 3) table on any tensor (for checks and plots)."""
    c = coeffs.reshape(-1, 3) if coeffs.dim() == 2 else coeffs[0]
    seg = torch.zeros_like(x, dtype=torch.long)
    for k in knots:
        seg = seg + (x >= k).long()
    a = c.to(x.dtype)[seg]
    return a[..., 0] + a[..., 1] * x + a[..., 2] * x * x


#: the knots of the canonical RepAct table
HARDSWISH_KNOTS = (-3.0, 0.0, 3.0)


@dataclass
class BasisCoefficients:
    """``f = E + A x + B relu(x) + D hardswish(x)``, each of shape (Cc,)."""

    A: torch.Tensor
    B: torch.Tensor
    D: torch.Tensor
    E: torch.Tensor
    max_error: float  # max |table - table rebuilt from A, B, D, E| (coefficient units)

    def rows(self) -> torch.Tensor:
        """(4, Cc): E, A, B, Q = D / 6 of ``E + x (A + B [x >= 0] + Q clamp(x + 3, 0, 6))``, the
        order the native kernels read."""
        return torch.stack([self.E, self.A, self.B, self.D / 6.0])


def _basis_table(E: torch.Tensor, A: torch.Tensor, B: torch.Tensor, Q: torch.Tensor) -> torch.Tensor:
    """The (..., 4, 3) table on (-3, 0, 3) of ``E + x (A + B [x >= 0] + Q clamp(x + 3, 0, 6))``."""
    z = torch.zeros_like(A)
    rows = [(E, A, z), (E, A + 3 * Q, Q), (E, A + B + 3 * Q, Q), (E, A + B + 6 * Q, z)]
    return torch.stack([torch.stack(r, -1) for r in rows], dim=-2)


def hardswish_basis_map(
    branches: Sequence[str], *, dtype: torch.dtype = torch.float64
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The branch set's fused function as a linear map onto RepAct's own basis, or None.

    Returns ``(base, slope_part)`` of shape (nb, 4) such that the basis row (E, A, B, Q) of
    ``E + x (A + B [x >= 0] + Q clamp(x + 3, 0, 6))`` (Q = D / 6 for ``D hardswish(x)``) is
    ``sum_k w[c, k] * (base[k] + slope[c] * slope_part[k])``, exactly as :func:`linear_basis` gives
    the table. Branch sets with other knots or pieces (relu6, hardtanh, square, ...) give None.
    """
    knots, base, part = linear_basis(branches, dtype=torch.float64)
    kt = torch.tensor(knots, dtype=torch.float64)
    on_base, on_part = basis_coefficients(kt, base, rtol=1e-12), basis_coefficients(kt, part, rtol=1e-12)
    if on_base is None or on_part is None:
        return None
    return on_base.rows().T.contiguous().to(dtype), on_part.rows().T.contiguous().to(dtype)


def basis_coefficients(knots: torch.Tensor, coeffs: torch.Tensor, rtol: float = 1e-6) -> BasisCoefficients | None:
    """Read (A, B, D, E) off a piece table, or None when the table is not in the basis' span.

    The table may use any subset of the knots (-3, 0, 3); it is re-expressed on all three first.
    ``rtol`` bounds the rebuilt table's error relative to the table's largest coefficient.
    """
    ks = [float(k) for k in knots.reshape(-1).tolist()]
    if not set(ks) <= set(HARDSWISH_KNOTS) or len(set(ks)) != len(ks):
        return None
    c = coeffs.detach().double()
    if c.dim() == 2:
        c = c.unsqueeze(0)
    c = restrict_to_knots(ks, c, HARDSWISH_KNOTS)  # (Cc, 4, 3)
    E = c[:, 0, 0]
    A = c[:, 0, 1]
    D = 6.0 * c[:, 1, 2]
    B = c[:, 2, 1] - c[:, 1, 1]
    rebuilt = _basis_table(E, A, B, D / 6.0)
    err = float((rebuilt - c).abs().max()) if c.numel() else 0.0
    scale = float(c.abs().max()) if c.numel() else 0.0
    if err > rtol * max(scale, 1e-30):
        return None
    return BasisCoefficients(A, B, D, E, err)
