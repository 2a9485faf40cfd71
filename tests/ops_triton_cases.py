"""Every Triton kernel against the reference backend: on a GPU on CUDA tensors, elsewhere on CPU
tensors in Triton's interpreter.

Run through ``tests/test_ops_triton.py``, which starts this module in a fresh process with
``TRITON_INTERPRET=1`` set before Triton is first imported (Triton decorates its own library at
import, so the variable cannot be switched on later in a process that already imported it, as
``torch.compile`` does). On a machine with CUDA: ``pytest tests/ops_triton_cases.py``.
Shapes are tiny and odd (tiles never full): the interpreter is slow.
"""

import copy

import pytest
import torch

triton = pytest.importorskip("triton")

import repact  # noqa: E402
from repact import RepAct  # noqa: E402
from repact.ops import backend, choose, piecewise_quadratic, triton_interpreted  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and not triton_interpreted(),
                                reason="no GPU, and Triton's interpreter is off (set TRITON_INTERPRET=1)")

C = 4
LAYOUTS = {  # (shape, channels_last module, memory format)
    "2d": ((6, C), False, None),
    "3d": ((3, C, 7), False, None),
    "4d": ((3, C, 5, 3), False, None),
    "channels_last": ((3, C, 5, 3), False, torch.channels_last),
    "tokens": ((3, 7, C), True, None),
}


def _input(layout, dtype=torch.float32, seed=0):
    shape, _, fmt = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 4
    x.view(-1)[:3] = torch.tensor([-3.0, 0.0, 3.0], dtype=torch.float64)
    x = x.to(dtype)
    x = x.to(memory_format=fmt) if fmt is not None else x
    return x.to(DEVICE), torch.randn(shape, generator=gen).to(dtype).to(DEVICE)


def _run(m, x, g, name):
    m = copy.deepcopy(m).to(x.device)
    xi = x.clone().requires_grad_(True)
    with backend(name):
        if name == "triton":
            assert choose(xi) == "triton"
        y = m(xi)
        y.backward(g)
    out = {"y": y.detach(), "x": xi.grad}
    out.update({n: p.grad for n, p in m.named_parameters()})
    if getattr(m, "variant", None) == "bn":
        out.update(running_mean=m.bn.running_mean, running_var=m.bn.running_var)
    return out


def _close(got, ref, rtol, atol_scale):
    for k in ref:
        scale = float(ref[k].abs().max()) + 1e-12
        torch.testing.assert_close(got[k].double(), ref[k].double(), rtol=rtol, atol=atol_scale * scale, msg=k)


def _matches_reference(m, x, g, rtol=1e-5, atol_scale=1e-5):
    """The Triton run of module ``m`` against the reference run in float64 (the truth): each output
    and gradient within ``rtol`` and ``atol_scale`` times its largest value, plus twice the error
    that the float32 reference itself makes. A layer-wise RepAct-II weight gradient is a small
    difference of large sums (softmax's Jacobian), so float32 summation order alone moves it by
    about its tolerance; the kernels are held to what float32 arithmetic can give."""
    got, ref32 = _run(m, x, g, "triton"), _run(m, x, g, "reference")
    ref = _run(copy.deepcopy(m).double(), x.double(), g.double(), "reference")
    for k in ref:
        own = float((ref32[k].double() - ref[k]).abs().max())
        atol = atol_scale * (float(ref[k].abs().max()) + 1e-12) + 2 * own
        torch.testing.assert_close(got[k].double(), ref[k], rtol=rtol, atol=atol, msg=k)


def _repact(variant, gran, layout, branches=None, seed=1):
    kw = {"branches": branches} if branches else {}
    m = RepAct(C, variant=variant, granularity=gran, channels_last=LAYOUTS[layout][1], **kw)
    repact.randomize_activations_(m, seed=seed)
    repact.randomize_batchnorm_(m, seed=seed + 1)
    return m


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("variant", ["origin", "softmax", "bn"])
@pytest.mark.parametrize("gran", ["layer", "channel"])
def test_training_op_matches_the_reference(variant, gran, layout):
    """Forward, every gradient and RepAct-III's running statistics (basis kernels, batch stats)."""
    m = _repact(variant, gran, layout).train()
    x, g = _input(layout)
    _matches_reference(m, x, g)


@pytest.mark.parametrize("gran", ["layer", "channel"])
def test_table_branch_sets_and_eval_statistics(gran):
    """A branch set outside RepAct's basis (the table kernels, K = 4) with batch statistics, and
    RepAct-III in eval mode (constant running statistics) with gradients."""
    x, g = _input("4d", seed=3)
    x = x * 2  # reach relu6's knot at 6
    m = _repact("bn", gran, "4d", branches=("relu6", "prelu", "hardtanh"))
    _matches_reference(m.train(), x, g)
    m = _repact("bn", gran, "4d")
    _matches_reference(m.eval(), x, g)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("variant", ["origin", "bn"])
def test_half_precision_inputs(dtype, variant):
    """float16/bfloat16 inputs with float32 parameters (as under AMP): computed in float32, within
    the input type's rounding of a float64 reference."""
    m = _repact(variant, "channel", "channels_last").train()
    x, g = _input("channels_last", dtype=dtype, seed=5)
    got = _run(m, x, g, "triton")
    ref = _run(copy.deepcopy(m).double(), x.double(), g.double(), "reference")
    assert got["y"].dtype == dtype and got["x"].dtype == dtype
    tol = 1e-2 if dtype == torch.float16 else 4e-2
    _close(got, ref, tol, tol)


