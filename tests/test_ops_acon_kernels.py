"""ACON's kernels (C: ``repact/_native/acon.c``; Triton: ``repact/ops/_triton_acon.py``) against the
reference in float64, over (input dtype, parameter dtype) pairs, every ACON that shares the op
(A, B, C per channel and per layer, meta-ACON-C's three generators) and the layouts the kernels read.

Inputs are dense and hold 0, +-1e4 (z = beta d x far past where exp(-|z|) underflows; +-30 for
meta-ACON in float16/bfloat16) and +-3.
Tolerances as ``tests/test_ops_dtypes.py``: within ``TOL`` of the weakest dtype (rtol, and atol
as a fraction of the largest value), plus twice the error the reference makes at the same dtypes.

The ``triton`` cases run on CUDA, or in Triton's interpreter in the fresh process that
``test_triton_cases_in_the_interpreter`` starts (``TRITON_INTERPRET=1`` must be set before
Triton is first imported).
"""

import copy
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import repact
from repact.ops import acon, backend, native_available, triton_available
from repact.ops.acon import plan

from ops_fixtures import run_on_backend

acon_module = importlib.import_module("repact.ops.acon")  # (repact.ops.acon is the function)

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
C = 5
TOL = {f64: 1e-10, f32: 1e-5, f16: 1e-2, bf16: 4e-2}
FULL = [(f32, f32), (f64, f64), (f64, f32), (f32, f64)]
HALF = [(f16, f32), (bf16, f32)]
#: (activation, its keyword arguments)
ACTS = {
    "acon_a": ("acon_a", {}), "acon_b": ("acon_b", {}), "acon_c": ("acon_c", {}),
    "acon_c_layer": ("acon_c_layer", {}),
    "meta-layer": ("meta_acon", {"generator": "layer", "r": 2}),
    "meta-channel": ("meta_acon", {"generator": "channel", "r": 2, "bn": False}),  # (a bias before a BN: grad 0)
    "meta-pixel": ("meta_acon", {"generator": "pixel"}),
}
#: shape, channels-last module, memory format
LAYOUTS = {
    "4d": ((3, C, 6, 7), False, None),
    "3d": ((2, C, 9), False, None),
    "2d": ((6, C), False, None),
    "channels_last": ((3, C, 4, 6), False, torch.channels_last),
    "tokens": ((3, 7, C), True, None),
}


def _kernels_here(name: str) -> bool:
    if name == "cpu":
        return native_available()
    if not triton_available():
        return False
    from repact.ops import triton_interpreted

    return DEVICE == "cuda" or triton_interpreted()


def _device(name: str) -> str:
    return "cpu" if name == "cpu" else DEVICE


def _module(act: str, layout: str):
    name, kw = ACTS[act]
    m = repact.create_act(name, channels=C, channels_last=LAYOUTS[layout][1], **kw)
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    return m.train()


def _input(layout: str, dtype, device, seed=0, big=1e4):
    shape, _, fmt = LAYOUTS[layout]
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=f64) * 4
    x.view(-1)[:6] = torch.tensor([0.0, big, -big, 3.0, -3.0, 0.0])
    g = torch.randn(shape, generator=gen, dtype=f64)
    x, g = x.to(device, dtype), g.to(device, dtype)
    if fmt is not None:
        x, g = x.to(memory_format=fmt), g.to(memory_format=fmt)
    return x, g


def _matches_truth(m, x, g, name, xdt, pdt):
    got = run_on_backend(m, x, g, name)
    assert got["y"].dtype == x.dtype and got["x"].dtype == x.dtype
    for n, p in m.named_parameters():
        assert got[n] is not None and got[n].dtype == p.dtype, n
    truth = run_on_backend(copy.deepcopy(m).double(), x.double(), g.double(), "reference")
    own = run_on_backend(m, x, g, "reference")
    tol = max(TOL[xdt], TOL[pdt])
    for k, ref in truth.items():
        assert torch.isfinite(got[k]).all(), k
        atol = tol * (float(ref.abs().max()) + 1e-12) + 2 * float((own[k].double() - ref).abs().max())
        torch.testing.assert_close(got[k].double(), ref, rtol=tol, atol=atol, msg=lambda s, k=k: f"{k}: {s}")


