"""Few-bit backward (RepAct-I/II, ACON-C, SiLU, GELU, HardSwish): exact forward, packed codes, memory
measured with saved_tensors_hooks, exactness where the derivative is constant on each bin, and the
error against the full backward."""

import itertools
import math

import pytest
import torch
from torch import nn

import repact
from repact.activations import AconC
from repact.activations.fewbit import (FewBit, backward_error, fixed_boundaries, optimal_boundaries, saved_bytes,
                                       set_backward_bits)
from repact.ops.fewbit import BITS, pack_codes, unpack_codes

FACTORIES = {
    "repact": lambda b: repact.RepAct(bits=b),
    "repact_channel": lambda b: repact.RepAct(16, granularity="channel", bits=b),
    "repact_softmax": lambda b: repact.RepAct(variant="softmax", bits=b),
    "repact_table": lambda b: repact.RepAct(branches=("identity", "relu6", "hardsigmoid"), bits=b),
    "acon_c": lambda b: AconC(16, bits=b),
    "silu": lambda b: FewBit("silu", b),
    "gelu": lambda b: FewBit("gelu", b),
    "gelu_tanh": lambda b: FewBit("gelu_tanh", b),
    "hardswish": lambda b: FewBit("hardswish", b),
}


def _pair(name, bits, seed=0):
    """(full-backward module, few-bit module) with the same (random) parameters."""
    torch.manual_seed(seed)
    full = FACTORIES[name](None)
    with torch.no_grad():
        for p in full.parameters():
            p.add_(0.3 * torch.randn_like(p))
    few = FACTORIES[name](bits)
    few.load_state_dict(full.state_dict())
    return full, few


def _grads(m, x, g):
    x = x.detach().clone().requires_grad_(True)
    params = [p for p in m.parameters() if p.requires_grad]
    y = m(x)
    return (y, *torch.autograd.grad(y, [x, *params], g))


