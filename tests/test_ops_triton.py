"""The Triton kernels' checks (``tests/ops_triton_cases.py``, the launch and op counts of
``tests/ops_triton_counts.py``, and the ``triton`` cases of ``tests/test_ops_dtypes.py``) in a fresh
process: on CPU tensors with Triton's interpreter, which
must be switched on before Triton is first imported."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")

CASES = Path(__file__).with_name("ops_triton_cases.py")
COUNTS = Path(__file__).with_name("ops_triton_counts.py")
DTYPES = Path(__file__).with_name("test_ops_dtypes.py")


#: the checks in shards of a few minutes each (one fresh process per shard, so that pytest-xdist's
#: workers share them): (files, -k expression, a test id every run of the shard must pass)
SHARDS = {
    "training ops": ([CASES], "triton and training_op", "ops_triton_cases.py::test_training_op_matches_the_reference"),
    "other cases": ([CASES], "triton and not training_op", "ops_triton_cases.py::test_piecewise_quadratic_table"),
    "counts": ([COUNTS], "triton", "ops_triton_counts.py::"),
    "dtypes": ([DTYPES], "triton", "test_ops_dtypes.py::"),
}


@pytest.mark.slow
@pytest.mark.parametrize("shard", list(SHARDS))
def test_triton_kernels_match_the_reference(shard):
    files, select, must_pass = SHARDS[shard]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    if not torch.cuda.is_available():
        env["TRITON_INTERPRET"] = "1"
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    # (the module names of ops_triton_cases.py and ops_triton_counts.py match "triton"; of the dtype
    # grid only its triton cases run here, its reference and cpu cases run in this process)
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-rsp",
                           "-k", select, *map(str, files)], env=env, capture_output=True, text=True, timeout=1200)
    summary = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert " passed" in summary and "failed" not in summary, summary
    passed = [line for line in proc.stdout.splitlines() if line.startswith("PASSED")]
    assert any(must_pass in line for line in passed), summary
    if shard == "dtypes":
        assert any("[triton-" in line for line in passed), summary
    skips = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert all("needs a CUDA device" in line for line in skips), skips  # only the GPU-only checks skip
