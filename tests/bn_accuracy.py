"""The accuracy check of RepAct-III's backward (issue 24.6), shared by the C kernels' test
(test_ops_batchnorm.py) and the Triton kernels' (ops_triton_cases.py, in the interpreter).

A layer-wise RepAct-III's branch-weight gradient is a small sum of large terms: each element's
dL/ds is alpha g plus a correction of order alpha / sqrt(n) that is nearly the same for every
element. Float32 arithmetic that rounds that correction the same way for many elements leaves
an error that grows like n while the gradient grows like sqrt(n); the float32 reference (plain
tensor ops) does, and its error swings between ~3e-7 and ~1e-4 of the gradient from seed to
seed. The kernels are held to at most twice the reference's error on the same data, plus
FLOOR: what the float32 forward alone moves the gradient by (s(x) evaluated in float32, measured
against float64 up to ~2.5e-7 of the largest weight gradient).
"""

import copy

import torch

import repact
from repact import RepAct
from repact.ops import backend

FLOOR = 2 * torch.finfo(torch.float32).eps


def layerwise_bn(seed: int) -> RepAct:
    """A layer-wise RepAct-III (the paper's branches) with random weights, slope and BatchNorm."""
    m = RepAct(None, variant="bn", granularity="layer")
    repact.randomize_activations_(m, seed=seed)
    repact.randomize_batchnorm_(m, seed=seed + 1)
    return m.train()


def _weight_grads(m, x, g, name):
    m = copy.deepcopy(m).to(x.device)
    xi = x.clone().requires_grad_(True)
    with backend(name):
        m(xi).backward(g)
    return {n: m.get_parameter(n).grad.double().cpu() for n in ("branch_weight", "prelu_weight")}


def errors(m, x, g, name):
    """{parameter: (error of backend ``name``, error of the float32 reference)} for the branch
    weights and the slope, each as max |got - float64| / max |float64|."""
    exact = _weight_grads(copy.deepcopy(m).double(), x.double(), g.double(), "reference")
    got, ref32 = _weight_grads(m, x, g, name), _weight_grads(m, x, g, "reference")
    out = {}
    for k, e in exact.items():
        scale = float(e.abs().max())
        out[k] = (float((got[k] - e).abs().max()) / scale, float((ref32[k] - e).abs().max()) / scale)
    return out


def assert_within_twice_the_reference(m, x, g, name):
    """The branch weights' gradient (the issue's requirement; the slope's, a difference of two of
    the basis rows' sums, is reported by :func:`errors` but not held to it: the C kernels' float
    lane sums leave it up to ~3x the reference's error)."""
    err, err32 = errors(m, x, g, name)["branch_weight"]
    assert err <= 2 * err32 + FLOOR, f"{name}: {err:.2e} vs the float32 reference's {err32:.2e}"
