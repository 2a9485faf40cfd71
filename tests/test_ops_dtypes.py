"""Every backend over (input dtype, parameter dtype) pairs, against the reference in float64.

The dispatch's one dtype rule (:func:`repact.ops.dispatch.param_dtype`): the result and the input's
gradient have the input's dtype, each parameter's gradient (and RepAct-III's running statistics)
its own. Each case runs a module (RepAct-I/II/III, layer and channel tables, training and eval
mode; ACON-C; the deploy PiecewiseQuadratic in RepAct's basis; the table op with a learnable table)
on a dense input holding the knots -3, 0 and 3, forward and backward, on one backend, and compares
the output, every gradient and the running statistics with the reference run of the module cast
to float64 on the input cast to float64.

Tolerances: within ``TOL`` (rtol, and atol as a fraction of the largest value) of the weakest of
the two dtypes; a kernel backend also within twice the error the reference makes at the same
dtypes (float32 summation order alone moves a small difference of large sums, such as a
layer-wise RepAct-II weight gradient, by about ``TOL``).

The ``triton`` cases run where Triton's kernels can: on CUDA, or in the interpreter process that
``tests/test_ops_triton.py`` starts (``TRITON_INTERPRET=1`` must be set before Triton is imported).
"""

import copy

import pytest
import torch
from torch import nn

import repact
from repact import RepAct
from repact.ops import native_available, piecewise_quadratic, triton_available

from ops_fixtures import run_on_backend

f16, bf16, f32, f64 = torch.float16, torch.bfloat16, torch.float32, torch.float64
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
C = 4
TOL = {f64: 1e-10, f32: 1e-5, f16: 1e-2, bf16: 4e-2}
#: (input dtype, parameter dtype): every pair of float32/float64, and half-precision inputs with
#: float32 (AMP) or float64 parameters
FULL = [(f32, f32), (f64, f64), (f64, f32), (f32, f64)]
HALF = [(f16, f32), (bf16, f32), (f16, f64)]


def _triton_runs_here() -> bool:
    if not triton_available():
        return False
    from repact.ops import triton_interpreted

    return DEVICE == "cuda" or triton_interpreted()


def _repact(variant, gran, training):
    m = RepAct(C, variant=variant, granularity=gran)
    repact.randomize_activations_(m, seed=3)
    repact.randomize_batchnorm_(m, seed=4)
    return m.train(training)


def _acon(gran):
    m = repact.create_act("acon_c", channels=C, granularity=gran)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(5)) * 0.3)
    return m


def _deploy():
    return repact.reparameterize(_repact("bn", "channel", False), inplace=False)


class _Table(nn.Module):
    """The table op with a learnable per-channel table on knots that include -3, 0 and 3."""

    def __init__(self):
        super().__init__()
        self.register_buffer("knots", torch.tensor([-3.0, -1.0, 0.0, 3.0]))
        self.coeffs = nn.Parameter(torch.randn(C, 5, 3, generator=torch.Generator().manual_seed(6)))

    def forward(self, x):
        return piecewise_quadratic(x, self.knots, self.coeffs, 1)


CASES = {f"repact-{v}-{g}-{'train' if t else 'eval'}": (lambda v=v, g=g, t=t: _repact(v, g, t))
         for v in ("origin", "softmax", "bn") for g in ("layer", "channel") for t in (True, False)}
CASES.update({"acon_c-channel": lambda: _acon("channel"), "acon_c-layer": lambda: _acon("layer"),
              "deploy": _deploy, "table": _Table})


def _input(dtype, device):
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(3, C, 5, 3, generator=gen, dtype=f64) * 4
    x.view(-1)[:12] = torch.tensor([-3.0, 0.0, 3.0]).repeat(4)  # every knot, in every channel
    g = torch.randn(x.shape, generator=gen, dtype=f64)
    return x.to(device, dtype), g.to(device, dtype)


def _dtypes_follow_the_rule(got, m, x):
    assert got["y"].dtype == x.dtype and got["x"].dtype == x.dtype
    for n, p in list(m.named_parameters()) + [(n, b) for n, b in m.named_buffers() if "running" in n]:
        assert got[n] is not None and got[n].dtype == p.dtype, n


def _pairs():
    no_cpu = pytest.mark.skipif(not native_available(), reason="native kernels unavailable (no C compiler)")
    runs = [("reference", FULL + HALF, ()), ("cpu", FULL, (no_cpu,))]  # cpu: float32/float64 (choose)
    if _triton_runs_here():  # elsewhere tests/test_ops_triton.py runs these in the interpreter
        runs.append(("triton", FULL + HALF, ()))
    for name, pairs, marks in runs:
        for xdt, pdt in pairs:
            yield pytest.param(name, xdt, pdt, marks=marks, id=f"{name}-x{str(xdt)[6:]}-p{str(pdt)[6:]}")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name,xdt,pdt", list(_pairs()))
def test_backend_matches_the_float64_reference(name, xdt, pdt, case):
    device = "cpu" if name == "cpu" else DEVICE
    m = CASES[case]().to(device, pdt)
    x, g = _input(xdt, device)
    got = run_on_backend(m, x, g, name)
    _dtypes_follow_the_rule(got, m, x)
    truth = run_on_backend(copy.deepcopy(m).double(), x.double(), g.double(), "reference")
    own = run_on_backend(m, x, g, "reference") if name != "reference" else None
    tol = max(TOL[xdt], TOL[pdt])
    for k, ref in truth.items():
        atol = tol * (float(ref.abs().max()) + 1e-12)
        if own is not None:
            atol += 2 * float((own[k].double() - ref).abs().max())
        torch.testing.assert_close(got[k].double(), ref, rtol=tol, atol=atol, msg=lambda s, k=k: f"{k}: {s}")
