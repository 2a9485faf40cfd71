"""The pure fuse transforms, each checked alone against the branch functions and the paper's table."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from repact import fuse
from repact.reparam import dense_grid

GRID = dense_grid((-6.0, -3.0, -1.0, 0.0, 1.0, 3.0, 6.0), dtype=torch.float64)

TORCH_BRANCHES = {
    "identity": lambda x: x,
    "relu": F.relu,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "hardswish": F.hardswish,
    "relu6": F.relu6,
    "hardtanh": F.hardtanh,
    "hardsigmoid": F.hardsigmoid,
    "abs": torch.abs,
    "square": lambda x: x * x,
}


@pytest.mark.parametrize("name", sorted(TORCH_BRANCHES))
def test_branch_pieces_match_torch_functions(name):
    knots, table = fuse.branch_pieces(name)
    got = fuse.evaluate_pieces(GRID, knots, table)
    want = TORCH_BRANCHES[name](GRID)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


@pytest.mark.parametrize("slope", [-0.7, 0.0, 0.25, 1.3])
def test_prelu_pieces_match_prelu(slope):
    knots, table = fuse.branch_pieces("prelu", torch.tensor([slope], dtype=torch.float64))
    got = fuse.evaluate_pieces(GRID, knots, table)
    want = F.prelu(GRID, torch.tensor([slope], dtype=torch.float64))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


def test_prelu_needs_a_slope_and_unknown_branch_is_named():
    with pytest.raises(ValueError, match="slope"):
        fuse.branch_pieces("prelu")
    with pytest.raises(ValueError, match="'silu' has no exact piecewise"):
        fuse.branch_pieces("silu")


def test_merge_and_restrict_keep_the_function():
    knots, table = fuse.branch_pieces("hardswish", dtype=torch.float64)
    fine_knots = fuse.merge_knots([knots, (0.0,), (-1.0, 5.0)])
    assert fine_knots == (-3.0, -1.0, 0.0, 3.0, 5.0)
    fine = fuse.restrict_to_knots(knots, table, fine_knots)
    assert fine.shape == (1, 6, 3)
    torch.testing.assert_close(fuse.evaluate_pieces(GRID, fine_knots, fine), F.hardswish(GRID), rtol=0, atol=1e-12)
    with pytest.raises(ValueError, match="do not contain"):
        fuse.restrict_to_knots(knots, table, (0.0,))


def _paper_table(w, a):
    """The 4-segment table of the RepAct digest (section 1.2), rows x<-3, [-3,0), [0,3), x>=3."""
    w0, w1, w2, w3 = w
    return torch.tensor(
        [
            [0.0, w0 + a * w2, 0.0],
            [0.0, w0 + a * w2 + w3 / 2, w3 / 6],
            [0.0, w0 + w1 + w2 + w3 / 2, w3 / 6],
            [0.0, w0 + w1 + w2 + w3, 0.0],
        ],
        dtype=torch.float64,
    )


finite = st.floats(-3, 3, allow_nan=False, allow_infinity=False)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=4, max_size=4), finite)
def test_canonical_table_is_the_papers(w, a):
    knots, coeffs = fuse.repact_coefficients(torch.tensor(w, dtype=torch.float64), torch.tensor([a], dtype=torch.float64))
    assert knots == (-3.0, 0.0, 3.0)
    torch.testing.assert_close(coeffs[0], _paper_table(w, a), rtol=1e-12, atol=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(finite, min_size=4, max_size=4), finite)
def test_fused_table_equals_branch_sum(w, a):
    wt = torch.tensor(w, dtype=torch.float64)
    at = torch.tensor([a], dtype=torch.float64)
    knots, coeffs = fuse.repact_coefficients(wt, at)
    fused = fuse.evaluate_pieces(GRID, knots, coeffs)
    branch = wt[0] * GRID + wt[1] * F.relu(GRID) + wt[2] * F.prelu(GRID, at) + wt[3] * F.hardswish(GRID)
    torch.testing.assert_close(fused, branch, rtol=1e-12, atol=1e-12)


def test_paper_init_function():
    # at init (w = 1/4, a = 0.25): x for x>=3, 0.875x + x^2/24 on [0,3), 0.4375x + x^2/24 on [-3,0), 0.3125x below
    knots, coeffs = fuse.repact_coefficients(torch.full((4,), 0.25, dtype=torch.float64), torch.tensor([0.25], dtype=torch.float64))
    x = torch.tensor([-5.0, -3.0, -1.5, 0.0, 1.5, 3.0, 5.0], dtype=torch.float64)
    want = torch.where(
        x >= 3, x, torch.where(x >= 0, 0.875 * x + x**2 / 24, torch.where(x >= -3, 0.4375 * x + x**2 / 24, 0.3125 * x))
    )
    torch.testing.assert_close(fuse.evaluate_pieces(x, knots, coeffs), want, rtol=0, atol=1e-12)
    # the official fused code returns -0.293 at x = -3; the right value is -0.9375
    assert float(fuse.evaluate_pieces(torch.tensor([-3.0], dtype=torch.float64), knots, coeffs)) == pytest.approx(-0.9375)


def test_per_channel_tables_and_custom_branch_sets():
    w = torch.randn(5, 3, dtype=torch.float64)
    slope = torch.randn(5, dtype=torch.float64)
    knots, coeffs = fuse.combine_branches(("relu6", "prelu", "hardtanh"), w, slope)
    assert knots == (-1.0, 0.0, 1.0, 6.0)
    assert coeffs.shape == (5, 5, 3)
    for c in range(5):
        want = w[c, 0] * F.relu6(GRID) + w[c, 1] * F.prelu(GRID, slope[c : c + 1]) + w[c, 2] * F.hardtanh(GRID)
        torch.testing.assert_close(fuse.evaluate_pieces(GRID, knots, coeffs[c : c + 1]), want, rtol=1e-12, atol=1e-12)


def test_weight_count_must_match_branches():
    with pytest.raises(ValueError, match="4 branches need 4 weights"):
        fuse.repact_coefficients(torch.ones(3), torch.tensor([0.25]))


def test_linear_basis_is_combine_branches():
    branches = fuse.CANONICAL_BRANCHES
    knots, base, part = fuse.linear_basis(branches)
    w = torch.randn(3, 4, dtype=torch.float64)
    a = torch.randn(3, dtype=torch.float64)
    _, want = fuse.combine_branches(branches, w, a)
    torch.testing.assert_close(fuse.apply_basis(w, a, base, part), want)


def test_softmax_weights_are_convex():
    theta = torch.randn(7, 4)
    w = fuse.softmax_weights(theta)
    assert bool((w > 0).all())
    torch.testing.assert_close(w.sum(-1), torch.ones(7))


def test_batchnorm_affine_equals_eval_batchnorm():
    mean, var = torch.randn(6, dtype=torch.float64), torch.rand(6, dtype=torch.float64) + 0.1
    gamma, beta = torch.randn(6, dtype=torch.float64), torch.randn(6, dtype=torch.float64)
    s = torch.randn(4, 6, dtype=torch.float64)
    scale, shift = fuse.batchnorm_affine(mean, var, gamma, beta, 1e-3)
    want = F.batch_norm(s, mean, var, gamma, beta, training=False, eps=1e-3)
    torch.testing.assert_close(s * scale + shift, want)
    scale0, shift0 = fuse.batchnorm_affine(mean, var, None, None, 1e-3)
    torch.testing.assert_close(s * scale0 + shift0, F.batch_norm(s, mean, var, training=False, eps=1e-3))


def test_fold_affine_scales_every_coefficient_and_shifts_c0():
    knots, coeffs = fuse.repact_coefficients(torch.randn(2, 4, dtype=torch.float64), torch.randn(2, dtype=torch.float64))
    scale, shift = torch.randn(2, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    folded = fuse.fold_affine(coeffs, scale, shift)
    for c in range(2):
        want = scale[c] * fuse.evaluate_pieces(GRID, knots, coeffs[c : c + 1]) + shift[c]
        torch.testing.assert_close(fuse.evaluate_pieces(GRID, knots, folded[c : c + 1]), want)


def test_transforms_are_differentiable():
    w = torch.randn(4, dtype=torch.float64, requires_grad=True)
    a = torch.randn(1, dtype=torch.float64, requires_grad=True)
    _, coeffs = fuse.repact_coefficients(fuse.softmax_weights(w), a)
    coeffs.sum().backward()
    assert w.grad is not None and a.grad is not None
    assert torch.isfinite(w.grad).all() and torch.isfinite(a.grad).all()


@pytest.mark.parametrize("branches", [fuse.CANONICAL_BRANCHES, ("relu", "hardswish"), ("identity",),
                                      ("abs", "leaky_relu", "prelu"), ("prelu", "hardswish", "identity")])
def test_hardswish_basis_map_gives_the_same_function_as_the_table(branches):
    gen = torch.Generator().manual_seed(len(branches))
    w = torch.randn(3, len(branches), generator=gen, dtype=torch.float64)
    slope = torch.rand(3, generator=gen, dtype=torch.float64)
    base, part = fuse.hardswish_basis_map(branches)
    assert base.shape == part.shape == (len(branches), 4)
    E, A, B, Q = (w @ base + (w * slope[:, None]) @ part).unbind(-1)
    x = dense_grid(dtype=torch.float64)
    u = torch.clamp(x + 3, 0, 6)
    basis = E[:, None] + x * (A[:, None] + B[:, None] * (x >= 0) + Q[:, None] * u)
    knots, coeffs = fuse.combine_branches(branches, w, slope if "prelu" in branches else None)
    table = torch.stack([fuse.evaluate_pieces(x, knots, coeffs[c]) for c in range(3)])
    torch.testing.assert_close(basis, table, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("branches", [("identity", "relu6"), ("relu", "square"), ("hardsigmoid",), ("hardtanh", "relu")])
def test_hardswish_basis_map_refuses_other_pieces(branches):
    assert fuse.hardswish_basis_map(branches) is None