def _cases():
    for name, pairs in (("cpu", FULL), ("triton", FULL + HALF)):
        marks = () if _kernels_here(name) else (pytest.mark.skip(reason=f"{name} kernels do not run here"),)
        for act in ACTS:
            for layout in LAYOUTS:
                if act.startswith("meta") and layout in ("3d", "2d") and act != "meta-layer":
                    continue  # the channel generator pools over space (2-D: none); pixel: as 4-D
                for xdt, pdt in pairs:
                    if layout not in ("4d", "tokens") and (xdt, pdt) != (f32, f32):
                        continue  # every dtype pair on two layouts (the interpreter is slow)
                    if act == "meta-channel" and xdt != pdt:
                        continue  # its generator's convolutions take their own dtype only
                    yield pytest.param(name, act, layout, xdt, pdt, marks=marks,
                                       id=f"{name}-{act}-{layout}-x{str(xdt)[6:]}-p{str(pdt)[6:]}")


@pytest.mark.parametrize("name,act,layout,xdt,pdt", list(_cases()))
def test_kernels_match_the_float64_reference(name, act, layout, xdt, pdt):
    device = _device(name)
    m = _module(act, layout).to(device, pdt)
    # meta-ACON's beta comes from x: at +-1e4 the gradient reaching its float16/bfloat16 generator
    # (u^2 / 4 at beta = 0, ~1e8) overflows that dtype on every backend, reference included
    big = 30.0 if act.startswith("meta") and xdt in (f16, bf16) else 1e4
    x, g = _input(layout, xdt, device, big=big)
    with torch.no_grad():
        m(x)  # builds the lazy parts
    _matches_truth(m, x, g, name, xdt, pdt)


#: x's shape and memory format, and the operands' shapes (None: absent), for gradcheck
GRAD_CASES = {
    "c-channel": ((2, 3, 2, 3), None, ((1, 3, 1, 1),) * 3),
    "c-layer": ((2, 3, 2, 3), None, ((1, 1, 1, 1),) * 3),
    "b-channel": ((2, 3, 2, 3), None, (None, (1, 3, 1, 1), (1, 3, 1, 1))),
    "swish": ((2, 3, 2, 3), None, (None, None, (1, 1, 1, 1))),
    "beta-sample-channel": ((2, 3, 2, 3), None, ((1, 3, 1, 1), (1, 3, 1, 1), (2, 3, 1, 1))),
    "beta-sample": ((2, 3, 2, 3), None, ((1, 3, 1, 1), (1, 3, 1, 1), (2, 1, 1, 1))),
    "beta-element": ((2, 3, 2, 3), None, ((1, 3, 1, 1), (1, 3, 1, 1), (2, 3, 2, 3))),
    "channels_last": ((2, 3, 2, 3), torch.channels_last, ((1, 3, 1, 1), (1, 3, 1, 1), (2, 3, 1, 1))),
    "tokens": ((2, 4, 3), None, ((1, 1, 3), (1, 1, 3), (2, 1, 3))),
}


#: one-channel inputs (shape, channels-last module): a per-sample operand must still be read per sample
ONE_CHANNEL = {"4d": ((7, 1, 3, 4), False), "1x1": ((37, 1, 1, 1), False), "2d": ((9, 1), False),
               "tokens": ((3, 6, 1), True)}


def _one_channel_cases():
    for name in ("cpu", "triton"):
        marks = () if _kernels_here(name) else (pytest.mark.skip(reason=f"{name} kernels do not run here"),)
        for act in ("acon_c", "meta-layer", "meta-channel", "meta-pixel"):
            for layout in ONE_CHANNEL:
                if act in ("meta-channel", "meta-pixel") and layout == "2d":
                    continue  # as in _cases
                yield pytest.param(name, act, layout, marks=marks, id=f"{name}-{act}-one-channel-{layout}")


@pytest.mark.parametrize("name,act,layout", list(_one_channel_cases()))
def test_one_channel_inputs_match_the_float64_reference(name, act, layout):
    """One channel with meta-ACON's per-sample beta (N, 1, ...): every sample reads its own beta and
    gets its own beta gradient (the one-table view of the whole tensor read sample 0's beta for
    all and summed every sample's gradient into it)."""
    shape, last = ONE_CHANNEL[layout]
    kind, kw = ACTS[act]
    m = repact.create_act(kind, channels=1, channels_last=last, **kw)
    gen = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.3)
    x = (torch.randn(shape, generator=gen, dtype=f64) * 3).to(_device(name), f32)
    g = torch.randn(shape, generator=gen, dtype=f64).to(_device(name), f32)
    _matches_truth(m.train().to(_device(name)), x, g, name, f32, f32)