@pytest.mark.parametrize("cc", [1, C])
@pytest.mark.parametrize("layout", ["2d", "4d", "channels_last", "tokens"])
def test_piecewise_quadratic_table_and_basis(cc, layout):
    """The op's table kernels (forward, gradients of x and the table) and the deploy module's basis
    kernel, on the knots and away from them."""
    x, g = _input(layout, seed=7)
    cd = -1 if LAYOUTS[layout][1] else 1
    gen = torch.Generator().manual_seed(cc)
    knots = torch.tensor([-2.0, -0.5, 1.0], device=DEVICE)
    coeffs = torch.randn(cc, 4, 3, generator=gen).to(DEVICE)
    res = {}
    for name in ("triton", "reference"):
        xi = x.clone().requires_grad_(True)
        ci = coeffs.clone().requires_grad_(True)
        with backend(name):
            y = piecewise_quadratic(xi, knots, ci, cd)
            y.backward(g)
        res[name] = {"y": y.detach(), "x": xi.grad, "coeffs": ci.grad}
    _close(res["triton"], res["reference"], 1e-5, 1e-5)
    m = RepAct(cc if cc > 1 else None, variant="bn", granularity="channel" if cc > 1 else "layer",
               channels_last=cd == -1)
    repact.randomize_activations_(m, seed=2)
    repact.randomize_batchnorm_(m, seed=3)
    d = repact.reparameterize(m.eval(), inplace=False).to(DEVICE)
    m = m.to(DEVICE)
    assert d.hardswish_form
    with torch.no_grad():
        with backend("triton"):
            y = d(x)
            assert torch.is_tensor(d._table_cache[1]) and d._table_cache[1].shape == (cc, 4)  # the basis
        ref = m.forward_branches(x)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


@pytest.mark.parametrize("cls,gran", [("acon_c", "channel"), ("acon_c", "layer"), ("acon_b", "channel"),
                                      ("acon_a", "layer")])
@pytest.mark.parametrize("layout", ["4d", "tokens"])
def test_acon_training_op(cls, gran, layout):
    m = repact.create_act(cls, channels=C, granularity=gran, channels_last=LAYOUTS[layout][1])
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape) * 0.3)
    x, g = _input(layout, seed=9)
    _matches_reference(m, x, g)


def test_large_offset_statistics():
    """RepAct-III's statistics where |mean| >> std: the kernels' shifted sums keep the variance."""
    m = RepAct(C, variant="bn", granularity="channel", branches=("identity",), weight_init=1.0).train()
    gen = torch.Generator().manual_seed(0)
    x = 1000.0 + torch.randn(8, C, 5, 5, generator=gen)
    m = m.to(DEVICE)
    with backend("triton"):
        m(x.to(DEVICE))
    s = x.double()
    var = s.var((0, 2, 3), unbiased=True)
    expect = 0.9 * 1.0 + 0.1 * var
    torch.testing.assert_close(m.bn.running_var.double().cpu(), expect, rtol=1e-4, atol=0)


@pytest.mark.parametrize("variant", ["origin", "softmax", "bn"])
def test_only_the_input_is_kept_for_backward(variant):
    """The training op (and ACON's, and the table op under autograd) on the Triton kernels keep
    nothing input-sized for backward but the input itself."""
    x, g = _input("channels_last", seed=11)
    table = torch.randn(C, 4, 3).to(DEVICE).requires_grad_(True)
    acon = repact.create_act("acon_c", channels=C).to(DEVICE)
    m = _repact(variant, "channel", "channels_last").train().to(DEVICE)
    for fn in (m, acon, lambda t: piecewise_quadratic(t, torch.tensor([-1.0, 0.0, 2.0], device=DEVICE), table, 1)):
        xi = x.clone().requires_grad_(True)
        saved = []

        def pack(t):
            saved.append(t)
            return t

        with backend("triton"), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            y = fn(xi)
        big = [t for t in saved if t.numel() >= x.numel()]
        assert len(big) == 1 and big[0].data_ptr() == xi.data_ptr(), [tuple(t.shape) for t in saved]
        with backend("triton"):
            y.backward(g)
        assert xi.grad is not None and xi.grad.shape == x.shape


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA device")
def test_auto_takes_triton_for_cuda_tensors():
    """Under the default backend CUDA tensors of every supported dtype run on the Triton kernels."""
    from repact.ops import get_backend

    assert get_backend() == "auto"
    for dtype in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
        x = torch.randn(2, C, 3, 3, device=DEVICE, dtype=dtype)
        assert choose(x) == "triton"
        assert choose(x.to(memory_format=torch.channels_last)) == "triton"


@pytest.mark.parametrize("seed", [1, 2])
def test_layerwise_bn_backward_within_twice_the_float32_reference(seed):
    """Issue 24.6 on the Triton kernels: a layer-wise RepAct-III's branch-weight gradient
    with random BatchNorm statistics, within twice the float32 reference's error
    (``tests/bn_accuracy.py``)."""
    from bn_accuracy import assert_within_twice_the_reference, layerwise_bn

    gen = torch.Generator().manual_seed(100 + seed)
    x = torch.randn(8, 16, 12, 12, generator=gen) * 4
    g = torch.randn(x.shape, generator=gen)
    assert_within_twice_the_reference(layerwise_bn(seed), x.to(DEVICE), g.to(DEVICE), "triton")
