"""RepAct I/II/III: the fused training forward against the literal branch sum, gradients, BN, lazy channels."""

import itertools

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.autograd import gradcheck

import repact
from repact import RepAct
from repact.activations.base import NotDeployableError
from repact.ops import backend, native_available, piecewise_quadratic

BACKENDS = ["torch"] + (["native"] if native_available() else [])
VARIANTS = ["origin", "softmax", "bn"]
GRANULARITIES = ["layer", "channel"]
C = 4


def _make(variant, granularity, channels_last=False, seed=0, dtype=torch.float32):
    m = RepAct(C if granularity == "channel" else None, variant=variant, granularity=granularity,
               channels_last=channels_last).to(dtype)
    repact.randomize_activations_(m, seed=seed)
    repact.randomize_batchnorm_(m, seed=seed + 1)
    return m


def _inputs(shape_kind, channels_last, dtype=torch.float32, avoid_knots=False):
    shapes = {
        2: (6, C),
        3: (3, C, 7) if not channels_last else (3, 7, C),
        4: (2, C, 5, 3) if not channels_last else (2, 5, 3, C),
    }
    x = torch.randn(shapes[shape_kind], dtype=dtype) * 4
    if avoid_knots:
        for k in (-3.0, 0.0, 3.0):
            x = torch.where((x - k).abs() < 0.05, x + 0.1, x)
    else:
        flat = x.view(-1)
        flat[: 3] = torch.tensor([-3.0, 0.0, 3.0], dtype=dtype)
    return x


def test_registry_names_and_defaults():
    assert isinstance(repact.create_act("repact"), RepAct)
    assert repact.create_act("RepAct1").variant == "origin"
    assert repact.create_act("repact-ii").variant == "softmax"
    assert repact.create_act("repact3").variant == "bn"
    m = repact.create_act("repact_bn", channels=8, granularity="channel", inplace=True)
    assert m.branch_weight.shape == (8, 4) and m.prelu_weight.shape == (8,) and m.bn.num_features == 8
    layer = repact.create_act("repact")
    torch.testing.assert_close(layer.branch_weight.detach(), torch.full((4,), 0.25))
    torch.testing.assert_close(layer.prelu_weight.detach(), torch.tensor([0.25]))
    assert layer.branches == ("identity", "relu", "prelu", "hardswish")
    assert sum(p.numel() for p in layer.parameters()) == 5
    assert sum(p.numel() for p in repact.create_act("repact_bn").parameters()) == 7


@pytest.mark.parametrize("impl", BACKENDS)
@pytest.mark.parametrize("variant,granularity,channels_last", list(itertools.product(VARIANTS, GRANULARITIES, [False, True])))
@pytest.mark.parametrize("rank", [2, 3, 4])
@pytest.mark.parametrize("training", [False, True])
def test_forward_is_the_branch_sum(impl, variant, granularity, channels_last, rank, training):
    m = _make(variant, granularity, channels_last)
    m.train(training)
    x = _inputs(rank, channels_last)
    before = x.clone()
    with backend(impl):
        y = m(x)
    assert torch.equal(x, before)
    ref = m.forward_branches(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * float(ref.detach().abs().max()))


@pytest.mark.parametrize("impl", BACKENDS)
@pytest.mark.parametrize("variant,granularity", list(itertools.product(VARIANTS, GRANULARITIES)))
def test_gradients_match_autograd_of_the_branch_sum(impl, variant, granularity):
    m = _make(variant, granularity)
    m.train()
    x = _inputs(4, False, avoid_knots=True)
    g = torch.randn_like(x)
    x1, x2 = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with backend(impl):
        m(x1).backward(g)
    fused = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m.forward_branches(x2).backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-4)
    for n, p in m.named_parameters():
        torch.testing.assert_close(fused[n], p.grad, rtol=1e-4, atol=1e-4, msg=f"gradient of {n}")


