"""What one call of each op costs on the triton route, counted: kernel launches, and ATen ops outside
the kernels that would each be a launch of their own on a GPU (every op but views and
allocations). Issue 24's structure: deploy 1 + 0 each way; RepAct-I/II training forward 1 + 0,
backward at most 2 + 0; RepAct-III at most 3 launches + 2 other ops each way.

Run through ``tests/test_ops_triton.py`` (Triton's interpreter, CPU tensors, switched on before
Triton is first imported); with CUDA: ``pytest tests/ops_triton_counts.py``. Each call is counted
twice: the first takes the checked path (decides and caches), the second the cached one (a deployed
table's basis form, read once per table, is made before counting).
"""

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

triton = pytest.importorskip("triton")

import repact  # noqa: E402
from repact.ops import backend, piecewise_quadratic, triton_interpreted  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(DEVICE == "cpu" and not triton_interpreted(),
                                reason="no GPU, and Triton's interpreter is off (set TRITON_INTERPRET=1)")

C = 6
ALLOCATIONS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
LAYOUTS = {  # shape, channels_last module, memory format
    "nchw": ((2, C, 5, 3), False, None),
    "channels_last": ((2, C, 5, 3), False, torch.channels_last),
    "tokens": ((2, 7, C), True, None),
}


class _Launches:
    """Counts the kernels launched (every launch goes through the kernel's ``run``) and says
    whether one is running (its own tensor traffic is not counted as ops)."""

    def __init__(self):
        self.names, self.inside = [], False

    def install(self):
        """Wrap the kernels' ``run``; returns the original."""
        cls = type(repact.ops._triton.kern.apply_kernel)
        original = cls.run
        counter = self

        def run(kernel, *args, **kwargs):
            counter.names.append(kernel.__name__)
            counter.inside = True
            try:
                return original(kernel, *args, **kwargs)
            finally:
                counter.inside = False

        cls.run = run
        return original


class _Ops(TorchDispatchMode):
    def __init__(self, launches):
        super().__init__()
        self.launches, self.names = launches, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (self.launches.inside or func.is_view or func.overloadpacket.__name__ in ALLOCATIONS):
            self.names.append(str(func))
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def launches():
    import repact.ops._triton  # noqa: F401

    counter = _Launches()
    cls = type(repact.ops._triton.kern.apply_kernel)
    original = counter.install()
    yield counter
    cls.run = original


def _count(launches, fn):
    """(launch names, other op names, fn's result) of one call."""
    launches.names = []
    with _Ops(launches) as ops:
        out = fn()
    return launches.names, ops.names, out


def _input(layout, dtype=torch.float32):
    shape, _, fmt = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(0)
    x = (torch.randn(shape, generator=gen) * 3).to(dtype)
    g = torch.randn(shape, generator=gen).to(dtype)
    if fmt is not None:
        x, g = x.to(memory_format=fmt), g.to(memory_format=fmt)
    return x.to(DEVICE), g.to(DEVICE)


def _forward_backward(launches, m, x, g):
    """Counts of y = m(x) and of its backward to x and m's parameters, for two calls."""
    out = []
    for _ in range(2):
        xi = x.clone().requires_grad_(True)
        inputs = [xi, *[p for p in m.parameters() if p.requires_grad]]
        fwd, fwd_ops, y = _count(launches, lambda: m(xi))
        bwd, bwd_ops, _ = _count(launches, lambda: torch.autograd.grad(y, inputs, g))
        out.append((fwd, fwd_ops, bwd, bwd_ops))
    return out