def _grad_cases():
    for name in ("cpu", "triton"):
        marks = () if _kernels_here(name) else (pytest.mark.skip(reason=f"{name} kernels do not run here"),)
        for case in GRAD_CASES:
            yield pytest.param(name, case, marks=marks, id=f"{name}-{case}")


@pytest.mark.parametrize("name,case", list(_grad_cases()))
def test_kernel_gradients_pass_gradcheck_in_float64(name, case):
    """The kernels' backward (x and every parameter map they read) against finite differences of
    their own forward, in float64 (on Triton's interpreter in fast mode: a random projection)."""
    shape, fmt, pshapes = GRAD_CASES[case]
    device = _device(name)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(shape, generator=gen, dtype=f64) * 2
    x = (x.to(memory_format=fmt) if fmt is not None else x).to(device).requires_grad_(True)
    ps = [None if s is None else (torch.randn(s, generator=gen, dtype=f64) + 0.5).to(device).requires_grad_(True)
          for s in pshapes]
    pl = plan(x, *ps)
    backend_mod = importlib.import_module("repact.ops._acon_cpu" if name == "cpu" else "repact.ops._triton_acon")
    assert pl is not None and backend_mod.supports(pl)  # the kernels run, not the reference
    fn = lambda *a: acon_module._AconFn.apply(*a, name)  # noqa: E731
    # (Triton's interpreter: fast mode, a random projection of the Jacobian, not every column)
    assert torch.autograd.gradcheck(fn, (x, *ps), fast_mode=name == "triton")


@pytest.mark.skipif(not native_available(), reason="native kernels unavailable (no C compiler)")
def test_registered_op_passes_opcheck():
    """torch.ops.repact.acon (what torch.compile sees): schema, fake kernel and autograd registration."""
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(2, 3, 4, 4, generator=gen, dtype=f64, requires_grad=True)
    p = [torch.randn(1, 3, 1, 1, generator=gen, dtype=f64, requires_grad=True) for _ in range(2)]
    for beta in (torch.randn(1, 3, 1, 1, generator=gen, dtype=f64, requires_grad=True), None):
        torch.library.opcheck(torch.ops.repact.acon.default, (x, *p, beta))
    torch.library.opcheck(torch.ops.repact.acon.default, (x.detach().float(), None, None, None))


class _Counted:
    """Counts a Triton kernel's launches; the ops its (interpreted) launch runs are not the host's."""

    def __init__(self, kernel, log):
        self.kernel, self.log = kernel, log

    def __getitem__(self, grid):
        launch = self.kernel[grid]

        def run(*args, **kwargs):
            self.log["launches"] += 1
            self.log["inside"] = True
            try:
                return launch(*args, **kwargs)
            finally:
                self.log["inside"] = False
        return run


def _host_ops(log):
    from torch.utils._python_dispatch import TorchDispatchMode

    class Ops(TorchDispatchMode):
        """Non-view ATen ops outside the kernels (each a launch of its own on a GPU); allocations
        launch nothing."""

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            name = func.overloadpacket.__name__
            if not log["inside"] and not func.is_view and not name.startswith("empty"):
                log["ops"].append(name)
            return func(*args, **(kwargs or {}))
    return Ops()


@pytest.mark.parametrize("name,act,layout", [pytest.param("triton", a, lay, marks=() if _kernels_here("triton") else (
    pytest.mark.skip(reason="triton kernels do not run here"),), id=f"triton-{a}-{lay}")
    for a in ("acon_a", "acon_b", "acon_c", "acon_c_layer") for lay in ("4d", "tokens")])
def test_triton_acon_is_one_launch_forward_and_two_backward(monkeypatch, name, act, layout):
    """Per call: the forward one kernel, the backward one kernel and the reduction of its per-tile
    sums, and no other op on the tensors (counted in Triton's interpreter: its launch, and every
    non-view ATen op between module.forward and the kernels)."""
    log = {"launches": 0, "inside": False, "ops": []}
    for mod, k in (("_triton_acon", "acon_forward_kernel"), ("_triton_acon", "acon_backward_kernel"),
                   ("_triton_kernels", "reduce_kernel")):  # (the reduction is RepAct's, shared)
        kernels = importlib.import_module(f"repact.ops.{mod}")
        monkeypatch.setattr(kernels, k, _Counted(getattr(kernels, k), log))
    m = _module(act, layout).to(DEVICE)
    x, g = _input(layout, f32, DEVICE)
    xi = x.clone().requires_grad_(True)
    with backend(name):
        with _host_ops(log):
            y = m(xi)
        forward = (log["launches"], list(log["ops"]))
        log.update(launches=0, ops=[])
        with _host_ops(log):
            y.backward(g)
    assert forward == (1, []), forward
    assert (log["launches"], log["ops"]) == (2, []), log
    assert all(p.grad is not None for p in m.parameters()) and xi.grad is not None