@pytest.mark.parametrize("impl", BACKENDS)
@pytest.mark.parametrize("variant,granularity", list(itertools.product(VARIANTS, GRANULARITIES)))
def test_gradcheck_float64(impl, variant, granularity):
    m = _make(variant, granularity, dtype=torch.float64)
    m.train()
    x = _inputs(4, False, torch.float64, avoid_knots=True).requires_grad_(True)
    params = list(m.parameters())
    with backend(impl):
        assert gradcheck(lambda a, *ps: m(a), (x, *params), eps=1e-6, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("variant", VARIANTS)
def test_only_the_input_is_kept_for_backward(variant):
    m = _make(variant, "channel")
    m.train()
    x = torch.randn(4, C, 64, 64, requires_grad=True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = m(x)
    big = [t for t in saved if t.numel() >= x.numel()]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr(), [tuple(t.shape) for t in saved]
    y.sum().backward()
    assert x.grad is not None


def _bn_reference_stats(s, granularity):
    if granularity == "layer":
        flat = s.reshape(1, -1)
        return flat.mean(), flat.var(unbiased=True)
    dims = [0] + list(range(2, s.dim()))
    return s.mean(dims), s.var(dims, unbiased=True)


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("momentum", [0.1, None])
def test_repact_bn_running_statistics_follow_batchnorm(granularity, momentum):
    m = RepAct(C if granularity == "channel" else None, variant="bn", granularity=granularity, bn_momentum=momentum)
    repact.randomize_activations_(m, seed=3)
    m.train()
    expected_mean = m.bn.running_mean.clone()
    expected_var = m.bn.running_var.clone()
    for step in range(1, 4):
        x = torch.randn(5, C, 6, 6) * 3
        with torch.no_grad():
            w = m.branch_weights()
            branches = [x, F.relu(x), F.prelu(x, m.prelu_weight.reshape(-1)) if m.prelu_weight.numel() == 1 else
                        torch.where(x >= 0, x, m.prelu_weight.reshape(1, -1, 1, 1) * x), F.hardswish(x)]
            s = sum((w[:, k].reshape(1, -1, 1, 1) if w.shape[0] > 1 else w[0, k]) * b for k, b in enumerate(branches))
        m.train()
        m(x)
        mean, var = _bn_reference_stats(s, granularity)
        f = momentum if momentum is not None else 1.0 / step
        expected_mean = (1 - f) * expected_mean + f * mean.reshape(-1)
        expected_var = (1 - f) * expected_var + f * var.reshape(-1)
        torch.testing.assert_close(m.bn.running_mean, expected_mean, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(m.bn.running_var, expected_var, rtol=1e-5, atol=1e-6)
    assert int(m.bn.num_batches_tracked) == 3


def test_repact_bn_trains_at_batch_size_one():
    layer = RepAct(variant="bn").train()
    y = layer(torch.randn(1, 8, 5, 5, requires_grad=True))
    y.sum().backward()
    assert torch.isfinite(y).all()
    chan = RepAct(6, variant="bn", granularity="channel").train()
    repact.randomize_batchnorm_(chan)
    x = torch.randn(1, 6, requires_grad=True)
    before = chan.bn.running_mean.clone()
    y = chan(x)
    y.sum().backward()
    assert torch.isfinite(y).all() and torch.isfinite(x.grad).all()
    # one value per channel has no batch variance: running statistics are used and left alone
    torch.testing.assert_close(chan.bn.running_mean, before)
    torch.testing.assert_close(y, chan.eval()(x))


def test_lazy_channels_build_on_first_forward_and_from_a_state_dict():
    lazy = RepAct(variant="bn", granularity="channel")
    assert not any(True for _ in lazy.parameters())
    lazy(torch.randn(2, 7, 3, 3))
    assert lazy.channels == 7 and lazy.branch_weight.shape == (7, 4)
    repact.randomize_activations_(lazy, seed=5)
    fresh = RepAct(variant="bn", granularity="channel")
    fresh.load_state_dict(lazy.state_dict())
    x = torch.randn(2, 7, 3, 3)
    torch.testing.assert_close(fresh.eval()(x), lazy.eval()(x))
    with pytest.raises(ValueError, match="built for 7 channels but got 5"):
        lazy(torch.randn(2, 5, 3, 3))


def test_lazy_channels_follow_the_input_device_and_dtype():
    lazy = RepAct(granularity="channel")
    lazy(torch.randn(2, 3, dtype=torch.float64))
    assert lazy.branch_weight.dtype == torch.float64


def test_token_tensors_with_channels_last():
    m = RepAct(5, granularity="channel", channels_last=True)
    repact.randomize_activations_(m)
    x = torch.randn(2, 9, 5)
    torch.testing.assert_close(m(x), m.forward_branches(x))
    # the same per-channel function as channels-first on the transposed tensor
    first = RepAct(5, granularity="channel")
    first.load_state_dict(m.state_dict())
    torch.testing.assert_close(first(x.transpose(1, 2)).transpose(1, 2), m(x))


def test_custom_branch_sets():
    m = RepAct(branches=("relu6", "prelu", "hardtanh"))
    repact.randomize_activations_(m)
    x = torch.linspace(-8, 8, 1001)
    torch.testing.assert_close(m(x), m.forward_branches(x))
    deployed = repact.reparameterize(m, inplace=False)
    assert deployed.knots.tolist() == [-1.0, 0.0, 1.0, 6.0]
    torch.testing.assert_close(deployed(x), m.forward_branches(x))


def test_non_piecewise_branches_train_but_refuse_to_deploy():
    m = RepAct(branches=("identity", "relu", "silu"))
    m.train()
    x = torch.randn(3, 4, 5, requires_grad=True)
    y = m(x)
    torch.testing.assert_close(y, m.forward_branches(x))
    y.sum().backward()
    assert torch.isfinite(x.grad).all()
    with pytest.raises(NotDeployableError, match="'silu'.*no exact piecewise-polynomial form"):
        repact.reparameterize(m)
    model = nn.Sequential(nn.Linear(3, 3), m)
    with pytest.raises(NotDeployableError, match="^1: "):
        repact.reparameterize(model)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="unknown RepAct variant 'mix'"):
        RepAct(variant="mix")
    with pytest.raises(ValueError, match="unknown granularity 'pixel'"):
        RepAct(granularity="pixel")
    with pytest.raises(ValueError, match="unknown RepAct branch 'swishy'"):
        RepAct(branches=("identity", "swishy"))
    with pytest.raises(ValueError, match="distinct"):
        RepAct(branches=("relu", "relu"))
    with pytest.raises(ValueError, match="channels must be a positive integer"):
        RepAct(0, granularity="channel")


def test_to_moves_the_fused_basis():
    m = RepAct().to(torch.float64)
    assert m._basis.dtype == torch.float64
    y = m(torch.randn(3, 2, dtype=torch.float64))
    assert y.dtype == torch.float64


@pytest.mark.parametrize("branches", [("identity", "relu", "prelu", "hardswish"), ("relu6", "abs", "square")])
def test_casts_round_the_fuse_constants_from_float64(branches):
    """.double() gives the float64 constants (1/6 to float64, not float32, precision), and a cast
    back gives the float32 ones again, for both the table map and the native op's maps."""
    from repact.fuse import hardswish_basis_map, linear_basis

    m = RepAct(branches=branches)
    f32 = {n: b.clone() for n, b in m.named_buffers() if n.startswith("_")}
    m.double()
    knots, base, part = linear_basis(branches, dtype=torch.float64)
    assert torch.equal(m._knots, torch.tensor(knots, dtype=torch.float64))
    assert torch.equal(m._basis, base) and torch.equal(m._slope_basis, part)
    maps = hardswish_basis_map(branches, dtype=torch.float64)
    if maps is not None:
        assert torch.equal(m._op_base, maps[0]) and torch.equal(m._op_part, maps[1])
        # the hardswish branch's basis row: Q = 1/6 to float64 precision
        assert m._op_base[-1, 3].item() == 1.0 / 6.0
    m.float()
    for n, b in m.named_buffers():
        if n in f32:
            assert b.dtype == torch.float32 and torch.equal(b, f32[n]), n
    assert set(n for n, _ in m.named_buffers()) >= set(f32)
    assert not any(k.startswith("_") for k in m.state_dict())


@pytest.mark.slow
def test_torch_compile_matches_eager():
    m = _make("bn", "channel")
    m.train()
    x = _inputs(4, False, avoid_knots=True)
    g = torch.randn_like(x)
    compiled = torch.compile(m)
    x1 = x.clone().requires_grad_(True)
    compiled(x1).backward(g)
    cg = {n: p.grad.clone() for n, p in m.named_parameters()}
    m.zero_grad()
    m.bn.reset_running_stats()
    x2 = x.clone().requires_grad_(True)
    m(x2).backward(g)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-4)
    for n, p in m.named_parameters():
        torch.testing.assert_close(cg[n], p.grad, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not native_available(), reason="native kernels unavailable (no C compiler)")
@pytest.mark.parametrize("variant,granularity", [("origin", "layer"), ("softmax", "channel"), ("bn", "channel")])
def test_registered_train_op_passes_opcheck(variant, granularity):
    """The dispatcher op torch.compile sees (schema, fake kernel, autograd registration) is
    consistent with its CPU kernel, as torch.library.opcheck tests it."""
    m = _make(variant, granularity, dtype=torch.float64)
    x = torch.randn(2, C, 4, 5, dtype=torch.float64, requires_grad=True)
    bn = variant == "bn"
    args = (x, m.branch_weight, m.prelu_weight, m.bn.weight if bn else None, m.bn.bias if bn else None, None, None,
            m._knots, m._op_base, m._op_part, variant == "softmax",
            m.bn.eps if bn else 0.0, 1)
    torch.library.opcheck(torch.ops.repact.repact_train.default, args)


def test_lazy_build_follows_mode_and_input_dtype():
    m = RepAct(variant="bn", granularity="channel").eval()
    m(torch.randn(2, 3, 4, 4, dtype=torch.bfloat16))
    assert not m.bn.training
    assert m.branch_weight.dtype == torch.bfloat16


def native_train_forward(x, w_raw, slope, gamma, beta, knots, base, part, softmax, eps, cd):
    """The cpu backend's training forward, batch statistics for RepAct-III: (y, mean, var)."""
    from repact.ops import cpu
    from repact.ops.layout import flat_view

    a = cpu.TrainArgs(w_raw, slope, gamma, beta, knots, base, part, softmax, eps)
    y, mean, var = cpu.train_forward(flat_view(x, cd, a.rows), a, cpu.BN_BATCH if gamma is not None else cpu.BN_NONE)
    return y.reshape(x.shape), mean, var


def native_train_backward(g, x, w_raw, slope, gamma, mean, var, knots, base, part, softmax, eps, cd, need_x,
                          need_params):
    """The cpu backend's training backward: (gx, g_w_raw, g_slope, g_gamma, g_beta)."""
    from repact.ops import cpu
    from repact.ops.layout import flat_view

    a = cpu.TrainArgs(w_raw, slope, gamma, None, knots, base, part, softmax, eps)
    bn = cpu.BN_BATCH if gamma is not None else cpu.BN_NONE
    gx, *rest = cpu.train_backward(flat_view(x, cd, a.rows), g, a, bn, mean, var, None, 0, need_x, need_params)
    return (gx.reshape(x.shape) if gx is not None else None, *rest)


def _table_reference(w_raw, slope, base, part, softmax):
    w = w_raw.reshape(1, -1) if w_raw.dim() == 1 else w_raw
    w = torch.softmax(w, -1) if softmax else w
    table = w @ base
    if slope is not None:
        table = table + (w * slope.reshape(-1, 1)) @ part
    return table.reshape(w.shape[0], -1, 3)


@pytest.mark.skipif(not native_available(), reason="native kernels unavailable (no C compiler)")
@pytest.mark.parametrize("branches,form", [(("identity", "relu", "prelu", "hardswish"), "table"),
                                           (("identity", "relu", "prelu", "hardswish"), "basis"),
                                           (("relu", "hardswish"), "table"), (("relu", "hardswish"), "basis"),
                                           (("prelu", "relu6", "abs", "square"), "table")])
@pytest.mark.parametrize("softmax,bn", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("per_channel,layout", [(False, "nchw"), (True, "nchw"), (True, "channels_last"),
                                                (True, "tokens"), (False, "tokens")])
def test_native_train_op_matches_autograd_reference(branches, form, softmax, bn, per_channel, layout):
    """The one-call C training op (table or RepAct's own basis, BN statistics and fold, pass, VJP)
    against the table's math in tensor ops under autograd, in float64, on inputs that hit every knot."""
    from repact.fuse import hardswish_basis_map, linear_basis

    maps = hardswish_basis_map(branches, dtype=torch.float64)
    assert (maps is None) == ("square" in branches)  # the only set here with pieces outside the basis

    gen = torch.Generator().manual_seed(len(branches) + 2 * softmax + 4 * bn + 8 * per_channel)
    dt = torch.float64
    knots_t, base, part = linear_basis(branches, dtype=dt)
    knots = torch.tensor(knots_t, dtype=dt)
    nb, c = len(branches), 5
    cc = c if per_channel else 1
    x = torch.randn(3, c, 4, 6, generator=gen, dtype=dt) * 4
    x.view(-1)[: 2 * len(knots_t)] = knots.repeat(2)
    cd = 1
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "tokens":
        x, cd = x.permute(0, 2, 3, 1).contiguous(), 3
    g = torch.randn(x.shape, generator=gen, dtype=dt)
    w_raw = torch.randn((cc, nb) if per_channel else (nb,), generator=gen, dtype=dt).requires_grad_(True)
    slope = (torch.rand(cc, generator=gen, dtype=dt) * 0.5).requires_grad_(True) if "prelu" in branches else None
    gamma = (1 + torch.rand(cc, generator=gen, dtype=dt)).requires_grad_(True) if bn else None
    beta = torch.randn(cc, generator=gen, dtype=dt).requires_grad_(True) if bn else None
    flat_b, flat_p = base.reshape(nb, -1), part.reshape(nb, -1)
    op_b, op_p = maps if form == "basis" else (flat_b, flat_p)

    y, mean, var = native_train_forward(x, w_raw, slope, gamma, beta, knots, op_b, op_p, softmax, 1e-5, cd)
    grads = native_train_backward(g, x, w_raw, slope, gamma, mean, var, knots, op_b, op_p, softmax, 1e-5,
                                  cd, True, True)

    xr = x.detach().clone().requires_grad_(True)
    coeffs = _table_reference(w_raw, slope, flat_b, flat_p, softmax)
    with backend("torch"):
        s = piecewise_quadratic(xr, knots, coeffs, cd)
    if bn:
        dims = [d for d in range(x.dim()) if not (per_channel and d == cd)]
        shape = [1] * x.dim()
        if per_channel:
            shape[cd] = c
        var_r, mean_r = torch.var_mean(s, dim=dims, unbiased=False, keepdim=True)
        ref = (s - mean_r) * torch.rsqrt(var_r + 1e-5) * gamma.reshape(shape) + beta.reshape(shape)
        torch.testing.assert_close(mean, mean_r.detach().reshape(-1), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(var, var_r.detach().reshape(-1), rtol=1e-10, atol=1e-10)
    else:
        ref = s
        assert mean is None and var is None
    torch.testing.assert_close(y, ref.detach(), rtol=1e-10, atol=1e-10)
    inputs = [xr, w_raw] + [t for t in (slope, gamma, beta) if t is not None]
    ref_grads = torch.autograd.grad(ref, inputs, g)
    ours = [grads[0], grads[1]] + [t for t, p in zip(grads[2:], (slope, gamma, beta)) if p is not None]
    assert [t is None for t in grads[2:]] == [p is None for p in (slope, gamma, beta)]
    for name, a, b in zip(["x", "w_raw", "slope", "gamma", "beta"], ours, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-9, msg=f"gradient of {name}")
    # only what is asked for
    gx, gw, gsl, ggm, gbt = native_train_backward(g, x, w_raw, slope, gamma, mean, var, knots, op_b, op_p,
                                                  softmax, 1e-5, cd, False, False)
    assert gx is None and gw is None and gsl is None and (ggm is not None) == bn


@pytest.mark.skipif(not native_available(), reason="native kernels unavailable (no C compiler)")
@pytest.mark.parametrize("bn", [False, True])
def test_native_train_op_reads_strided_parameters(bn):
    """Parameters that are views (a transposed weight table, every other element of a buffer): the
    cpu backend hands the C entry points contiguous copies, which must outlive the call (they once
    were freed before it, and the kernels read freed memory); forward and every gradient against
    the reference."""
    from repact.fuse import hardswish_basis_map, linear_basis
    from repact.ops import repact_train

    branches = ("identity", "relu", "prelu", "hardswish")
    knots = torch.tensor(linear_basis(branches, dtype=torch.float32)[0])
    base, part = hardswish_basis_map(branches, dtype=torch.float32)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(3, C, 5, 4, generator=gen) * 4
    x.view(-1)[:3] = torch.tensor([-3.0, 0.0, 3.0])
    g = torch.randn(x.shape, generator=gen)
    leaves = [torch.randn(4, C, generator=gen), torch.rand(C, 2, generator=gen)]
    if bn:
        leaves += [1 + torch.rand(C, 2, generator=gen), torch.randn(C, 2, generator=gen)]
    res = {}
    for name in ("reference", "cpu"):
        ps = [t.clone().requires_grad_(True) for t in leaves]
        w_raw, slope = ps[0].t(), ps[1][:, 0]  # (C, 4) and (C,) views, neither contiguous
        gamma, beta = (ps[2][:, 1], ps[3][:, 1]) if bn else (None, None)
        assert not w_raw.is_contiguous() and not slope.is_contiguous()
        xi = x.clone().requires_grad_(True)
        with backend(name):
            y = repact_train(xi, w_raw, slope, gamma, beta, None, None, knots, base, part, False, 1e-5, 1)[0]
            y.backward(g)
        res[name] = [y.detach(), xi.grad] + [p.grad for p in ps]
    for a, b in zip(res["cpu"], res["reference"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5 * float(b.abs().max()))


@pytest.mark.skipif(not native_available(), reason="native kernels unavailable (no C compiler)")
@pytest.mark.parametrize("batch,spatial", [(2, (1, 1)), (2, (2, 3)), (2, (3, 5)), (2, (7, 7)), (2, (4, 4)),
                                           (2, (3, 11)), (2, (4, 16)), (2, (15, 17)), (2, (101, 123)),
                                           (256, (7, 7))])
@pytest.mark.parametrize("per_channel", [False, True])
@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_native_basis_kernels_match_float64_reference_on_every_block_size(batch, spatial, per_channel, bn, dtype):
    """RepAct's own-basis kernels over blocks shorter than a vector, of one or a few vectors
    (whole, or straddled by vectors that span two blocks), and longer than a flush chunk, the
    largest and a 256-image batch of 7x7 maps split over two threads, against the float64 table
    math; inputs include every knot, both sides of it, and +-inf."""
    from repact.fuse import hardswish_basis_map, linear_basis

    branches = ("identity", "relu", "prelu", "hardswish")
    # (batch-2 cases keep their original seeds: with two values per channel, 1x1 maps make BN ill-conditioned
    # for some draws, which a float32 kernel cannot beat)
    key = (spatial, per_channel, bn) if batch == 2 else (batch, spatial, per_channel, bn)
    gen = torch.Generator().manual_seed(hash(key) % 1000)
    knots_t, base, part = linear_basis(branches, dtype=torch.float64)
    knots = torch.tensor(knots_t, dtype=torch.float64)
    mb, mp = hardswish_basis_map(branches, dtype=torch.float64)
    c = 3
    cc = c if per_channel else 1
    x64 = torch.randn(batch, c, *spatial, generator=gen, dtype=torch.float64) * 4
    special = torch.tensor([-3.0, 0.0, 3.0, -3.0000005, -2.9999995, 2.9999995, 3.0000005, -1e-7, 1e-7],
                           dtype=torch.float64)
    n = min(special.numel(), x64.numel())
    x64.view(-1)[:n] = special[:n]
    x = x64.to(dtype)
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64).to(dtype)
    w = torch.randn((cc, 4) if per_channel else (4,), generator=gen, dtype=torch.float64)
    slope = torch.rand(cc, generator=gen, dtype=torch.float64) * 0.5
    gamma = 1 + torch.rand(cc, generator=gen, dtype=torch.float64) if bn else None
    beta = torch.randn(cc, generator=gen, dtype=torch.float64) if bn else None
    ref = native_train_forward(x.double(), w, slope, gamma, beta, knots, base.reshape(4, -1), part.reshape(4, -1),
                               False, 1e-5, 1)
    ref_grads = native_train_backward(g.double(), x.double(), w, slope, gamma, ref[1], ref[2], knots,
                                      base.reshape(4, -1), part.reshape(4, -1), False, 1e-5, 1, True, True)
    cast = [t.to(dtype) if t is not None else None for t in (w, slope, gamma, beta)]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        y, mean, var = native_train_forward(x, cast[0], cast[1], cast[2], cast[3], knots.to(dtype), mb.to(dtype),
                                            mp.to(dtype), False, 1e-5, 1)
        grads = native_train_backward(g, x, cast[0], cast[1], cast[2], mean, var, knots.to(dtype), mb.to(dtype),
                                      mp.to(dtype), False, 1e-5, 1, True, True)
    finally:
        torch.set_num_threads(threads)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-5)
    torch.testing.assert_close(y.double(), ref[0], **tol)
    for name, a, b in zip(["x", "w", "slope", "gamma", "beta"], grads, ref_grads):
        if b is None:
            assert a is None
            continue
        # parameter gradients are sums over the tensor: compare relative to the sum of magnitudes
        scale = 1.0 if name == "x" else float(x.numel())
        torch.testing.assert_close(a.double() / scale, b / scale, **tol, msg=f"gradient of {name}")
    inf = torch.tensor([float("-inf"), float("inf")], dtype=dtype).reshape(1, 1, 2)
    yi = native_train_forward(inf.expand(1, 1, 2).contiguous(), cast[0][:1] if per_channel else cast[0],
                              cast[1][:1], None, None, knots.to(dtype), mb.to(dtype), mp.to(dtype), False, 0.0, 1)[0]
    coeffs = _table_reference(w[:1] if per_channel else w, slope[:1], base.reshape(4, -1), part.reshape(4, -1), False)
    # the outer segments are linear: slope times x, so +-inf times the sign of each slope
    expect = torch.stack([-coeffs[0, 0, 1].sign(), coeffs[0, 3, 1].sign()]) * float("inf")
    assert torch.equal(yi.reshape(-1).double(), expect)
