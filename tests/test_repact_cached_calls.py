"""The call a RepAct or a deployed PiecewiseQuadratic decides once per input layout and then reuses
(issue 24.2): whatever changes between calls (the BatchNorm's settings and buffers, the
parameters, the dtype, the backend setting, the table in place) is followed, as a fresh module
would. The kernels' route (the C kernels) is told from the reference's by the ATen ops a call runs
(the kernels run none but allocations)."""

import copy

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

import repact
from repact import RepAct
from repact.ops import backend, native_available

pytestmark = pytest.mark.skipif(not native_available(), reason="native kernels unavailable (no C compiler)")
C = 4


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.names = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if not (func.is_view or func.overloadpacket.__name__ in ("empty", "empty_like", "empty_strided")):
            self.names.append(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _ops(fn):
    with _Ops() as ops:
        out = fn()
    return ops.names, out


def _bn_module(granularity="channel"):
    m = RepAct(C if granularity == "channel" else None, variant="bn", granularity=granularity)
    repact.randomize_activations_(m, seed=0)
    repact.randomize_batchnorm_(m, seed=1)
    return m.train()


def _step(m, x, name):
    """y, the gradients and the running statistics after one training step of ``m`` on ``x``."""
    xi = x.clone().requires_grad_(True)
    with backend(name):
        y = m(xi)
    y.square().sum().backward()
    out = {"y": y.detach(), "x": xi.grad}
    out.update({n: p.grad.clone() for n, p in m.named_parameters()})
    out.update({n: b.clone() for n, b in m.named_buffers() if n.startswith("bn.")})
    for p in m.parameters():
        p.grad = None
    return out


def _same(got, ref):
    assert got.keys() == ref.keys()
    for k in ref:
        scale = float(ref[k].double().abs().max()) + 1e-12
        torch.testing.assert_close(got[k].double(), ref[k].double(), rtol=1e-6, atol=1e-6 * scale, msg=k)


def _cached_and_fresh_agree(m, x):
    """A step of ``m`` (its cached call where it has one) against the same step of a copy that
    decides afresh (a copy starts with no cached call), on the same C kernels."""
    fresh = copy.deepcopy(m)
    _same(_step(m, x, "native"), _step(fresh, x, "native"))
    return fresh


MUTATIONS = {
    "momentum": lambda m: setattr(m.bn, "momentum", 0.5),
    "cumulative": lambda m: setattr(m.bn, "momentum", None),
    "eps": lambda m: setattr(m.bn, "eps", 1e-2),
    "batchnorm replaced": lambda m: setattr(m, "bn", nn.BatchNorm1d(C, momentum=0.3)),
    "running buffers replaced": lambda m: (setattr(m.bn, "running_mean", torch.full((C,), 0.5)),
                                           setattr(m.bn, "running_var", torch.full((C,), 2.0))),
    "batchnorm frozen": lambda m: m.bn.eval(),
    "stops tracking": lambda m: setattr(m.bn, "track_running_stats", False),
    "weights replaced": lambda m: setattr(m, "branch_weight", nn.Parameter(torch.randn(C, 4))),
    "weights in place": lambda m: m.branch_weight.data.mul_(-2.0),
}


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_cached_call_follows_what_changed_since(mutation):
    x = torch.randn(3, C, 5, 2)
    m = _bn_module()
    _cached_and_fresh_agree(m, x)  # m decides and caches here
    before = _step(copy.deepcopy(m), x, "native")
    MUTATIONS[mutation](m)
    for _ in range(2):  # the first call after the change, and the one after it
        _cached_and_fresh_agree(m, x)
    changed = _step(copy.deepcopy(m), x, "native")
    assert any(not torch.equal(before[k], changed[k]) for k in before)  # (the change shows)


def test_cached_call_takes_the_backend_setting_mode_and_dtype():
    x = torch.randn(3, C, 5, 2)
    m = RepAct(C, variant="softmax", granularity="channel").train()
    with backend("native"):
        assert _ops(lambda: m(x))[0] == []  # the C kernels: no ATen op but allocations
        assert _ops(lambda: m(x))[0] == []  # cached
    with backend("torch"):
        assert len(_ops(lambda: m(x))[0]) > 5  # the reference's tensor ops
    m = _bn_module()
    with backend("native"):
        m(x)
        m.eval()
        ops, y = _ops(lambda: m(x))
        assert len(ops) <= 2, ops  # (the C kernels take the running statistics in float64: two casts)
        torch.testing.assert_close(y, m.forward_branches(x), rtol=1e-5, atol=1e-5)
        m.double()
        y = m(x.double())
        assert y.dtype == torch.float64
        torch.testing.assert_close(y, m.forward_branches(x.double()), rtol=1e-12, atol=1e-12)
        # a float32 input to the float64 module: the parameters stay float64, the result float32
        y = m(x)
        assert y.dtype == torch.float32
        torch.testing.assert_close(y, m.forward_branches(x.double()).float(), rtol=1e-6, atol=1e-6)


def test_cached_deploy_call_follows_the_table():
    x = torch.randn(2, C, 3, 3)
    m = _bn_module().eval()
    d = repact.reparameterize(m, inplace=False).eval()
    with backend("native"), torch.no_grad():
        d(x)
        assert _ops(lambda: d(x))[0] == []  # cached: no ATen op but the output's allocation
        d.coeffs.mul_(0.5)  # in place: the cached form of the table is stale
        torch.testing.assert_close(d(x), 0.5 * m.forward_branches(x), rtol=1e-5, atol=1e-5)
        d.coeffs = d.coeffs * 2.0  # a new table tensor
        torch.testing.assert_close(d(x), m.forward_branches(x), rtol=1e-5, atol=1e-5)
    xi = x.clone().requires_grad_(True)
    with backend("native"):
        d(xi).sum().backward()  # autograd takes the checked path; the gradient is right
    xr = x.clone().requires_grad_(True)
    m.forward_branches(xr).sum().backward()
    torch.testing.assert_close(xi.grad, xr.grad, rtol=1e-5, atol=1e-5)
    with backend("torch"):
        assert len(_ops(lambda: d(x))[0]) > 3  # the backend setting is part of the decision
