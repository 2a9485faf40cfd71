"""The one dispatch: backend names and aliases, what runs where, and no host copy off the CPU."""

import pytest
import torch

import repact
from repact import PiecewiseQuadratic, RepAct
from repact.ops import backend, choose, get_backend, native_available, set_backend


def test_names_aliases_and_the_context_manager():
    assert get_backend() == "auto"
    with backend("torch"):
        assert get_backend() == "reference"
        with backend("reference"):
            assert get_backend() == "reference"
    assert get_backend() == "auto"
    if native_available():
        with backend("native"):
            assert get_backend() == "cpu"
    with pytest.raises(ValueError, match="unknown backend 'gpu'; choose one of auto, reference, cpu, triton, torch, native"):
        set_backend("gpu")
    assert get_backend() == "auto"


def test_choose_reads_device_dtype_and_layout():
    x = torch.randn(2, 3)
    cpu = "cpu" if native_available() else "reference"
    assert choose(x) == cpu
    assert choose(x.double()) == cpu
    assert choose(x.half()) == "reference"  # no C kernel for float16
    assert choose(x.to_sparse()) == "reference"
    assert choose(torch.empty(0, 3)) == "reference"
    assert choose(torch.empty(2, 3, device="meta")) == "reference"
    with backend("reference"):
        assert choose(x) == "reference"


def test_meta_tensors_run_without_a_host_copy():
    """Under the default backend, RepAct (every variant, training and eval) and the deploy module
    on meta tensors: any copy of a table or a parameter to the host would raise ("Cannot copy out
    of meta tensor"), so running at all proves dispatch decided on the device first."""
    assert get_backend() == "auto"
    for variant in ("origin", "softmax", "bn"):
        for gran in ("layer", "channel"):
            m = RepAct(4, variant=variant, granularity=gran)
            repact.randomize_activations_(m, seed=1)
            d = repact.reparameterize(m.eval(), inplace=False).to("meta")
            m = m.to("meta")
            for training in (True, False):
                m.train(training)
                x = torch.empty(2, 4, 5, 5, device="meta", requires_grad=True)
                y = m(x)
                assert y.device.type == "meta" and y.shape == x.shape
                y.sum().backward()
                assert x.grad.shape == x.shape
            y = d(torch.empty(2, 4, 5, 5, device="meta"))
            assert y.device.type == "meta" and y.shape == (2, 4, 5, 5)
    table = PiecewiseQuadratic([-1.0, 2.0], torch.randn(1, 3, 3)).to("meta")
    assert table(torch.empty(3, 7, device="meta")).shape == (3, 7)


def test_ci_requires_the_native_build():
    """REPACT_REQUIRE_NATIVE=1 (CI) turns a missing native build into an error instead of a fallback."""
    import os
    import subprocess
    import sys

    code = "import torch, repact.ops as o; t = torch.randn(3); print(o.choose(t))"
    env = {k: v for k, v in os.environ.items() if k != "REPACT_REQUIRE_NATIVE"}  # CI exports it
    env["REPACT_NATIVE"] = "0"
    ok = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0 and ok.stdout.strip() == "reference"
    env["REPACT_REQUIRE_NATIVE"] = "1"
    bad = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode != 0
    assert "REPACT_REQUIRE_NATIVE=1 but the native kernels are unavailable: disabled by REPACT_NATIVE=0" in bad.stderr
