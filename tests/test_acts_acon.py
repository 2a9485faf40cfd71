"""ACON-A/B/C and meta-ACON-C: formulas, inits, the memory-lean autograd, BN at batch size 1."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import repact
from repact.activations.acon import AconA, AconB, AconC, MetaAconC, acon_forward
from repact.ops.acon import _AconFn

sig = torch.sigmoid


def acon_c_ref(x, p1, p2, beta):
    return (p1 - p2) * x * sig(beta * (p1 - p2) * x) + p2 * x


def randomize_(m, lo=-1.5, hi=1.5):
    with torch.no_grad():
        for p in m.parameters():
            p.uniform_(lo, hi)
    return m


# --- ACON-A / ACON-B ------------------------------------------------------------------------------
def test_acon_a_is_swish_with_per_channel_beta():
    m = repact.create_act("acon_a")
    x = torch.randn(2, 5, 3, 3)
    y = m(x)
    assert isinstance(m, AconA) and m.beta.shape == (5,) and torch.all(m.beta == 1)
    assert torch.allclose(y, x * sig(x), atol=1e-6)
    randomize_(m)
    b = m.beta.detach().view(1, 5, 1, 1)
    assert torch.allclose(m(x), x * sig(b * x), atol=1e-6)


def test_acon_b_formula_and_init():
    m = repact.create_act("acon_b", channels=4)
    assert isinstance(m, AconB) and m.p.shape == (4,)
    assert torch.all(m.p == 0.25) and torch.all(m.beta == 1)
    randomize_(m)
    x = torch.randn(3, 4, 5)
    p, b = m.p.detach().view(1, 4, 1), m.beta.detach().view(1, 4, 1)
    expect = (1 - p) * x * sig(b * (1 - p) * x) + p * x
    assert torch.allclose(m(x), expect, atol=1e-6)


# --- ACON-C ------------------------------------------------------------------------------------------
def test_acon_c_official_init_and_shapes():
    m = AconC(4096)
    assert m.p1.shape == m.p2.shape == m.beta.shape == (4096,)
    assert torch.all(m.beta == 1)
    for p in (m.p1, m.p2):  # standard normal draws
        assert abs(p.mean().item()) < 0.1 and abs(p.std().item() - 1) < 0.1
    assert not torch.equal(m.p1, m.p2)
    fixed = AconC(3, p1_init=1.0, p2_init=0.0)
    assert torch.all(fixed.p1 == 1) and torch.all(fixed.p2 == 0)


def test_acon_c_layer_is_registered_layerwise():
    m = repact.create_act("acon_c_layer", channels=32)
    assert m.granularity == "layer"
    assert [tuple(p.shape) for p in m.parameters()] == [(1,), (1,), (1,)]
    x = torch.randn(2, 32, 4, 4)
    assert torch.allclose(m(x), acon_c_ref(x, m.p1.detach(), m.p2.detach(), m.beta.detach()), atol=1e-6)


@pytest.mark.parametrize("shape", [(4, 6), (2, 6, 7), (2, 6, 3, 5)])
def test_acon_c_formula_on_every_rank(shape):
    m = randomize_(AconC())
    x = torch.randn(shape)
    y = m(x)
    view = [1, 6] + [1] * (len(shape) - 2)
    p1, p2, b = (t.detach().view(view) for t in (m.p1, m.p2, m.beta))
    assert torch.allclose(y, acon_c_ref(x, p1, p2, b), atol=1e-6)


def test_acon_c_channels_last_matches_channels_first():
    m = randomize_(AconC(6))
    tok = AconC(6, channels_last=True)
    tok.load_state_dict(m.state_dict())
    x = torch.randn(2, 6, 4, 3)
    assert torch.allclose(tok(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2), m(x), atol=1e-6)


@settings(max_examples=40, deadline=None)
@given(
    st.floats(-3, 3), st.floats(-3, 3),
    st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=8),
)
def test_acon_c_limits(p1, p2, xs):
    """beta -> inf gives max(p1 x, p2 x); beta = 0 gives the mean (p1 + p2) x / 2."""
    x = torch.tensor(xs, dtype=torch.float64)
    t = lambda v: torch.tensor([v], dtype=torch.float64)  # noqa: E731
    big = acon_forward(x, t(p1), t(p2), t(1e4))
    assert torch.allclose(big, torch.maximum(p1 * x, p2 * x), atol=1e-3)
    zero = acon_forward(x, t(p1), t(p2), t(0.0))
    assert torch.allclose(zero, (p1 + p2) * x / 2, atol=1e-12)


# --- the custom autograd ---------------------------------------------------------------------------------
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_acon_function_gradcheck(granularity):
    c = 3
    shape = (1, c, 1, 1) if granularity == "channel" else (1, 1, 1, 1)
    x = torch.randn(2, c, 3, 3, dtype=torch.float64, requires_grad=True)
    p1, p2, beta = (torch.randn(shape, dtype=torch.float64, requires_grad=True) for _ in range(3))
    fn = lambda *a: _AconFn.apply(*a, "reference")  # noqa: E731
    assert torch.autograd.gradcheck(fn, (x, p1, p2, beta))
    assert torch.autograd.gradcheck(fn, (x, None, p2, beta))  # ACON-B form
    assert torch.autograd.gradcheck(fn, (x, None, None, beta))  # Swish form
    m = AconC(c, granularity=granularity).double()
    assert torch.autograd.gradcheck(m, (x,))


def test_acon_gradients_match_plain_autograd():
    x = torch.randn(4, 5, 6, 6, dtype=torch.float64, requires_grad=True)
    params = [torch.randn(1, 5, 1, 1, dtype=torch.float64, requires_grad=True) for _ in range(3)]
    g = torch.randn(4, 5, 6, 6, dtype=torch.float64)
    ours = torch.autograd.grad(acon_forward(x, *params), [x, *params], g)
    ref = torch.autograd.grad(acon_c_ref(x, *params), [x, *params], g)
    for a, b in zip(ours, ref):
        assert torch.allclose(a, b, atol=1e-10)


def _saved_numel(fn, x):
    sizes = []

    def pack(t):
        sizes.append(t.numel())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = fn(x)
    return y, sum(sizes)


def test_acon_c_training_form_keeps_only_the_input():
    m = randomize_(AconC(16))
    x = torch.randn(8, 16, 16, 16, requires_grad=True)
    y, saved = _saved_numel(m, x)
    assert saved <= x.numel() + 3 * 16 + 16  # x, p1, p2, beta (views of the parameters)
    p = [t.view(1, 16, 1, 1) for t in (m.p1, m.p2, m.beta)]
    _, saved_plain = _saved_numel(lambda x: acon_c_ref(x, *p), x)
    assert saved_plain >= 3 * x.numel()  # the plain expression keeps several full tensors
    y.sum().backward()
    assert all(t.grad is not None for t in (x, m.p1, m.p2, m.beta))


def test_acon_rejects_parameters_that_do_not_broadcast():
    x = torch.randn(2, 3, 4)
    with pytest.raises(ValueError, match=r"p1 of shape \(3,\) must broadcast"):
        acon_forward(x, torch.randn(3))


def test_official_layout_loads_into_a_lazy_module():
    sd = {"p1": torch.randn(1, 4, 1, 1), "p2": torch.randn(1, 4, 1, 1), "beta": torch.rand(1, 4, 1, 1)}
    m = AconC()
    m.load_state_dict(sd)
    assert m.channels == 4 and m.p1.shape == (4,)
    x = torch.randn(2, 4, 3, 3)
    assert torch.allclose(m(x), acon_c_ref(x, sd["p1"], sd["p2"], sd["beta"]), atol=1e-6)


# --- meta-ACON-C ------------------------------------------------------------------------------------------
def bn_eval(t, bn):
    shape = (1, -1, 1, 1)
    return (t - bn.running_mean.view(shape)) / torch.sqrt(bn.running_var.view(shape) + bn.eps) * bn.weight.view(
        shape
    ) + bn.bias.view(shape)


def randomize_bn_(m):
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.5, 0.5)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
    return m


def test_meta_acon_channel_generator_structure():
    c, r = 64, 16
    m = repact.create_act("meta_acon", channels=c)
    hidden = max(r, c // r)
    assert m.fc1.weight.shape == (hidden, c, 1, 1) and m.fc1.bias is not None
    assert m.fc2.weight.shape == (c, hidden, 1, 1) and m.fc2.bias is not None
    assert isinstance(m.bn1, nn.BatchNorm2d) and isinstance(m.bn2, nn.BatchNorm2d)
    n_params = sum(p.numel() for p in m.parameters())
    assert n_params == (c * hidden + hidden) + 2 * hidden + (hidden * c + c) + 2 * c + 2 * c
    small = MetaAconC(64, r=4, bn=False)
    assert small.fc1.weight.shape[0] == 16 and not any(isinstance(x, nn.BatchNorm2d) for x in small.modules())
    assert MetaAconC(8).fc1.weight.shape[0] == 16  # hidden width is at least r


def test_meta_acon_channel_formula_eval():
    m = randomize_bn_(randomize_(MetaAconC(6, r=2))).eval()
    x = torch.randn(3, 6, 4, 5)
    mean = x.mean(dim=(2, 3), keepdim=True)
    h = bn_eval(F.conv2d(mean, m.fc1.weight, m.fc1.bias), m.bn1)
    beta = sig(bn_eval(F.conv2d(h, m.fc2.weight, m.fc2.bias), m.bn2))
    p1, p2 = m.p1.view(1, 6, 1, 1), m.p2.view(1, 6, 1, 1)
    with torch.no_grad():
        assert torch.allclose(m(x), acon_c_ref(x, p1, p2, beta), atol=1e-5)


def test_meta_acon_layer_and_pixel_generators():
    x = torch.randn(3, 5, 4, 4)
    lay = randomize_(MetaAconC(5, generator="layer"))
    beta = sig(x.sum(dim=(1, 2, 3))).view(3, 1, 1, 1)
    p1, p2 = lay.p1.detach().view(1, 5, 1, 1), lay.p2.detach().view(1, 5, 1, 1)
    assert torch.allclose(lay(x), acon_c_ref(x, p1, p2, beta), atol=1e-6)
    pix = randomize_(MetaAconC(5, generator="pixel"))
    p1, p2 = pix.p1.detach().view(1, 5, 1, 1), pix.p2.detach().view(1, 5, 1, 1)
    assert torch.allclose(pix(x), acon_c_ref(x, p1, p2, sig(x)), atol=1e-6)
    assert [n for n, _ in pix.named_parameters()] == ["p1", "p2"]


def test_meta_acon_token_layout_matches_channels_first():
    m = randomize_bn_(randomize_(MetaAconC(6, r=2))).eval()
    tok = MetaAconC(channels_last=True, r=2).eval()
    tok.load_state_dict(m.state_dict())
    x = torch.randn(2, 6, 7)  # (N, C, L) vs (N, L, C)
    with torch.no_grad():
        assert torch.allclose(tok(x.transpose(1, 2)).transpose(1, 2), m(x), atol=1e-5)


@pytest.mark.parametrize("shape", [(1, 8), (1, 8, 3, 3)])
def test_meta_acon_batch_size_one_training(shape):
    m = randomize_bn_(MetaAconC(8, r=2)).train()
    state = {k: v.clone() for k, v in m.state_dict().items()}
    x = torch.randn(shape, requires_grad=True)
    y = m(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    # with one sample the generator's BNs use (and keep) their running statistics
    for k, v in m.state_dict().items():
        assert torch.equal(v, state[k]), k
    with torch.no_grad():
        assert torch.allclose(y, m.eval()(x), atol=1e-6)


def test_meta_acon_batch_statistics_with_two_samples():
    m = randomize_bn_(MetaAconC(8, r=2)).train()
    x = torch.randn(2, 8, 3, 3)
    y_train = m(x)
    with torch.no_grad():
        y_eval = m.eval()(x)
    assert not torch.allclose(y_train, y_eval, atol=1e-3)


@pytest.mark.parametrize("generator", ["layer", "channel", "pixel"])
def test_meta_acon_gradcheck(generator):
    m = MetaAconC(3, generator=generator, r=2, bn=False).double()
    x = torch.randn(2, 3, 2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(m, (x,))


def test_meta_acon_bad_arguments():
    with pytest.raises(ValueError, match="unknown meta-ACON generator 'global'"):
        MetaAconC(generator="global")
    with pytest.raises(ValueError, match="r must be a positive integer, got 0"):
        MetaAconC(r=0)
    with pytest.raises(ValueError, match=r"batch dim.*\(5,\)"):
        MetaAconC(5)(torch.randn(5))


def test_acon_flops():
    from repact.activations.flops import activation_flops

    shape = (2, 8, 4, 4)
    n = 2 * 8 * 4 * 4
    assert activation_flops(AconC(8), shape) == 6 * n
    assert activation_flops(AconA(8), shape) == 3 * n
    c, h = 8, 16
    gen = 2 * c * h + h + 2 * h * c + c + c + 2 * h + 2 * c  # convs with bias, sigmoid, BNs
    assert activation_flops(MetaAconC(8), shape) == 6 * n + n + 2 * gen
    assert activation_flops(MetaAconC(8, generator="pixel"), shape) == 7 * n


@pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::torch.jit.TracerWarning")
def test_traced_graph_has_no_python_op():
    m = randomize_(AconC(4))
    x = torch.randn(2, 4, 3, 3)
    traced = torch.jit.trace(m, (x,))  # parameters require grad while tracing
    assert "PythonOp" not in str(traced.graph)
    assert torch.allclose(traced(x), m(x), atol=1e-6)


def test_acon_c_compiles_for_training():
    import repact

    m = repact.create_act("acon_c", channels=4)
    x = torch.randn(2, 4, 5, 5, requires_grad=True)
    g = torch.randn(2, 4, 5, 5)
    m(x).backward(g)
    eager = (x.grad.clone(), m.p1.grad.clone())
    x.grad = None
    m.zero_grad()
    torch.compile(m, backend="aot_eager")(x).backward(g)
    torch.testing.assert_close(x.grad, eager[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m.p1.grad, eager[1], rtol=1e-5, atol=1e-6)
