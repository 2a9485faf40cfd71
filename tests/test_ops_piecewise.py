"""The piecewise-quadratic op: both implementations, every layout, gradients, and no input writes."""

import warnings

import pytest
import torch
from torch.autograd import gradcheck

from repact import fuse
from repact.ops import backend, native_available, piecewise_quadratic, piecewise_quadratic_torch, set_backend
from repact.reparam import dense_grid

BACKENDS = ["torch"] + (["native"] if native_available() else [])


def _reference(x, knots, coeffs, channel_dim):
    """Independent evaluation: per channel, index the table with the segment of each element."""
    xd = x.double()
    cd = channel_dim % x.dim() if x.dim() else 0
    out = torch.empty_like(xd)
    if coeffs.shape[0] == 1:
        return fuse.evaluate_pieces(xd, knots.tolist(), coeffs.double())
    for c in range(coeffs.shape[0]):
        idx = [slice(None)] * x.dim()
        idx[cd] = c
        out[tuple(idx)] = fuse.evaluate_pieces(xd[tuple(idx)], knots.tolist(), coeffs[c : c + 1].double())
    return out


def _table(cc, k, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    knots = torch.sort(torch.randn(k, generator=g, dtype=torch.float64) * 3).values.to(dtype)
    coeffs = torch.randn(cc, k + 1, 3, generator=g, dtype=torch.float64).to(dtype)
    return knots, coeffs


LAYOUTS = {
    "nchw": lambda c: torch.randn(3, c, 5, 6) * 4,
    "channels_last": lambda c: (torch.randn(3, c, 5, 6) * 4).to(memory_format=torch.channels_last),
    "ncl": lambda c: torch.randn(2, c, 9) * 4,
    "nc": lambda c: torch.randn(7, c) * 4,
    "transposed": lambda c: (torch.randn(5, 6, c, 3) * 4).permute(0, 2, 3, 1).transpose(2, 3),
}


@pytest.mark.parametrize("impl", BACKENDS)
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("cc", [1, 4])
@pytest.mark.parametrize("k", [0, 1, 3, 8])
def test_forward_matches_reference(impl, layout, cc, k):
    x = LAYOUTS[layout](4)
    knots, coeffs = _table(cc, k)
    before = x.clone()
    with backend(impl):
        y = piecewise_quadratic(x, knots, coeffs, 1)
    assert torch.equal(x, before), "the op must not write into its input"
    assert y.shape == x.shape
    torch.testing.assert_close(y.double(), _reference(x, knots, coeffs, 1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", BACKENDS)
def test_token_tensors_with_channels_last_dim(impl):
    x = torch.randn(2, 7, 5) * 4
    knots, coeffs = _table(5, 3)
    with backend(impl):
        y = piecewise_quadratic(x, knots, coeffs, -1)
    torch.testing.assert_close(y.double(), _reference(x, knots, coeffs, -1), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", BACKENDS)
def test_knots_are_exact(impl):
    # a continuous table: at each knot both neighbouring polynomials agree, so the value is unique
    knots, coeffs = fuse.repact_coefficients(torch.tensor([0.3, -0.7, 1.1, 0.9]), torch.tensor([-0.4]))
    kt = torch.tensor(knots)
    x = dense_grid(knots, lo=-4, hi=4, steps=801)
    with backend(impl):
        y = piecewise_quadratic(x, kt, coeffs, 1)
    torch.testing.assert_close(y.double(), _reference(x, kt, coeffs, 1), rtol=0, atol=2e-6)
    for k in knots:
        left = coeffs[0, knots.index(k)].double()
        v = left[0] + left[1] * k + left[2] * k * k
        got = y[x == k]
        assert got.numel() == 1 and float(got) == pytest.approx(float(v), abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_other_dtypes(dtype):
    x = (torch.randn(2, 3, 4, 4) * 3).to(dtype)
    knots, coeffs = _table(3, 3)
    y = piecewise_quadratic(x, knots.to(dtype), coeffs.to(dtype), 1)
    assert y.dtype == dtype
    tol = 1e-10 if dtype == torch.float64 else 0.05
    torch.testing.assert_close(y.double(), _reference(x, knots, coeffs, 1), rtol=tol, atol=tol * 10)


@pytest.mark.parametrize("impl", BACKENDS)
def test_nonfinite_inputs_propagate(impl):
    knots, coeffs = fuse.repact_coefficients(torch.full((4,), 0.25), torch.tensor([0.25]))
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    with backend(impl):
        y = piecewise_quadratic(x, torch.tensor(knots), coeffs, 1)
    assert torch.isnan(y[0])
    assert y[1] == float("inf") and y[2] == -float("inf")
    assert y[3] == pytest.approx(0.875 + 1 / 24)


def test_zero_dim_and_empty_inputs():
    knots, coeffs = _table(1, 3)
    y = piecewise_quadratic(torch.tensor(1.5), knots, coeffs)
    assert y.dim() == 0
    assert float(y) == pytest.approx(float(_reference(torch.tensor([1.5]), knots, coeffs, 0)), abs=1e-5)
    assert piecewise_quadratic(torch.empty(0, 3), knots, coeffs).shape == (0, 3)


@pytest.mark.parametrize("impl", BACKENDS)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "nc", "transposed"])
@pytest.mark.parametrize("cc", [1, 3])
def test_gradcheck(impl, layout, cc):
    x = LAYOUTS[layout](3).double().mul_(0.5).requires_grad_(True)
    knots, coeffs = _table(cc, 3, torch.float64, seed=1)
    coeffs.requires_grad_(True)
    with backend(impl):
        assert gradcheck(lambda a, c: piecewise_quadratic(a, knots, c, 1), (x, coeffs), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("cc", [1, 6])
def test_native_and_torch_gradients_agree(cc):
    if not native_available():
        pytest.skip("native kernels unavailable on this machine")
    x = torch.randn(4, 6, 33, 17) * 4
    g = torch.randn_like(x)
    knots, coeffs = _table(cc, 3)
    grads = {}
    for impl in ("native", "torch"):
        xi = x.clone().requires_grad_(True)
        ci = coeffs.clone().requires_grad_(True)
        with backend(impl):
            piecewise_quadratic(xi, knots, ci, 1).backward(g)
        grads[impl] = (xi.grad, ci.grad)
    torch.testing.assert_close(grads["native"][0], grads["torch"][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads["native"][1], grads["torch"][1], rtol=1e-4, atol=1e-3)


def test_only_the_input_is_saved_for_backward():
    x = torch.randn(8, 16, 32, 32, requires_grad=True)
    knots, coeffs = _table(16, 3)
    coeffs.requires_grad_(True)
    saved = []

    def pack(t):
        saved.append(t)
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        piecewise_quadratic(x, knots, coeffs, 1)
    big = [t for t in saved if t.numel() > 1000]
    assert len(big) == 1 and big[0].data_ptr() == x.data_ptr()


def test_argument_errors():
    x = torch.randn(2, 3)
    knots, coeffs = _table(3, 3)
    with pytest.raises(ValueError, match="shape \\(Cc, S, 3\\)"):
        piecewise_quadratic(x, knots, coeffs[..., :2])
    with pytest.raises(ValueError, match="3 knots need 4 segments"):
        piecewise_quadratic(x, knots, coeffs[:, :3])
    with pytest.raises(ValueError, match="3 channels do not match"):
        piecewise_quadratic(torch.randn(2, 5), knots, coeffs)
    with pytest.raises(ValueError, match="unknown backend 'cuda'; choose one of auto, reference, cpu, triton"):
        set_backend("cuda")


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.uint8, torch.bool], ids=str)
def test_deploy_module_refuses_integer_input(dtype):
    """Like F.hardswish, the deploy form refuses non-float input with a TypeError naming the dtype
    (it used to return the integer-truncated table silently), eager and scripted."""
    from repact import PiecewiseQuadratic

    knots, coeffs = _table(3, 3)
    m = PiecewiseQuadratic(knots, coeffs)
    x = torch.tensor([[-5, 0, 5], [1, 2, 3]]).to(dtype)
    with pytest.raises(TypeError, match=rf"PiecewiseQuadratic takes a floating-point input.*{dtype}"):
        m(x)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated upstream
        scripted = torch.jit.script(m)
    with pytest.raises(Exception, match="PiecewiseQuadratic takes a floating-point input"):
        scripted(x)
    torch.testing.assert_close(scripted(x.double()), m(x.double()))


def test_torch_form_is_scriptable():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script is deprecated upstream
        scripted = torch.jit.script(piecewise_quadratic_torch)
    x = torch.randn(2, 3, 4)
    knots, coeffs = _table(3, 3)
    torch.testing.assert_close(scripted(x, knots, coeffs, 1), piecewise_quadratic_torch(x, knots, coeffs, 1))


@pytest.mark.parametrize("cc", [1, 8])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_native_kernels_split_work_over_threads(cc, layout):
    """Large inputs run on several OpenMP threads; per-thread sums must merge exactly once."""
    if not native_available():
        pytest.skip("native kernels unavailable on this machine")
    x = torch.randn(4, 8, 96, 96) * 4
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    g = torch.randn_like(x)
    knots, coeffs = _table(cc, 3)
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        results = {}
        for impl in ("native", "torch"):
            xi = x.clone().requires_grad_(True)
            ci = coeffs.clone().requires_grad_(True)
            with backend(impl):
                y = piecewise_quadratic(xi, knots, ci, 1)
                y.backward(g)
            results[impl] = (y.detach(), xi.grad, ci.grad)
    finally:
        torch.set_num_threads(threads)
    for a, b in zip(results["native"], results["torch"]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-3)


@pytest.mark.parametrize("cc", [1, 8])
@pytest.mark.parametrize("with_affine", [False, True])
def test_native_backward_over_threads_and_map_sizes(cc, with_affine):
    """The table kernels' backward over small and large maps, split over two threads (per-channel
    sums per thread, merged once), with and without the BatchNorm affine of the incoming gradient,
    against the float64 reference."""
    if not native_available():
        pytest.skip("native kernels unavailable on this machine")
    from repact import _native

    for spatial in ((2, 3), (7, 7), (33, 65)):
        x = torch.randn(5, 8, *spatial, dtype=torch.float64) * 4
        knots, coeffs = _table(cc, 3, torch.float64)
        x.view(-1)[:6] = knots.repeat(2)  # on the knots
        g = torch.randn_like(x)
        aff = torch.randn(3, cc, dtype=torch.float64) if with_affine else None
        gx = torch.empty_like(x)
        acc = torch.empty(3, 4, cc, dtype=torch.float64)
        planar = coeffs.permute(2, 1, 0).contiguous()
        outer, c, inner = (5, 8, spatial[0] * spatial[1]) if cc > 1 else (1, 1, x.numel())
        rc = _native.library().repact_pq_backward_f64(
            x.data_ptr(), g.data_ptr(), gx.data_ptr(), acc.data_ptr(), aff.data_ptr() if aff is not None else None,
            outer, c, inner, 3, knots.data_ptr(), planar.data_ptr(), cc, 2)
        assert rc == 0
        shape = (1, cc, 1, 1) if cc > 1 else (1, 1, 1, 1)
        s = _reference(x, knots, coeffs, 1)
        h = g if aff is None else aff[0].reshape(shape) * g + aff[1].reshape(shape) * s + aff[2].reshape(shape)
        xr = x.clone().requires_grad_(True)
        cr = coeffs.clone().requires_grad_(True)
        with backend("torch"):
            ref_gx, ref_gc = torch.autograd.grad(piecewise_quadratic(xr, knots, cr, 1), (xr, cr), h)
        torch.testing.assert_close(gx, ref_gx, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(acc.permute(2, 1, 0), ref_gc, rtol=1e-10, atol=1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("k", [0, 1, 3, 8])
def test_native_per_channel_forward_on_every_block_size(dtype, k):
    """Block sizes on both sides of every vector width (the last vector of a block overlaps the one
    before it; blocks shorter than a vector go element by element)."""
    if not native_available():
        pytest.skip("native kernels unavailable on this machine")
    knots, coeffs = _table(5, k, dtype)
    for inner in (1, 2, 3, 4, 5, 7, 8, 9, 15, 16, 17, 31, 32, 33, 49, 64, 65):
        x = (torch.randn(3, 5, inner, dtype=torch.float64) * 4).to(dtype)
        with backend("native"):
            y = piecewise_quadratic(x, knots, coeffs, 1)
        tol = 1e-5 if dtype == torch.float32 else 1e-12
        torch.testing.assert_close(y.double(), _reference(x, knots, coeffs, 1), rtol=tol, atol=tol,
                                   msg=lambda m: f"inner={inner}: {m}")
