"""One module run forward and backward on one backend: what the kernel tests compare with the
reference (tests/test_ops_dtypes.py, tests/test_ops_acon_kernels.py)."""

from __future__ import annotations

import copy

from repact.ops import backend, choose


def run_on_backend(m, x, g, name: str) -> dict:
    """Output, gradients and running statistics of a copy of module ``m`` on ``x`` (backward with
    ``g``) under backend ``name``, which ``choose`` must pick for ``x`` (unless ``reference``)."""
    m = copy.deepcopy(m)
    xi = x.clone().requires_grad_(True)
    with backend(name):
        if name != "reference":
            assert choose(xi) == name
        y = m(xi)
        y.backward(g)
    out = {"y": y.detach(), "x": xi.grad}
    out.update({n: p.grad for n, p in m.named_parameters()})
    out.update({n: b for n, b in m.named_buffers() if "running" in n})
    return out