@pytest.mark.parametrize("bits", BITS)
@pytest.mark.parametrize("n", [1, 7, 8, 9, 1000])
def test_codes_pack_and_unpack(bits, n):
    codes = torch.randint(0, 2 ** bits, (n,), dtype=torch.uint8)
    packed = pack_codes(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(n * bits / 8)
    assert torch.equal(unpack_codes(packed, bits, n), codes.long())


@pytest.mark.parametrize("name", list(FACTORIES))
def test_forward_is_exact_and_saved_bytes_shrink(name):
    x = torch.randn(8, 16, 32, 32)
    full, _ = _pair(name, None)
    full_bytes, y_full = saved_bytes(full, x.clone().requires_grad_(True))
    assert full_bytes >= x.numel() * 4  # the full backward keeps x (or more)
    for bits in BITS:
        _, few = _pair(name, bits)
        nbytes, y = saved_bytes(few, x.clone().requires_grad_(True))
        assert torch.equal(y, y_full), (name, bits)
        ratio = nbytes / full_bytes
        assert ratio <= {1: 0.05, 2: 0.08, 4: 0.15}[bits], (name, bits, ratio)
        assert nbytes >= x.numel() * bits / 8  # the codes themselves are all there


def test_without_gradients_the_plain_forward_runs():
    m = repact.RepAct(bits=1)
    x = torch.randn(4, 3, 5, 5)
    with torch.no_grad():
        nbytes, y = saved_bytes(m, x)
    assert nbytes == 0 and torch.equal(y, repact.RepAct()(x))


def test_relu_like_repact_at_one_bit_has_the_exact_input_gradient():
    # f' = [x >= 0]: constant on each side of the 1-bit boundary, which the fit puts at 0
    full = repact.RepAct()
    with torch.no_grad():
        full.branch_weight.copy_(torch.tensor([0.0, 1.0, 0.0, 0.0]))
    few = repact.RepAct(bits=1)
    few.load_state_dict(full.state_dict())
    x = torch.randn(4, 8, 16, 16)
    g = torch.randn_like(x)
    y0, gx0, *_ = _grads(full, x, g)
    y1, gx1, *_ = _grads(few, x, g)
    assert torch.equal(y0, y1) and torch.equal(gx0, gx1)


@pytest.mark.parametrize("name", ["repact", "repact_channel", "repact_softmax", "repact_table", "silu", "hardswish"])
@pytest.mark.parametrize("bits", BITS)
def test_one_input_value_per_bin_makes_every_gradient_exact(name, bits):
    # every element of a bin has the same value: the bin means are the values themselves
    # (float64, so that both backwards' sums are exact to ~1e-13)
    full, few = (m.double() for m in _pair(name, bits))
    kernel_bounds = _bounds_of(few, bits)
    inner = ((kernel_bounds[1:] + kernel_bounds[:-1]) / 2).tolist()
    values = torch.tensor([kernel_bounds[0].item() - 1.0, *inner, kernel_bounds[-1].item() + 0.5], dtype=torch.float64)
    x = values[torch.randint(0, values.numel(), (4, 16, 6, 6))]
    g = torch.randn_like(x)
    for a, b in zip(_grads(full, x, g), _grads(few, x, g)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12), (name, bits, (a - b).abs().max())


def test_acon_c_with_one_value_per_channel_is_exact():
    full, few = (m.double() for m in _pair("acon_c", 2))
    x = torch.randn(1, 16, 1, 1, dtype=torch.float64).expand(4, 16, 5, 5).contiguous()
    g = torch.randn_like(x)
    for a, b in zip(_grads(full, x, g), _grads(few, x, g)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


def _bounds_of(m, bits):
    from repact.activations.fewbit import _repact_boundaries

    if isinstance(m, FewBit):
        return fixed_boundaries(m.fn, bits)
    return _repact_boundaries(tuple(m._knots.tolist()), m._op_base.shape[1] == 4, bits)


def test_boundaries_sit_on_the_cells_and_the_one_bit_cut_is_at_zero():
    from repact.activations.fewbit import _repact_boundaries
    from repact.ops.fewbit import cell_edges

    edges = set(cell_edges().tolist())
    for bits in BITS:
        for b in (fixed_boundaries("silu", bits), _repact_boundaries((-3.0, 0.0, 3.0), True, bits)):
            assert b.numel() == 2 ** bits - 1 and set(b.tolist()) <= edges and bool((b[1:] > b[:-1]).all())
    assert _repact_boundaries((-3.0, 0.0, 3.0), True, 1).tolist() == [0.0]
    assert fixed_boundaries("hardswish", 4).tolist()[-1] == 3.0  # where HardSwish's derivative jumps


@pytest.mark.parametrize("name", list(FACTORIES))
def test_backward_error_falls_with_bits(name):
    x = torch.randn(8, 16, 16, 16)
    errs = [backward_error(_pair(name, b)[1], x, b) for b in BITS]
    for key in errs[0]:
        seq = [e[key] for e in errs]
        assert seq[0] > seq[1] > seq[2], (name, key, seq)
    assert errs[-1]["input"] < 0.1, (name, errs[-1])


def test_fitting_a_repact_with_four_bit_gradients_reaches_the_target_function():
    # gradient descent on the few-bit gradients: at 4 bits the learned function is the target's
    torch.manual_seed(0)
    target = repact.RepAct()
    with torch.no_grad():
        target.branch_weight.copy_(torch.tensor([0.1, 0.5, -0.2, 0.6]))
        target.prelu_weight.fill_(0.1)
    probe = torch.linspace(-6, 6, 1001)
    final = {}
    for bits in (4, 1):
        torch.manual_seed(0)
        m = repact.RepAct(bits=bits)
        opt = torch.optim.Adam(m.parameters(), lr=0.02)
        for _ in range(300):
            x = torch.randn(4096)
            loss = (m(x) - target(x).detach()).square().mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            final[bits] = float((m(probe) - target(probe)).abs().max())
    assert final[4] < 1e-4 and final[1] > 1e-2, final


def test_optimal_boundaries_is_the_exact_optimum():
    torch.manual_seed(1)
    grid = torch.arange(12, dtype=torch.float64)
    w = torch.rand(12, dtype=torch.float64)
    f = torch.randn(12, 2, dtype=torch.float64)

    def cost(cuts):
        edges = [0, *cuts, 12]
        total = 0.0
        for a, b in zip(edges[:-1], edges[1:]):
            ww, ff = w[a:b], f[a:b]
            m = (ww[:, None] * ff).sum(0) / ww.sum()
            total += float((ww[:, None] * (ff - m) ** 2).sum())
        return total

    for k in (2, 3, 4):
        best = min(itertools.combinations(range(1, 12), k - 1), key=cost)
        got = optimal_boundaries(grid, w, f, k)
        assert [int(v) for v in got] == list(best)
    line = torch.arange(-10, 11, dtype=torch.float64) / 10
    step = optimal_boundaries(line, torch.ones(21, dtype=torch.float64), (line >= 0.3).double(), 2)
    assert step.tolist() == [0.3]


def test_bad_bits_and_unsupported_repacts_are_refused():
    for bad in (3, 0, 8, "4", True, 2.0):
        with pytest.raises(ValueError, match=r"bits must be one of 1, 2, 4"):
            repact.RepAct(bits=bad)
    with pytest.raises(ValueError, match="RepAct-III"):
        repact.RepAct(variant="bn", bits=4)
    with pytest.raises(ValueError, match="piecewise branches"):
        repact.RepAct(branches=("relu", "silu"), bits=2)
    assert repact.RepAct(branches=("relu6", "hardtanh"), bits=2).bits == 2  # knots 0, 6, -1, 1 are cell edges
    with pytest.raises(ValueError, match="unknown few-bit function 'tanh'"):
        FewBit("tanh", 4)
    with pytest.raises(ValueError, match="bits must be one of"):
        AconC(4, bits=5)


def test_set_backward_bits_converts_a_model_and_keeps_its_forward_and_state():
    torch.manual_seed(0)
    from repact.models import create_model

    model = create_model("mobilenet_v3_small", act="repact", num_classes=10, small_input=True)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(2, 3, 32, 32)
    model.eval()
    y0 = model(x)
    paths = set_backward_bits(model, 4)
    kinds = {type(model.get_submodule(p)).__name__ for p in paths}
    assert kinds == {"RepAct", "FewBit"}  # the 23 RepActs and the classifier's HardSwish
    assert sum(isinstance(model.get_submodule(p), repact.RepAct) for p in paths) == 23
    assert model.state_dict().keys() == before.keys()
    assert torch.equal(model(x), y0)
    model.train()
    loss = model(x).square().mean()
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters() if p.requires_grad)
    set_backward_bits(model, None)
    assert all(getattr(model.get_submodule(p), "bits") is None for p in paths)
    with pytest.raises(ValueError, match="bits must be one of"):
        set_backward_bits(model, 3)


def test_set_backward_bits_leaves_repact_iii_alone():
    model = nn.Sequential(nn.Conv2d(3, 4, 3), repact.RepAct(variant="bn"), nn.SiLU())
    assert set_backward_bits(model, 2) == ["2"]
    assert model[1].bits is None and isinstance(model[2], FewBit)


@pytest.mark.parametrize("variant", ["origin", "softmax"])
def test_bits_set_after_a_cached_exact_call_take_effect_and_unset_restore_it(variant):
    # RepAct keeps the call it decided per input layout; switching the backward's width must not
    # leave the exact call (which saves x) in charge, nor the few-bit one once bits is None again
    m = repact.RepAct(variant=variant, granularity="channel", channels=16)
    x = torch.randn(8, 16, 32, 32)
    full_bytes, y_full = saved_bytes(m, x.clone().requires_grad_(True))
    full_again, _ = saved_bytes(m, x.clone().requires_grad_(True))  # the cached call
    assert full_again == full_bytes >= x.numel() * 4
    m.bits = 1
    few_bytes, y = saved_bytes(m, x.clone().requires_grad_(True))
    assert torch.equal(y, y_full) and few_bytes <= 0.05 * full_bytes
    few_again, _ = saved_bytes(m, x.clone().requires_grad_(True))
    assert few_again == few_bytes
    m.bits = None
    assert saved_bytes(m, x.clone().requires_grad_(True))[0] == full_bytes
