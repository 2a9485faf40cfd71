"""Small-sample statistics for comparing runs: mean, std, t-based 95% CI, Welch's interval of a difference."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

__all__ = ["t_quantile", "Summary", "summarize", "welch_delta"]


def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the regularized incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-15
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    lbeta = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(lbeta) * _betacf(a, b, x) / a
    return 1.0 - math.exp(lbeta) * _betacf(b, a, 1.0 - x) / b


def _t_cdf(t: float, df: float) -> float:
    tail = 0.5 * _betainc(df / 2.0, 0.5, df / (df + t * t))
    return 1.0 - tail if t >= 0 else tail


def t_quantile(p: float, df: float) -> float:
    """Quantile of Student's t distribution (scipy's when installed, else bisection on our CDF)."""
    if not 0.0 < p < 1.0 or not df > 0:
        raise ValueError(f"t_quantile needs 0 < p < 1 and df > 0, got p={p}, df={df}")
    try:
        from scipy.stats import t as student_t

        return float(student_t.ppf(p, df))
    except ImportError:
        return _t_quantile_bisect(p, df)


def _t_quantile_bisect(p: float, df: float) -> float:
    lo, hi = -1.0, 1.0
    while _t_cdf(lo, df) > p:
        lo *= 2.0
    while _t_cdf(hi, df) < p:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if _t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, abs(mid)):
            break
    return 0.5 * (lo + hi)


@dataclass
class Summary:
    n: int
    mean: float
    std: float  # sample standard deviation (n - 1); nan for n = 1
    ci95: float  # half-width of the 95% CI of the mean; nan for n = 1


def summarize(values: Sequence[float]) -> Summary:
    vals = [float(v) for v in values]
    n = len(vals)
    if n == 0:
        return Summary(0, math.nan, math.nan, math.nan)
    mean = sum(vals) / n
    if n == 1:
        return Summary(1, mean, math.nan, math.nan)
    std = math.sqrt(sum((v - mean) ** 2 for v in vals) / (n - 1))
    return Summary(n, mean, std, t_quantile(0.975, n - 1) * std / math.sqrt(n))


def welch_delta(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(mean(a) - mean(b), half-width of its 95% Welch interval); the width is nan below 2 runs each."""
    sa, sb = summarize(a), summarize(b)
    delta = sa.mean - sb.mean
    if sa.n < 2 or sb.n < 2:
        return delta, math.nan
    va, vb = sa.std**2 / sa.n, sb.std**2 / sb.n
    se2 = va + vb
    if se2 == 0:
        return delta, 0.0
    df = se2**2 / (va**2 / (sa.n - 1) + vb**2 / (sb.n - 1))
    return delta, t_quantile(0.975, df) * math.sqrt(se2)