@pytest.mark.skipif(not native_available(), reason="native kernels unavailable (no C compiler)")
@pytest.mark.parametrize("act", list(ACTS))
def test_cpu_acon_is_one_c_call_each_way(monkeypatch, act):
    """Every ACON's forward is one call into the C library, and its backward one more."""
    cpu_kernels = importlib.import_module("repact.ops._acon_cpu")
    calls = []
    real = cpu_kernels._fn

    def counted(name, dtype):
        fn = real(name, dtype)
        return lambda *args: calls.append(name) or fn(*args)

    m = _module(act, "4d")
    x, g = _input("4d", f32, "cpu")
    with torch.no_grad():
        m(x)  # builds the lazy parts outside the count
    monkeypatch.setattr(cpu_kernels, "_fn", counted)
    xi = x.clone().requires_grad_(True)
    with backend("cpu"):
        y = m(xi)
        assert calls == ["repact_acon_forward"]
        y.backward(g)
    assert calls == ["repact_acon_forward", "repact_acon_backward"]


@pytest.mark.skipif(not native_available(), reason="native kernels unavailable (no C compiler)")
@pytest.mark.parametrize("use_op", [True, False])
def test_compiled_acon_is_the_registered_op_where_compiled_op_says_so(monkeypatch, use_op):
    """Under torch.compile on the CPU: one torch.ops.repact.acon node (COMPILED_OP["cpu"] True) or
    the plain expression for the compiler to fuse (False); the same values and gradients either way."""
    graphs = []

    def record(gm, example_inputs):
        graphs.append(" ".join(str(n.target) for n in gm.graph.nodes if n.op == "call_function"))
        return gm.forward

    monkeypatch.setitem(acon_module.COMPILED_OP, "cpu", use_op)
    m = _module("acon_c", "4d")
    x, g = _input("4d", f32, "cpu")
    eager = run_on_backend(m, x, g, "cpu")
    torch._dynamo.reset()
    xi = x.clone().requires_grad_(True)
    mc = copy.deepcopy(m)
    y = torch.compile(mc, backend=record, fullgraph=True)(xi)
    y.backward(g)
    torch._dynamo.reset()
    assert len(graphs) == 1 and graphs[0].count("repact.acon") == (1 if use_op else 0), graphs
    assert ("sigmoid" in graphs[0]) != use_op, graphs
    torch.testing.assert_close(y.detach(), eager["y"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(xi.grad, eager["x"], rtol=1e-5, atol=1e-5)
    for n, p in mc.named_parameters():
        torch.testing.assert_close(p.grad, eager[n], rtol=1e-4, atol=1e-4 * float(eager[n].abs().max()))


@pytest.mark.skipif(not native_available(), reason="native kernels unavailable (no C compiler)")
@pytest.mark.parametrize("dtype", [f32, f64])
def test_cpu_extreme_inputs_stay_finite(dtype):
    """|x| up to 1e30 (float32) where the plain expression's u^2 s (1 - s) overflows to NaN: the
    kernels' beta gradient is (u s)(u q), 0 there, as the exact value."""
    big = 1e30 if dtype == f32 else 1e300
    x = torch.tensor([[-big, -1e4, -88.5, -30.0, 0.0, 1e-30, 30.0, 88.5, 1e4, big]], dtype=dtype).reshape(1, 1, -1)
    p1, p2, beta = (torch.tensor([v], dtype=dtype).reshape(1, 1, 1).requires_grad_(True) for v in (1.5, 0.25, 0.7))
    xi = x.clone().requires_grad_(True)
    with backend("cpu"):
        y = acon(xi, p1, p2, beta)
        grads = torch.autograd.grad(y, [xi, p1, p2, beta], torch.ones_like(y))
    d, u = 1.25, 1.25 * x.double()
    s = torch.sigmoid(0.7 * u)
    expect_y = u * s + 0.25 * x.double()
    torch.testing.assert_close(y.double(), expect_y, rtol=1e-6, atol=0)
    assert all(torch.isfinite(t).all() for t in grads)
    # the beta gradient: sum u^2 s (1 - s), 0 from every |z| past exp's range
    z = 0.7 * u
    keep = z.abs() < 50
    gb = (u[keep] ** 2 * s[keep] * (1 - s[keep])).sum()
    torch.testing.assert_close(grads[3].double().reshape(()), gb, rtol=1e-5, atol=1e-12)
    core = s * (1 + z * (1 - s))
    torch.testing.assert_close(grads[0].double(), core * d + 0.25, rtol=1e-6, atol=1e-30)


@pytest.mark.skipif(not native_available(), reason="native kernels unavailable (no C compiler)")
@pytest.mark.parametrize("layout,shape", [("4d", (3, C, 47, 61)), ("4d", (81, C, 7, 7)), ("tokens", (3, 2027, C))],
                         ids=["blocks", "straddling-blocks", "rows"])
def test_cpu_two_threads_split_blocks_and_rows(layout, shape):
    """A tensor large enough for two threads, cut mid-block and mid-sample: the per-thread partial
    sums add up to the float64 reference (per channel and per sample and channel). 7x7 maps run
    from the per-channel parameter table (ACON-C: whole samples four at a time, the sums flushed
    every 64 samples) or in vectors that straddle two blocks (per sample and channel)."""
    n = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(1)
        x = torch.randn(shape, generator=gen) * 3
        g = torch.randn(shape, generator=gen)
        for act in ("acon_c", "meta-channel", "meta-layer"):
            m = _module(act, "tokens" if layout == "tokens" else "4d")
            with torch.no_grad():
                m(x)
            _matches_truth(m, x, g, "cpu", f32, f32)
    finally:
        torch.set_num_threads(n)


def test_plan_reads_each_acons_parameters():
    """Maps of the operands: one value, per channel (dim 1 or last), per sample and channel, per
    sample, per element; other shapes have no plan (the reference runs)."""
    x = torch.randn(2, 3, 4, 5)
    one, ch = torch.ones(1, 1, 1, 1), torch.ones(1, 3, 1, 1)
    assert plan(x, one, one, one).maps == ((0, 0), (0, 0), (0, 0))
    p = plan(x, ch, ch, torch.ones(2, 3, 1, 1))
    assert p.maps == ((0, 1), (0, 1), (3, 1)) and (p.view.outer, p.view.C, p.view.inner, p.od) == (2, 3, 20, 1)
    p = plan(x.to(memory_format=torch.channels_last), ch, ch, torch.ones(2, 1, 1, 1))
    assert p.maps[2] == (1, 0) and (p.view.outer, p.view.C, p.view.inner, p.od) == (40, 3, 1, 20)
    p = plan(x, ch, ch, torch.ones(2, 3, 4, 5))
    assert p.beta_full and p.params[2].shape == x.shape
    tok = torch.randn(2, 7, 3)
    p = plan(tok, torch.ones(1, 1, 3), None, torch.ones(2, 1, 3))
    assert p.maps[0] == (0, 1) and p.maps[2] == (3, 1) and p.od == 7
    one_channel = torch.randn(6, 1, 4, 5)
    p = plan(one_channel, None, None, torch.ones(6, 1, 1, 1))  # per sample, one channel: rows are samples
    assert p.maps[2] == (1, 0) and (p.view.outer, p.view.C, p.view.inner, p.od) == (6, 1, 20, 1)
    p = plan(torch.randn(2, 7, 1), torch.ones(1, 1, 1), None, torch.ones(2, 1, 1))  # tokens, one channel
    assert p.maps[2] == (1, 0) and p.view.outer // p.od == 2
    assert plan(x, torch.ones(1, 1, 4, 1), None, None) is None  # along H: no kernel
    assert plan(x, torch.ones(1, 3, 4, 5), None, None) is None  # p1 per element: no kernel


@pytest.mark.slow
@pytest.mark.skipif(not triton_available(), reason="triton is not installed")
def test_triton_cases_in_the_interpreter():
    """This file's triton cases in a fresh process with Triton's interpreter on (on CUDA: as they are)."""
    if DEVICE == "cuda":
        pytest.skip("on CUDA the triton cases run in this process")
    env = dict(os.environ, OMP_NUM_THREADS="1", TRITON_INTERPRET="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1] / "src") + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           "-k", "triton- and not interpreter", __file__], env=env, capture_output=True, text=True,
                          timeout=1200)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary and "skipped" not in summary, summary
