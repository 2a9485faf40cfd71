"""FReLU and ACON-FReLU: formulas, lazy channels, 2-D/3-D/token inputs, stride, batch size 1."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import repact
from repact.activations.flops import activation_flops
from repact.activations.frelu import AconFReLU, FReLU


def randomize_(m):
    with torch.no_grad():
        for p in m.parameters():
            p.normal_(0, 0.5)
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
    return m


def bn_eval(t, bn):
    s = (1, -1, 1, 1)
    scale = bn.weight.view(s) / torch.sqrt(bn.running_var.view(s) + bn.eps)
    return (t - bn.running_mean.view(s)) * scale + bn.bias.view(s)


def frelu_ref(x, m):
    c = x.shape[1]
    t = F.conv2d(x, m.conv.weight, None, padding=1, groups=c)
    return torch.maximum(x, bn_eval(t, m.bn))


def acon_frelu_ref(x, m, stride):
    c = x.shape[1]
    a = x if stride == 1 else F.max_pool2d(x, kernel_size=3, stride=2, padding=1)
    b = bn_eval(F.conv2d(x, m.conv.weight, m.conv.bias, stride=stride, padding=1, groups=c), m.bn1)
    d = a - b
    return bn_eval(d * torch.sigmoid(d) + b, m.bn2)


# --- FReLU --------------------------------------------------------------------------------------------
def test_frelu_structure_and_lazy_channels():
    m = repact.create_act("frelu")
    assert m.needs_channels and not list(m.parameters())
    m(torch.randn(2, 5, 4, 4))
    assert m.conv.weight.shape == (5, 1, 3, 3) and m.conv.bias is None and m.conv.groups == 5
    assert sum(p.numel() for p in m.parameters()) == 5 * 9 + 2 * 5


def test_frelu_formula_eval():
    m = randomize_(FReLU(4)).eval()
    x = torch.randn(2, 4, 6, 5)
    with torch.no_grad():
        assert torch.allclose(m(x), frelu_ref(x, m), atol=1e-5)


def test_frelu_lower_ranks_are_viewed_as_images():
    m = randomize_(FReLU(4)).eval()
    with torch.no_grad():
        v = torch.randn(3, 4)
        assert torch.allclose(m(v), m(v[:, :, None, None]).flatten(1))
        s = torch.randn(3, 4, 9)
        y = m(s)
        assert y.shape == s.shape
        # on (N, C, L) the 3x3 kernel acts through its middle column, as a length-3 1-D conv
        t = F.conv1d(s, m.conv.weight[:, :, :, 1], padding=1, groups=4)
        ref = torch.maximum(s, bn_eval(t.unsqueeze(-1), m.bn).squeeze(-1))
        assert torch.allclose(y, ref, atol=1e-5)


def test_frelu_token_layouts():
    m = randomize_(FReLU(4)).eval()
    tok = FReLU(channels_last=True).eval()
    tok.load_state_dict(m.state_dict())
    assert not tok.bn.training  # built while loading, in the module's mode
    with torch.no_grad():
        x = torch.randn(2, 4, 5, 6)
        assert torch.allclose(tok(x.permute(0, 2, 3, 1)), m(x).permute(0, 2, 3, 1), atol=1e-6)
        s = torch.randn(2, 4, 7)
        assert torch.allclose(tok(s.transpose(1, 2)), m(s).transpose(1, 2), atol=1e-6)
        v = torch.randn(2, 4)
        assert torch.allclose(tok(v), m(v), atol=1e-6)


@pytest.mark.parametrize("cls", [FReLU, AconFReLU])
@pytest.mark.parametrize("channels_last", [False, True])
def test_unsupported_ranks_are_named(cls, channels_last):
    m = cls(3, channels_last=channels_last)
    x = torch.randn(2, 3, 2, 2, 2) if not channels_last else torch.randn(2, 2, 2, 2, 3)
    with pytest.raises(ValueError, match=rf"{cls.__name__} takes .* got shape \({', '.join(map(str, x.shape))}\)"):
        m(x)


@pytest.mark.parametrize("cls", [FReLU, AconFReLU])
def test_batch_size_one_training(cls):
    m = randomize_(cls(6)).train()
    for shape in [(1, 6), (1, 6, 1), (1, 6, 4, 4)]:
        x = torch.randn(shape, requires_grad=True)
        y = m(x)
        y.square().sum().backward()
        assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    # a (1, C) batch has one value per channel: the BNs use their running statistics
    x = torch.randn(1, 6)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    y_train = m(x)
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k]), k
    with torch.no_grad():
        assert torch.allclose(y_train, m.eval()(x), atol=1e-6)


def test_frelu_channel_mismatch():
    m = FReLU(4)
    with pytest.raises(ValueError, match="built for 4 channels but got 3"):
        m(torch.randn(1, 3, 4, 4))


# --- ACON-FReLU -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("stride", [1, 2])
def test_acon_frelu_formula(stride):
    m = randomize_(AconFReLU(5, stride=stride)).eval()
    assert m.conv.bias is not None and m.conv.stride == (stride, stride)
    x = torch.randn(2, 5, 7, 6)
    with torch.no_grad():
        y = m(x)
        ref = acon_frelu_ref(x, m, stride)
    assert y.shape == ref.shape == ((2, 5, 7, 6) if stride == 1 else (2, 5, 4, 3))
    assert torch.allclose(y, ref, atol=1e-5)


def test_acon_frelu_lower_ranks_and_tokens():
    m = randomize_(AconFReLU(3, stride=2)).eval()
    tok = AconFReLU(stride=2, channels_last=True).eval()
    tok.load_state_dict(m.state_dict())
    with torch.no_grad():
        s = torch.randn(2, 3, 9)
        y = m(s)
        assert y.shape == (2, 3, 5)
        assert torch.allclose(y, m(s.unsqueeze(-1)).squeeze(-1))
        assert torch.allclose(tok(s.transpose(1, 2)), y.transpose(1, 2), atol=1e-6)
        assert m(torch.randn(4, 3)).shape == (4, 3)


def test_acon_frelu_parameters_and_bad_stride():
    m = AconFReLU(8)
    assert sum(p.numel() for p in m.parameters()) == 8 * 9 + 8 + 2 * 8 + 2 * 8
    with pytest.raises(ValueError, match="stride must be 1 or 2, got 3"):
        AconFReLU(stride=3)
    with pytest.raises(ValueError, match="odd"):
        FReLU(kernel_size=4)


@pytest.mark.parametrize("shape", [(2, 4), (2, 4, 9), (2, 4, 7, 6)])
def test_flops_use_the_output_size(shape):
    m = AconFReLU(4, stride=2)
    out = m(torch.randn(shape)).shape
    assert list(out) == m.output_shape(shape)
    per_s2 = activation_flops(m, shape) / out.numel()
    per_s1 = activation_flops(AconFReLU(4), shape) / torch.Size(shape).numel()
    assert per_s2 == per_s1 + 8  # the max pool's comparisons
    assert activation_flops(FReLU(4), shape) == (9 + 8 + 2 + 1) * torch.Size(shape).numel()


def test_gradcheck_float64():
    x = torch.randn(2, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    for m in (FReLU(2), AconFReLU(2, stride=2)):
        m = randomize_(m).double().eval()
        assert torch.autograd.gradcheck(m, (x,))
