"""The pure merge transforms, each alone against the layers it replaces (float64, borders included)."""

import pytest
import torch
import torch.nn.functional as F

from repact.merge import transforms as T


def _conv(x, w, b, stride=1, padding=0, dilation=1, groups=1):
    return F.conv2d(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)


def _close(a, b, tol=1e-12):
    return float((a - b).abs().max()) <= tol * max(float(b.abs().max()), 1e-30)


@pytest.mark.parametrize("groups", [1, 2, 6])
def test_dense_and_group_weight_round_trip(groups):
    g = torch.Generator().manual_seed(groups)
    w = torch.randn(12, 6 // groups, 3, 3, generator=g, dtype=torch.float64)
    dense = T.dense_weight(w, groups)
    x = torch.randn(2, 6, 7, 7, generator=g, dtype=torch.float64)
    assert dense.shape == (12, 6, 3, 3)
    assert _close(_conv(x, dense, None, padding=1), _conv(x, w, None, padding=1, groups=groups))
    back, found = T.group_weight(dense)
    assert found == groups and torch.equal(back, w)


def test_group_weight_finds_no_groups_in_a_dense_weight():
    dense = torch.randn(4, 4, 1, 1, dtype=torch.float64)
    assert T.group_weight(dense)[1] == 1


def test_fold_affine_is_the_batchnorm_after_the_conv():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(5, 3, 3, 3, generator=g, dtype=torch.float64), torch.randn(5, generator=g, dtype=torch.float64)
    scale, shift = torch.rand(5, generator=g, dtype=torch.float64) + 0.5, torch.randn(5, generator=g, dtype=torch.float64)
    x = torch.randn(2, 3, 6, 6, generator=g, dtype=torch.float64)
    wf, bf = T.fold_affine(w, b, scale, shift)
    ref = _conv(x, w, b, padding=1) * scale.reshape(1, -1, 1, 1) + shift.reshape(1, -1, 1, 1)
    assert _close(_conv(x, wf, bf, padding=1), ref)
    wf, bf = T.fold_affine(w, None, torch.tensor([2.0]), torch.tensor([0.5]))  # one value for every channel
    assert _close(_conv(x, wf, bf), 2 * _conv(x, w, None) + 0.5)


@pytest.mark.parametrize("k1,s1,p1,d1,g1,s2,g2", [
    (3, 1, 1, 1, 1, 1, 1),  # VanillaNet stem: 3x3 then 1x1
    (4, 4, 0, 1, 1, 1, 1),  # patchify stem
    (3, 2, 1, 1, 8, 1, 1),  # MobileNet: depthwise 3x3 (stride 2) then the 1x1 projection
    (3, 1, 2, 2, 2, 2, 4),  # dilated, grouped, then a strided grouped 1x1
    (1, 1, 0, 1, 1, 1, 1),  # 1x1 then 1x1
])
def test_pointwise_after_any_conv_is_exact_everywhere(k1, s1, p1, d1, g1, s2, g2):
    g = torch.Generator().manual_seed(k1 * 10 + s1)
    w1 = torch.randn(8, 8 // g1, k1, k1, generator=g, dtype=torch.float64)
    b1 = torch.randn(8, generator=g, dtype=torch.float64)
    w2 = torch.randn(12, 8 // g2, 1, 1, generator=g, dtype=torch.float64)
    b2 = torch.randn(12, generator=g, dtype=torch.float64)
    x = torch.randn(2, 8, 13, 13, generator=g, dtype=torch.float64)
    ref = _conv(_conv(x, w1, b1, s1, p1, d1, g1), w2, b2, stride=s2, groups=g2)
    w, b = T.compose_after_pointwise(T.dense_weight(w1, g1), b1, T.dense_weight(w2, g2).reshape(12, 8), b2)
    got = _conv(x, w, b, stride=s1 * s2, padding=p1, dilation=d1)
    assert got.shape == ref.shape and _close(got, ref)


def test_linear_after_linear():
    g = torch.Generator().manual_seed(1)
    w1, b1 = torch.randn(7, 5, generator=g, dtype=torch.float64), torch.randn(7, generator=g, dtype=torch.float64)
    w2, b2 = torch.randn(3, 7, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    x = torch.randn(4, 2, 5, generator=g, dtype=torch.float64)  # tokens: any leading dims
    w, b = T.compose_after_pointwise(w1, b1, w2, b2)
    assert _close(F.linear(x, w, b), F.linear(F.linear(x, w1, b1), w2, b2))


def _pad_with(x, value, p):
    ring = 1.0 - F.pad(torch.ones_like(x[:1, :1]), [p] * 4)
    return F.pad(x, [p] * 4) + ring * value.reshape(1, -1, 1, 1)


@pytest.mark.parametrize("groups2", [1, 4])
def test_kxk_after_pointwise_needs_the_border_value(groups2):
    g = torch.Generator().manual_seed(groups2)
    w1 = torch.randn(8, 12, 1, 1, generator=g, dtype=torch.float64)  # reduce 12 -> 8: the bias is in the span
    b1 = torch.randn(8, generator=g, dtype=torch.float64)
    w2 = torch.randn(8, 8 // groups2, 3, 3, generator=g, dtype=torch.float64)
    b2 = torch.randn(8, generator=g, dtype=torch.float64)
    x = torch.randn(2, 12, 9, 9, generator=g, dtype=torch.float64)
    ref = _conv(_conv(x, w1, b1), w2, b2, padding=1, groups=groups2)
    w, b = T.compose_pointwise_first(w1.reshape(8, 12), b1, T.dense_weight(w2, groups2), b2)
    plain = _conv(x, w, b, padding=1)
    assert _close(plain[..., 1:-1, 1:-1], ref[..., 1:-1, 1:-1])  # inside, the interior bias is right
    assert not _close(plain, ref, 1e-3)  # on the border it is not: conv2 padded conv1's output with zeros
    u = T.border_value(w1.reshape(8, 12), b1)
    assert u is not None and float((w1.reshape(8, 12) @ u + b1).abs().max()) <= 1e-9 * float(b1.abs().max())
    assert _close(_conv(_pad_with(x, u, 1), w, b), ref)


def test_border_value_is_none_when_no_input_gives_the_bias():
    g = torch.Generator().manual_seed(2)
    w1 = torch.randn(24, 8, generator=g, dtype=torch.float64)  # expand 8 -> 24: a bias off the span
    assert T.border_value(w1, torch.randn(24, generator=g, dtype=torch.float64)) is None
    assert torch.equal(T.border_value(w1, torch.zeros(24, dtype=torch.float64)), torch.zeros(8, dtype=torch.float64))
    target = w1 @ torch.randn(8, generator=g, dtype=torch.float64)  # a target in the span has an input
    assert T.border_value(w1, None, target) is not None


def test_weight_count():
    assert T.weight_count(16, 32, 1, (3, 3)) == 16 * 32 * 9
    assert T.weight_count(32, 32, 32, (3, 3)) == 32 * 9
    assert T.weight_count(10, 4, 1) == 40
