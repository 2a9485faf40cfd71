"""Padé activation units (PAU): learnable rational functions.

``pau`` is the "safe" PAU, R(x) = P(x) / (1 + |b_1 x + ... + b_n x^n|) with
P(x) = a_0 + a_1 x + ... + a_m x^m, degrees (m, n) = (5, 4), one set of coefficients per layer.
The denominator is at least 1, so R has no poles. It starts as a least-squares fit of leaky ReLU
(slope 0.01) on [-3, 3], computed by :func:`fit_rational` the first time and cached.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import register_act
from .base import Activation

__all__ = ["PAU", "fit_rational", "rational_safe", "APPROX_FUNCTIONS"]

APPROX_FUNCTIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "relu": F.relu,
    "gelu": F.gelu,
    "silu": F.silu,
    "tanh": torch.tanh,
    "sigmoid": torch.sigmoid,
    "identity": lambda x: x,
}


def rational_safe(x: torch.Tensor, numerator: torch.Tensor, denominator: torch.Tensor) -> torch.Tensor:
    """P(x) / (1 + |Q'(x)|) with P = sum a_i x^i (i = 0..m), Q' = sum b_j x^j (j = 1..n), by Horner."""
    m = numerator.numel() - 1
    p = numerator[m].expand_as(x) if m == 0 else numerator[m] * x + numerator[m - 1]
    for i in range(m - 2, -1, -1):
        p = p * x + numerator[i]
    n = denominator.numel()
    if n == 0:
        return p
    q = denominator[n - 1] * x
    for j in range(n - 2, -1, -1):
        q = (q + denominator[j]) * x
    return p / (1 + q.abs())


def _check_degrees(degrees) -> tuple[int, int]:
    try:
        m, n = (int(d) for d in degrees)
    except (TypeError, ValueError):
        raise ValueError(f"degrees must be a pair of integers (numerator, denominator), got {degrees!r}") from None
    if m < 0 or n < 0:
        raise ValueError(f"degrees must be non-negative, got {degrees!r}")
    return m, n


def fit_rational(
    fn: Callable[[torch.Tensor], torch.Tensor],
    degrees: tuple[int, int] = (5, 4),
    lo: float = -3.0,
    hi: float = 3.0,
    *,
    points: int = 1001,
    steps: int = 200,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Fit the safe rational form to ``fn`` on [lo, hi] in float64.

    First a linearised least squares (P(x) - f(x) Q(x) = 0 with Q = 1 + sum b_j x^j, linear in the
    coefficients), then Levenberg-Marquardt on the mean squared error of the true safe form,
    started both from that solution and from the plain polynomial fit (b = 0); the better wins.

    Returns (numerator (m + 1,), denominator (n,)) as float64 tensors.
    """
    m, n = _check_degrees(degrees)
    lo, hi = float(lo), float(hi)
    if not hi > lo:
        raise ValueError(f"fit_rational needs lo < hi, got lo={lo}, hi={hi}")
    x = torch.linspace(lo, hi, int(points), dtype=torch.float64)
    with torch.no_grad():
        f = fn(x).to(torch.float64)
    num_cols = torch.stack([x**i for i in range(m + 1)], dim=1)
    den_cols = torch.stack([-f * x**j for j in range(1, n + 1)], dim=1) if n else x.new_zeros(len(x), 0)
    linear = torch.linalg.lstsq(torch.cat([num_cols, den_cols], dim=1), f[:, None]).solution.squeeze(1)
    poly = torch.linalg.lstsq(num_cols, f[:, None]).solution.squeeze(1)
    starts = [(linear[: m + 1], linear[m + 1 :]), (poly, torch.zeros(n, dtype=torch.float64))]
    best = None
    for a0, b0 in starts:
        a, b, loss = _refine(x, f, a0, b0, steps)
        if best is None or loss < best[2]:
            best = (a, b, loss)
    return best[0], best[1]


def _residual_jacobian(x, f, a, b):
    """Residual R(x) - f and its Jacobian with respect to (a, b) for the safe form."""
    m, n = a.numel() - 1, b.numel()
    num_pows = torch.stack([x**i for i in range(m + 1)], dim=1)
    p = num_pows @ a
    if n:
        den_pows = torch.stack([x**j for j in range(1, n + 1)], dim=1)
        q = den_pows @ b
        d = 1 + q.abs()
        jac_b = -(p * torch.sign(q) / (d * d))[:, None] * den_pows
    else:
        d = torch.ones_like(x)
        jac_b = x.new_zeros(len(x), 0)
    return p / d - f, torch.cat([num_pows / d[:, None], jac_b], dim=1)


def _refine(x, f, a0, b0, steps):
    """Levenberg-Marquardt on the mean squared error of the safe form (float64)."""
    m1 = a0.numel()
    theta = torch.cat([a0, b0]).clone()
    r, jac = _residual_jacobian(x, f, theta[:m1], theta[m1:])
    loss = float(r.pow(2).mean())
    damping = 1e-3
    for _ in range(steps):
        grad = jac.T @ r
        hess = jac.T @ jac
        eye = torch.diag(torch.diagonal(hess).clamp_min(1e-12))
        step = torch.linalg.solve(hess + damping * eye, -grad)
        trial = theta + step
        r_new, jac_new = _residual_jacobian(x, f, trial[:m1], trial[m1:])
        new_loss = float(r_new.pow(2).mean())
        if new_loss < loss:
            converged = loss - new_loss < 1e-15 * max(loss, 1e-30)
            theta, r, jac, loss = trial, r_new, jac_new, new_loss
            damping = max(damping / 3, 1e-12)
            if converged:
                break
        else:
            damping *= 4
            if damping > 1e12:
                break
    if loss != loss:  # NaN: the start was unusable
        loss = float("inf")
    return theta[:m1], theta[m1:], loss


@functools.lru_cache(maxsize=None)
def _cached_fit(name: str, degrees: tuple[int, int], lo: float, hi: float) -> tuple[torch.Tensor, torch.Tensor]:
    return fit_rational(APPROX_FUNCTIONS[name], degrees, lo, hi)


class PAU(Activation):
    """Safe Padé activation unit P(x) / (1 + |b_1 x + ... + b_n x^n|), layer-wise coefficients.

    Args:
        channels: accepted and ignored (the coefficients are shared by the layer).
        degrees: (numerator, denominator) degrees, (5, 4).
        approx: the function the initial coefficients fit on [-3, 3]: one of
            :data:`APPROX_FUNCTIONS` ("leaky_relu", default, slope 0.01).
        channels_last: accepted for the common interface (the function is pointwise).
        inplace: accepted and ignored; the input is never modified.
    """

    def __init__(self, channels=None, *, degrees=(5, 4), approx="leaky_relu", channels_last=False, inplace=False):
        m, n = _check_degrees(degrees)
        if approx not in APPROX_FUNCTIONS:
            raise ValueError(f"unknown PAU approx {approx!r}; choose one of {', '.join(sorted(APPROX_FUNCTIONS))}")
        super().__init__(None, channels_last=channels_last)
        self.degrees = (m, n)
        self.approx = approx
        # Horner: m multiply-adds for P, n - 1 adds and n multiplies for Q', then abs, +1, divide
        self.flops_train = float(2 * m + (2 * n - 1 + 3 if n else 0))
        self._finish_init()

    def _build(self, channels):
        a, b = _cached_fit(self.approx, self.degrees, -3.0, 3.0)
        self.numerator = nn.Parameter(a.to(torch.float32))
        self.denominator = nn.Parameter(b.to(torch.float32))

    def forward(self, x):
        self.infer_channels(x)
        return rational_safe(x, self.numerator, self.denominator)

    def extra_repr(self) -> str:
        return f"degrees={self.degrees}, approx={self.approx!r}"


register_act(
    "pau", PAU, aliases=("pade", "rational"), family="rational", learnable=True,
    description="safe Padé activation unit (5, 4), initialised to fit leaky ReLU",
)