def _train_module(name, gran, layout):
    cl = LAYOUTS[layout][1]
    m = repact.create_act(name, channels=C, granularity=gran, channels_last=cl)
    repact.randomize_activations_(m, seed=1)
    return m.to(DEVICE).train()


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("gran", ["layer", "channel"])
@pytest.mark.parametrize("name", ["repact", "repact_softmax"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_repact_training_is_one_launch_forward_and_two_backward(launches, name, gran, layout, dtype):
    m = _train_module(name, gran, layout)
    x, g = _input(layout, dtype)
    with backend("triton"):
        for fwd, fwd_ops, bwd, bwd_ops in _forward_backward(launches, m, x, g):
            assert fwd == ["apply_kernel"] and fwd_ops == [], (fwd, fwd_ops)
            assert len(bwd) <= 2 and bwd_ops == [], (bwd, bwd_ops)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("gran", ["layer", "channel"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_repact_bn_is_at_most_three_launches_each_way(launches, gran, layout, dtype):
    m = _train_module("repact_bn", gran, layout)
    x, g = _input(layout, dtype)
    tracked = int(m.bn.num_batches_tracked)
    with backend("triton"):
        for fwd, fwd_ops, bwd, bwd_ops in _forward_backward(launches, m, x, g):
            # batch statistics: the statistics pass, the fold with the running update, the apply
            assert len(fwd) <= 3 and len(fwd_ops) <= 2, (fwd, fwd_ops)
            assert len(bwd) <= 3 and len(bwd_ops) <= 2, (bwd, bwd_ops)
        assert int(m.bn.num_batches_tracked) == tracked + 2  # the running update ran, in the kernels
        m.eval()  # the running statistics, folded: the training op's one-pass shape
        for fwd, fwd_ops, bwd, bwd_ops in _forward_backward(launches, m, x, g):
            assert fwd == ["apply_kernel"] and fwd_ops == [], (fwd, fwd_ops)
            assert len(bwd) <= 2 and bwd_ops == [], (bwd, bwd_ops)


@pytest.mark.parametrize("layout", list(LAYOUTS))
@pytest.mark.parametrize("name,gran", [("repact", "layer"), ("repact_bn", "channel")])
def test_deployed_activation_is_one_launch_each_way(launches, name, gran, layout):
    d = repact.reparameterize(_train_module(name, gran, layout).eval(), inplace=False).eval()
    assert d.hardswish_form
    x, g = _input(layout)
    with backend("triton"):
        with torch.no_grad():
            d(x)  # (the first call reads the table on the host, once, to take its basis form)
        for _ in range(2):
            with torch.no_grad():
                fwd, fwd_ops, _ = _count(launches, lambda: d(x))
            assert fwd == ["apply_kernel"] and fwd_ops == [], (fwd, fwd_ops)
        for fwd, fwd_ops, bwd, bwd_ops in _forward_backward(launches, d, x, g):
            assert fwd == ["apply_kernel"] and fwd_ops == [], (fwd, fwd_ops)
            assert bwd == ["backward_kernel"] and bwd_ops == [], (bwd, bwd_ops)


@pytest.mark.parametrize("cc", [1, C])
def test_table_op_is_one_launch_forward_and_two_backward(launches, cc):
    """A table of its own (3 knots): the deploy module 1 + 0 each way; the op with a learnable table
    1 + 0 forward, 2 + 0 backward (the table's gradient is reduced over the tiles)."""
    x, g = _input("nchw")
    knots = torch.tensor([-1.0, 0.5, 2.0], device=DEVICE)
    coeffs = torch.randn(cc, 4, 3, generator=torch.Generator().manual_seed(cc)).to(DEVICE)
    table = repact.PiecewiseQuadratic(knots, coeffs).to(DEVICE)
    with backend("triton"):
        for fwd, fwd_ops, bwd, bwd_ops in _forward_backward(launches, table, x, g):
            assert fwd == ["apply_kernel"] and fwd_ops == [], (fwd, fwd_ops)
            assert bwd == ["backward_kernel"] and bwd_ops == [], (bwd, bwd_ops)
        c = coeffs.clone().requires_grad_(True)
        xi = x.clone().requires_grad_(True)
        fwd, fwd_ops, y = _count(launches, lambda: piecewise_quadratic(xi, knots, c))
        bwd, bwd_ops, (gx, gc) = _count(launches, lambda: torch.autograd.grad(y, [xi, c], g))
    assert fwd == ["apply_kernel"] and fwd_ops == [], (fwd, fwd_ops)
    assert len(bwd) <= 2 and bwd_ops == [], (bwd, bwd_ops)
    assert gc.shape == coeffs.shape


def test_counter_sees_ops_outside_the_kernels(launches):
    """The counts above can fail: an op outside the kernels is counted, one inside is not."""
    x, _ = _input("nchw")
    fwd, fwd_ops, _ = _count(launches, lambda: torch.softmax(x, 1) * 2)
    assert fwd == [] and len(fwd_ops) == 2, fwd_ops
    d = repact.reparameterize(_train_module("repact", "layer", "nchw").eval(), inplace=False).eval()
    with backend("triton"), torch.no_grad():
        d(x)
        fwd, fwd_ops, _ = _count(launches, lambda: d(x) + 1)
    assert fwd == ["apply_kernel"] and fwd_ops == ["aten.add.Tensor"], (fwd, fwd_ops)
